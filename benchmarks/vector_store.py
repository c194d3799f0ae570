"""The vector store alone, on synthetic points shaped like Sluice's: Qdrant Edge beside qdrant-client local mode.

Points: 384-d dense vectors (unit length, drawn around 2,000 topic centres so that neighbours exist), BM25-like
sparse vectors (12 to 40 terms of a Zipf-distributed 30,000-term vocabulary), 100 tenants of Zipf-distributed sizes,
and Sluice's payload (tenant, document_id, version, is_latest, path, dirs, modality, chunk_index, text, metadata
``dept`` of 10 values and properties ``page_count``). For each
size it measures, in this one process (``EdgeBackend`` as the owner actor holds it, through ``VectorStore``):

* ``upsert_points_per_s``: writes in batches of 256 (``write_batch_size``), payload indexes in place: 256 over
  the median call. The writes start an HNSW build once a segment's worth is written (``builds_during_writes_s``);
  qdrant-edge-py holds the GIL while it builds, so a write that meets one waits: ``upsert_with_builds_points_per_s``
  is all points over all the time in ``upsert`` calls;
* ``optimize_s``: building what is left afterwards (off the query path in service); ``optimize_total_s``: every
  build of the run;
* ``hybrid_p50_ms``/``p99``: the search app's own request (``serve.search.query.build_query``: dense and BM25 legs,
  each tenant-filtered, BM25 IDF scoped to the tenant, fused by DBSF, payload returned), one query at a time;
* ``dense_p50_ms``, ``sparse_p50_ms``; ``hybrid_filtered_p50_ms`` (a metadata and a property filter on every leg);
  ``recall_at_10``: HNSW answers against exact search on tenant-filtered
  dense queries; ``rss_mb`` (the process) and ``disk_mb`` (the folder).

Beside it, in the same run, qdrant-client local mode (the first embedded store) at ``--legacy-size`` points.
Prints one JSON line per store and size.

    python benchmarks/vector_store.py [--sizes 100000,1000000] [--legacy-size 5000] [--queries 200]
        [--max-segment-kb 131072]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.search_latency import percentile  # noqa: E402

DIM = 384
VOCAB = 30_000
TENANTS = 100
BATCH = 256


def _tenant_sizes(n: int, rng) -> np.ndarray:
    weights = 1.0 / np.arange(1, TENANTS + 1) ** 0.8
    return rng.choice(TENANTS, size=n, p=weights / weights.sum())


class Synthetic:
    """Deterministic synthetic points and queries."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = np.random.default_rng(seed)
        self.centres = self.rng.standard_normal((2000, DIM)).astype(np.float32)
        zipf = 1.0 / np.arange(1, VOCAB + 1) ** 1.05
        self.term_cdf = np.cumsum(zipf / zipf.sum())

    def dense(self, n: int) -> np.ndarray:
        c = self.centres[self.rng.integers(0, len(self.centres), n)]
        v = c + 0.35 * self.rng.standard_normal((n, DIM)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def sparse(self) -> tuple[list[int], list[float]]:
        return self.sparse_many(1)[0]

    def sparse_many(self, n: int) -> list[tuple[list[int], list[float]]]:
        """``n`` sparse vectors of 12 to 39 Zipf-drawn terms (inverse-CDF sampling: a million points take seconds)."""
        lengths = self.rng.integers(12, 40, n)
        draws = np.minimum(np.searchsorted(self.term_cdf, self.rng.random(int(lengths.sum()))), VOCAB - 1)
        out = []
        for chunk in np.split(draws, np.cumsum(lengths)[:-1]):
            terms = np.unique(chunk)
            out.append((terms.tolist(), (1.0 + self.rng.random(len(terms))).astype(np.float32).tolist()))
        return out

    def points(self, start: int, n: int):
        from qdrant_client import models

        vectors = self.dense(n)
        tenants = _tenant_sizes(n, self.rng)
        out = []
        for k, (idx, val) in enumerate(self.sparse_many(n)):
            i = start + k
            doc = f"doc-{i // 20}"
            out.append(models.PointStruct.model_construct(
                id=str(uuid.UUID(int=i + 1)),
                vector={"text": vectors[k].tolist(), "bm25": models.SparseVector.model_construct(indices=idx, values=val)},
                payload={"tenant": f"tenant-{tenants[k]}", "document_id": doc, "version": 1, "is_latest": True,
                         "path": f"folder-{i % 50}/{doc}.md", "dirs": [f"folder-{i % 50}"], "modality": "text",
                         "chunk_index": i % 20, "text": f"chunk {i} of {doc}",
                         "metadata": {"dept": f"dept-{(i // 20) % 10}"}, "properties": {"page_count": (i // 20) % 30}}))
        return out


def _rss_mb() -> float:
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20, 1)


def _disk_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1)


def _optimize_total(store) -> float:
    """Seconds the Edge backend has spent optimising (0 for local mode)."""
    return sum(getattr(getattr(store, "backend", None), "optimize_total_s", {}).values())


def measure(store, data: Synthetic, size: int, queries: int, *, optimize: bool) -> dict:
    from qdrant_client import models

    from serve.search.query import SearchRequest, build_query

    store.ensure_collection(DIM)
    store.ensure_indexes({"metadata.dept": models.PayloadSchemaType.KEYWORD})  # as the ingest driver makes it
    written, calls = 0, []
    while written < size:
        n = min(BATCH * 40, size - written)
        pts = data.points(written, n)  # built outside the timer: the ingest sink builds them on its workers
        for s in range(0, n, BATCH):
            t0 = time.perf_counter()
            store.upsert(pts[s : s + BATCH])
            calls.append((len(pts[s : s + BATCH]), time.perf_counter() - t0))
        written += n
    spent = sum(t for _, t in calls)
    # A write that met a build waits for the GIL; the median call is the steady write rate.
    result = {"points": store.count(), "upsert_points_per_s": round(BATCH / percentile([t for _, t in calls], 50)),
              "upsert_with_builds_points_per_s": round(size / spent),
              "builds_during_writes_s": round(_optimize_total(store), 1)}
    store.flush()  # as an ingest's commit does: the WAL is then truncated (the disk figure is the store's own)
    if optimize:
        t0 = time.perf_counter()
        store.optimize(wait=True)
        result["optimize_s"] = round(time.perf_counter() - t0, 1)
        result["optimize_total_s"] = round(_optimize_total(store), 1)
    info = store.info()
    result["segments"] = info.segments if info else None
    qrng = np.random.default_rng(99)
    qvecs = data.dense(queries)
    tenants = [f"tenant-{t}" for t in _tenant_sizes(queries, qrng)]
    sparse = data.sparse_many(queries)
    timings = {}
    filtered = {"metadata": {"dept": "dept-3"}, "properties": {"page_count": {"gte": 10}}}
    for mode, filters in (("hybrid", None), ("dense", None), ("sparse", None), ("hybrid_filtered", filtered)):
        req = SearchRequest(query="q", mode=mode.split("_")[0], top_k=10, filters=filters)
        requests = [build_query(t, req, dense=v.tolist() if mode != "sparse" else None,
                                sparse=(s[0][:6], s[1][:6]) if mode != "dense" else None)
                    for t, v, s in zip(tenants, qvecs, sparse)]
        store.query(requests[0])
        lat = []
        for r in requests:
            t0 = time.perf_counter()
            store.query(r)
            lat.append((time.perf_counter() - t0) * 1000)
        timings[mode] = lat
    result["hybrid_p50_ms"] = round(percentile(timings["hybrid"], 50), 3)
    result["hybrid_p99_ms"] = round(percentile(timings["hybrid"], 99), 3)
    result["dense_p50_ms"] = round(percentile(timings["dense"], 50), 3)
    result["sparse_p50_ms"] = round(percentile(timings["sparse"], 50), 3)
    # Hybrid with a metadata and a property filter on every leg (README, "Document metadata").
    result["hybrid_filtered_p50_ms"] = round(percentile(timings["hybrid_filtered"], 50), 3)
    hits = total = 0
    for t, v in list(zip(tenants, qvecs))[: min(100, queries)]:
        flt = models.Filter(must=[models.FieldCondition(key="tenant", match=models.MatchValue(value=t)),
                                  models.FieldCondition(key="is_latest", match=models.MatchValue(value=True))])
        base = dict(query=v.tolist(), using="text", filter=flt, limit=10)
        approx = {str(p.id) for p in store.query(models.QueryRequest(**base))}
        exact = {str(p.id) for p in store.query(models.QueryRequest(**base, params=models.SearchParams(exact=True)))}
        hits += len(approx & exact)
        total += len(exact)
    result["recall_at_10"] = round(hits / max(total, 1), 4)
    result["rss_mb"] = _rss_mb()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000", help="comma-separated point counts for Qdrant Edge")
    parser.add_argument("--legacy-size", type=int, default=5000, help="points for qdrant-client local mode (0: skip)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--max-segment-kb", type=int, default=None, help="Edge's segment cap (0: none; default: edge.py's)")
    args = parser.parse_args(argv)

    from qdrant_client import QdrantClient

    from core.settings import Settings
    from core.vectorstore import VectorStore
    from core.vectorstore import edge
    from core.vectorstore.edge import EdgeBackend

    if args.max_segment_kb is not None:
        edge.MAX_SEGMENT_KB = args.max_segment_kb or None
    settings = Settings(qdrant_collection="bench")
    for size in [int(s) for s in args.sizes.split(",") if s]:
        folder = Path(tempfile.mkdtemp(prefix="sluice-bench-edge-"))
        try:
            store = VectorStore(settings, backend=EdgeBackend(folder))
            line = {"benchmark": "vector_store", "store": "qdrant-edge", "size": size, "cpus": os.cpu_count(),
                    "max_segment_kb": edge.MAX_SEGMENT_KB,
                    **measure(store, Synthetic(), size, args.queries, optimize=True), "disk_mb": _disk_mb(folder)}
            store.backend.close()
            print(json.dumps(line), flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    if args.legacy_size:
        folder = Path(tempfile.mkdtemp(prefix="sluice-bench-local-"))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                store = VectorStore(settings, client=QdrantClient(path=str(folder)))
                line = {"benchmark": "vector_store", "store": "qdrant-client-local-mode", "size": args.legacy_size,
                        **measure(store, Synthetic(), args.legacy_size, min(args.queries, 50), optimize=False),
                        "disk_mb": _disk_mb(folder)}
            print(json.dumps(line), flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
