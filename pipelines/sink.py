"""The Qdrant sink: writes chunk rows as points, in batches, and reports per version what it wrote.

A Ray Data ``Datasink`` (Ray documentation, "Datasink"; modelled on Ray's own ``QdrantDatasink``): ``write`` runs on
the workers and returns per-version counts; ``on_write_complete`` runs on the driver and merges them into
:attr:`QdrantDatasink.outcomes`, which the ingest driver turns into catalog updates.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

from qdrant_client import models

from core.ids import point_id
from core.settings import Settings
from core.vectorstore import SPARSE_VECTOR, TEXT_VECTOR, VectorStore
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
    """

    written: int = 0
    chunk_count: int = 0
    error: tuple[str, str, str] | None = None

    def merge(self, other: "VersionOutcome") -> None:
        self.written += other.written
        self.chunk_count = max(self.chunk_count, other.chunk_count)
        self.error = self.error or other.error


def parent_dirs(path: str) -> list[str]:
    """Every folder above ``path``: ``"a/b/c.md"`` gives ``["a", "a/b"]`` (for path-prefix filters)."""
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def to_point(row: dict[str, Any]) -> models.PointStruct:
    """Build the point of one chunk row (deterministic id, so a rewrite replaces it)."""
    payload = {
        "tenant": row[C.TENANT],
        "document_id": row[C.DOCUMENT_ID],
        "version": int(row[C.VERSION]),
        "is_latest": True,
        "path": row[C.PATH],
        "dirs": parent_dirs(row[C.PATH]),
        "modality": row[C.MODALITY],
        "chunk_index": int(row[C.CHUNK_INDEX]),
        "text": row[C.TEXT],
        "content_type": row[C.CONTENT_TYPE],
        "heading": row[C.HEADING],
        "sha256": row[C.SHA256],
        "links": [],
    }
    if int(row[C.PAGE]):
        payload["page"] = int(row[C.PAGE])
    return models.PointStruct(
        id=point_id(row[C.DOCUMENT_ID], int(row[C.VERSION]), row[C.MODALITY], int(row[C.CHUNK_INDEX])),
        vector={
            TEXT_VECTOR: [float(x) for x in row[C.EMBEDDING]],
            SPARSE_VECTOR: models.SparseVector(
                indices=[int(x) for x in row[C.SPARSE_INDICES]], values=[float(x) for x in row[C.SPARSE_VALUES]]
            ),
        },
        payload=payload,
    )


class QdrantDatasink(Datasink[dict]):
    """Writes chunk rows to the collection in batches of ``settings.write_batch_size`` points.

    Args:
        settings: vector store settings and ``write_batch_size``.
        store: an injection seam for tests; by default a :class:`core.vectorstore.VectorStore` built lazily on
            the worker.
    """

    def __init__(self, settings: Settings, store: VectorStore | None = None) -> None:
        self.settings = settings
        self.store = store
        self.outcomes: dict[tuple[str, int], VersionOutcome] = {}

    def write(self, blocks: Iterable[Block], ctx: Any) -> dict:
        """Write the blocks' chunk rows; return ``{(document_id, version): VersionOutcome}``."""
        store = self.store or VectorStore(self.settings)
        outcomes: dict[tuple[str, int], VersionOutcome] = {}
        pending: list[models.PointStruct] = []
        pending_keys: list[tuple[str, int]] = []

        def flush() -> None:
            store.upsert(pending)
            for key in pending_keys:
                outcomes[key].written += 1
            pending.clear()
            pending_keys.clear()

        for block in blocks:
            for row in BlockAccessor.for_block(block).iter_rows(public_row_format=False):
                key = (str(row[C.DOCUMENT_ID]), int(row[C.VERSION]))
                outcome = outcomes.setdefault(key, VersionOutcome())
                if row[C.ERROR_REASON]:
                    outcome.error = (str(row[C.ERROR_STAGE]), str(row[C.ERROR_REASON]), str(row[C.ERROR_DETAIL]))
                    continue
                outcome.chunk_count = int(row[C.CHUNK_COUNT])
                pending.append(to_point(row))
                pending_keys.append(key)
                if len(pending) >= self.settings.write_batch_size:
                    flush()
        flush()
        return outcomes

    def on_write_complete(self, write_result: WriteResult[dict]) -> None:
        """Merge the workers' outcomes (runs on the driver)."""
        for returned in write_result.write_returns:
            for key, outcome in (returned or {}).items():
                self.outcomes.setdefault(key, VersionOutcome()).merge(outcome)

    def get_name(self) -> str:
        return "Qdrant"
