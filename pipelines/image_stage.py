"""The image stage: pending picture rows become image chunks (OCR text, BM25 terms, CLIP vectors), on an actor pool.

Sits between the prepare stage and the text embed stage. Reads every chunk column; for each row of kind
``"picture"`` (one picture, its PNG in ``image_bytes``) it

1. decodes the picture (``pipelines.extract.image.ImageExtractor``; the PNG was written by the prepare stage),
2. runs OCR once on the whole picture (``pipelines.ocr.make_ocr(settings.ocr_engine)``),
3. plans the picture's chunks again (``pipelines.chunk.image.plan_image_chunks`` with the prepare stage's layout:
   deterministic, so the same chunk indexes and boxes) and gives each its OCR text (``attach_text``),
4. embeds each chunk's pixels with CLIP (``pipelines.embed.image.ClipEncoder``) when ``settings.image_model`` is set,
   and BM25-encodes its OCR text,

and emits one row per chunk (kind ``"image"`` or ``"tile"``, ``modality == "image"``), with the links the prepare
stage built for it. Every other row passes through unchanged. Writes ``image_embedding`` (``float32 (rows,
image_dim)``, zero rows where a row has no CLIP vector) when an image model is configured; ``image_bytes`` is
emptied on the way out (the sink never needs pixels).

Failure policy: a picture that fails (OCR error, a decoding error) turns into the version's error row; the
version then fails as a whole (its other rows are written and then deleted by the driver). A document made of one
picture whose OCR found no text, when no image model is configured, fails with ``empty_content``: it would be
indexed with no vector any query can reach. A picture whose worker died on it ``max_document_attempts`` times
(:class:`pipelines.attempts.AttemptGuard`) fails its version as ``worker_crash`` instead of being tried again.

The models load on the first picture (``warm_up``, idempotent), so a run without pictures pays nothing for them.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from core import metrics
from core.errors import ExtractionError, IngestError
from core.settings import Settings
from pipelines import columns as C
from pipelines.attempts import AttemptGuard
from pipelines.prepare import RowWriter, image_layout

logger = logging.getLogger(__name__)


class ImageStage:
    """A Ray Data callable class: chunk rows in, chunk rows out, pending pictures replaced by their image chunks.

    Args:
        settings: ``ocr_engine``, ``image_model``, ``image_*`` tiling, ``bm25_*`` and ``embed_batch_size``.
        device: for CLIP; ``None`` picks CUDA when the actor was given a GPU.
        num_threads: CPU threads of this actor, passed to RapidOCR (onnxruntime intra-op threads) and to torch
            (CLIP); ``None``: the libraries' defaults.
        ocr, clip: injection seams (an :class:`pipelines.ocr.OcrEngine`, a ``ClipEncoder``-like object with
            ``encode_images`` and ``dimension``); built from ``settings`` by default.
    """

    def __init__(self, settings: Settings, device: str | None = None, num_threads: int | None = None, *,
                 ocr: Any | None = None, clip: Any | None = None) -> None:
        from pipelines.sparse import Bm25Encoder

        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads={num_threads} must be at least 1")
        self.settings = settings
        self.device = device
        self.num_threads = num_threads
        self.layout = image_layout(settings)
        self.bm25 = Bm25Encoder(k1=settings.bm25_k1, b=settings.bm25_b, avg_len=settings.bm25_avg_len)
        self.ocr = ocr
        self.clip = clip
        self.image_dim = 0
        if clip is None and settings.image_model:
            from pipelines.embed.image import image_model_dimension

            self.image_dim = image_model_dimension(settings.image_model)
        elif clip is not None:
            self.image_dim = int(clip.dimension)
        self._warm = False
        self.attempts = AttemptGuard(settings, "image")

    def warm_up(self) -> None:
        """Build the OCR engine and load CLIP once (idempotent).

        Raises:
            ConfigurationError: the OCR engine or the image model is not available.
        """
        if self._warm:
            return
        from pipelines.ocr import make_ocr

        if self.ocr is None:
            kwargs = {"num_threads": self.num_threads} if self.settings.ocr_engine == "rapidocr" and self.num_threads else {}
            self.ocr = make_ocr(self.settings.ocr_engine, **kwargs)
        if self.clip is None and self.settings.image_model:
            from pipelines.embed.image import ClipEncoder

            self.clip = ClipEncoder(self.settings.image_model, device=self.device, num_threads=self.num_threads,
                                    batch_size=min(32, self.settings.embed_batch_size))
        if self.clip is not None:
            self.clip.warm_up() if hasattr(self.clip, "warm_up") else None
        self._warm = True

    @metrics.timed("image")
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """Replace the batch's pending picture rows by their image chunks; pass the other rows through."""
        n = len(batch[C.DOCUMENT_ID])
        kinds = batch.get(C.KIND)
        pictures = [i for i in range(n) if kinds is not None and str(kinds[i]) == C.KIND_PICTURE
                    and not batch[C.ERROR_REASON][i]]
        if not pictures:
            return self._with_image_column(batch, np.zeros((n, self.image_dim), dtype=np.float32))
        self.warm_up()
        writer = RowWriter()
        vectors: list[np.ndarray] = []
        zero = np.zeros(self.image_dim, dtype=np.float32)
        picture_set = set(pictures)
        for i in range(n):
            row = {name: batch[name][i] for name in C.VERSION_COLUMNS}
            if i not in picture_set:
                writer.add(row, **{name: _item(batch[name][i]) for name in C.CHUNK_COLUMNS if name in batch})
                vectors.append(zero)
                continue
            given_up = self.attempts.begin(row)  # durable before the work: OCR or decoding may kill this process
            if given_up is not None:
                writer.error(row, *given_up)
                vectors.append(zero)
                continue
            try:
                rows = self._picture(batch, i)
            except IngestError as exc:
                logger.info("picture of %s/%s failed: %s", row[C.DOCUMENT_ID], row[C.VERSION], exc)
                writer.error(row, exc.stage, exc.reason, exc.detail)
                vectors.append(zero)
                continue
            except Exception as exc:  # a library error fails this version only
                logger.exception("picture of %s/%s failed unexpectedly", row[C.DOCUMENT_ID], row[C.VERSION])
                writer.error(row, "image", "internal_error", f"{type(exc).__name__}: {exc}")
                vectors.append(zero)
                continue
            finally:
                self.attempts.end(row)
            for values, vector in rows:
                writer.add(row, **values)
                vectors.append(zero if vector is None else vector)
        out = writer.columns()
        out[C.IMAGE_BYTES] = [b""] * len(out[C.DOCUMENT_ID])
        matrix = np.stack(vectors) if vectors else np.zeros((0, self.image_dim), dtype=np.float32)
        return self._with_image_column(out, matrix.astype(np.float32, copy=False))

    def _with_image_column(self, batch: dict[str, Any], matrix: np.ndarray) -> dict[str, Any]:
        if self.image_dim:
            batch[C.IMAGE_EMBEDDING] = matrix
        return batch

    def _picture(self, batch: dict[str, np.ndarray], i: int) -> list[tuple[dict[str, Any], np.ndarray | None]]:
        """The chunk rows (and CLIP vectors) of the pending picture row ``i``."""
        from pipelines.chunk.image import attach_text, crop, plan_image_chunks
        from pipelines.extract.image import ImageExtractor

        meta = json.loads(str(batch[C.LINKS][i]))
        path = str(batch[C.PATH][i])
        page = int(batch[C.PAGE][i]) or None
        source = str(batch[C.IMAGE_SOURCE][i]) or "file"
        item = ImageExtractor(max_pixels=self.settings.image_max_pixels).extract(
            bytes(batch[C.IMAGE_BYTES][i]), path, source=source, page=page, index=int(meta["item_index"]))
        chunks = plan_image_chunks([item], first_index=int(batch[C.CHUNK_INDEX][i]), **self.layout)
        lines = self.ocr.recognize(item.image)
        chunks = attach_text(chunks, {item.index: lines})
        if (not chunks[0].text.strip() and self.clip is None and int(meta["text_chunks"]) == 0
                and int(meta["pictures"]) == 1):
            raise ExtractionError(
                "empty_content",
                f"{path}: OCR found no text in the picture and no image model (SLUICE_IMAGE_MODEL) is configured",
            )
        clip_vectors: list[np.ndarray | None] = [None] * len(chunks)
        if self.clip is not None:
            embedded = self.clip.encode_images([crop(item.image, chunk) for chunk in chunks])
            clip_vectors = list(np.asarray(embedded, dtype=np.float32))
        sparse = self.bm25.encode_documents([chunk.text for chunk in chunks])
        links = meta["links"]
        rows = []
        for chunk, vector, (indices, values) in zip(chunks, clip_vectors, sparse):
            rows.append(({
                C.CHUNK_INDEX: chunk.chunk_index, C.CHUNK_COUNT: int(batch[C.CHUNK_COUNT][i]), C.TEXT: chunk.text,
                C.PAGE: chunk.page or 0, C.MODALITY: "image", C.KIND: chunk.kind, C.BOX: chunk.box,
                C.PARENT_INDEX: -1 if chunk.parent_index is None else chunk.parent_index,
                C.IMAGE_SOURCE: chunk.source, C.SPARSE_INDICES: indices, C.SPARSE_VALUES: values,
                C.LINKS: json.dumps(links.get(str(chunk.chunk_index), [])),
            }, vector))
        return rows


def _item(value: Any) -> Any:
    """A numpy scalar as its Python value (arrays and bytes as they are)."""
    if isinstance(value, np.generic):
        return value.item()
    return value
