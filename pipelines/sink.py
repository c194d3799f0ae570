"""The Qdrant sink: writes chunk rows as points, in batches, and reports per version what it wrote.

A Ray Data ``Datasink`` (Ray documentation, "Datasink"; modelled on Ray's own ``QdrantDatasink``): ``write`` runs on
the workers and returns per-version counts; ``on_write_complete`` runs on the driver and merges them into
:attr:`QdrantDatasink.outcomes`, which the ingest driver turns into catalog updates.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from qdrant_client import models

from core import metrics
from core.ids import point_id
from core.metadata import decode
from core.settings import Settings
from core.vectorstore import IMAGE_VECTOR, SPARSE_VECTOR, TEXT_VECTOR, VectorStore
from pipelines import columns as C

from ray.data.block import Block, BlockAccessor
from ray.data.datasource.datasink import Datasink, WriteResult

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class VersionOutcome:
    """What the sink saw of one version.

    Attributes:
        written: points written. chunk_count: chunks the prepare stage made (the target).
        error: ``(stage, reason, detail)`` when the version failed before the sink, else ``None``.
        properties: what the file says of itself (``core.metadata.PROPERTY_FIELDS``), as the rows carried it.
        write_s: seconds the sink spent writing this version's points (each batch's time shared by its points).
    """

    written: int = 0
    chunk_count: int = 0
    error: tuple[str, str, str] | None = None
    properties: dict | None = None
    write_s: float = 0.0

    def merge(self, other: "VersionOutcome") -> None:
        self.written += other.written
        self.write_s += other.write_s
        self.chunk_count = max(self.chunk_count, other.chunk_count)
        self.error = self.error or other.error
        if other.properties is not None:  # every row of a version carries the same properties
            self.properties = {**(self.properties or {}), **other.properties}


def parent_dirs(path: str) -> list[str]:
    """Every folder above ``path``: ``"a/b/c.md"`` gives ``["a", "a/b"]`` (for path-prefix filters)."""
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def to_points(
    columns: dict[str, np.ndarray], shown: frozenset[tuple[str, int]] | set[tuple[str, int]] = frozenset()
) -> tuple[list[models.PointStruct], list[tuple[str, int]]]:
    """Build the points of a block's chunk rows, column-wise; error rows are skipped.

    Each point gets only the vectors its row has: ``text`` (``embedding``) and ``bm25`` when the row has text (an
    image without OCR text, or an audio file without speech, has neither: a zero vector is invalid under cosine);
    ``image`` (``image_embedding``) on image and tile rows when an image model is configured. A row with no vector
    at all is still written (Qdrant allows a point without vectors): it is reached through its links and filters.

    Args:
        columns: the block as numpy columns (``pipelines.columns``); ``embedding`` is ``float32 (rows, dim)``,
            ``image_embedding`` (optional) ``float32 (rows, image_dim)``. The media columns are optional (a text-only
            block from an older pipeline).
        shown: the ``(document_id, version)`` that search already shows (a re-index in place): their points are
            written with ``is_latest`` true. Every other version's points are written with ``is_latest`` false, so
            no search sees them until the version is committed (``core.lifecycle.commit_versions``).

    Returns:
        The points (deterministic ids, so a rewrite replaces them) and, for each, its ``(document_id, version)``.
        Payload: the fields of ``core.vectorstore.schema`` (``links`` from the ``links`` column; ``metadata`` and
        ``properties`` objects from their JSON columns), plus ``kind``, ``box``,
        ``parent_index`` and ``image_source`` on image rows and ``start_s``/``end_s`` on audio rows. The models are
        built with ``model_construct``: the values come typed from the pipeline, and validating millions of floats
        again cost half a core (measured on Vaswani).

    Raises:
        ValueError: a row still pending (kind ``picture`` or ``recording``: a stage was left out of the pipeline).
    """
    vectors = np.asarray(columns[C.EMBEDDING], dtype=np.float32).tolist()
    images = np.asarray(columns[C.IMAGE_EMBEDDING], dtype=np.float32) if C.IMAGE_EMBEDDING in columns else None
    kinds = columns.get(C.KIND)
    points: list[models.PointStruct] = []
    keys: list[tuple[str, int]] = []
    decoded: dict[tuple[str, str], dict] = {}  # the JSON of a version's metadata and properties, parsed once

    def fields(name: str, i: int) -> dict:
        text = str(columns[name][i]) if name in columns else ""
        if (name, text) not in decoded:
            decoded[(name, text)] = decode(text)
        return decoded[(name, text)]

    for i in range(len(vectors)):
        if columns[C.ERROR_REASON][i]:
            continue
        kind = str(kinds[i]) if kinds is not None else ""
        if kind in (C.KIND_PICTURE, C.KIND_RECORDING):
            raise ValueError(f"row {i} of {columns[C.PATH][i]} is still a pending {kind}: its stage did not run")
        document_id, version = str(columns[C.DOCUMENT_ID][i]), int(columns[C.VERSION][i])
        modality, chunk_index, path = str(columns[C.MODALITY][i]), int(columns[C.CHUNK_INDEX][i]), str(columns[C.PATH][i])
        text = str(columns[C.TEXT][i])
        payload = {
            "tenant": str(columns[C.TENANT][i]),
            "document_id": document_id,
            "version": version,
            "is_latest": (document_id, version) in shown,
            "path": path,
            "dirs": parent_dirs(path),
            "modality": modality,
            "chunk_index": chunk_index,
            "text": text,
            "content_type": str(columns[C.CONTENT_TYPE][i]),
            "heading": str(columns[C.HEADING][i]),
            "sha256": str(columns[C.SHA256][i]),
            "links": json.loads(str(columns[C.LINKS][i])) if C.LINKS in columns and columns[C.LINKS][i] else [],
            "metadata": fields(C.METADATA, i),
            "properties": fields(C.PROPERTIES, i),
        }
        if C.CREATED_AT in columns and columns[C.CREATED_AT][i]:
            payload["created_at"] = str(columns[C.CREATED_AT][i])  # the version's registration time, for filters
        if int(columns[C.PAGE][i]):
            payload["page"] = int(columns[C.PAGE][i])
        if kind:
            payload["kind"] = kind
        if kind in (C.KIND_IMAGE, C.KIND_TILE):
            payload["box"] = [int(v) for v in np.asarray(columns[C.BOX][i]).tolist()]
            payload["image_source"] = str(columns[C.IMAGE_SOURCE][i])
            if int(columns[C.PARENT_INDEX][i]) >= 0:
                payload["parent_index"] = int(columns[C.PARENT_INDEX][i])
        if modality == "audio":
            payload["start_s"] = round(float(columns[C.START_S][i]), 3)
            payload["end_s"] = round(float(columns[C.END_S][i]), 3)
            if not text.strip():
                payload["no_speech"] = True
        named: dict = {}
        if text.strip():
            named[TEXT_VECTOR] = vectors[i]
        indices = np.asarray(columns[C.SPARSE_INDICES][i]).tolist()
        if indices:
            named[SPARSE_VECTOR] = models.SparseVector.model_construct(
                indices=indices, values=np.asarray(columns[C.SPARSE_VALUES][i], dtype=np.float32).tolist())
        if images is not None and kind in (C.KIND_IMAGE, C.KIND_TILE) and images.shape[1] and np.any(images[i]):
            named[IMAGE_VECTOR] = images[i].tolist()
        points.append(
            models.PointStruct.model_construct(
                id=point_id(document_id, version, modality, chunk_index), vector=named, payload=payload)
        )
        keys.append((document_id, version))
    return points, keys


class QdrantDatasink(Datasink[dict]):
    """Writes chunk rows to the collection in batches of ``settings.write_batch_size`` points.

    Args:
        settings: vector store settings and ``write_batch_size``.
        store: an injection seam for tests; by default a :class:`core.vectorstore.VectorStore` built lazily on
            the worker.
        shown: the ``(document_id, version)`` pairs already searchable (see :func:`to_points`).
    """

    def __init__(self, settings: Settings, store: VectorStore | None = None, *,
                 shown: frozenset[tuple[str, int]] = frozenset()) -> None:
        self.settings = settings
        self.store = store
        self.shown = frozenset(shown)
        self.outcomes: dict[tuple[str, int], VersionOutcome] = {}

    @metrics.timed("write")
    def write(self, blocks: Iterable[Block], ctx: Any) -> dict:
        """Write the blocks' chunk rows; return ``{(document_id, version): VersionOutcome}``."""
        store = self.store or VectorStore(self.settings)
        outcomes: dict[tuple[str, int], VersionOutcome] = {}
        batch = self.settings.write_batch_size
        for block in blocks:
            accessor = BlockAccessor.for_block(block)
            if accessor.num_rows() == 0:
                continue
            columns = accessor.to_numpy()
            for i in range(accessor.num_rows()):
                outcome = outcomes.setdefault((str(columns[C.DOCUMENT_ID][i]), int(columns[C.VERSION][i])), VersionOutcome())
                if columns[C.ERROR_REASON][i]:
                    outcome.error = (str(columns[C.ERROR_STAGE][i]), str(columns[C.ERROR_REASON][i]), str(columns[C.ERROR_DETAIL][i]))
                else:
                    outcome.chunk_count = int(columns[C.CHUNK_COUNT][i])
                    if C.PROPERTIES in columns and outcome.properties is None:
                        outcome.properties = decode(str(columns[C.PROPERTIES][i]))
            points, keys = to_points(columns, self.shown)
            for start in range(0, len(points), batch):
                started = time.perf_counter()
                store.upsert(points[start : start + batch])
                share = (time.perf_counter() - started) / len(points[start : start + batch])
                for key in keys[start : start + batch]:
                    outcomes[key].written += 1
                    outcomes[key].write_s += share
        return outcomes

    def on_write_complete(self, write_result: WriteResult[dict]) -> None:
        """Merge the workers' outcomes (runs on the driver)."""
        for returned in write_result.write_returns:
            for key, outcome in (returned or {}).items():
                self.outcomes.setdefault(key, VersionOutcome()).merge(outcome)

    def get_name(self) -> str:
        return "Qdrant"
