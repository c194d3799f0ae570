"""Peak memory of a stage worker on the largest input of each modality that the default limits let through.

Starts its own PostgreSQL, Redis and S3 servers (:mod:`benchmarks.servers`), puts each input in the bucket,
registers it, and runs one prepare batch of it in a process of its own (spawned, as a Ray worker is), sampling
its resident memory every 2 ms (``tests.pipelines.support.stage_peak``; the stage is built before the measure
starts). One JSON line per input, then one with the largest figure:

* ``batch``: 16 objects of 32 MiB in one batch (binary, so they fail once read): the read-ahead budget
  (``SLUICE_READ_AHEAD_BYTES``, 256 MiB) is what bounds the bytes held, not the batch;
* ``text``: one Markdown file of ``--text-mib`` MiB (chunked and BM25-encoded);
* ``pdf``: ``SLUICE_MAX_OCR_PAGES`` (200) scanned pages, each rendered for OCR at up to ``SLUICE_MAX_RENDER_PIXELS``;
* ``image``: one picture of ``SLUICE_IMAGE_MAX_PIXELS`` (64 M) pixels;
* ``audio``: ``--audio-minutes`` of 48 kHz stereo FLAC (120: ``SLUICE_MAX_AUDIO_SECONDS``). Prepare only sniffs
  it (its pending recording row carries no samples); ``audio_stage`` is the audio stage on that row: it reads the
  file from S3 again and decodes it in blocks to 16 kHz mono (115 MB of ``float32`` an hour), with a transcriber
  that finds no speech, so the figure is the stage's own, not the model's (which works in 30 s windows).

Memory here is the prepare stage's; for ``image`` and ``audio`` also that stage's (``"stage"`` in the line) on the
prepare stage's output: the image stage with its real OCR engine and a CLIP stand-in that takes every crop.

    python benchmarks/peak_memory.py [--text-mib 64] [--audio-minutes 120] [--only audio,pdf]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.servers import bench_servers  # noqa: E402

MIB = 1024 * 1024


def _batch_input() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    return {f"blobs/{i:02d}.bin": rng.integers(0, 256, 32 * MIB, dtype=np.uint8).tobytes() for i in range(16)}


def _text_input(mib: int) -> dict[str, bytes]:
    paragraph = ("Sluice turns many files into a searchable index and answers hybrid queries over it, "
                 "at a scale one machine cannot handle. ")
    sections, size, i = [], 0, 0
    while size < mib * MIB:
        block = f"## Section {i}\n\n" + " ".join([paragraph] * 6) + "\n\n"
        sections.append(block)
        size += len(block)
        i += 1
    return {"notes/big.md": ("# A large note\n\n" + "".join(sections)).encode()}


def _pdf_input(pages: int) -> dict[str, bytes]:
    from tests.pipelines.test_limits import scanned_pages

    return {"scans/many.pdf": scanned_pages(pages)}


def _image_input(pixels: int) -> dict[str, bytes]:
    from PIL import Image

    side = int(pixels ** 0.5)
    image = Image.new("RGB", (side, side), "white")
    image.paste((200, 30, 30), (side // 4, side // 4, side // 2, side // 2))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"images/huge.png": buffer.getvalue()}


def _audio_input(minutes: int) -> dict[str, bytes]:
    import soundfile as sf

    rate, buffer = 48_000, io.BytesIO()
    block = np.zeros((rate, 2), dtype=np.int16)  # silence: two hours of anything else is over SLUICE_MAX_FILE_BYTES
    with sf.SoundFile(buffer, "w", samplerate=rate, channels=2, format="FLAC", subtype="PCM_16") as f:
        for _ in range(minutes * 60):
            f.write(block)
    return {"audio/long.flac": buffer.getvalue()}


def main(argv: list[str] | None = None) -> int:
    from core.settings import Settings
    from tests.pipelines.support import stage_peak, registered_batch, tiny_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text-mib", type=int, default=64)
    parser.add_argument("--audio-minutes", type=int, default=120)
    parser.add_argument("--only", default="", help="comma-separated inputs to run (batch,text,pdf,image,audio)")
    args = parser.parse_args(argv)
    defaults = Settings()
    inputs = {
        "batch": _batch_input,
        "text": lambda: _text_input(args.text_mib),
        "pdf": lambda: _pdf_input(defaults.max_ocr_pages),
        "image": lambda: _image_input(defaults.image_max_pixels),
        "audio": lambda: _audio_input(args.audio_minutes),
    }
    chosen = [name for name in inputs if not args.only or name in args.only.split(",")]
    with tempfile.TemporaryDirectory(prefix="sluice-peak-") as work:
        work_path = Path(work)
        # The text model only sizes chunks (its tokenizer); the real one's tokenizer is the tiny model's too.
        with bench_servers(work_path, qdrant_path=work_path / "qdrant", text_model=tiny_model(work_path / "model"),
                           asr_model="tiny") as settings:  # prepare only checks an ASR model is named
            worst = 0
            for name in chosen:
                files = inputs[name]()
                on_disk = sum(len(data) for data in files.values())
                batch = registered_batch(settings, name, files)
                del files
                for stage in ("prepare", name) if name in ("image", "audio") else ("prepare",):
                    started = time.perf_counter()
                    growth, reasons = stage_peak(settings, batch, stage=stage)
                    worst = max(worst, growth)
                    print(json.dumps({"input": name, "stage": stage, "files": len(batch["path"]),
                                      "mib_on_disk": round(on_disk / MIB, 1), "peak_growth_mib": round(growth / MIB, 1),
                                      "seconds": round(time.perf_counter() - started, 1),
                                      "outcomes": sorted(set(r or "ok" for r in reasons))}), flush=True)
            print(json.dumps({"largest_peak_growth_mib": round(worst / MIB, 1),
                              "read_ahead_mib": settings.read_ahead_bytes // MIB}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
