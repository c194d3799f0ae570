"""The prepare stage: read each version's bytes from S3, sniff and extract them, chunk them, link the chunks.

Reads the document-row columns (``pipelines.columns.VERSION_COLUMNS``); writes chunk rows (``CHUNK_COLUMNS``, the
media columns included). Per document, by what its bytes are (``pipelines.extract.base.sniff_content_type``):

* **text, Markdown, HTML, PDF, images**: :func:`pipelines.extract.extract_document` gives text sections and
  pictures. The text is chunked into chunks ``0 .. n-1`` (rows of kind ``""``, with BM25 terms); the pictures are
  laid out with :func:`pipelines.chunk.image.plan_image_chunks` from ``n`` on (a whole-picture chunk, then its tiles),
  so one version has one chunk-index space (``core.lifecycle`` deletes by ``chunk_index >= chunk_count``). Each
  picture becomes one *pending* row (kind ``"picture"``, its PNG in ``image_bytes``) that the image stage
  (:mod:`pipelines.image_stage`) turns into its image and tile chunks. ``chunk_count`` = text chunks + every planned
  image chunk. The cross-modal links (:mod:`pipelines.link`) of every chunk are built here, where all of a version's
  chunks are known: on text rows as a JSON list, on picture rows as a JSON object by chunk index.
* **audio** (``AUDIO_TYPES``): one *pending* row (kind ``"recording"``) that carries no samples; the audio stage
  (:mod:`pipelines.audio_stage`) reads the file from S3 again, decodes it (where the hostile cases fail) and
  transcribes it. Without ``SLUICE_ASR_MODEL`` an audio file fails here as ``unsupported_type``.

Each document's properties (what its file says of itself: ``Extracted.properties``; for audio its duration, rate
and channels) go on its rows as JSON (``pipelines.columns.PROPERTIES``), next to the version's user metadata
(``METADATA``, from the catalog); the sink writes both into every point's payload.

A document that fails becomes one error row (``chunk_index == -1``, ``error_*`` set) and never stops the batch. A
document that has only pictures, when neither OCR (``SLUICE_OCR_ENGINE=none``) nor an image model is configured,
fails with ``empty_content``: it would be "indexed" with points no query can reach. Each document's start is
counted in the catalog first (:class:`pipelines.attempts.AttemptGuard`): one whose worker died on it
``max_document_attempts`` times becomes an error row ``worker_crash`` instead of being started again.

Limits on one document's work (README, "What you can rely on"), each its own reason code: the extractors check
``max_pdf_pages`` (``too_many_pages``), ``max_render_pixels`` (a large page renders smaller; ``page_too_large`` only
for absurd proportions) and ``max_ocr_pages`` (``too_many_ocr_pages``) from what the file declares before decoding,
and again as they decode (the audio limits are the audio stage's, where audio is decoded). Each document also has
``document_timeout_s`` from the moment its work starts: past it, it fails alone as ``timeout`` and the batch goes on
with the next document.

Why the time limit is cooperative (a deadline passed into the extractors, checked before each PDF page is read and
before each is rendered, and between extraction and chunking; the audio stage checks it before each audio block or
packet is decoded) rather than a thread or process with a hard timeout: Python cannot kill a thread, so an abandoned
extraction would keep running beside the next document's, and PDFium is not thread-safe (pypdfium2 takes no lock),
so two documents in PDFium at once could crash the worker, which is worse than the stall; a process per document
would cost a fork and a copy of the bytes for every small text file. The hostile cases that stall a worker are many
small units (thousands of pages, hours of audio), which the deadline stops at the next unit; the limits above bound
each unit (a render is at most ``max_render_pixels``, a decoded block 4 MiB). A single native call that never
returns is what the worker crash accounting and the run's ``remote_call_timeout_s`` are for.
"""

from __future__ import annotations

import collections
import json
import logging
import mimetypes
import posixpath
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from core import metrics
from core.errors import ExtractionError, IngestError
from core.metadata import encode
from core.objects import ObjectStore
from core.settings import Settings
from pipelines import columns as C
from pipelines.attempts import AttemptGuard
from pipelines.source import read_version

logger = logging.getLogger(__name__)

#: Objects of one batch read at once.
READ_THREADS = 8


def image_layout(settings: Settings) -> dict[str, int]:
    """The tiling of :func:`pipelines.chunk.image.plan_image_chunks` from the settings (prepare and the image stage
    must use the same one: the image stage plans a picture again and must find the same chunks).

    ``image_max_tiles == 0`` means no tiles at all.
    """
    if settings.image_max_tiles == 0:
        return {"tile_px": settings.image_tile_px, "large_px": 2**31 - 1, "max_tiles": 1}
    return {"tile_px": settings.image_tile_px, "large_px": settings.image_large_px, "max_tiles": settings.image_max_tiles}


class RowWriter:
    """Collects chunk rows column-wise, filling every column a row does not name with its empty value."""

    DEFAULTS: dict[str, Any] = {
        C.CHUNK_INDEX: -1, C.CHUNK_COUNT: 0, C.TEXT: "", C.PAGE: 0, C.HEADING: "", C.MODALITY: "text",
        C.ERROR_STAGE: "", C.ERROR_REASON: "", C.ERROR_DETAIL: "", C.KIND: "", C.PARENT_INDEX: -1,
        C.IMAGE_SOURCE: "", C.IMAGE_BYTES: b"", C.LINKS: "[]", C.START_S: -1.0, C.END_S: -1.0,
    }

    def __init__(self) -> None:
        self.out: dict[str, list] = {name: [] for name in C.VERSION_COLUMNS + C.CHUNK_COLUMNS}

    def add(self, row: dict[str, Any], **values: Any) -> None:
        """Append one chunk row: ``row``'s version columns, then ``values`` (column name → value)."""
        for name in C.VERSION_COLUMNS:
            self.out[name].append(row[name])
        for name in C.CHUNK_COLUMNS:
            if name in (C.SPARSE_INDICES, C.SPARSE_VALUES, C.BOX):
                continue
            self.out[name].append(values.get(name, self.DEFAULTS[name]))
        indices, weights = values.get(C.SPARSE_INDICES, []), values.get(C.SPARSE_VALUES, [])
        self.out[C.SPARSE_INDICES].append(np.asarray(indices, dtype=np.uint32))
        self.out[C.SPARSE_VALUES].append(np.asarray(weights, dtype=np.float32))
        self.out[C.BOX].append(np.asarray(values.get(C.BOX, (0, 0, 0, 0)), dtype=np.int32))

    def error(self, row: dict[str, Any], stage: str, reason: str, detail: str) -> None:
        """Append the one error row of a failed document."""
        self.add(row, **{C.ERROR_STAGE: stage, C.ERROR_REASON: reason, C.ERROR_DETAIL: detail})

    def columns(self) -> dict[str, Any]:
        """The batch: lists, except ``box`` (``int32 (rows, 4)``)."""
        out = dict(self.out)
        out[C.BOX] = np.stack(out[C.BOX]) if out[C.BOX] else np.zeros((0, 4), dtype=np.int32)
        return out


class PrepareStage:
    """A Ray Data callable class: document rows in, chunk rows (and pending picture and recording rows) out.

    The tokenizer (which sizes chunks in the embedding model's tokens) loads once per actor in ``__init__``; the S3
    client opens lazily on the worker.

    Args:
        settings: S3 settings, ``text_model``, ``chunk_tokens``, ``chunk_overlap_tokens``, ``bm25_*``,
            ``max_file_bytes``, ``image_*`` (pixel limit, tiling), ``asr_model``,
            ``ocr_engine``, ``image_model``, the limits ``max_pdf_pages``,
            ``max_render_pixels``, ``max_ocr_pages`` and ``document_timeout_s``, and ``read_ahead_bytes`` (how many
            bytes of the batch's objects are read ahead, :meth:`_read_ahead`) are used.
    """

    def __init__(self, settings: Settings) -> None:
        from transformers import AutoTokenizer

        from pipelines.chunk.text import TextChunker
        from pipelines.embed.models import resolve_model_path
        from pipelines.extract.image import ImageExtractor
        from pipelines.extract.pdf import PdfExtractor
        from pipelines.sparse import Bm25Encoder

        self.settings = settings
        self.objects = ObjectStore(settings)
        self._readers = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="s3-read")
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(settings.text_model), local_files_only=True)
        self.chunker = TextChunker(tokenizer, settings.chunk_tokens, settings.chunk_overlap_tokens)
        self.bm25 = Bm25Encoder(k1=settings.bm25_k1, b=settings.bm25_b, avg_len=settings.bm25_avg_len)
        self.images = ImageExtractor(max_pixels=settings.image_max_pixels)
        self.pdf = PdfExtractor(max_pixels=settings.image_max_pixels, max_pages=settings.max_pdf_pages,
                                max_render_pixels=settings.max_render_pixels, max_ocr_pages=settings.max_ocr_pages)
        self.layout = image_layout(settings)
        self.attempts = AttemptGuard(settings, "prepare")

    def _read_ahead(self, rows: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], bytes | IngestError]]:
        """Each row with its bytes (or why they could not be read), in order, read ahead within a byte budget.

        Up to ``READ_THREADS`` objects are read at once (S3 reads wait on the network, not the CPU), but only while
        the objects read and not yet handed out stay within ``settings.read_ahead_bytes``; the next row's object is
        always read, however large. So a batch of 16 files at the size limit is read one by one, and a worker holds
        about the budget plus the document it works on, whatever the batch holds.
        """

        def read(row: dict[str, Any]) -> bytes | IngestError:
            try:
                return read_version(self.objects, self.settings, row)
            except IngestError as exc:
                return exc

        def cost(row: dict[str, Any]) -> int:
            return row[C.SIZE] if row[C.SIZE] <= self.settings.max_file_bytes else 0

        waiting: collections.deque = collections.deque(rows)
        reading: collections.deque = collections.deque()
        held = 0
        while waiting or reading:
            while waiting and (not reading or held + cost(waiting[0]) <= self.settings.read_ahead_bytes):
                row = waiting.popleft()
                reading.append((row, self._readers.submit(read, row), cost(row)))
                held += cost(row)
            row, future, size = reading.popleft()
            result = future.result()
            held -= size
            yield row, result

    @metrics.timed("prepare")
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """Turn a batch of document rows into chunk rows (a document's rows, or its one error row)."""
        writer = RowWriter()
        rows = []
        for i in range(len(batch[C.DOCUMENT_ID])):
            row = {name: batch[name][i] for name in C.VERSION_COLUMNS}
            row[C.VERSION] = int(row[C.VERSION])
            row[C.SIZE] = int(row[C.SIZE])
            rows.append(row)
        for row, data in self._read_ahead(rows):
            given_up = self.attempts.begin(row)  # durable before the work: the work may kill this process
            if given_up is not None:
                writer.error(row, *given_up)
                continue
            staged = RowWriter()
            try:
                self._before_document(row)
                if isinstance(data, IngestError):
                    raise data
                self._document(staged, row, data, deadline=time.monotonic() + self.settings.document_timeout_s)
            except IngestError as exc:
                logger.info("version %s/%d failed at %s: %s", row[C.DOCUMENT_ID], row[C.VERSION], exc.stage, exc)
                writer.error(row, exc.stage, exc.reason, exc.detail)
                continue
            except Exception as exc:  # a bug or an unexpected library error fails this document only
                logger.exception("version %s/%d failed unexpectedly", row[C.DOCUMENT_ID], row[C.VERSION])
                writer.error(row, "extract", "internal_error", f"{type(exc).__name__}: {exc}")
                continue
            finally:
                self.attempts.end(row)
            for name, values in staged.out.items():
                writer.out[name].extend(values)
        return writer.columns()

    def _before_document(self, row: dict[str, Any]) -> None:
        """Runs as a document's work starts, its attempt recorded: nothing in production.

        A seam for the fault tests (``pipelines.ingest.FaultInjection.crash_paths`` kills the worker here), so a
        crash lands exactly where a native decoder's would, without any test code in this stage.
        """

    # --- one document ------------------------------------------------------------------------------------------

    def _document(self, out: RowWriter, row: dict[str, Any], data: bytes, *, deadline: float | None = None) -> None:
        """Add one document's rows to ``out``; ``deadline`` (``time.monotonic()``) bounds its work (``timeout``)."""
        from pipelines.extract import is_audio, sniff_content_type

        path, declared = str(row[C.PATH]), str(row.get(C.CONTENT_TYPE) or "")
        sniffed = sniff_content_type(data, path, declared) if data else ""
        guessed = mimetypes.guess_type(posixpath.basename(path))[0] or ""
        if is_audio(sniffed) or (not data and guessed.startswith("audio/")):
            self._recording(out, row, sniffed or guessed)
        else:
            self._text_and_pictures(out, row, data, deadline)

    def _recording(self, out: RowWriter, row: dict[str, Any], content_type: str) -> None:
        """One pending recording row, with no samples: the audio stage reads the file from S3 again and decodes it
        there, so its samples (up to 460 MB for the longest allowed) never pass through Ray's object store."""
        if not self.settings.asr_model:
            raise ExtractionError("unsupported_type", f"{row[C.PATH]} is {content_type}: audio needs SLUICE_ASR_MODEL")
        row[C.CONTENT_TYPE] = content_type
        out.add(row, **{C.KIND: C.KIND_RECORDING, C.MODALITY: "audio", C.CHUNK_INDEX: 0})

    def _text_and_pictures(self, out: RowWriter, row: dict[str, Any], data: bytes,
                           deadline: float | None = None) -> None:
        from pipelines.chunk.image import plan_image_chunks
        from pipelines.extract import extract_document
        from pipelines.extract.base import check_deadline
        from pipelines.link import ChunkRef, build_links

        path = str(row[C.PATH])
        extracted = extract_document(data, path, str(row.get(C.CONTENT_TYPE) or ""), pdf=self.pdf,
                                     images=self.images, deadline=deadline)
        row[C.CONTENT_TYPE] = extracted.content_type
        row[C.PROPERTIES] = encode(extracted.properties)
        check_deadline(deadline, path, "the end of extraction")
        chunks = self.chunker.chunk(extracted.sections) if extracted.sections else []
        check_deadline(deadline, path, "the end of chunking")
        planned = plan_image_chunks(extracted.images, first_index=len(chunks), **self.layout)
        if not chunks and not planned:
            raise IngestError("no_chunks", "the extracted text gave no chunk")
        if not chunks and self.settings.ocr_engine == "none" and not self.settings.image_model:
            raise ExtractionError(
                "empty_content",
                f"{row[C.PATH]} has only pictures, and neither OCR (SLUICE_OCR_ENGINE) nor an image model "
                "(SLUICE_IMAGE_MODEL) is configured to index them",
            )
        refs = [ChunkRef.of(c) for c in chunks] + [ChunkRef.of(c) for c in planned]
        links = build_links(str(row[C.DOCUMENT_ID]), row[C.VERSION], refs)
        count = len(chunks) + len(planned)
        sparse = self.bm25.encode_documents([c.text for c in chunks])
        for chunk, (indices, values) in zip(chunks, sparse):
            out.add(row, **{C.CHUNK_INDEX: chunk.chunk_index, C.CHUNK_COUNT: count, C.TEXT: chunk.text,
                            C.PAGE: chunk.page or 0, C.HEADING: chunk.heading, C.SPARSE_INDICES: indices,
                            C.SPARSE_VALUES: values,
                            C.LINKS: json.dumps([link.to_payload() for link in links[("text", chunk.chunk_index)]])})
        by_item: dict[int, list] = {}
        for chunk in planned:
            by_item.setdefault(chunk.item_index, []).append(chunk)
        for item in extracted.images:
            mine = by_item[item.index]
            picture_links = {str(c.chunk_index): [link.to_payload() for link in links[("image", c.chunk_index)]]
                             for c in mine}
            meta = {"links": picture_links, "text_chunks": len(chunks), "pictures": len(extracted.images),
                    "item_index": item.index}
            out.add(row, **{C.KIND: C.KIND_PICTURE, C.MODALITY: "image", C.CHUNK_INDEX: mine[0].chunk_index,
                            C.CHUNK_COUNT: count, C.PAGE: item.page or 0, C.IMAGE_SOURCE: item.source,
                            C.IMAGE_BYTES: item.to_png_bytes(), C.BOX: (0, 0, item.width, item.height),
                            C.LINKS: json.dumps(meta)})
