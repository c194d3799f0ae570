"""Search latency on the ingested Vaswani index: ``POST /v1/search`` under concurrency, beside the bare store.

Builds (or, with ``--index-dir``, reuses what ``retrieval_quality.py`` built) the Vaswani index through the real
ingest job (``benchmarks.search_stack``), then sends the 93 queries in hybrid mode (``top_k=10``) to ``/v1/search``
over HTTP at concurrency 1, 8 and 32 for ``--rounds`` passes each, and measures p50/p99 latency and queries/s. The
answer cache is off (``search_cache_ttl_s=0``) so every request queries the store; query embeddings stay cached
after the first pass, as in service. The ``c1_cold``/``c8_cold`` passes make every query text unique, so each request
also encodes its query: the whole cost of a search nobody asked before. Beside that, in the same run: the same
queries straight to the vector store from this one process (``VectorStore.query_pages``, the very call the engine
makes, embeddings precomputed; ``overhead_ratio_p50_c1`` is Serve's p50 over it), and encoding the same queries one
at a time with the same model in this process, the floor of a search (``serve_over_encode_p50_c1`` and
``cold_serve_over_encode_p50_c1``). Prints one JSON line.

With ``--pad-to N`` the tenant is first grown to N chunks by near-copies of its own (:func:`pad_tenant`), to see
latency at a corpus size the real ingest would take an hour to build here.

    python benchmarks/search_latency.py ../shared/datasets/vaswani [--limit-docs N] [--index-dir DIR] [--rounds R]
        [--pad-to 100000] [--batch-wait-ms 3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.search_stack import TENANT, vaswani_search  # noqa: E402
from benchmarks.vaswani import read_queries  # noqa: E402

from tests.auth import bearer

CONCURRENCY = (1, 8, 32)
TOP_K = 10


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation, in the unit of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(latencies_s: list[float], wall_s: float, errors: int = 0) -> dict[str, float]:
    """p50/p99 in milliseconds and queries per second of one measured pass."""
    return {
        "p50_ms": round(percentile(latencies_s, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies_s, 99) * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies_s) * 1000, 2) if latencies_s else None,
        "qps": round(len(latencies_s) / wall_s, 2),
        "requests": len(latencies_s),
        "errors": errors,
    }


#: Distinct suffixes for ``cold`` requests, so that no query text repeats within a run (nor its embedding).
_FRESH = itertools.count()


async def http_load(base_url: str, texts: list[str], concurrency: int, rounds: int, *, cold: bool = False
                    ) -> dict[str, float]:
    """Send ``rounds`` passes of ``texts`` with ``concurrency`` requests in flight; latency of each request.

    ``cold``: every request's text is made unique (a number appended), so its embedding is not cached and the
    searcher encodes it: the whole cost of a search nobody asked before.
    """
    import httpx

    work = [f"{t} {next(_FRESH)}" if cold else t for _ in range(rounds) for t in texts]
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        queue: asyncio.Queue[str] = asyncio.Queue()
        for text in work:
            queue.put_nowait(text)

        async def worker() -> None:
            nonlocal errors
            while not queue.empty():
                text = queue.get_nowait()
                started = time.perf_counter()
                response = await client.post(f"{base_url}/v1/search", json={"query": text, "top_k": TOP_K},
                                             headers=bearer(TENANT))
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return summarise(latencies, wall, errors)


def store_load(settings, texts: list[str], rounds: int) -> dict[str, float]:
    """The same hybrid queries straight to the vector store, one at a time in this process (embeddings precomputed)."""
    from core.vectorstore import VectorStore
    from pipelines.embed.dense import TextEncoder
    from pipelines.sparse import Bm25Encoder
    from serve.search.query import SearchRequest, build_query

    store = VectorStore(settings)
    vectors = TextEncoder(settings.text_model).encode(texts)
    bm25 = Bm25Encoder(k1=settings.bm25_k1, b=settings.bm25_b, avg_len=settings.bm25_avg_len)
    calls = [
        build_query(TENANT, SearchRequest(query=t, top_k=TOP_K), dense=v.tolist(), sparse=bm25.encode_query(t),
                    rrf_k=settings.rrf_k)
        for t, v in zip(texts, vectors)
    ]
    store.query_pages(calls[:1], [(0, TOP_K)])  # warm the connection
    latencies = []
    started = time.perf_counter()
    for _ in range(rounds):
        for request in calls:
            t0 = time.perf_counter()
            store.query_pages([request], [(0, TOP_K)])  # what the engine asks: the ranking, the page's payloads
            latencies.append(time.perf_counter() - t0)
    return summarise(latencies, time.perf_counter() - started)


def encode_load(settings, texts: list[str], rounds: int) -> dict[str, float]:
    """Encoding the same queries one at a time with the same model in this one plain process (the floor of a search)."""
    from pipelines.embed.dense import TextEncoder

    encoder = TextEncoder(settings.text_model)
    encoder.encode(texts[:1])
    latencies = []
    started = time.perf_counter()
    for _ in range(rounds):
        for t in texts:
            t0 = time.perf_counter()
            encoder.encode([t])
            latencies.append(time.perf_counter() - t0)
    return summarise(latencies, time.perf_counter() - started)


def pad_tenant(settings, target: int, seed: int = 11) -> int:
    """Grow the benchmark tenant to ``target`` points with copies of its own chunks, then build the indexes.

    Each copy keeps a real chunk's BM25 terms and payload and gets a dense vector near the original's (cosine about
    0.95) under a new document id, so posting lists, HNSW and the tenant's share of the collection grow as a
    ``target``-chunk corpus would. Returns the points written.
    """
    import uuid

    import numpy as np
    from qdrant_client import models

    from core.vectorstore import VectorStore, tenant_only

    store = VectorStore(settings)
    have = store.count(tenant_only(TENANT))
    originals = list(store.scroll(tenant_only(TENANT), with_vectors=True))
    rng = np.random.default_rng(seed)
    written, batch = 0, []
    for n in range(max(0, target - have)):
        source = originals[n % len(originals)]
        vectors = dict(source.vector or {})
        if "text" in vectors:
            v = np.asarray(vectors["text"], dtype=np.float32)
            v = v + 0.3 * rng.standard_normal(v.shape).astype(np.float32) / np.sqrt(v.size)
            vectors["text"] = (v / np.linalg.norm(v)).tolist()
        doc = f"pad-{n // 20}"
        payload = {**(source.payload or {}), "document_id": doc, "path": f"pad/{doc}.txt", "chunk_index": n % 20,
                   "links": []}
        batch.append(models.PointStruct(id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"pad/{n}")), vector=vectors,
                                        payload=payload))
        if len(batch) == 256:
            store.upsert(batch)
            written, batch = written + len(batch), []
    if batch:
        store.upsert(batch)
        written += len(batch)
    store.optimize(wait=True)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vaswani", type=Path, help="folder of the Vaswani collection (../shared/datasets/vaswani)")
    parser.add_argument("--limit-docs", type=int, default=0, help="only the first N documents (0: all)")
    parser.add_argument("--index-dir", type=Path, default=None, help="reuse (or keep) the embedded Qdrant index here")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the 93 queries per concurrency level")
    parser.add_argument("--pad-to", type=int, default=0,
                        help="grow the tenant to this many chunks with near-copies of its own (0: Vaswani as it is); "
                        "the index folder is copied first, so --index-dir stays as the quality benchmark left it")
    parser.add_argument("--batch-wait-ms", type=float, default=None, help="the searcher's @serve.batch wait")
    args = parser.parse_args(argv)

    texts = list(read_queries(args.vaswani).values())
    index_dir, scratch = args.index_dir, None
    if args.pad_to and index_dir:
        if not index_dir.exists():
            parser.error("--pad-to pads a copy of --index-dir: build it first (retrieval_quality.py), or leave it out")
        scratch = Path(tempfile.mkdtemp(prefix="sluice-padded-"))
        shutil.copytree(index_dir, scratch / "qdrant")
        index_dir = scratch / "qdrant"
    try:
        return _run(args, texts, index_dir)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _run(args: argparse.Namespace, texts: list[str], index_dir: Path | None) -> int:
    app_args = {} if args.batch_wait_ms is None else {"batch_wait_timeout_s": args.batch_wait_ms / 1000}
    with vaswani_search(args.vaswani, limit_docs=args.limit_docs, index_dir=index_dir, app_args=app_args,
                        search_cache_ttl_s=0) as stack:
        padded = pad_tenant(stack.settings, args.pad_to) if args.pad_to else 0
        from core.vectorstore import VectorStore, tenant_only

        chunks = VectorStore(stack.settings).count(tenant_only(TENANT))
        asyncio.run(http_load(stack.base_url, texts, 4, 1))  # warm-up: replicas, connections, embedding cache
        serve_results = {f"c{c}": asyncio.run(http_load(stack.base_url, texts, c, args.rounds)) for c in CONCURRENCY}
        serve_results |= {f"c{c}_cold": asyncio.run(http_load(stack.base_url, texts, c, args.rounds, cold=True))
                          for c in (1, 8)}
        store_results = store_load(stack.settings, texts, args.rounds)
        encode_results = encode_load(stack.settings, texts, args.rounds)
        documents = len(stack.docs)
    line = {
        "benchmark": "search_latency",
        "documents": documents,
        "chunks": chunks,
        "padded_chunks": padded,
        "queries": len(texts),
        "rounds": args.rounds,
        "mode": "hybrid",
        "top_k": TOP_K,
        "serve_http": serve_results,
        "store_direct": store_results,
        "encode_only": encode_results,
        "overhead_ratio_p50_c1": round(serve_results["c1"]["p50_ms"] / store_results["p50_ms"], 2),
        "serve_over_encode_p50_c1": round(serve_results["c1"]["p50_ms"] / encode_results["p50_ms"], 2),
        "cold_serve_over_encode_p50_c1": round(serve_results["c1_cold"]["p50_ms"] / encode_results["p50_ms"], 2),
        "store": "embedded Qdrant Edge (one Ray actor)" if not stack.settings.qdrant_url else "qdrant server",
    }
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
