"""Speech recognition with timestamps: a Whisper-family model (transformers) over the VAD's speech windows.

Input: 16 kHz mono ``float32`` samples (:class:`pipelines.extract.audio.Audio`), cut by
:class:`pipelines.chunk.audio.AudioChunker` into windows of at most 30 s. Output: :class:`TranscriptSegment` s with
``start_s``/``end_s`` in seconds from the start of the file, in time order, and from them :class:`AudioChunk` s
(``modality="audio"``), which are embedded as text and keep their times.

Per batch of windows (``WhisperForConditionalGeneration``, loaded offline from ``SLUICE_ASR_MODEL``, see
:mod:`pipelines.asr_models`):

1. the log-mel features (``WhisperFeatureExtractor``: 80 or 128 bins × 3000 frames of 10 ms, each window padded to
   30 s) go through the encoder once;
2. one decoder step on ``<|startoftranscript|>`` gives the no-speech probability (the softmax of the
   ``<|nospeech|>`` token there, as in OpenAI's ``whisper/decoding.py``) and, for a multilingual model without a
   fixed ``language``, the language (the most likely language token);
3. ``generate(..., return_timestamps=True)`` decodes greedily with Whisper's timestamp rules;
4. one teacher-forced decoder pass gives the average log-probability of the generated tokens.

No invented text: a window is dropped when its no-speech probability is above ``no_speech_threshold`` (0.6) and its
average log-probability below ``logprob_threshold`` (-1.0), OpenAI's rule (``whisper/transcribe.py``); audio in
which the VAD finds no speech is never given to the model at all.

Timestamps: the pairs of timestamp tokens (``<|t|>``, 20 ms steps, relative to the window) delimit the segments. They
are clamped into the window, made non-decreasing, and a segment that would collapse (a model predicting past the
window's end) joins the one before it; a window whose tokens carry no usable times is one segment spanning the window
(its times then come from the VAD).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from core.errors import ConfigurationError
from pipelines.chunk.audio import AudioChunker, AudioWindow
from pipelines.embed.runtime import torch_runtime
from pipelines.extract.audio import TARGET_RATE

logger = logging.getLogger(__name__)

#: Seconds per timestamp token (Whisper: 20 ms).
TIME_PRECISION = 0.02
#: Segments shorter than this (seconds) after clamping join the previous segment of their window.
MIN_SEGMENT_S = 0.05


@dataclasses.dataclass(frozen=True)
class TranscriptSegment:
    """A stretch of transcript.

    Attributes:
        text: the words, stripped. start_s, end_s: seconds from the start of the file (``start_s < end_s``).
        window_index: the :class:`AudioWindow` it came from. language: ISO 639-1 code, or ``""`` (English-only model).
        no_speech_prob: the window's no-speech probability. avg_logprob: the window's mean token log-probability.
    """

    text: str
    start_s: float
    end_s: float
    window_index: int
    language: str = ""
    no_speech_prob: float = 0.0
    avg_logprob: float = 0.0


@dataclasses.dataclass(frozen=True)
class AudioChunk:
    """What the pipeline embeds and indexes for audio: one transcript segment.

    Attributes:
        chunk_index: 0-based, in time order. text: the transcript. start_s, end_s: seconds from the start of the
        file. modality: always ``"audio"``. language: as in :class:`TranscriptSegment`.
    """

    chunk_index: int
    text: str
    start_s: float
    end_s: float
    modality: str = "audio"
    language: str = ""


def parse_timestamped(tokens: Sequence[int], *, eos_id: int, timestamp_begin: int,
                      precision: float = TIME_PRECISION) -> list[tuple[float | None, float | None, list[int]]]:
    """Split generated token ids into segments at timestamp tokens.

    Args:
        tokens: the generated ids (a prompt of special tokens, if present, is skipped); decoding stops at ``eos_id``.
        eos_id: ``<|endoftext|>``; ids below it are text. timestamp_begin: the id of ``<|0.00|>``.
        precision: seconds per timestamp step.

    Returns:
        ``(start, end, text_ids)`` per segment, times in seconds relative to the window; ``None`` where the model gave
        no timestamp (text before the first one, or after the last).
    """
    segments: list[tuple[float | None, float | None, list[int]]] = []
    start: float | None = None
    text: list[int] = []
    for token in tokens:
        token = int(token)
        if token == eos_id:
            break
        if token >= timestamp_begin:
            time = (token - timestamp_begin) * precision
            if text:
                segments.append((start, time, text))
                text, start = [], None
            else:
                start = time
        elif token < eos_id:
            text.append(token)
    if text:
        segments.append((start, None, text))
    return segments


def is_silence(no_speech_prob: float, avg_logprob: float, *, no_speech_threshold: float = 0.6,
               logprob_threshold: float = -1.0) -> bool:
    """OpenAI Whisper's silence rule: likely no speech, and the decoded text is not confident either."""
    return no_speech_prob > no_speech_threshold and avg_logprob < logprob_threshold


def segments_to_chunks(segments: Sequence[TranscriptSegment]) -> list[AudioChunk]:
    """Number the segments into audio chunks, in time order (text, times and language kept)."""
    ordered = sorted(segments, key=lambda s: (s.start_s, s.end_s))
    return [AudioChunk(i, s.text, s.start_s, s.end_s, language=s.language) for i, s in enumerate(ordered)]


class Transcriber:
    """Whisper-family transcription of speech windows, with timestamps.

    Construction is light; :meth:`warm_up` (idempotent, called on first use) loads the model. Not thread-safe: one
    per process or Ray actor.

    Args:
        model: a spec for :func:`pipelines.asr_models.resolve_asr_model` (``settings.asr_model``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``; ``None`` picks CUDA when available. fp16 on CUDA, fp32 on CPU.
        batch_size: windows per forward pass; ``None``: 16 on CUDA, 4 on CPU.
        language: an ISO 639-1 code to force (``"en"``), or ``None`` to detect it per window.
        max_new_tokens: tokens generated per window at most; ``None``: the model's limit (448 less the prompt).
        no_speech_threshold, logprob_threshold: see :func:`is_silence`.
        num_threads: torch intra-op threads on CPU; ``None`` leaves torch's setting.
        chunker: the VAD and windowing used by :meth:`transcribe` (default :class:`AudioChunker`).
        cache_dir: where packaged models are converted to (see :mod:`pipelines.asr_models`).
    """

    def __init__(self, model: str, *, device: str | None = None, batch_size: int | None = None,
                 language: str | None = None, max_new_tokens: int | None = None, no_speech_threshold: float = 0.6,
                 logprob_threshold: float = -1.0, num_threads: int | None = None, chunker: AudioChunker | None = None,
                 cache_dir: str | None = None) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        if not model:
            raise ConfigurationError("no ASR model configured: set SLUICE_ASR_MODEL")
        self.model_spec = model
        self.device = device
        self.batch_size = batch_size
        self.language = language
        self.max_new_tokens = max_new_tokens
        self.no_speech_threshold = no_speech_threshold
        self.logprob_threshold = logprob_threshold
        self.num_threads = num_threads
        self.chunker = chunker
        self.cache_dir = cache_dir
        self._model = None

    def warm_up(self) -> None:
        """Load the feature extractor, tokenizer and model once, and the VAD.

        Raises:
            ConfigurationError: the model is not available offline or is not a Whisper-family model.
        """
        if self._model is not None:
            return
        from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer

        from pipelines.asr_models import resolve_asr_model

        self.device, self._dtype = torch_runtime(self.device, self.num_threads)
        self.batch_size = self.batch_size or (16 if self.device.startswith("cuda") else 4)
        path = resolve_asr_model(self.model_spec, self.cache_dir)
        try:
            self._features = WhisperFeatureExtractor.from_pretrained(path, local_files_only=True)
            self._tokenizer = WhisperTokenizer.from_pretrained(path, local_files_only=True)
            model = WhisperForConditionalGeneration.from_pretrained(path, local_files_only=True, dtype=self._dtype)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"ASR model {self.model_spec!r} is not available offline at {path!r}: {exc}") from exc
        gen = model.generation_config
        if getattr(gen, "no_timestamps_token_id", None) is None:
            raise ConfigurationError(f"ASR model {self.model_spec!r} has no Whisper generation config (no timestamps)")
        self._eos = int(gen.eos_token_id if not isinstance(gen.eos_token_id, list) else gen.eos_token_id[0])
        self._sot = int(gen.decoder_start_token_id)
        self._timestamp_begin = int(gen.no_timestamps_token_id) + 1
        self._no_speech_id = int(gen.no_timestamps_token_id) - 1  # <|nospeech|> (<|nocaptions|> in older vocabularies)
        self._multilingual = bool(getattr(gen, "is_multilingual", False)) and bool(getattr(gen, "lang_to_id", None))
        self._lang_ids = dict(getattr(gen, "lang_to_id", None) or {})
        self._task_id = (getattr(gen, "task_to_id", None) or {}).get("transcribe")
        self._model = model.to(self.device).eval()
        self.chunker = self.chunker or AudioChunker()
        self.chunker.detector.warm_up()
        logger.info("loaded ASR model %s on %s (%s)", self.model_spec, self.device, self._dtype)

    def transcribe(self, samples: np.ndarray) -> list[TranscriptSegment]:
        """Find speech in a whole file and transcribe it.

        Args:
            samples: ``float32``, shape ``(n,)``, 16 kHz mono.

        Returns:
            Segments in time order; ``[]`` when the VAD finds no speech or the model deems every window silent.
        """
        self.warm_up()
        return self.transcribe_windows(self.chunker.windows(samples))

    def transcribe_windows(self, windows: Sequence[AudioWindow]) -> list[TranscriptSegment]:
        """Transcribe windows of at most 30 s (batched); segments in the order of the windows."""
        self.warm_up()
        out: list[TranscriptSegment] = []
        for start in range(0, len(windows), self.batch_size):
            out.extend(self._batch(list(windows[start : start + self.batch_size])))
        return out

    def _prompt(self, language: str) -> list[int]:
        if not self._multilingual:
            return [self._sot]
        prompt = [self._sot, self._lang_ids[f"<|{language}|>"]]
        return prompt + ([self._task_id] if self._task_id is not None else [])

    def _batch(self, windows: list[AudioWindow]) -> list[TranscriptSegment]:
        import torch
        from transformers.modeling_outputs import BaseModelOutput

        model = self._model
        features = self._features([w.samples for w in windows], sampling_rate=TARGET_RATE, return_tensors="pt")
        inputs = features["input_features"].to(self.device, dtype=self._dtype)
        with torch.inference_mode():
            encoded = model.model.encoder(inputs).last_hidden_state
            no_speech, languages = self._first_step(encoded)
            kwargs = {"return_timestamps": True}
            if self._multilingual:
                kwargs.update(language=languages, task="transcribe")
            if self.max_new_tokens:
                kwargs["max_new_tokens"] = self.max_new_tokens
            generated = model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=encoded), **kwargs)
            if isinstance(generated, dict):
                generated = generated["sequences"]
            tokens = [self._strip(row.tolist()) for row in generated]
            logprobs = self._avg_logprobs(encoded, [self._prompt(lang) for lang in languages], tokens)
        out: list[TranscriptSegment] = []
        for window, ids, lang, p_none, logprob in zip(windows, tokens, languages, no_speech, logprobs):
            if is_silence(p_none, logprob, no_speech_threshold=self.no_speech_threshold,
                          logprob_threshold=self.logprob_threshold):
                logger.debug("window %d (%.2f-%.2f s) is silent: p(no speech)=%.2f, avg logprob=%.2f",
                             window.index, window.start_s, window.end_s, p_none, logprob)
                continue
            out.extend(self._segments(window, ids, lang if self._multilingual else "", p_none, logprob))
        return out

    def _first_step(self, encoded) -> tuple[list[float], list[str]]:
        """No-speech probability and language of each window, from the decoder's step on ``<|startoftranscript|>``."""
        import torch

        start = torch.full((encoded.shape[0], 1), self._sot, dtype=torch.long, device=encoded.device)
        logits = self._model(encoder_outputs=(encoded,), decoder_input_ids=start).logits[:, 0].float()
        no_speech = logits.softmax(dim=-1)[:, self._no_speech_id].tolist()
        if not self._multilingual:
            return no_speech, [""] * len(no_speech)
        if self.language:
            return no_speech, [self.language] * len(no_speech)
        names = list(self._lang_ids)
        ids = torch.tensor([self._lang_ids[n] for n in names], device=logits.device)
        best = logits[:, ids].argmax(dim=-1).tolist()
        return no_speech, [names[i][2:-2] for i in best]

    def _strip(self, row: list[int]) -> list[int]:
        """Drop a leading prompt (special tokens between ``<|endoftext|>`` and ``<|0.00|>``) and what follows EOS."""
        i = 0
        while i < len(row) and self._eos < row[i] < self._timestamp_begin:
            i += 1
        row = row[i:]
        return row[: row.index(self._eos) + 1] if self._eos in row else row

    def _avg_logprobs(self, encoded, prompts: list[list[int]], tokens: list[list[int]]) -> list[float]:
        """Mean log-probability of each window's generated tokens under the model (teacher-forced, one pass)."""
        import torch

        rows = [p + t for p, t in zip(prompts, tokens)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self._eos, dtype=torch.long, device=encoded.device)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        logprobs = self._model(encoder_outputs=(encoded,), decoder_input_ids=ids).logits.float().log_softmax(-1)
        out = []
        for i, (prompt, toks) in enumerate(zip(prompts, tokens)):
            if not toks:
                out.append(0.0)
                continue
            positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(toks), device=logprobs.device)
            target = torch.tensor(toks, dtype=torch.long, device=logprobs.device)
            out.append(float(logprobs[i, positions, target].mean()))
        return out

    def _segments(self, window: AudioWindow, ids: list[int], language: str, p_none: float,
                  logprob: float) -> list[TranscriptSegment]:
        """Turn one window's tokens into segments with absolute, non-decreasing times inside the window."""
        duration = window.duration_s
        pieces: list[list] = []  # [start, end, text ids], relative seconds
        for start, end, text_ids in parse_timestamped(ids, eos_id=self._eos, timestamp_begin=self._timestamp_begin):
            floor = pieces[-1][1] if pieces else 0.0
            start = min(max(floor, start if start is not None else floor), duration)
            end = min(max(start, end if end is not None else duration), duration)
            if end - start < MIN_SEGMENT_S:
                if pieces:
                    pieces[-1][2] = pieces[-1][2] + text_ids
                    continue
                start, end = 0.0, duration
            pieces.append([start, end, text_ids])
        out = []
        for start, end, text_ids in pieces:
            text = self._tokenizer.decode(text_ids, skip_special_tokens=True).strip()
            if text:
                out.append(TranscriptSegment(text, round(window.start_s + start, 3), round(window.start_s + end, 3),
                                             window.index, language, float(p_none), float(logprob)))
        return out
