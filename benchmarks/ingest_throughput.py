"""Ingest throughput on the Vaswani collection, beside the limit of this machine.

Starts its own PostgreSQL, Redis and S3 servers and a local Ray (:mod:`benchmarks.servers`), puts every Vaswani
document into S3 as a file, runs the real ingest (``pipelines.ingest.run_ingest`` with ``--scan``), then encodes the
same chunk texts with the same model in this one process (the limit: what the model alone does on these cores).
Prints one JSON line: documents/s, chunks/s, peak memory of the driver and the Ray workers, the plain-process
chunks/s, and their ratio.

    python benchmarks/ingest_throughput.py ../shared/datasets/vaswani [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.sampling import PeriodicSampler  # noqa: E402
from benchmarks.servers import bench_servers, put_documents, start_ray  # noqa: E402
from benchmarks.vaswani import read_documents  # noqa: E402


class PeakMemory(PeriodicSampler):
    """Samples the summed RSS of this process and every Ray process (``ray::`` workers, raylet, GCS) every 0.5 s."""

    def __init__(self) -> None:
        super().__init__(0.5)
        self.peak_bytes = 0

    def sample(self) -> None:
        """Update the peak from the current summed RSS."""
        self.peak_bytes = max(self.peak_bytes, self._total_rss())

    def _total_rss(self) -> int:
        total = 0
        for proc in psutil.process_iter(["pid", "cmdline", "memory_info"]):
            try:
                cmd = " ".join(proc.info["cmdline"] or [])
                if proc.info["pid"] == os.getpid() or "ray::" in cmd or "/ray/" in cmd:
                    total += proc.info["memory_info"].rss
            except (psutil.Error, TypeError):
                continue
        return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vaswani", type=Path, help="folder of the Vaswani collection (../shared/datasets/vaswani)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N documents (0: all)")
    args = parser.parse_args(argv)

    import ray

    from core.vectorstore import VectorStore
    from pipelines.embed.dense import TextEncoder
    from pipelines.ingest import run_ingest

    docs = read_documents(args.vaswani)
    if args.limit:
        docs = dict(list(docs.items())[: args.limit])
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp:
        root = Path(tmp)
        with bench_servers(root, qdrant_path=root / "qdrant", qdrant_collection="vaswani") as settings:
            put_documents(settings, "bench", docs)
            start_ray()
            with PeakMemory() as memory:
                started = time.perf_counter()
                summary = run_ingest(settings, tenant="bench", scan=True)
                ingest_s = time.perf_counter() - started
            texts = [r.payload["text"] for r in VectorStore(settings).scroll()]
            ray.shutdown()

            encoder = TextEncoder(settings.text_model, batch_size=settings.embed_batch_size, num_threads=os.cpu_count())
            encoder.warm_up()
            started = time.perf_counter()
            encoder.encode(texts)
            plain_s = time.perf_counter() - started

    result = {
        "benchmark": "ingest_throughput",
        "documents": len(docs),
        "documents_indexed": summary.documents_indexed,
        "documents_failed": summary.documents_failed,
        "chunks": summary.chunks_indexed,
        "ingest_s": round(ingest_s, 2),
        "documents_per_s": round(summary.documents_indexed / ingest_s, 2),
        "chunks_per_s": round(summary.chunks_indexed / ingest_s, 2),
        "peak_memory_mib": round(memory.peak_bytes / 2**20, 1),
        "plain_process_chunks_per_s": round(len(texts) / plain_s, 2),
        "ratio_to_plain_process": round((summary.chunks_indexed / ingest_s) / (len(texts) / plain_s), 3),
        "stage_seconds": summary.stage_seconds,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
