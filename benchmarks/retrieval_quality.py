"""Retrieval quality on Vaswani through the real pipeline: ingest job, then ``POST /v1/search`` per mode.

Ingests the collection with the real job (``benchmarks.search_stack``), sends its 93 queries through Serve over
HTTP in each mode (sparse, dense, hybrid with RRF k=2, RRF k=60 and DBSF; ``top_k=100``), and scores the runs with
ranx: MAP@100, nDCG@10 and recall@100 (a result is a chunk; a document's rank is that of its best chunk). Beside
them, an outside BM25 baseline computed in the same run: bm25s (Lucene BM25, k1=1.2, b=0.75, its English stop
words, the same Snowball stemmer) over the same document texts, cut at the same depth. Prints a table on stderr and
one JSON line on stdout.

    python benchmarks/retrieval_quality.py ../shared/datasets/vaswani [--limit-docs N] [--index-dir DIR]

Targets (issue 5): sparse within 0.02 MAP of the bm25s baseline; the default hybrid mode at least as good as the
better single leg.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.search_stack import TENANT, docno_of, vaswani_search  # noqa: E402
from benchmarks.vaswani import read_qrels, read_queries  # noqa: E402

from tests.auth import bearer

DEPTH = 100
METRICS = ["map@100", "ndcg@10", "recall@100"]
#: name -> request fields
MODES = {
    "sparse": {"mode": "sparse"},
    "dense": {"mode": "dense"},
    "hybrid_rrf_k2": {"mode": "hybrid", "fusion": "rrf", "rrf_k": 2},
    "hybrid_rrf_k60": {"mode": "hybrid", "fusion": "rrf", "rrf_k": 60},
    "hybrid_dbsf": {"mode": "hybrid", "fusion": "dbsf"},
}


def bm25s_run(docs: dict[str, str], queries: dict[str, str], depth: int = DEPTH) -> dict[str, dict[str, float]]:
    """The outside baseline: bm25s (Lucene variant, k1=1.2, b=0.75), English stop words, Snowball stemming."""
    import bm25s
    import Stemmer

    ids = list(docs)
    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25(method="lucene", k1=1.2, b=0.75)
    retriever.index(bm25s.tokenize([docs[i] for i in ids], stopwords="en", stemmer=stemmer, show_progress=False),
                    show_progress=False)
    qids = list(queries)
    tokens = bm25s.tokenize([queries[q] for q in qids], stopwords="en", stemmer=stemmer, show_progress=False)
    found, scores = retriever.retrieve(tokens, k=min(depth, len(ids)), show_progress=False)
    return {q: {ids[d]: float(s) for d, s in zip(found[i], scores[i]) if s > 0} for i, q in enumerate(qids)}


def search_run(base_url: str, queries: dict[str, str], fields: dict, concurrency: int = 4) -> dict[str, dict[str, float]]:
    """Send every query to ``POST /v1/search`` and turn the chunks into a document run (best chunk per document)."""
    import httpx

    client = httpx.Client(timeout=120)

    def one(item):
        qid, text = item
        response = client.post(f"{base_url}/v1/search", json={"query": text, "top_k": DEPTH, **fields},
                               headers=bearer(TENANT))
        response.raise_for_status()
        ranked: dict[str, float] = {}
        results = response.json()["results"]
        for rank, hit in enumerate(results):
            ranked.setdefault(docno_of(hit["path"]), float(len(results) - rank))  # rank-preserving, ties impossible
        return qid, ranked

    with ThreadPoolExecutor(concurrency) as pool:
        run = dict(pool.map(one, queries.items()))
    client.close()
    return run


def evaluate(qrels: dict, run: dict, name: str) -> dict[str, float]:
    """MAP@100, nDCG@10 and recall@100 of a run (ranx), rounded to 4 places."""
    from ranx import Qrels, Run
    from ranx import evaluate as ranx_evaluate

    run = {q: r for q, r in run.items() if r} or {next(iter(qrels)): {"none": 0.0}}
    scores = ranx_evaluate(Qrels(qrels), Run(run, name=name), METRICS)
    return {metric: round(float(value), 4) for metric, value in scores.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vaswani", type=Path, help="folder of the Vaswani collection (../shared/datasets/vaswani)")
    parser.add_argument("--limit-docs", type=int, default=0, help="only the first N documents (0: all; for dev runs)")
    parser.add_argument("--index-dir", type=Path, default=None, help="keep (or reuse) the embedded Qdrant index here")
    args = parser.parse_args(argv)

    queries = read_queries(args.vaswani)
    qrels = read_qrels(args.vaswani)
    started = time.perf_counter()
    with vaswani_search(args.vaswani, limit_docs=args.limit_docs, index_dir=args.index_dir) as stack:
        if args.limit_docs:  # judge only what was ingested
            qrels = {q: {d: r for d, r in rel.items() if d in stack.docs} for q, rel in qrels.items()}
            qrels = {q: rel for q, rel in qrels.items() if rel}
        queries = {q: t for q, t in queries.items() if q in qrels}
        results: dict[str, dict] = {}
        baseline_started = time.perf_counter()
        results["bm25s_baseline"] = evaluate(qrels, bm25s_run(stack.docs, queries), "bm25s")
        results["bm25s_baseline"]["seconds"] = round(time.perf_counter() - baseline_started, 2)
        for name, fields in MODES.items():
            mode_started = time.perf_counter()
            results[name] = evaluate(qrels, search_run(stack.base_url, queries, fields), name)
            results[name]["seconds"] = round(time.perf_counter() - mode_started, 2)
        ingest = stack.ingest

    single = max(results["sparse"]["map@100"], results["dense"]["map@100"])
    hybrids = {name: results[name]["map@100"] for name in MODES if name.startswith("hybrid")}
    best_hybrid = max(hybrids, key=hybrids.get)
    print(f"{'mode':16s} " + " ".join(f"{m:>10s}" for m in METRICS), file=sys.stderr)
    for name, scores in results.items():
        print(f"{name:16s} " + " ".join(f"{scores[m]:10.4f}" for m in METRICS), file=sys.stderr)
    line = {
        "benchmark": "retrieval_quality",
        "documents": len(stack.docs),
        "chunks": ingest.chunks_indexed if ingest else None,
        "queries": len(queries),
        "depth": DEPTH,
        "ingest_s": round(stack.ingest_s, 1),
        "results": results,
        "sparse_minus_bm25s_map": round(results["sparse"]["map@100"] - results["bm25s_baseline"]["map@100"], 4),
        "best_single_leg_map": single,
        "best_hybrid": best_hybrid,
        "best_hybrid_minus_best_single_map": round(hybrids[best_hybrid] - single, 4),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
