"""Audio decoding (``pipelines.extract.audio``) and speech windows (``pipelines.chunk.audio``) on real files.

The speech and no-speech files are those of ``examples/audio`` (see ``examples/README.md``); the MP3, FLAC and OGG
files are encoded here from them, and the hostile ones (0 bytes, a corrupt MP3 frame) are made from those.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from core.errors import ExtractionError
from pipelines.chunk.audio import (
    MAX_WINDOW_S,
    AudioChunker,
    SpeechDetector,
    SpeechRegion,
    cut_windows,
    energy_regions,
)
from pipelines.extract.audio import TARGET_RATE, Audio, AudioExtractor, decode_audio
from tests.pipelines.audio_helpers import AUDIO, NO_SPEECH, SPEECH
from tests.pipelines.audio_helpers import example_samples as _samples

pytestmark = pytest.mark.unit


def encode_mp3(samples: np.ndarray, rate: int) -> bytes:
    """MP3 bytes of mono ``float32`` samples (PyAV's FFmpeg with LAME)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


def corrupt_middle(data: bytes, size: int = 300, seed: int = 0) -> bytes:
    """The bytes with ``size`` random bytes written over the middle (across at least one MPEG frame header)."""
    rng = np.random.default_rng(seed)
    middle = len(data) // 2
    return data[:middle] + bytes(rng.integers(0, 256, size, dtype=np.uint8)) + data[middle + size :]


def wav_bytes(samples: np.ndarray, rate: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, subtype=subtype, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, int]:
    samples, rate = sf.read(AUDIO / "safety-briefing.wav", dtype="float32")
    return samples, rate


def test_wav_44k_stereo_becomes_16k_mono_of_the_right_duration() -> None:
    rate, seconds = 44_100, 2.5
    t = np.arange(int(rate * seconds)) / rate
    tone = 0.5 * np.sin(2 * np.pi * 440.0 * t)
    stereo = np.stack([tone, tone], axis=1)
    audio = decode_audio(wav_bytes(stereo, rate), "tone.wav")
    assert audio.sample_rate == TARGET_RATE and audio.source_rate == rate and audio.source_channels == 2
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert audio.samples.size == int(seconds * TARGET_RATE)
    assert audio.duration_s == pytest.approx(seconds)
    spectrum = np.abs(np.fft.rfft(audio.samples))
    peak_hz = np.argmax(spectrum) * TARGET_RATE / audio.samples.size
    assert peak_hz == pytest.approx(440.0, abs=1.0)
    middle = audio.samples[TARGET_RATE // 2 : -TARGET_RATE // 2]
    assert np.max(np.abs(middle)) == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("name", [*SPEECH, NO_SPEECH])
def test_corpus_files_decode_to_their_duration(name: str) -> None:
    info = sf.info(AUDIO / name)
    audio = AudioExtractor().extract((AUDIO / name).read_bytes(), name)
    assert audio.decoder == "soundfile"
    assert audio.duration_s == pytest.approx(info.frames / info.samplerate, abs=1 / TARGET_RATE)


@pytest.mark.parametrize(("fmt", "subtype"), [("FLAC", "PCM_16"), ("OGG", "VORBIS")])
def test_flac_and_ogg_decode_with_soundfile(speech, fmt: str, subtype: str) -> None:
    samples, rate = speech
    audio = decode_audio(wav_bytes(samples, rate, subtype, fmt), f"speech.{fmt.lower()}")
    assert audio.decoder == "soundfile"
    assert audio.duration_s == pytest.approx(samples.size / rate, abs=0.01)


def test_mp3_decodes_with_pyav_like_the_wav(speech) -> None:
    samples, rate = speech
    mp3 = decode_audio(encode_mp3(samples, rate), "speech.mp3")
    wav = decode_audio(wav_bytes(samples, rate), "speech.wav")
    assert mp3.decoder == "pyav" and mp3.codec.startswith("mp3")
    assert mp3.samples.size == wav.samples.size
    assert np.corrcoef(mp3.samples, wav.samples)[0, 1] > 0.95


def test_zero_byte_and_zero_sample_files_are_audio_empty() -> None:
    with pytest.raises(ExtractionError) as caught:
        decode_audio(b"", "empty.wav")
    assert caught.value.reason == "audio_empty"
    with pytest.raises(ExtractionError) as caught:
        decode_audio(wav_bytes(np.zeros(0, np.float32), 16_000), "header-only.wav")
    assert caught.value.reason == "audio_empty"


def test_mp3_with_a_corrupt_frame_fails_with_audio_corrupt(speech) -> None:
    samples, rate = speech
    with pytest.raises(ExtractionError) as caught:
        decode_audio(corrupt_middle(encode_mp3(samples, rate)), "corrupt.mp3")
    assert caught.value.reason == "audio_corrupt"
    assert "packet" in caught.value.detail


def test_bytes_that_are_no_audio_are_audio_corrupt() -> None:
    for data in (b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk", bytes(range(256)) * 8):
        with pytest.raises(ExtractionError) as caught:
            decode_audio(data, "noise.bin")
        assert caught.value.reason == "audio_corrupt"


def test_each_hostile_file_fails_alone(speech) -> None:
    """A batch with a 0-byte WAV and a corrupt MP3 between good files: those two fail with a reason, the rest decode."""
    samples, rate = speech
    mp3 = encode_mp3(samples, rate)
    batch = {
        "a.wav": (AUDIO / SPEECH[0]).read_bytes(),
        "empty.wav": b"",
        "corrupt.mp3": corrupt_middle(mp3),
        "b.mp3": mp3,
        "c.wav": (AUDIO / NO_SPEECH).read_bytes(),
    }
    extractor = AudioExtractor()
    outcomes = {}
    for name, data in batch.items():
        try:
            outcomes[name] = extractor.extract(data, name)
        except ExtractionError as exc:
            outcomes[name] = exc.reason
    assert outcomes["empty.wav"] == "audio_empty"
    assert outcomes["corrupt.mp3"] == "audio_corrupt"
    assert all(isinstance(outcomes[n], Audio) for n in ("a.wav", "b.mp3", "c.wav"))


def test_audio_over_the_limit_is_audio_too_long(speech) -> None:
    samples, rate = speech
    extractor = AudioExtractor(max_seconds=2.0)
    for name, data in (("long.wav", wav_bytes(samples, rate)), ("long.mp3", encode_mp3(samples, rate))):
        with pytest.raises(ExtractionError) as caught:
            extractor.extract(data, name)
        assert caught.value.reason == "audio_too_long"


# Speech windows.


@pytest.fixture(scope="module")
def silero() -> SpeechDetector:
    detector = SpeechDetector("silero")
    detector.warm_up()
    return detector


@pytest.mark.parametrize("name", SPEECH)
def test_speech_files_give_ordered_windows_within_the_file(silero, name: str) -> None:
    samples = _samples(name)
    windows = AudioChunker(silero).windows(samples)
    assert windows
    duration = samples.size / TARGET_RATE
    for i, window in enumerate(windows):
        assert window.index == i
        assert 0.0 <= window.start_s < window.end_s <= duration
        assert window.duration_s <= MAX_WINDOW_S
        assert window.samples.size == pytest.approx(window.duration_s * TARGET_RATE, abs=1)
        assert window.regions
    assert all(a.end_s <= b.start_s for a, b in zip(windows, windows[1:]))
    speech_s = sum(r.end_s - r.start_s for w in windows for r in w.regions)
    assert speech_s > 0.5 * duration


def test_pluck_and_silence_give_no_window(silero) -> None:
    assert AudioChunker(silero).windows(_samples(NO_SPEECH)) == []
    silence = np.zeros(5 * TARGET_RATE, dtype=np.float32)
    assert AudioChunker(silero).windows(silence) == []
    assert AudioChunker(SpeechDetector("energy")).windows(silence) == []


def test_long_speech_is_cut_into_windows_of_at_most_30_s(silero) -> None:
    """Four copies back to back (42 s of speech with short pauses): several windows, none over 30 s, in order."""
    samples = np.concatenate([_samples(SPEECH[0])] * 4)
    windows = AudioChunker(silero, max_gap_s=5.0).windows(samples)
    assert len(windows) >= 2
    assert all(w.duration_s <= MAX_WINDOW_S + 1e-6 for w in windows)
    assert all(a.end_s <= b.start_s for a, b in zip(windows, windows[1:]))


def test_one_region_longer_than_a_window_is_cut_at_a_quiet_frame() -> None:
    """A 40 s region with a silent gap at 20-20.5 s: the cut falls in the gap, not at 30 s."""
    rng = np.random.default_rng(0)
    samples = (0.3 * rng.standard_normal(40 * TARGET_RATE)).astype(np.float32)
    samples[20 * TARGET_RATE : int(20.5 * TARGET_RATE)] = 0.0
    windows = cut_windows(samples, [SpeechRegion(0.0, 40.0)])
    assert len(windows) == 2
    assert 20.0 <= windows[0].end_s <= 20.5
    assert windows[1].start_s == windows[0].end_s and windows[1].end_s == 40.0


def test_regions_are_packed_by_length_and_gap() -> None:
    samples = np.zeros(100 * TARGET_RATE, dtype=np.float32)
    regions = [SpeechRegion(0, 5), SpeechRegion(6, 10), SpeechRegion(20, 25), SpeechRegion(25.5, 40), SpeechRegion(41, 60)]
    windows = cut_windows(samples, regions, max_window_s=30.0, max_gap_s=2.0)
    assert [(w.start_s, w.end_s) for w in windows] == [(0.0, 10.0), (20.0, 40.0), (41.0, 60.0)]
    assert [len(w.regions) for w in windows] == [2, 2, 1]
    assert cut_windows(samples, []) == []


def test_energy_detector_finds_the_speech() -> None:
    samples = _samples(SPEECH[1])
    regions = energy_regions(samples)
    assert regions and regions[0].start_s < 0.5
    assert regions[-1].end_s > 6.0


def test_loading_silero_keeps_torch_threads() -> None:
    import torch

    before = torch.get_num_threads()
    SpeechDetector("silero").regions(np.zeros(TARGET_RATE, dtype=np.float32))
    assert torch.get_num_threads() == before
