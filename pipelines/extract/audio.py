"""Audio: decode a file's bytes into 16 kHz mono ``float32`` samples, the input of the VAD and of Whisper.

Input: the raw bytes of one audio file. Output: an :class:`Audio` (``samples``: ``float32``, shape ``(n,)``, values
in ``[-1, 1]``, 16,000 samples a second, one channel).

Decoders: WAV, FLAC, OGG (Vorbis, Opus), AIFF and the other containers of libsndfile go through soundfile; MP3 and
anything else (AAC, M4A, WebM, a WAV holding a codec libsndfile lacks) through PyAV (FFmpeg). Channels are averaged
into one; the rate is converted with a polyphase FIR filter (``scipy.signal.resample_poly``, a Kaiser-windowed
anti-aliasing low-pass), so ``n == ceil(source_frames * 16000 / source_rate)``.

Every failure is an :class:`core.errors.ExtractionError` with one of these reason codes:

==================  ===============================================================================================
``audio_empty``     0 bytes, or a file that decodes to 0 samples
``audio_corrupt``   neither decoder can open it, or the decoder rejects one of its frames (an MP3 with a corrupt
                    frame fails whole: see below)
``audio_too_long``  longer than ``max_seconds`` (checked from the header first, then while decoding)
==================  ===============================================================================================

Corrupt frames: FFmpeg skips a frame it cannot decode and goes on, which would leave a silent hole in the transcript
while the timestamps after it still look right. We fail the file instead (``audio_corrupt``, the detail names the
first bad packet and its time), so the operator sees it in ``dead_letters`` and can re-encode the file. A file that
is merely cut short (truncated after a whole frame) is not corrupt to the decoder: what is there is decoded.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math

import numpy as np

from core.errors import ExtractionError

logger = logging.getLogger(__name__)

#: The sample rate of every :class:`Audio` (Whisper's feature extractor and Silero VAD both take 16 kHz).
TARGET_RATE = 16_000
#: Default longest audio accepted, in seconds (2 hours: 115 M samples, 460 MB of ``float32`` at 16 kHz).
MAX_AUDIO_SECONDS = 2 * 3600.0

#: Magic numbers of the containers libsndfile reads (RIFF/WAVE, RF64, FLAC, Ogg, AIFF, Sun .au, CAF).
_SOUNDFILE_MAGIC = (b"RIFF", b"RF64", b"fLaC", b"OggS", b"FORM", b".snd", b"caff")


@dataclasses.dataclass(frozen=True)
class Audio:
    """Decoded audio, resampled to 16 kHz mono.

    Attributes:
        samples: ``float32``, shape ``(n,)``, in ``[-1, 1]`` (not clipped: a decoder may overshoot slightly).
        sample_rate: always :data:`TARGET_RATE` (Hz).
        source_rate: the file's own sample rate (Hz). source_channels: its channel count.
        decoder: ``"soundfile"`` or ``"pyav"``; codec: the codec or subtype name the decoder reported.
    """

    samples: np.ndarray
    sample_rate: int = TARGET_RATE
    source_rate: int = TARGET_RATE
    source_channels: int = 1
    decoder: str = ""
    codec: str = ""

    @property
    def duration_s(self) -> float:
        """The duration in seconds (``len(samples) / sample_rate``)."""
        return len(self.samples) / self.sample_rate


def to_mono_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """Average channels and resample to :data:`TARGET_RATE`.

    Args:
        samples: ``(frames,)`` or ``(frames, channels)``, any float or integer dtype (integers are not rescaled:
            pass floats in ``[-1, 1]``).
        rate: their sample rate in Hz (positive).

    Returns:
        ``float32``, shape ``(ceil(frames * 16000 / rate),)``.
    """
    from scipy.signal import resample_poly

    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32)
    if rate == TARGET_RATE or x.size == 0:
        return np.ascontiguousarray(x, dtype=np.float32)
    g = math.gcd(int(rate), TARGET_RATE)
    return resample_poly(x, TARGET_RATE // g, int(rate) // g).astype(np.float32, copy=False)


class AudioExtractor:
    """Decode audio bytes into an :class:`Audio`.

    Stateless and cheap to build; safe to share between threads (each call opens its own decoder).

    Args:
        max_seconds: the longest audio accepted (seconds of the source).
    """

    def __init__(self, *, max_seconds: float = MAX_AUDIO_SECONDS) -> None:
        if max_seconds <= 0:
            raise ValueError(f"max_seconds={max_seconds} must be positive")
        self.max_seconds = float(max_seconds)

    def extract(self, data: bytes, path: str) -> Audio:
        """Decode a file.

        Args:
            data: the file's bytes.
            path: the document's relative path (used in error details only).

        Returns:
            The audio at 16 kHz mono.

        Raises:
            ExtractionError: ``audio_empty``, ``audio_corrupt`` or ``audio_too_long`` (see the module docstring).
        """
        if not data:
            raise ExtractionError("audio_empty", f"{path} has 0 bytes")
        audio = None
        if data[:4] in _SOUNDFILE_MAGIC:
            audio = self._soundfile(data, path)
        if audio is None:
            audio = self._pyav(data, path)
        if audio.samples.size == 0:
            raise ExtractionError("audio_empty", f"{path} decodes to 0 samples")
        return audio

    def _too_long(self, path: str, seconds: float) -> ExtractionError:
        return ExtractionError(
            "audio_too_long", f"{path} lasts {seconds:.0f} s or more, over the limit of {self.max_seconds:.0f} s"
        )

    def _soundfile(self, data: bytes, path: str) -> Audio | None:
        """Decode with libsndfile; ``None`` when it cannot open the bytes (PyAV is tried next)."""
        import soundfile as sf

        try:
            with sf.SoundFile(io.BytesIO(data)) as f:
                rate, channels, frames, subtype = f.samplerate, f.channels, f.frames, f.subtype
                if rate <= 0:
                    return None
                if frames / rate > self.max_seconds:
                    raise self._too_long(path, frames / rate)
                samples = f.read(dtype="float32", always_2d=True)
        except ExtractionError:
            raise
        except Exception as exc:  # soundfile.LibsndfileError (a RuntimeError), or a malformed header
            logger.debug("soundfile cannot read %s (%s); trying PyAV", path, exc)
            return None
        return Audio(to_mono_16k(samples, rate), source_rate=rate, source_channels=channels,
                     decoder="soundfile", codec=str(subtype))

    def _pyav(self, data: bytes, path: str) -> Audio:
        """Decode with FFmpeg through PyAV, packet by packet, failing on the first frame the decoder rejects."""
        import av

        try:
            container = av.open(io.BytesIO(data), mode="r")
        except av.error.FFmpegError as exc:
            raise ExtractionError("audio_corrupt", f"{path} is not audio FFmpeg can open: {exc}") from exc
        with container:
            if not container.streams.audio:
                raise ExtractionError("audio_corrupt", f"{path} has no audio stream")
            stream = container.streams.audio[0]
            rate = int(stream.codec_context.sample_rate or stream.rate or 0)
            channels = int(stream.codec_context.channels or 0)
            if stream.duration is not None and stream.time_base is not None:
                if float(stream.duration * stream.time_base) > self.max_seconds:
                    raise self._too_long(path, float(stream.duration * stream.time_base))
            # The resampler converts each decoded frame to mono float at 16 kHz as it comes, so memory follows the
            # output, not the source (a 48 kHz stereo file would be 6 times larger).
            resampler = av.AudioResampler(format="flt", layout="mono", rate=TARGET_RATE)
            pieces: list[np.ndarray] = []
            total = 0
            limit = int(self.max_seconds * TARGET_RATE) + TARGET_RATE
            try:
                for index, packet in enumerate(container.demux(stream)):
                    try:
                        frames = packet.decode()
                    except av.error.FFmpegError as exc:
                        where = ""
                        if packet.pts is not None and packet.time_base:
                            where = f" at {float(packet.pts * packet.time_base):.2f} s"
                        raise ExtractionError(
                            "audio_corrupt", f"{path}: packet {index}{where} cannot be decoded: {exc}"
                        ) from exc
                    for frame in frames:
                        rate = rate or int(frame.sample_rate)
                        for out in resampler.resample(frame):
                            piece = out.to_ndarray().reshape(-1)
                            pieces.append(piece)
                            total += piece.size
                    if total > limit:
                        raise self._too_long(path, total / TARGET_RATE)
                for out in resampler.resample(None):
                    pieces.append(out.to_ndarray().reshape(-1))
            except av.error.FFmpegError as exc:  # the demuxer itself gave up (not a decoder error)
                raise ExtractionError("audio_corrupt", f"{path} cannot be demuxed: {exc}") from exc
            codec = stream.codec_context.name or ""
        samples = np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0, np.float32)
        return Audio(samples, source_rate=rate, source_channels=channels, decoder="pyav", codec=codec)


def decode_audio(data: bytes, path: str = "<audio>", *, max_seconds: float = MAX_AUDIO_SECONDS) -> Audio:
    """Decode audio bytes to 16 kHz mono; shorthand for ``AudioExtractor(max_seconds=...).extract(data, path)``."""
    return AudioExtractor(max_seconds=max_seconds).extract(data, path)
