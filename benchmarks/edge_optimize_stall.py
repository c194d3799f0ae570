"""Does building the HNSW graph stall the Edge store's other callers? (README, "Vector store", "Indexes".)

Writes ``--points`` synthetic points (``benchmarks/vector_store.py``'s generator) into an Edge shard in this
process, starts ``optimize`` in its background thread (``EdgeBackend.optimize(wait=False)``, as the owner actor does
after a commit), and meanwhile runs a tenant-filtered hybrid query from the calling thread every 10 ms. Prints one
JSON line: how long ``optimize(wait=False)`` took to return, the optimisation's duration, the queries answered while
it ran and the longest gap between two answers. A build that let go of Python's GIL would return at once and keep
the queries flowing; qdrant-edge-py 0.9 holds it for the whole build.

    python benchmarks/edge_optimize_stall.py [--points 30000]
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
    args = parser.parse_args(argv)

    from core.settings import Settings
    from core.vectorstore import VectorStore
    from core.vectorstore.edge import EdgeBackend
    from serve.search.query import SearchRequest, build_query

    store = VectorStore(Settings(qdrant_collection="stall"), backend=EdgeBackend(tempfile.mkdtemp(prefix="sluice-stall-")))
    store.ensure_collection(DIM)
    data = Synthetic()
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


if __name__ == "__main__":
    sys.exit(main())
