"""Does building the HNSW graph stall the Edge store's other callers? (README, "Vector store", "Indexes".)

Writes ``--points`` synthetic points (``benchmarks/vector_store.py``'s generator) into an Edge shard in this
process, starts ``optimize`` in its background thread (``EdgeBackend.optimize(wait=False)``, as the owner actor does
after a commit), and meanwhile runs a tenant-filtered hybrid query from the calling thread every 10 ms. Prints one
JSON line: how long ``optimize(wait=False)`` took to return, the optimisation's duration, the queries answered while
it ran and the longest gap between two answers. A build that let go of Python's GIL would return at once and keep
the queries flowing; qdrant-edge-py 0.9 holds it for the whole build.

With ``--grow STEP`` it instead writes ``--points`` in steps of ``STEP`` with an optimisation after each (as
ingests and their commits come), and prints each optimisation's seconds (the stall it causes), the segments and the
hybrid p50 of ``VectorStore.query_pages`` at the end; ``--max-segment-kb 0`` lifts the segment cap
(``core.vectorstore.edge.MAX_SEGMENT_KB``) to compare.

    python benchmarks/edge_optimize_stall.py [--points 30000]
    python benchmarks/edge_optimize_stall.py --grow 10000 --points 60000 [--max-segment-kb 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.vector_store import BATCH, DIM, Synthetic  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=30_000)
    parser.add_argument("--grow", type=int, default=0, help="write in steps of this many points, optimising after each")
    parser.add_argument("--max-segment-kb", type=int, default=None, help="the segment cap (0: none; default: edge.py's)")
    args = parser.parse_args(argv)

    from core.settings import Settings
    from core.vectorstore import VectorStore
    from core.vectorstore import edge
    from serve.search.query import SearchRequest, build_query

    if args.max_segment_kb is not None:
        edge.MAX_SEGMENT_KB = args.max_segment_kb or None
    store = VectorStore(Settings(qdrant_collection="stall"), backend=edge.EdgeBackend(tempfile.mkdtemp(prefix="sluice-stall-")))
    store.ensure_collection(DIM)
    data = Synthetic()
    if args.grow:
        return grow(store, data, args.points, args.grow, edge.MAX_SEGMENT_KB)
    for start in range(0, args.points, BATCH * 10):
        points = data.points(start, min(BATCH * 10, args.points - start))
        for s in range(0, len(points), BATCH):
            store.upsert(points[s : s + BATCH])
    query = build_query("tenant-0", SearchRequest(query="q", top_k=10), dense=data.dense(1)[0].tolist(),
                        sparse=data.sparse())
    store.query(query)
    t0 = time.perf_counter()
    store.optimize(wait=False)
    returned = time.perf_counter() - t0
    answered, last, longest = 0, time.perf_counter(), returned
    while store.backend._optimizing["stall"].is_alive():
        store.query(query)
        now = time.perf_counter()
        answered, longest, last = answered + 1, max(longest, now - last), now
        time.sleep(0.01)
    print(json.dumps({"benchmark": "edge_optimize_stall", "points": args.points,
                      "optimize_call_returned_after_s": round(returned, 2),
                      "optimize_s": round(time.perf_counter() - t0, 2), "queries_answered_meanwhile": answered,
                      "longest_gap_between_answers_s": round(longest, 2)}), flush=True)
    return 0


def grow(store, data, points: int, step: int, cap_kb: int | None) -> int:
    """Write ``points`` in steps of ``step`` with an optimisation after each; print the stalls and the end state."""
    import numpy as np

    from benchmarks.search_latency import percentile
    from benchmarks.vector_store import _tenant_sizes
    from serve.search.query import SearchRequest, build_query

    stalls = []
    while store.count() < points:
        batch = data.points(store.count(), min(step, points - store.count()))
        for s in range(0, len(batch), BATCH):
            store.upsert(batch[s : s + BATCH])
        t0 = time.perf_counter()
        store.optimize(wait=True)
        stalls.append(round(time.perf_counter() - t0, 1))
    rng = np.random.default_rng(99)
    tenants = [f"tenant-{t}" for t in _tenant_sizes(200, rng)]
    requests = [build_query(t, SearchRequest(query="q", top_k=10), dense=v.tolist(), sparse=(s[0][:6], s[1][:6]))
                for t, v, s in zip(tenants, data.dense(200), data.sparse_many(200))]
    latencies = []
    for request in requests:
        t0 = time.perf_counter()
        store.query_pages([request], [(0, 10)])
        latencies.append((time.perf_counter() - t0) * 1000)
    print(json.dumps({"benchmark": "edge_optimize_stall", "mode": "grow", "max_segment_kb": cap_kb,
                      "points": store.count(), "step": step, "optimize_s_per_step": stalls,
                      "segments": store.info().segments, "hybrid_p50_ms": round(percentile(latencies, 50), 2)}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
