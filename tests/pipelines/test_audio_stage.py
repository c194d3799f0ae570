"""The audio stage on a mixed batch: recordings (read from S3 and decoded here) become segments, every other row
passes through whole, and a recording that cannot be read or decoded fails alone with its reason."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from core.errors import ServiceUnavailableError
from core.metadata import decode
from core.objects import ObjectStore
from pipelines import columns as C
from pipelines.asr import TranscriptSegment
from pipelines.audio_stage import AudioStage
from pipelines.prepare import RowWriter
from tests.pipelines.audio_helpers import AUDIO, SPEECH, example_samples
from tests.pipelines.test_audio import corrupt_middle, encode_mp3
from tests.pipelines.support import registered_batch


class FixedTranscriber:
    """Two segments for any recording; keeps the length of each recording it was given."""

    def __init__(self) -> None:
        self.lengths: list[int] = []

    def transcribe(self, samples: np.ndarray) -> list[TranscriptSegment]:
        assert samples.dtype == np.float32 and samples.ndim == 1
        self.lengths.append(samples.size)
        return [TranscriptSegment("the pumps stop at noon", 0.0, 2.0, 0),
                TranscriptSegment("and start again at one", 2.0, 4.0, 0)]


@contextlib.contextmanager
def closing_stage(stage: AudioStage):
    """The stage, its catalog connection (the attempt counts) closed afterwards: no pool thread outlives the test."""
    try:
        yield stage
    finally:
        stage.attempts.close()


def rows_of(batch: dict[str, list]) -> list[dict]:
    return [{name: batch[name][i] for name in C.VERSION_COLUMNS} for i in range(len(batch[C.PATH]))]


def test_recordings_are_read_from_s3_and_rows_passed_through_keep_their_clip_vectors(settings):
    """The recording row carries no samples: the stage reads and decodes the file; an image chunk batched with it
    keeps its CLIP vector while the segments get zeros."""
    wav = (AUDIO / SPEECH[0]).read_bytes()
    square, notice, notes = rows_of(registered_batch(settings, "acme", {"square.png": b"png", "notice.wav": wav,
                                                                        "notes.md": b"hi"}))
    writer = RowWriter()
    writer.add(square, **{C.CHUNK_INDEX: 0, C.CHUNK_COUNT: 1, C.MODALITY: "image", C.KIND: C.KIND_IMAGE,
                          C.IMAGE_SOURCE: "file"})
    writer.add(notice, **{C.CHUNK_INDEX: 0, C.MODALITY: "audio", C.KIND: C.KIND_RECORDING})
    writer.add(notes, **{C.CHUNK_INDEX: 0, C.CHUNK_COUNT: 1, C.MODALITY: "text", C.TEXT: "hi"})
    batch = writer.columns()
    clip = np.array([[0.6, 0.8, 0.0], [0.5, 0.5, 0.5], [0.0, 0.0, 0.0]], dtype=np.float32)
    batch[C.IMAGE_EMBEDDING] = clip

    transcriber = FixedTranscriber()
    with closing_stage(AudioStage(settings, transcriber=transcriber)) as stage:
        out = stage(batch)

    rows = list(zip(out[C.PATH], out[C.KIND], [str(t) for t in out[C.TEXT]]))
    assert rows == [("square.png", C.KIND_IMAGE, ""), ("notice.wav", C.KIND_SEGMENT, "the pumps stop at noon"),
                    ("notice.wav", C.KIND_SEGMENT, "and start again at one"), ("notes.md", "", "hi")]
    assert transcriber.lengths == [example_samples(SPEECH[0]).size]  # the file's own samples, at 16 kHz
    properties = decode(str(out[C.PROPERTIES][1]))
    assert properties["duration_s"] == pytest.approx(transcriber.lengths[0] / 16_000, abs=1e-3)
    assert properties["sample_rate"] > 0 and properties["channels"] >= 1
    vectors = np.asarray(out[C.IMAGE_EMBEDDING])
    assert vectors.shape == (4, 3)
    np.testing.assert_array_equal(vectors[0], clip[0])
    assert not vectors[1:].any()


def test_a_recording_that_changed_in_s3_or_is_corrupt_fails_alone(settings):
    """One recording whose object was overwritten after registration, one corrupt MP3, one good WAV: the first two
    become error rows (``object_changed``, ``audio_corrupt``), the good one is transcribed."""
    samples = example_samples(SPEECH[0])
    files = {"changed.wav": (AUDIO / SPEECH[1]).read_bytes(),
             "corrupt.mp3": corrupt_middle(encode_mp3(samples[: 16_000 * 4], 16_000)),
             "good.wav": (AUDIO / SPEECH[0]).read_bytes()}
    versions = rows_of(registered_batch(settings, "acme", files))
    ObjectStore(settings).put_bytes(str(versions[0][C.OBJECT_KEY]), b"RIFF and something else entirely")
    writer = RowWriter()
    for row in versions:
        writer.add(row, **{C.CHUNK_INDEX: 0, C.MODALITY: "audio", C.KIND: C.KIND_RECORDING})

    transcriber = FixedTranscriber()
    with closing_stage(AudioStage(settings, transcriber=transcriber)) as stage:
        out = stage(writer.columns())

    outcomes = [(str(p), str(r) or "ok") for p, r in zip(out[C.PATH], out[C.ERROR_REASON])]
    assert outcomes == [("changed.wav", "object_changed"), ("corrupt.mp3", "audio_corrupt"),
                        ("good.wav", "ok"), ("good.wav", "ok")]
    assert transcriber.lengths == [samples.size]


def test_s3_out_of_reach_fails_the_batch_not_the_recording(settings, monkeypatch):
    """An outage is no verdict on the file: the stage raises (Ray retries the batch) instead of a dead letter."""
    (row,) = rows_of(registered_batch(settings, "acme", {"notice.wav": (AUDIO / SPEECH[0]).read_bytes()}))
    writer = RowWriter()
    writer.add(row, **{C.CHUNK_INDEX: 0, C.MODALITY: "audio", C.KIND: C.KIND_RECORDING})
    def down(*args, **kwargs):
        raise ServiceUnavailableError("s3", "connection refused")

    with closing_stage(AudioStage(settings, transcriber=FixedTranscriber())) as stage:
        monkeypatch.setattr(stage.objects, "get_verified", down)
        with pytest.raises(ServiceUnavailableError):
            stage(writer.columns())
