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
``audio_corrupt``   neither decoder can open it, the decoder rejects one of its frames (an MP3 with a corrupt
                    frame fails whole: see below), or it declares a sample rate outside 1 kHz to 384 kHz
``audio_too_long``  longer than ``max_seconds`` (checked from the header first, then while decoding)
``audio_too_large`` more than ``max_decoded_bytes`` of ``float32`` at the file's own rate and channel count
                    (frames x channels x 4; checked from the header first, then while decoding)
``timeout``         the ``deadline`` passed (checked between decoded blocks)
==================  ===============================================================================================

Bounded work: a few MB of compressed multi-channel, high-rate silence (FLAC codes silence in a few bytes a frame)
can claim hours at 192 kHz on 8 channels, tens of GB once decoded. So the decoded size is computed from the header
(frames, channels) and refused before anything is decoded; then the file is decoded in blocks of at most
``BLOCK_BYTES`` (libsndfile) or frame by frame (FFmpeg), each block downmixed to mono and resampled to 16 kHz as it
comes (:class:`StreamResampler`), so peak memory follows the 16 kHz mono output, not the source's channels and rate.
The decoded bytes are counted as they come too, so a header that lies (claims fewer frames, or none) still stops at
the cap. A FLAC or Ogg stream whose header gives no length (libsndfile reports ``SF_COUNT_MAX`` frames) goes to
FFmpeg, which decodes it frame by frame under the same counts.

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
from pipelines.extract.base import check_deadline

logger = logging.getLogger(__name__)

#: The sample rate of every :class:`Audio` (Whisper's feature extractor and Silero VAD both take 16 kHz).
TARGET_RATE = 16_000
#: Default longest audio accepted, in seconds (2 hours: 115 M samples, 460 MB of ``float32`` at 16 kHz).
MAX_AUDIO_SECONDS = 2 * 3600.0
#: Default most bytes a file may decode to at its own rate and channels (``Settings.max_audio_decoded_bytes``).
MAX_DECODED_BYTES = 4 * 1024**3
#: libsndfile decodes this many bytes of ``float32`` (all channels) at a time: 4 MiB, about 11 s of 48 kHz stereo.
BLOCK_BYTES = 4 * 1024**2
#: The sample rates accepted, in Hz: telephone audio (8 kHz) to DXD (384 kHz) with room on both sides. A file that
#: declares a rate outside is refused (``audio_corrupt``) before decoding: no recording has one, and converting
#: one to 16 kHz is a work bomb (at 1 Hz, each input sample needs a filter of 320,000 taps).
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 384_000
#: The fewest input samples :class:`StreamResampler` resamples at once: the filter it designs for each block costs
#: as much as ``10 * max(up, down)`` samples, which for a rate sharing no factor with 16,000 (44,099 Hz:
#: ``up=16000, down=44099``) is ten times the block of a second; a block of 2 M samples (8 MiB) pays for it.
RESAMPLE_BLOCK_SAMPLES = 2**21
#: What libsndfile reports as the frame count of a stream whose header does not give it.
_UNKNOWN_FRAMES = 2**63 - 1

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


class StreamResampler:
    """Resample mono blocks to :data:`TARGET_RATE` as they come, giving what :func:`to_mono_16k` gives on the whole.

    ``resample_poly`` filters with a finite window: output sample ``m`` depends only on the input within
    ``half_len / up`` samples of ``m * down / up``. So the input is cut at multiples of ``down`` (where an output
    sample falls exactly on an input one), each block is resampled with ``pad`` real samples of context on both sides,
    and only the block's own outputs are kept; the result equals ``resample_poly`` of the whole signal (up to float
    rounding) while holding one block and its context, never the whole source.

    Args:
        rate: the input's sample rate in Hz (positive).
        block_samples: the fewest input samples resampled at once (rounded up to a multiple of ``down``; at least a
            second of input).
    """

    def __init__(self, rate: int, block_samples: int = RESAMPLE_BLOCK_SAMPLES) -> None:
        g = math.gcd(int(rate), TARGET_RATE)
        self.up, self.down = TARGET_RATE // g, int(rate) // g
        self.passthrough = int(rate) == TARGET_RATE
        half_len = 10 * max(self.up, self.down)  # resample_poly's filter half length, in upsampled samples
        pad = -(-half_len // self.up) + 2
        self.pad = -(-pad // self.down) * self.down
        # A multiple of ``down`` of at least block_samples (by default about 44 s at 48 kHz)
        self.block = max(1, -(-max(int(rate), int(block_samples)) // self.down)) * self.down
        self._buffer = np.zeros(0, np.float32)
        self._buffer_start = 0  # absolute index of _buffer[0]
        self._next = 0  # first input sample whose outputs are not emitted yet (a multiple of ``down``)
        self._total = 0

    def push(self, mono: np.ndarray) -> list[np.ndarray]:
        """Add input samples; return the output blocks that are now complete (maybe none)."""
        x = np.asarray(mono, dtype=np.float32).reshape(-1)
        if self.passthrough:
            return [x.copy()] if x.size else []
        self._buffer = np.concatenate([self._buffer, x]) if self._buffer.size else x.copy()
        self._total += x.size
        out = []
        while self._next + self.block + self.pad <= self._total:
            out.append(self._emit(self._next, self._next + self.block, final=False))
            self._next += self.block
            keep = max(0, self._next - self.pad)
            if keep > self._buffer_start:
                self._buffer = self._buffer[keep - self._buffer_start :].copy()
                self._buffer_start = keep
        return out

    def finish(self) -> list[np.ndarray]:
        """The last output samples (call once, after the last :meth:`push`)."""
        if self.passthrough or self._next >= self._total:
            return []
        out = [self._emit(self._next, self._total, final=True)]
        self._next = self._total
        return out

    def _emit(self, first: int, last: int, *, final: bool) -> np.ndarray:
        from scipy.signal import resample_poly

        start, stop = max(0, first - self.pad), min(self._total, last + self.pad)
        segment = self._buffer[start - self._buffer_start : stop - self._buffer_start]
        y = resample_poly(segment, self.up, self.down).astype(np.float32, copy=False)
        low = (first - start) * self.up // self.down
        return y[low:] if final else y[low : (last - start) * self.up // self.down]


class SampleBuffer:
    """Collects 16 kHz output blocks into one ``float32`` array, so the decoded samples are held once (a list of blocks
    joined at the end is held twice, for a moment: 920 MB for the longest recording allowed instead of 460 MB).

    Sized from the length the file declares when it declares one; otherwise it grows by half again when full. The
    memory is reserved, not touched, until samples are written (``np.empty``), so a size from a header that lies
    costs address space, not memory.

    Args:
        expected: how many output samples to make room for at first (the declared length; 0: unknown).
    """

    def __init__(self, expected: int = 0) -> None:
        self._data = np.empty(int(expected) + TARGET_RATE if expected > 0 else 10 * TARGET_RATE, np.float32)
        self.size = 0

    def extend(self, blocks: list[np.ndarray]) -> None:
        """Append each block, in order."""
        for block in blocks:
            n = block.size
            if self.size + n > self._data.size:
                grown = np.empty(max(self.size + n, self._data.size * 3 // 2), np.float32)
                grown[: self.size] = self._data[: self.size]
                self._data = grown
            self._data[self.size : self.size + n] = block.reshape(-1)
            self.size += n

    def samples(self) -> np.ndarray:
        """The samples so far (a view: no copy)."""
        return self._data[: self.size]


class AudioExtractor:
    """Decode audio bytes into an :class:`Audio`.

    Stateless and cheap to build; safe to share between threads (each call opens its own decoder).

    Args:
        max_seconds: the longest audio accepted (seconds of the source).
        max_decoded_bytes: the most bytes of ``float32`` the source may decode to, all channels at its own rate.
    """

    def __init__(self, *, max_seconds: float = MAX_AUDIO_SECONDS, max_decoded_bytes: int = MAX_DECODED_BYTES) -> None:
        if max_seconds <= 0:
            raise ValueError(f"max_seconds={max_seconds} must be positive")
        if max_decoded_bytes < 1:
            raise ValueError(f"max_decoded_bytes={max_decoded_bytes} must be at least 1")
        self.max_seconds = float(max_seconds)
        self.max_decoded_bytes = int(max_decoded_bytes)

    def extract(self, data: bytes, path: str, *, deadline: float | None = None) -> Audio:
        """Decode a file.

        Args:
            data: the file's bytes.
            path: the document's relative path (used in error details only).
            deadline: a ``time.monotonic()`` instant after which decoding stops (``timeout``); ``None``: none.

        Returns:
            The audio at 16 kHz mono.

        Raises:
            ExtractionError: ``audio_empty``, ``audio_corrupt``, ``audio_too_long``, ``audio_too_large`` or
                ``timeout`` (see the module docstring).
        """
        if not data:
            raise ExtractionError("audio_empty", f"{path} has 0 bytes")
        audio = None
        if data[:4] in _SOUNDFILE_MAGIC:
            audio = self._soundfile(data, path, deadline)
        if audio is None:
            audio = self._pyav(data, path, deadline)
        if audio.samples.size == 0:
            raise ExtractionError("audio_empty", f"{path} decodes to 0 samples")
        return audio

    def _too_long(self, path: str, seconds: float) -> ExtractionError:
        return ExtractionError(
            "audio_too_long", f"{path} lasts {seconds:.0f} s or more, over the limit of {self.max_seconds:.0f} s"
        )

    @staticmethod
    def _check_rate(path: str, rate: int) -> None:
        """Refuse a sample rate no recording has (:data:`MIN_SAMPLE_RATE` to :data:`MAX_SAMPLE_RATE` are accepted)."""
        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise ExtractionError(
                "audio_corrupt", f"{path} declares a sample rate of {rate} Hz; audio of {MIN_SAMPLE_RATE:,} to "
                f"{MAX_SAMPLE_RATE:,} Hz is accepted")

    def _check_size(self, path: str, frames: float, channels: int, rate: int, *, claimed: bool) -> None:
        """Refuse ``frames`` x ``channels`` of the source past either limit (``claimed``: the header's numbers)."""
        if rate > 0 and frames / rate > self.max_seconds:
            raise self._too_long(path, frames / rate)
        decoded = frames * max(1, channels) * 4
        if decoded > self.max_decoded_bytes:
            how = "claims" if claimed else "has decoded to"
            raise ExtractionError(
                "audio_too_large",
                f"{path} {how} {decoded / 2**20:,.0f} MiB of samples ({channels} channels at {rate} Hz), over "
                f"SLUICE_MAX_AUDIO_DECODED_BYTES={self.max_decoded_bytes:,}",
            )

    def _soundfile(self, data: bytes, path: str, deadline: float | None) -> Audio | None:
        """Decode with libsndfile in bounded blocks; ``None`` when it cannot open the bytes (PyAV is tried next)."""
        import soundfile as sf

        try:
            with sf.SoundFile(io.BytesIO(data)) as f:
                rate, channels, frames, subtype = f.samplerate, f.channels, f.frames, f.subtype
                if rate <= 0 or channels <= 0 or frames >= _UNKNOWN_FRAMES:
                    return None  # no usable header: FFmpeg decodes it frame by frame, counting
                self._check_rate(path, rate)
                self._check_size(path, frames, channels, rate, claimed=True)
                block_frames = max(1, BLOCK_BYTES // (4 * channels))
                resampler = StreamResampler(rate)
                output = SampleBuffer(-(-frames * TARGET_RATE // rate))
                done = 0
                while True:
                    check_deadline(deadline, path, f"audio at {done / rate:.0f} s")
                    block = f.read(block_frames, dtype="float32", always_2d=True)
                    if not len(block):
                        break
                    done += len(block)
                    self._check_size(path, done, channels, rate, claimed=False)
                    mono = block[:, 0] if channels == 1 else block.mean(axis=1, dtype=np.float32)
                    del block
                    output.extend(resampler.push(mono))
                output.extend(resampler.finish())
        except ExtractionError:
            raise
        except Exception as exc:  # soundfile.LibsndfileError (a RuntimeError), or a malformed header
            logger.debug("soundfile cannot read %s (%s); trying PyAV", path, exc)
            return None
        return Audio(output.samples(), source_rate=rate, source_channels=channels, decoder="soundfile",
                     codec=str(subtype))

    def _pyav(self, data: bytes, path: str, deadline: float | None) -> Audio:
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
            if rate:
                self._check_rate(path, rate)
            declared_s = 0.0
            if stream.duration is not None and stream.time_base is not None and rate > 0:
                declared_s = float(stream.duration * stream.time_base)
                self._check_size(path, declared_s * rate, channels, rate, claimed=True)
            # The resampler converts each decoded frame to mono float at 16 kHz as it comes, so memory follows the
            # output, not the source (a 48 kHz stereo file would be 6 times larger).
            resampler = av.AudioResampler(format="flt", layout="mono", rate=TARGET_RATE)
            # Room for what the header declares (FFmpeg's estimate for a stream without a length), never more than
            # the limits let through: a wrong estimate must not reserve more than the caps allow
            allowed_s = self.max_decoded_bytes / (4 * max(1, channels) * rate) if rate else 0.0
            output = SampleBuffer(int(min(declared_s, self.max_seconds, allowed_s) * TARGET_RATE))
            decoded = 0  # source samples (frames x channels) decoded so far
            limit = int(self.max_seconds * TARGET_RATE) + TARGET_RATE
            try:
                for index, packet in enumerate(container.demux(stream)):
                    check_deadline(deadline, path, f"audio packet {index}")
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
                        if not rate:
                            rate = int(frame.sample_rate)
                            self._check_rate(path, rate)
                        frame_channels = len(frame.layout.channels) or channels or 1
                        decoded += int(frame.samples) * frame_channels
                        if decoded * 4 > self.max_decoded_bytes:
                            self._check_size(path, decoded / frame_channels, frame_channels, rate, claimed=False)
                        output.extend([out.to_ndarray() for out in resampler.resample(frame)])
                    if output.size > limit:
                        raise self._too_long(path, output.size / TARGET_RATE)
                output.extend([out.to_ndarray() for out in resampler.resample(None)])
            except av.error.FFmpegError as exc:  # the demuxer itself gave up (not a decoder error)
                raise ExtractionError("audio_corrupt", f"{path} cannot be demuxed: {exc}") from exc
            codec = stream.codec_context.name or ""
        return Audio(output.samples(), source_rate=rate, source_channels=channels, decoder="pyav", codec=codec)


def decode_audio(data: bytes, path: str = "<audio>", *, max_seconds: float = MAX_AUDIO_SECONDS,
                 max_decoded_bytes: int = MAX_DECODED_BYTES) -> Audio:
    """Decode audio bytes to 16 kHz mono; shorthand for ``AudioExtractor(...).extract(data, path)``."""
    return AudioExtractor(max_seconds=max_seconds, max_decoded_bytes=max_decoded_bytes).extract(data, path)
