"""The prepare stage: read each version's bytes from S3, extract text, chunk it, and compute its BM25 terms.

Reads the document-row columns (``pipelines.columns.VERSION_COLUMNS``); writes chunk rows (``CHUNK_COLUMNS`` added).
A document that fails becomes one error row (``chunk_index == -1``, ``error_*`` set) and never stops the batch.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from core.errors import IngestError
from core.objects import ObjectStore
from core.settings import Settings
from pipelines import columns as C

logger = logging.getLogger(__name__)

#: Objects of one batch read at once.
READ_THREADS = 8


class PrepareStage:
    """A Ray Data callable class: document rows in, chunk rows out.

    The tokenizer (which sizes chunks in the embedding model's tokens) loads once per actor in ``__init__``; the S3
    client opens lazily on the worker.

    Args:
        settings: S3 settings, ``text_model``, ``chunk_tokens``, ``chunk_overlap_tokens``, ``bm25_*`` and
            ``max_file_bytes`` are used.
    """

    def __init__(self, settings: Settings) -> None:
        from transformers import AutoTokenizer

        from pipelines.chunk.text import TextChunker
        from pipelines.embed.models import resolve_model_path
        from pipelines.sparse import Bm25Encoder

        self.settings = settings
        self.objects = ObjectStore(settings)
        self._readers = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="s3-read")
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(settings.text_model), local_files_only=True)
        self.chunker = TextChunker(tokenizer, settings.chunk_tokens, settings.chunk_overlap_tokens)
        self.bm25 = Bm25Encoder(k1=settings.bm25_k1, b=settings.bm25_b, avg_len=settings.bm25_avg_len)

    def _read(self, row: dict[str, Any]) -> bytes:
        """The version's bytes, checked against its recorded size and SHA-256.

        Raises:
            IngestError: ``too_large`` (over ``max_file_bytes``), ``object_missing``, or ``object_changed`` when the
                object no longer holds the registered bytes (a later ``--scan`` registers the new content).
        """
        if row[C.SIZE] > self.settings.max_file_bytes:
            raise IngestError("too_large", f"{row[C.SIZE]} bytes, more than SLUICE_MAX_FILE_BYTES={self.settings.max_file_bytes}")
        try:
            data = self.objects.get_bytes(row[C.OBJECT_KEY])
        except KeyError as exc:
            raise IngestError("object_missing", f"s3://{self.objects.bucket}/{row[C.OBJECT_KEY]} is gone") from exc
        if len(data) != row[C.SIZE] or hashlib.sha256(data).hexdigest() != row[C.SHA256]:
            raise IngestError("object_changed", "the object's bytes differ from the registered version's SHA-256")
        return data

    def _chunks(self, row: dict[str, Any], data: bytes | IngestError) -> tuple[str, list]:
        from pipelines.extract import extract_sections

        if isinstance(data, IngestError):
            raise data
        content_type, sections = extract_sections(data, row[C.PATH], row.get(C.CONTENT_TYPE) or "")
        chunks = self.chunker.chunk(sections)
        if not chunks:
            raise IngestError("no_chunks", "the extracted text gave no chunk")
        return content_type, chunks

    def _read_all(self, rows: list[dict[str, Any]]) -> list[bytes | IngestError]:
        """Read the batch's objects concurrently (S3 reads wait on the network, not the CPU)."""

        def read(row: dict[str, Any]) -> bytes | IngestError:
            try:
                return self._read(row)
            except IngestError as exc:
                return exc

        return list(self._readers.map(read, rows))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        """Turn a batch of document rows into chunk rows (a document's chunks, or its one error row)."""
        out: dict[str, list] = {name: [] for name in C.VERSION_COLUMNS + C.CHUNK_COLUMNS}
        rows = []
        for i in range(len(batch[C.DOCUMENT_ID])):
            row = {name: batch[name][i] for name in C.VERSION_COLUMNS}
            row[C.VERSION] = int(row[C.VERSION])
            row[C.SIZE] = int(row[C.SIZE])
            rows.append(row)
        for row, data in zip(rows, self._read_all(rows)):
            try:
                content_type, chunks = self._chunks(row, data)
            except IngestError as exc:
                logger.info("version %s/%d failed at %s: %s", row[C.DOCUMENT_ID], row[C.VERSION], exc.stage, exc)
                self._append(out, row, chunk_index=-1, chunk_count=0, text="", page=0, heading="",
                             indices=[], values=[], error=(exc.stage, exc.reason, exc.detail))
                continue
            except Exception as exc:  # a bug or an unexpected library error fails this document only
                logger.exception("version %s/%d failed unexpectedly", row[C.DOCUMENT_ID], row[C.VERSION])
                self._append(out, row, chunk_index=-1, chunk_count=0, text="", page=0, heading="",
                             indices=[], values=[], error=("extract", "internal_error", f"{type(exc).__name__}: {exc}"))
                continue
            row[C.CONTENT_TYPE] = content_type
            sparse = self.bm25.encode_documents([c.text for c in chunks])
            for chunk, (indices, values) in zip(chunks, sparse):
                self._append(out, row, chunk_index=chunk.chunk_index, chunk_count=len(chunks), text=chunk.text,
                             page=chunk.page or 0, heading=chunk.heading, indices=indices, values=values, error=None)
        out[C.SPARSE_INDICES] = [np.asarray(x, dtype=np.uint32) for x in out[C.SPARSE_INDICES]]
        out[C.SPARSE_VALUES] = [np.asarray(x, dtype=np.float32) for x in out[C.SPARSE_VALUES]]
        return out

    @staticmethod
    def _append(out, row, *, chunk_index, chunk_count, text, page, heading, indices, values, error) -> None:
        for name in C.VERSION_COLUMNS:
            out[name].append(row[name])
        out[C.CHUNK_INDEX].append(chunk_index)
        out[C.CHUNK_COUNT].append(chunk_count)
        out[C.TEXT].append(text)
        out[C.PAGE].append(page)
        out[C.HEADING].append(heading)
        out[C.MODALITY].append("text")
        out[C.SPARSE_INDICES].append(indices)
        out[C.SPARSE_VALUES].append(values)
        stage, reason, detail = error or ("", "", "")
        out[C.ERROR_STAGE].append(stage)
        out[C.ERROR_REASON].append(reason)
        out[C.ERROR_DETAIL].append(detail)
