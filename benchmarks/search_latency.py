"""Search latency on the ingested Vaswani index: ``POST /v1/search`` under concurrency, beside the bare store.

Builds (or, with ``--index-dir``, reuses what ``retrieval_quality.py`` built) the Vaswani index through the real ingest
job (``benchmarks.search_stack``), then sends the 93 queries in hybrid mode (``top_k=10``) to ``/v1/search`` over
HTTP at concurrency 1, 8 and 32 for ``--rounds`` passes each, and measures p50/p99 latency and queries/s. The answer
cache is off (``search_cache_ttl_s=0``) so every request queries the store; query embeddings stay cached after the
first pass, as in service. Beside that, the same queries go straight to the vector store in this one process
(``VectorStore.query`` with the very Qdrant call the engine makes, embeddings precomputed), and the overhead ratio
is ``p50 through Serve at concurrency 1 / p50 straight to the store``; the floor is encoding the same queries one
at a time with the same model in this process (``serve_over_encode_p50_c1``). Prints one JSON line.

    python benchmarks/search_latency.py ../shared/datasets/vaswani [--limit-docs N] [--index-dir DIR] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.search_stack import TENANT, vaswani_search  # noqa: E402
from benchmarks.vaswani import read_queries  # noqa: E402

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


async def http_load(base_url: str, texts: list[str], concurrency: int, rounds: int) -> dict[str, float]:
    """Send ``rounds`` passes of ``texts`` with ``concurrency`` requests in flight; latency of each request."""
    import httpx

    work = [t for _ in range(rounds) for t in texts]
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
                                             headers={"X-User-ID": TENANT})
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
    store.query(calls[0])  # warm the connection
    latencies = []
    started = time.perf_counter()
    for _ in range(rounds):
        for request in calls:
            t0 = time.perf_counter()
            store.query(request)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vaswani", type=Path, help="folder of the Vaswani collection (../shared/datasets/vaswani)")
    parser.add_argument("--limit-docs", type=int, default=0, help="only the first N documents (0: all)")
    parser.add_argument("--index-dir", type=Path, default=None, help="reuse (or keep) the embedded Qdrant index here")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the 93 queries per concurrency level")
    args = parser.parse_args(argv)

    texts = list(read_queries(args.vaswani).values())
    with vaswani_search(args.vaswani, limit_docs=args.limit_docs, index_dir=args.index_dir, search_cache_ttl_s=0) as stack:
        asyncio.run(http_load(stack.base_url, texts, 4, 1))  # warm-up: replicas, connections, embedding cache
        serve_results = {f"c{c}": asyncio.run(http_load(stack.base_url, texts, c, args.rounds)) for c in CONCURRENCY}
        store_results = store_load(stack.settings, texts, args.rounds)
        encode_results = encode_load(stack.settings, texts, args.rounds)
        documents = len(stack.docs)
    line = {
        "benchmark": "search_latency",
        "documents": documents,
        "queries": len(texts),
        "rounds": args.rounds,
        "mode": "hybrid",
        "top_k": TOP_K,
        "serve_http": serve_results,
        "store_direct": store_results,
        "encode_only": encode_results,
        "overhead_ratio_p50_c1": round(serve_results["c1"]["p50_ms"] / store_results["p50_ms"], 2),
        "serve_over_encode_p50_c1": round(serve_results["c1"]["p50_ms"] / encode_results["p50_ms"], 2),
        "store": "embedded Qdrant Edge (one Ray actor)" if not stack.settings.qdrant_url else "qdrant server",
    }
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
