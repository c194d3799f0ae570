"""Cut 16 kHz mono audio into windows of speech, at silences, each at most 30 s (Whisper's input length).

Input: ``float32`` samples, shape ``(n,)``, 16 kHz (an :class:`pipelines.extract.audio.Audio`). Output: a list of
:class:`AudioWindow` (``start_s``/``end_s`` in seconds from the start of the file, and the window's samples), in
time order, not overlapping. Audio without speech gives no window, so nothing is transcribed and no text invented.

Two steps:

1. **Where is speech** (:class:`SpeechDetector`). Silero VAD (``silero-vad`` on PyPI, MIT; the model ships in the
   wheel, so it runs offline): a small network scoring 32 ms frames, trained to tell speech from music and noise, so a
   plucked string or a door slam gives no region, which an energy threshold cannot do. Without the package, or with
   ``backend="energy"``, an energy detector (:func:`energy_regions`) is used: it finds sounds, not speech, so the
   transcriber's no-speech probability is then the only guard against transcribing a noise.
2. **Windows** (:func:`cut_windows`). Consecutive speech regions are packed into one window while the window stays
   within ``max_window_s`` and the pause between them is at most ``max_gap_s``; a single region longer than
   ``max_window_s`` is cut at its quietest 20 ms frame in the second half of the allowed span (a pause between words).

Sources: Silero Team, "Silero VAD" (https://github.com/snakers4/silero-vad); Whisper's 30 s input window: Radford et
al. 2022, "Robust Speech Recognition via Large-Scale Weak Supervision", section 2.2.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from pipelines.extract.audio import TARGET_RATE

logger = logging.getLogger(__name__)

#: Whisper's encoder sees 30 s of audio; a window never exceeds it.
MAX_WINDOW_S = 30.0
#: Pauses longer than this start a new window (a long silence inside a window invites Whisper to hallucinate).
MAX_GAP_S = 2.0
#: Frame of the energy measurements (seconds).
FRAME_S = 0.02


@dataclasses.dataclass(frozen=True)
class SpeechRegion:
    """A stretch of speech: ``start_s`` < ``end_s``, seconds from the start of the audio."""

    start_s: float
    end_s: float


@dataclasses.dataclass(frozen=True)
class AudioWindow:
    """A piece of the audio to transcribe in one pass.

    Attributes:
        index: 0-based position among the file's windows.
        start_s, end_s: where it lies in the file (seconds; ``end_s - start_s <= MAX_WINDOW_S``).
        samples: ``float32``, shape ``(round((end_s - start_s) * 16000),)``, a view of the file's samples.
        regions: the speech regions inside it, in seconds from the start of the file.
    """

    index: int
    start_s: float
    end_s: float
    samples: np.ndarray
    regions: tuple[SpeechRegion, ...] = ()

    @property
    def duration_s(self) -> float:
        """``end_s - start_s``."""
        return self.end_s - self.start_s


class SpeechDetector:
    """Find speech in 16 kHz mono audio with Silero VAD, or with an energy threshold.

    The Silero model loads on first use (about 2 MB, from the ``silero-vad`` wheel, no download); it keeps state
    between frames, so one detector must not be shared between threads.

    Args:
        backend: ``"silero"``, ``"energy"``, or ``"auto"`` (Silero when the package is installed, else energy).
        threshold: Silero's speech probability above which a frame is speech (its default, 0.5).
        min_speech_s: shorter speech is dropped. min_silence_s: shorter pauses do not end a region.
        pad_s: seconds added on each side of a region (so word onsets and endings are not clipped).
    """

    def __init__(self, backend: str = "auto", *, threshold: float = 0.5, min_speech_s: float = 0.25,
                 min_silence_s: float = 0.1, pad_s: float = 0.03) -> None:
        if backend not in ("auto", "silero", "energy"):
            raise ValueError(f"backend={backend!r}: use 'auto', 'silero' or 'energy'")
        if backend == "auto":
            backend = "silero" if _silero_installed() else "energy"
            if backend == "energy":
                logger.warning("silero-vad is not installed: using the energy detector, which does not tell speech "
                               "from other sounds")
        self.backend = backend
        self.threshold = threshold
        self.min_speech_s = min_speech_s
        self.min_silence_s = min_silence_s
        self.pad_s = pad_s
        self._model = None

    def warm_up(self) -> None:
        """Load the Silero model once (idempotent; nothing to load for the energy backend).

        Raises:
            core.errors.ConfigurationError: ``backend="silero"`` and the package is missing.
        """
        if self.backend != "silero" or self._model is not None:
            return
        import torch

        from core.errors import ConfigurationError

        threads = torch.get_num_threads()
        try:
            # Importing silero_vad.model calls torch.set_num_threads(1) for the whole process: undo that.
            from silero_vad import load_silero_vad
        except ImportError as exc:
            raise ConfigurationError("the Silero VAD needs the package 'silero-vad': pip install it") from exc
        finally:
            torch.set_num_threads(threads)
        self._model = load_silero_vad(onnx=False)

    def regions(self, samples: np.ndarray) -> list[SpeechRegion]:
        """The speech regions of the audio, in time order, not overlapping.

        Args:
            samples: ``float32``, shape ``(n,)``, 16 kHz.

        Returns:
            Regions in seconds; ``[]`` for silence, noise or music (Silero), or silence (energy).
        """
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        if samples.size < int(0.032 * TARGET_RATE):
            return []
        if self.backend == "energy":
            return energy_regions(samples, min_speech_s=self.min_speech_s, min_silence_s=self.min_silence_s,
                                  pad_s=self.pad_s)
        self.warm_up()  # first: it imports silero_vad without losing torch's thread count
        import torch
        from silero_vad import get_speech_timestamps

        stamps = get_speech_timestamps(
            torch.from_numpy(samples), self._model, threshold=self.threshold, sampling_rate=TARGET_RATE,
            min_speech_duration_ms=int(self.min_speech_s * 1000), min_silence_duration_ms=int(self.min_silence_s * 1000),
            speech_pad_ms=int(self.pad_s * 1000), return_seconds=False,
        )
        return [SpeechRegion(s["start"] / TARGET_RATE, s["end"] / TARGET_RATE) for s in stamps if s["end"] > s["start"]]


def _silero_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("silero_vad") is not None


def frame_energy_db(samples: np.ndarray, frame_s: float = FRAME_S) -> np.ndarray:
    """RMS level of consecutive frames, in dB relative to full scale.

    Args:
        samples: ``float32``, shape ``(n,)``, 16 kHz.
        frame_s: frame length in seconds (frames do not overlap; a last partial frame is dropped).

    Returns:
        ``float32``, shape ``(n // frame,)``; silence (all zeros) is -120 dB.
    """
    frame = max(1, int(round(frame_s * TARGET_RATE)))
    count = samples.size // frame
    if count == 0:
        return np.zeros(0, dtype=np.float32)
    frames = samples[: count * frame].reshape(count, frame).astype(np.float64)
    rms = np.sqrt(np.mean(frames * frames, axis=1))
    return (20.0 * np.log10(np.maximum(rms, 1e-6))).astype(np.float32)


def energy_regions(samples: np.ndarray, *, min_speech_s: float = 0.25, min_silence_s: float = 0.1, pad_s: float = 0.03,
                   floor_db: float = -50.0, above_noise_db: float = 12.0) -> list[SpeechRegion]:
    """Regions louder than the noise floor: a fallback detector that finds sounds, not speech.

    A frame is active when its level is above both ``floor_db`` (dBFS) and the recording's noise floor (its 10th
    percentile frame level) plus ``above_noise_db``. Active runs separated by less than ``min_silence_s`` are
    joined; runs shorter than ``min_speech_s`` are dropped; each is padded by ``pad_s`` on both sides.

    Args:
        samples: ``float32``, shape ``(n,)``, 16 kHz.

    Returns:
        Regions in seconds, in time order.
    """
    levels = frame_energy_db(samples)
    if levels.size == 0:
        return []
    threshold = max(floor_db, float(np.percentile(levels, 10)) + above_noise_db)
    active = levels > threshold
    runs: list[list[float]] = []
    for i in np.flatnonzero(active):
        start, end = i * FRAME_S, (i + 1) * FRAME_S
        if runs and start - runs[-1][1] < min_silence_s:
            runs[-1][1] = end
        else:
            runs.append([start, end])
    total = samples.size / TARGET_RATE
    out = []
    for start, end in runs:
        if end - start >= min_speech_s:
            out.append(SpeechRegion(max(0.0, start - pad_s), min(total, end + pad_s)))
    return _merge_overlaps(out)


def _merge_overlaps(regions: list[SpeechRegion]) -> list[SpeechRegion]:
    merged: list[SpeechRegion] = []
    for region in sorted(regions, key=lambda r: r.start_s):
        if merged and region.start_s <= merged[-1].end_s:
            merged[-1] = SpeechRegion(merged[-1].start_s, max(merged[-1].end_s, region.end_s))
        else:
            merged.append(region)
    return merged


def _split_long(samples: np.ndarray, region: SpeechRegion, max_window_s: float) -> list[SpeechRegion]:
    """Cut a region longer than ``max_window_s`` at its quietest frames (pauses between words)."""
    pieces = []
    start = region.start_s
    while region.end_s - start > max_window_s:
        low = int((start + max_window_s / 2) * TARGET_RATE)
        high = int((start + max_window_s) * TARGET_RATE)
        levels = frame_energy_db(samples[low:high])
        cut = start + max_window_s if levels.size == 0 else (low / TARGET_RATE + (int(np.argmin(levels)) + 0.5) * FRAME_S)
        cut = min(cut, start + max_window_s)
        pieces.append(SpeechRegion(start, cut))
        start = cut
    pieces.append(SpeechRegion(start, region.end_s))
    return pieces


def cut_windows(samples: np.ndarray, regions: list[SpeechRegion], *, max_window_s: float = MAX_WINDOW_S,
                max_gap_s: float = MAX_GAP_S) -> list[AudioWindow]:
    """Pack speech regions into windows of at most ``max_window_s`` seconds.

    Args:
        samples: ``float32``, shape ``(n,)``, 16 kHz: the whole file.
        regions: its speech regions (seconds, in time order; see :class:`SpeechDetector`).
        max_window_s: the longest window (at most 30 s for Whisper). max_gap_s: a longer pause starts a new window.

    Returns:
        Windows in time order, not overlapping, each spanning from its first region's start to its last region's
        end; ``[]`` when there are no regions.

    Raises:
        ValueError: ``max_window_s`` is not positive.
    """
    if max_window_s <= 0:
        raise ValueError(f"max_window_s={max_window_s} must be positive")
    total = samples.size / TARGET_RATE
    pieces: list[SpeechRegion] = []
    for region in _merge_overlaps(list(regions)):
        region = SpeechRegion(max(0.0, region.start_s), min(total, region.end_s))
        if region.end_s > region.start_s:
            pieces.extend(_split_long(samples, region, max_window_s))
    groups: list[list[SpeechRegion]] = []
    for piece in pieces:
        if groups:
            first, last = groups[-1][0], groups[-1][-1]
            if piece.end_s - first.start_s <= max_window_s and piece.start_s - last.end_s <= max_gap_s:
                groups[-1].append(piece)
                continue
        groups.append([piece])
    windows = []
    for group in groups:
        lo = int(round(group[0].start_s * TARGET_RATE))
        hi = int(round(group[-1].end_s * TARGET_RATE))
        windows.append(AudioWindow(len(windows), lo / TARGET_RATE, hi / TARGET_RATE, samples[lo:hi], tuple(group)))
    return windows


class AudioChunker:
    """Speech detection and windowing in one call: :meth:`windows`.

    Args:
        detector: a :class:`SpeechDetector` (default: Silero when installed).
        max_window_s, max_gap_s: see :func:`cut_windows`.
    """

    def __init__(self, detector: SpeechDetector | None = None, *, max_window_s: float = MAX_WINDOW_S,
                 max_gap_s: float = MAX_GAP_S) -> None:
        self.detector = detector or SpeechDetector()
        self.max_window_s = max_window_s
        self.max_gap_s = max_gap_s

    def windows(self, samples: np.ndarray) -> list[AudioWindow]:
        """The speech windows of 16 kHz mono ``float32`` samples (``[]`` when there is no speech)."""
        regions = self.detector.regions(samples)
        return cut_windows(samples, regions, max_window_s=self.max_window_s, max_gap_s=self.max_gap_s)
