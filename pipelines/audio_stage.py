"""The audio stage: pending recording rows become transcript segments with times, on their own actor pool.

Sits between the image stage and the text embed stage. For each row of kind ``"recording"`` (written by the
prepare stage, with no samples) it reads the file from S3 (:func:`pipelines.source.read_version`: size and SHA-256
checked as it streams), decodes it to 16 kHz mono ``float32`` (:class:`pipelines.extract.audio.AudioExtractor`, in
bounded blocks; the hostile cases fail here with ``audio_empty``/``audio_corrupt``/``audio_too_long``/
``audio_too_large``, or ``timeout`` past ``document_timeout_s``), finds the speech and transcribes it
(:class:`pipelines.asr.Transcriber`: Silero VAD windows of at most 30 s, a Whisper-family model from
``settings.asr_model``), and emits one row per segment (kind ``"segment"``, ``modality == "audio"``, ``start_s`` and
``end_s`` in seconds from the start of the file, BM25 terms of its text, links to the segments before and after).
Every other row passes through. The segments are embedded as text by the embed stage.

The version's ``chunk_count`` is set here (the number of segments), since only the transcription knows it; a
recording is one row, so all its segments leave in one batch.

Audio without speech (no window from the VAD, or every window judged silent by the model) gives no invented
text: the version is indexed with **one** segment of empty text spanning the whole file (``no_speech: true`` in its
payload), which has no text or BM25 vector, so no query ever matches it, but the document exists, is ``indexed``
and can be listed and filtered like any other.

A recording whose worker died on it ``max_document_attempts`` times (:class:`pipelines.attempts.AttemptGuard`)
fails as ``worker_crash`` instead of being transcribed again.

Why the file is read again here rather than its samples carried from prepare: the samples of the longest recording
allowed are 460 MB (two hours at 16 kHz), which would be copied into Ray's object store and held there between the
stages, with every batch that carries one; the compressed file costs one more S3 read, which is nothing beside the
transcription. A recording's memory is then this actor's alone: the file's bytes while it decodes, and its samples.

The model loads on the first recording (``warm_up``), so a run without audio pays nothing for it.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np

from core import metrics
from core.errors import IngestError, ServiceUnavailableError
from core.metadata import clean_properties, decode, encode
from core.objects import ObjectStore
from core.settings import Settings
from pipelines import columns as C
from pipelines.attempts import AttemptGuard
from pipelines.extract.language import language_of
from pipelines.image_stage import _item
from pipelines.prepare import RowWriter
from pipelines.source import read_version

logger = logging.getLogger(__name__)


class AudioStage:
    """A Ray Data callable class: chunk rows in, chunk rows out, pending recordings replaced by their segments.

    Args:
        settings: S3 settings, ``asr_model``, ``bm25_*``, ``max_file_bytes``, the audio limits
            (``max_audio_seconds``, ``max_audio_decoded_bytes``) and ``document_timeout_s``.
        device: ``None`` picks CUDA when the actor was given a GPU.
        num_threads: torch CPU threads of this actor (``None``: torch's default).
        transcriber: an injection seam (an object with ``transcribe(samples) -> [TranscriptSegment]``); a
            :class:`pipelines.asr.Transcriber` for ``settings.asr_model`` by default.
    """

    def __init__(self, settings: Settings, device: str | None = None, num_threads: int | None = None, *,
                 transcriber: Any | None = None) -> None:
        from pipelines.extract.audio import AudioExtractor
        from pipelines.sparse import Bm25Encoder

        self.settings = settings
        self.objects = ObjectStore(settings)
        self.audio = AudioExtractor(max_seconds=settings.max_audio_seconds,
                                    max_decoded_bytes=settings.max_audio_decoded_bytes)
        self.device = device
        self.num_threads = num_threads
        self.transcriber = transcriber
        self.bm25 = Bm25Encoder(k1=settings.bm25_k1, b=settings.bm25_b, avg_len=settings.bm25_avg_len)
        self.attempts = AttemptGuard(settings, "audio")

    def warm_up(self) -> None:
        """Load the ASR model and the VAD once (idempotent).

        Raises:
            ConfigurationError: no ASR model configured, or it is not available offline.
        """
        if self.transcriber is None:
            from pipelines.asr import Transcriber

            self.transcriber = Transcriber(self.settings.asr_model, device=self.device, num_threads=self.num_threads)
        if hasattr(self.transcriber, "warm_up"):
            self.transcriber.warm_up()

    @metrics.timed("audio")
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """Replace the batch's pending recording rows by their transcript segments."""
        n = len(batch[C.DOCUMENT_ID])
        kinds = batch.get(C.KIND)
        recordings = {i for i in range(n) if kinds is not None and str(kinds[i]) == C.KIND_RECORDING
                      and not batch[C.ERROR_REASON][i]}
        if not recordings:
            return batch
        self.warm_up()
        writer = RowWriter()
        extra = {name: [] for name in batch if name not in C.VERSION_COLUMNS + C.CHUNK_COLUMNS}
        for i in range(n):
            row = {name: batch[name][i] for name in C.VERSION_COLUMNS}
            if i in recordings:
                given_up = self.attempts.begin(row)  # durable before the work: ASR may kill this process
                if given_up is not None:
                    writer.error(row, *given_up)
                    self._extra(extra, batch, i)
                    continue
                try:
                    segments = self._segments(row)
                except IngestError as exc:
                    writer.error(row, exc.stage, exc.reason, exc.detail)
                    segments = []
                    self._extra(extra, batch, i)
                except ServiceUnavailableError:
                    raise  # S3 is down, not the file bad: the batch is retried, as prepare's would be
                except Exception as exc:  # a library error fails this version only
                    logger.exception("recording %s/%s failed unexpectedly", row[C.DOCUMENT_ID], row[C.VERSION])
                    writer.error(row, "audio", "internal_error", f"{type(exc).__name__}: {exc}")
                    segments = []
                    self._extra(extra, batch, i)
                finally:
                    self.attempts.end(row)
                language = language_of(" ".join(str(v.get(C.TEXT, "")) for v in segments)) if segments else None
                if language:  # the transcript's language joins what the file said of itself
                    row[C.PROPERTIES] = encode({**decode(str(row[C.PROPERTIES])), "language": language})
                for values in segments:
                    writer.add(row, **values)
                    self._extra(extra, batch, i)
                continue
            writer.add(row, **{name: _item(batch[name][i]) for name in C.CHUNK_COLUMNS if name in batch})
            self._extra(extra, batch, i, passed_through=True)
        out = writer.columns()
        for name, values in extra.items():  # e.g. image_embedding: zero rows for the segments
            out[name] = np.stack(values) if values and isinstance(values[0], np.ndarray) else values
        return out

    @staticmethod
    def _extra(extra: dict[str, list], batch: dict[str, np.ndarray], i: int, *, passed_through: bool = False) -> None:
        """Carry the columns of other stages (``image_embedding``) for one output row from input row ``i``.

        A row passed through keeps its values (an image chunk's CLIP vector); a segment or an error row made from a
        recording gets zeros in array columns (it has no picture).
        """
        for name, values in extra.items():
            value = batch[name][i]
            values.append(np.zeros_like(value) if isinstance(value, np.ndarray) and not passed_through else value)

    def _segments(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        """Read, decode and transcribe one recording; its segment rows. ``row[PROPERTIES]`` gains what the file says
        of itself (duration, rate and channels before resampling)."""
        from pipelines.asr import segments_to_chunks
        from pipelines.link import ChunkRef, build_links

        deadline = time.monotonic() + self.settings.document_timeout_s
        data = read_version(self.objects, self.settings, row)
        audio = self.audio.extract(data, str(row[C.PATH]), deadline=deadline)
        del data
        duration = float(audio.duration_s)
        row[C.PROPERTIES] = encode(clean_properties({**decode(str(row[C.PROPERTIES])), "duration_s": duration,
                                                     "sample_rate": audio.source_rate,
                                                     "channels": audio.source_channels}))
        samples, audio = audio.samples, None
        chunks = segments_to_chunks(self.transcriber.transcribe(samples))
        del samples
        document_id, version = str(row[C.DOCUMENT_ID]), int(row[C.VERSION])
        if not chunks:
            logger.info("no speech in %s", row[C.PATH])
            return [{C.CHUNK_INDEX: 0, C.CHUNK_COUNT: 1, C.MODALITY: "audio", C.KIND: C.KIND_SEGMENT, C.TEXT: "",
                     C.START_S: 0.0, C.END_S: duration}]
        links = build_links(document_id, version, [ChunkRef.of(c) for c in chunks])
        sparse = self.bm25.encode_documents([c.text for c in chunks])
        return [{C.CHUNK_INDEX: c.chunk_index, C.CHUNK_COUNT: len(chunks), C.MODALITY: "audio", C.KIND: C.KIND_SEGMENT,
                 C.TEXT: c.text, C.START_S: float(c.start_s), C.END_S: float(c.end_s), C.SPARSE_INDICES: indices,
                 C.SPARSE_VALUES: values,
                 C.LINKS: json.dumps([link.to_payload() for link in links[("audio", c.chunk_index)]])}
                for c, (indices, values) in zip(chunks, sparse)]
