"""The audio stage on a mixed batch: recordings become segments, every other row passes through whole."""

from __future__ import annotations

import numpy as np

from core.catalog import Catalog
from pipelines import columns as C
from pipelines.asr import TranscriptSegment
from pipelines.audio_stage import AudioStage
from pipelines.prepare import RowWriter


class FixedTranscriber:
    """Two segments for any recording."""

    def transcribe(self, samples: np.ndarray) -> list[TranscriptSegment]:
        assert samples.dtype == np.float32 and samples.size
        return [TranscriptSegment("the pumps stop at noon", 0.0, 2.0, 0),
                TranscriptSegment("and start again at one", 2.0, 4.0, 0)]


def version(catalog: Catalog, path: str) -> dict:
    """The document row of a version registered in the catalog (the stage counts its starts there)."""
    registered = catalog.register_version("acme", path, object_key=f"acme/{path}", sha256="0" * 64, size=1).version
    return {C.DOCUMENT_ID: registered.document_id, C.VERSION: registered.version, C.TENANT: "acme", C.PATH: path,
            C.OBJECT_KEY: f"acme/{path}", C.CONTENT_TYPE: "", C.SHA256: "0" * 64, C.SIZE: 1, C.CREATED_AT: "",
            C.METADATA: "{}", C.PROPERTIES: "{}"}


def test_rows_passed_through_keep_their_clip_vectors(settings):
    """An image chunk batched with a recording keeps its CLIP vector: the segments get zeros, it does not."""
    catalog = Catalog(settings)
    writer = RowWriter()
    writer.add(version(catalog, "square.png"), **{C.CHUNK_INDEX: 0, C.CHUNK_COUNT: 1, C.MODALITY: "image",
                                                C.KIND: C.KIND_IMAGE, C.IMAGE_SOURCE: "file"})
    writer.add(version(catalog, "notice.wav"), **{C.CHUNK_INDEX: 0, C.CHUNK_COUNT: 1, C.MODALITY: "audio",
                                                C.KIND: C.KIND_RECORDING, C.END_S: 4.0,
                                                C.AUDIO_PCM: np.full(16000, 0.1, dtype="<f4").tobytes()})
    writer.add(version(catalog, "notes.md"), **{C.CHUNK_INDEX: 0, C.CHUNK_COUNT: 1, C.MODALITY: "text", C.TEXT: "hi"})
    batch = writer.columns()
    clip = np.array([[0.6, 0.8, 0.0], [0.5, 0.5, 0.5], [0.0, 0.0, 0.0]], dtype=np.float32)
    batch[C.IMAGE_EMBEDDING] = clip

    try:
        out = AudioStage(settings, transcriber=FixedTranscriber())(batch)
    finally:
        catalog.close()

    rows = list(zip(out[C.PATH], out[C.KIND], [str(t) for t in out[C.TEXT]]))
    assert rows == [("square.png", C.KIND_IMAGE, ""), ("notice.wav", C.KIND_SEGMENT, "the pumps stop at noon"),
                    ("notice.wav", C.KIND_SEGMENT, "and start again at one"), ("notes.md", "", "hi")]
    vectors = np.asarray(out[C.IMAGE_EMBEDDING])
    assert vectors.shape == (4, 3)
    np.testing.assert_array_equal(vectors[0], clip[0])
    assert not vectors[1:].any()
