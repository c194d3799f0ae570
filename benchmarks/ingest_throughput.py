"""Ingest throughput on the Vaswani collection, beside the limit of this machine.

Starts its own PostgreSQL, Redis and S3 servers (``cluster.local.stack``) and a local Ray, puts every Vaswani
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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.vaswani import read_documents  # noqa: E402
from cluster.local.stack import free_port, start_postgres, start_redis, start_s3  # noqa: E402


class PeakMemory:
    """Samples the summed RSS of this process and every Ray process (``ray::`` workers, raylet, GCS) every 0.5 s."""

    def __init__(self) -> None:
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        total = 0
        for proc in psutil.process_iter(["pid", "cmdline", "memory_info"]):
            try:
                cmd = " ".join(proc.info["cmdline"] or [])
                if proc.info["pid"] == os.getpid() or "ray::" in cmd or "/ray/" in cmd:
                    total += proc.info["memory_info"].rss
            except (psutil.Error, TypeError):
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._sample())
            self._stop.wait(0.5)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vaswani", type=Path, help="folder of the Vaswani collection (../shared/datasets/vaswani)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N documents (0: all)")
    args = parser.parse_args(argv)

    import ray

    from core.objects import ObjectStore
    from core.settings import Settings
    from core.vectorstore import VectorStore
    from pipelines.embed.dense import TextEncoder
    from pipelines.ingest import run_ingest

    docs = read_documents(args.vaswani)
    if args.limit:
        docs = dict(list(docs.items())[: args.limit])
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp:
        root = Path(tmp)
        pg = start_postgres(root / "pg", free_port(), die_with_parent=True)
        rd = start_redis(root / "redis", free_port(), die_with_parent=True)
        s3 = start_s3(root / "s3", free_port(), "bench", "bench-secret", die_with_parent=True)
        try:
            settings = Settings(
                postgres_dsn=pg.dsn, redis_url=rd.url, s3_endpoint=s3.endpoint, s3_access_key="bench",
                s3_secret_key="bench-secret", s3_bucket="bench", qdrant_path=root / "qdrant", qdrant_collection="vaswani",
            )
            objects = ObjectStore(settings)
            objects.ensure_bucket()
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda kv: objects.put_bytes(f"bench/vaswani/{kv[0]}.txt", kv[1].encode()), docs.items()))
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
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
        finally:
            for server in (s3, rd, pg):
                server.stop(timeout_s=5)

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
