"""The embedded backend: Qdrant Edge (``qdrant-edge-py``, Qdrant's own engine in-process), one shard a collection.

Layout: ``<qdrant_path>/edge/<collection>/`` is one ``EdgeShard`` (segments, WAL, payload indexes). One process may
open a shard folder at a time, so every reader and writer goes through the one owner actor
(``core.vectorstore.owner``); this class is what that actor holds. It is thread-safe: queries run concurrently,
writes one at a time (a batch of operations is applied whole before the next write starts).

Indexing (README, "Vector store"): new points land in appendable segments that are searched exactly; the HNSW
graph is built by :meth:`optimize` in a background thread (never on the query path), scheduled after an ingest
commits and whenever the segments pile up. Qdrant's planner searches exactly where a filter leaves few points
(``full_scan_threshold``), so a small tenant in a large store is still answered exactly.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import qdrant_edge as qe
from qdrant_client import models

from core import metrics
from core.errors import CollectionNotFoundError, ConfigurationError, ServiceUnavailableError
from core.vectorstore import edge_translate as tr
from core.vectorstore.backend import PagedQueries
from core.vectorstore.schema import INDEXED_FIELDS, TENANT_FIELD, CollectionInfo, CollectionSpec

logger = logging.getLogger(__name__)

#: Segments past what full ones would make at which a write schedules an optimisation (Qdrant's default segment
#: number is about the CPU count).
SEGMENTS_BEFORE_OPTIMIZE = 8
#: Writes between two looks at the segment count (reading the shard's info costs more than a small write).
WRITES_PER_SEGMENT_CHECK = 64
#: Threads the HNSW build may use: one, so that a query always has a core on a small node.
INDEXING_THREADS = 1
#: Largest segment the optimiser merges into, in KB (about 21,000 of our points). qdrant-edge-py 0.9's optimize
#: holds the GIL, so the owner answers nothing while a graph is built; without a cap every ingest merged its
#: points into the one big segment and rebuilt it whole (measured, 10,000 points at a time up to 60,000: stalls of
#: 5, 14, 15, 17, 27 and 63 s), with it a build covers at most one segment (5 to 13 s each time; hybrid p50 3.3 ms
#: at 60,000 points in 4 segments, 3.9 ms uncapped in 2).
MAX_SEGMENT_KB: int | None = 32 * 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")

_SCHEMA = {
    models.PayloadSchemaType.KEYWORD: qe.PayloadSchemaType.Keyword,
    models.PayloadSchemaType.BOOL: qe.PayloadSchemaType.Bool,
    models.PayloadSchemaType.INTEGER: qe.PayloadSchemaType.Integer,
    models.PayloadSchemaType.FLOAT: qe.PayloadSchemaType.Float,
    models.PayloadSchemaType.DATETIME: qe.PayloadSchemaType.Datetime,
    models.PayloadSchemaType.TEXT: qe.PayloadSchemaType.Text,
}


def _config(dense: dict[str, int], sparse: Sequence[str]) -> qe.EdgeConfig:
    """The shard configuration of a collection: cosine dense vectors, IDF sparse vectors, HNSW, the segment cap."""
    return qe.EdgeConfig(
        vectors={name: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine) for name, dim in dense.items()},
        sparse_vectors={name: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf) for name in sparse},
        hnsw_config=qe.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=10_000,
                                       max_indexing_threads=INDEXING_THREADS),
        optimizers=qe.EdgeOptimizersConfig(max_segment_size=MAX_SEGMENT_KB),  # read at call time: benchmarks vary it
    )


def _failure(what: str, folder: Path, exc: Exception) -> Exception:
    """The engine's error as Sluice's, with what to do (the engine has one exception type; its text says why)."""
    text = str(exc)
    if "WouldBlock" in text:  # the WAL is locked by the process that has the folder open
        return ConfigurationError(
            f"the embedded vector store folder {folder} is open in another process ({what}): stop that process "
            "(`make down`, or the other Ray cluster using the same SLUICE_QDRANT_PATH), or point SLUICE_QDRANT_PATH "
            "at another folder")
    if "No space left" in text or "ENOSPC" in text or "os error 28" in text:
        return ServiceUnavailableError(
            "qdrant", f"the disk of the embedded vector store folder {folder} is full ({what}): free space there or "
            "move SLUICE_QDRANT_PATH; nothing was written")
    return ServiceUnavailableError("qdrant", f"embedded store {folder}: {what} failed: {text}")


class EdgeBackend(PagedQueries):
    """The collections of one storage folder, each an open ``EdgeShard``.

    Args:
        root: the storage folder (``settings.qdrant_path``).
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.base = self.root / "edge"
        self.base.mkdir(parents=True, exist_ok=True)
        self._shards: dict[str, qe.EdgeShard] = {}
        self._open_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._optimizing: dict[str, threading.Thread] = {}
        self.last_optimize_s: dict[str, float] = {}
        #: Seconds spent in every optimisation so far, per collection (benchmarks subtract them from write time).
        self.optimize_total_s: dict[str, float] = {}
        self._unbuilt: dict[str, int] = {}  # points upserted since the last optimisation started
        self._writes = 0
        self._specs: dict[str, tuple[dict[str, int], tuple[str, ...]]] = {}

    # --- collections ------------------------------------------------------------------------------------------

    def _folder(self, collection: str) -> Path:
        if not _NAME.match(collection):
            raise ConfigurationError(f"collection name {collection!r} is not a plain name (letters, digits, _.-)")
        return self.base / collection

    def _shard(self, collection: str) -> qe.EdgeShard:
        shard = self._shards.get(collection)
        if shard is not None:
            return shard
        with self._open_lock:
            if collection in self._shards:
                return self._shards[collection]
            folder = self._folder(collection)
            if not folder.is_dir():
                raise CollectionNotFoundError(collection)
            try:
                shard = self._load(collection, folder)
            except Exception as exc:  # noqa: BLE001 - the engine raises one type
                if not folder.exists():
                    raise CollectionNotFoundError(collection) from exc
                raise _failure("opening the collection", folder, exc) from exc
            self._shards[collection] = shard
            return shard

    def _load(self, collection: str, folder: Path) -> qe.EdgeShard:
        """Open a shard with today's configuration (:func:`_config`: the segment cap reaches collections made
        before it); a folder whose stored configuration the engine finds incompatible opens as it is."""
        try:
            dense, sparse = self._vectors(collection)
        except (OSError, ValueError, KeyError):
            return qe.EdgeShard.load(str(folder))
        try:
            return qe.EdgeShard.load(str(folder), _config(dense, sparse))
        except Exception as exc:  # noqa: BLE001 - the engine raises one type
            if "WouldBlock" in str(exc):  # held by another process: say so, not "incompatible"
                raise
            logger.warning("collection %s keeps its stored configuration: %s", collection, exc)
            return qe.EdgeShard.load(str(folder))

    def collections(self) -> list[str]:
        return sorted(p.name for p in self.base.iterdir() if p.is_dir())

    def describe(self, collection: str) -> CollectionInfo | None:
        try:
            shard = self._shard(collection)
        except CollectionNotFoundError:
            return None
        info = shard.info()
        metrics.vectorstore_info(collection, int(info.points_count), int(info.segments_count))
        dense, sparse = self._vectors(collection)
        return CollectionInfo(dense=dense, sparse=sparse, points=int(info.points_count),
                              segments=int(info.segments_count), indexed_vectors=int(info.indexed_vectors_count))

    def indexes(self, collection: str) -> set[str]:
        """The payload fields that have an index."""
        return set(self._shard(collection).info().payload_schema)

    def create_index(self, collection: str, field: str, schema: models.PayloadSchemaType) -> None:
        """Index a payload field (the points already there included)."""
        self._apply(collection, [qe.UpdateOperation.create_field_index(field, _SCHEMA[schema])], "an index creation")

    def _vectors(self, collection: str) -> tuple[dict[str, int], tuple[str, ...]]:
        """The collection's vectors, read once from ``sluice_spec.json`` (fixed when the collection is made)."""
        import json

        if collection not in self._specs:
            spec = json.loads((self._folder(collection) / "sluice_spec.json").read_text())
            self._specs[collection] = ({k: int(v) for k, v in spec["dense"].items()}, tuple(spec["sparse"]))
        return self._specs[collection]

    def create(self, collection: str, spec: CollectionSpec) -> None:
        import json

        folder = self._folder(collection)
        with self._open_lock:
            if collection in self._shards or folder.exists():
                return
            config = _config(spec.dense, spec.sparse)
            staging = folder.with_name(f".{collection}.creating")
            shutil.rmtree(staging, ignore_errors=True)
            try:
                shard = qe.EdgeShard.create(str(staging), config)
                for field, schema in INDEXED_FIELDS.items():
                    params: Any = _SCHEMA[schema]
                    if field == TENANT_FIELD:
                        params = qe.KeywordIndexParams(is_tenant=True)
                    shard.update(qe.UpdateOperation.create_field_index(field, params))
                shard.flush()
                shard.close()
                (staging / "sluice_spec.json").write_text(json.dumps({"dense": spec.dense, "sparse": list(spec.sparse)}))
                staging.rename(folder)  # a crash before this leaves no half-made collection behind
            except Exception as exc:  # noqa: BLE001
                shutil.rmtree(staging, ignore_errors=True)
                raise _failure("creating the collection", folder, exc) from exc
        logger.info("created embedded collection %s in %s", collection, folder)

    def drop(self, collection: str) -> None:
        with self._open_lock, self._write_lock:
            self._specs.pop(collection, None)
            shard = self._shards.pop(collection, None)
            if shard is not None:
                shard.close()
            shutil.rmtree(self._folder(collection), ignore_errors=True)

    # --- writes -----------------------------------------------------------------------------------------------

    def _apply(self, collection: str, operations: Sequence[Any], what: str) -> None:
        shard = self._shard(collection)
        with self._write_lock:
            try:
                for op in operations:
                    shard.update(op)
            except Exception as exc:  # noqa: BLE001
                raise _failure(what, self._folder(collection), exc) from exc
        self._writes += 1
        if self._writes % WRITES_PER_SEGMENT_CHECK == 0 and self._piled_up(collection, shard):
            self.optimize(collection, wait=False)

    def _piled_up(self, collection: str, shard: qe.EdgeShard) -> bool:
        """Whether there are ``SEGMENTS_BEFORE_OPTIMIZE`` more segments than full ones would make (capped segments
        grow in number with the collection; small ones left by deletes and updates are what a merge is for)."""
        info = shard.info()
        metrics.vectorstore_info(collection, int(info.points_count), int(info.segments_count))
        per_segment = self._segment_points(collection)
        full = int(info.points_count) // per_segment if per_segment else 0
        return int(info.segments_count) > SEGMENTS_BEFORE_OPTIMIZE + full

    def upsert(self, collection: str, points: Sequence[Any]) -> None:
        """Write points (``PointStruct`` or the packed ``(id, vectors, payload)``); applied when this returns.

        New points fill one appendable segment, which the optimiser turns into one indexed segment whatever its
        size (the cap limits merges, not that); so once a segment's worth has been written
        (:meth:`_segment_points`), an optimisation starts in the background, and one big ingest leaves segments
        of the capped size rather than one segment of everything (whose single HNSW build, at a million points,
        took over 80 minutes with the owner answering nothing).
        """
        if not points:
            return
        self._apply(collection, [qe.UpdateOperation.upsert_points([tr.point(p) for p in points])], "an upsert")
        unbuilt = self._unbuilt.get(collection, 0) + len(points)
        self._unbuilt[collection] = unbuilt
        every = self._segment_points(collection)
        if every and unbuilt >= every:
            self.optimize(collection, wait=False)

    def _segment_points(self, collection: str) -> int | None:
        """Points of a full segment (``MAX_SEGMENT_KB`` of dense vectors), or ``None`` without a cap."""
        if not MAX_SEGMENT_KB:
            return None
        try:
            dims = sum(self._vectors(collection)[0].values())
        except (OSError, ValueError, KeyError):
            return None
        return max(1, MAX_SEGMENT_KB * 1024 // (4 * max(dims, 1)))

    def update(self, collection: str, operations: Sequence[Any]) -> None:
        """Apply ``SetPayloadOperation`` and ``DeleteOperation`` (by filter) in order, as one write."""
        ops = []
        for op in operations:
            if isinstance(op, models.SetPayloadOperation):
                flt = tr.filter_(op.set_payload.filter)
                if flt is None:
                    raise TypeError("set_payload by filter only")
                ops.append(qe.UpdateOperation.set_payload_by_filter(flt, dict(op.set_payload.payload)))
            elif isinstance(op, models.DeleteOperation) and isinstance(op.delete, models.FilterSelector):
                ops.append(qe.UpdateOperation.delete_points_by_filter(tr.filter_(op.delete.filter)))
            else:
                raise TypeError(f"operation {type(op).__name__} has no Edge translation")
        self._apply(collection, ops, "an update")

    def flush(self, collection: str) -> None:
        try:
            self._shard(collection).flush()
        except CollectionNotFoundError:
            return

    def optimize(self, collection: str, *, wait: bool = True) -> bool:
        """Build the HNSW graphs and merge small segments, in a background thread; ``wait``: until it is done.

        Returns:
            ``True`` when an optimisation ran (or was started) by this call.
        """
        shard = self._shard(collection)

        def run() -> None:
            started = time.perf_counter()
            try:
                shard.optimize()
            except Exception:  # noqa: BLE001 - logged; the next call tries again
                logger.exception("optimising %s failed", collection)
            spent = time.perf_counter() - started
            self.last_optimize_s[collection] = round(spent, 3)
            metrics.vectorstore_optimized(collection, spent, info=shard.info)
            self.optimize_total_s[collection] = self.optimize_total_s.get(collection, 0.0) + spent

        with self._open_lock:
            running = self._optimizing.get(collection)
            if running is None or not running.is_alive():
                running = threading.Thread(target=run, name=f"optimize-{collection}", daemon=True)
                self._optimizing[collection] = running
                self._unbuilt[collection] = 0  # what is written from now on waits for the next one
                running.start()
                started = True
            else:
                started = False
        if wait:
            running.join()
        return started

    # --- reads ------------------------------------------------------------------------------------------------

    def query_batch(self, collection: str, requests: Sequence[models.QueryRequest]) -> list[list[models.ScoredPoint]]:
        shard = self._shard(collection)
        translated = [tr.query_request(r) for r in requests]
        if len(translated) == 1:
            return [tr.scored(shard.query(translated[0]))]
        return [tr.scored(points) for points in shard.query_batch(qe.QueryBatchRequest(translated))]

    def count(self, collection: str, flt: models.Filter | None) -> int:
        return int(self._shard(collection).count(qe.CountRequest(exact=True, filter=tr.filter_(flt))))

    def scroll(self, collection: str, flt: models.Filter | None, *, limit: int, offset: Any = None,
               with_payload: Any = True, with_vectors: Any = False) -> tuple[list[models.Record], Any]:
        records, nxt = self._shard(collection).scroll(qe.ScrollRequest(
            offset=tr.point_id(offset) if offset is not None else None, limit=limit, filter=tr.filter_(flt),
            with_payload=tr.with_payload(with_payload), with_vector=tr.with_vectors(with_vectors)))
        return tr.records(records), (str(nxt) if nxt is not None else None)

    def retrieve(self, collection: str, ids: Sequence[Any], *, with_payload: Any = True,
                 with_vectors: Any = False) -> list[models.Record]:
        return tr.records(self._shard(collection).retrieve(
            [tr.point_id(i) for i in ids], with_payload=tr.with_payload(with_payload),
            with_vector=tr.with_vectors(with_vectors)))

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        with self._open_lock, self._write_lock:
            for shard in self._shards.values():
                shard.flush()
                shard.close()
            self._shards.clear()
