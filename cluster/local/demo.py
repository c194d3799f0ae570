"""``make demo``: put a folder of real files into the local stack's S3, ingest it with a Ray job, ask three queries.

Run after ``make up`` with ``.sluice/env`` sourced (the Makefile does both). Uses only libraries (the MinIO SDK and
httpx) and the ``ray job submit`` command, like any client of a running Sluice would.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import subprocess
import sys
from pathlib import Path

import httpx
from minio import Minio

REPO = Path(__file__).resolve().parents[2]
DEFAULT_QUERIES = (
    "how do I read a MIME type from a file's magic bytes",
    "validate data with Python type hints",
    "distributed computing framework for machine learning",
)


def upload_folder(corpus: Path, tenant: str) -> int:
    """Put every file under ``corpus`` to ``s3://$SLUICE_S3_BUCKET/<tenant>/<relative path>``; return the count."""
    client = Minio(
        os.environ["SLUICE_S3_ENDPOINT"],
        access_key=os.environ["SLUICE_S3_ACCESS_KEY"],
        secret_key=os.environ["SLUICE_S3_SECRET_KEY"],
        secure=os.environ.get("SLUICE_S3_SECURE", "false").lower() == "true",
    )
    bucket = os.environ.get("SLUICE_S3_BUCKET", "sluice")
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    count = 0
    for path in sorted(p for p in corpus.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = path.relative_to(corpus).as_posix()
        if rel.upper() == "README.MD":
            continue
        content_type = mimetypes.guess_type(rel)[0] or "application/octet-stream"
        client.fput_object(bucket, f"{tenant}/{rel}", str(path), content_type=content_type)
        count += 1
    return count


def submit_ingest(tenant: str) -> dict:
    """Run ``jobs.ingest --scan`` through ``ray job submit`` and return its JSON summary (its last line)."""
    dashboard = os.environ.get("RAY_DASHBOARD_ADDRESS", "http://127.0.0.1:8265")
    cmd = [
        "ray", "job", "submit", "--address", dashboard, "--working-dir", str(REPO),
        "--runtime-env-json", json.dumps({"excludes": [".venv", ".sluice", ".git", "benchmarks"]}),
        "--", "python", "-m", "jobs.ingest", "--tenant", tenant, "--scan",
    ]
    print("$", " ".join(cmd[:6]), "... -- python -m jobs.ingest --tenant", tenant, "--scan", flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    sys.stdout.write(proc.stdout[-4000:])
    if proc.returncode != 0:
        raise SystemExit(f"the ingest job failed (exit {proc.returncode})")
    for line in reversed(proc.stdout.splitlines()):
        line = line.strip()
        if line.startswith("{") and "documents_seen" in line:
            return json.loads(line)
    raise SystemExit("the ingest job printed no JSON summary")


def ask(queries: list[str], tenant: str, top_k: int = 3) -> None:
    """Print the top answers to each query from ``POST /v1/search``."""
    url = os.environ.get("SLUICE_SERVE_URL", "http://127.0.0.1:8000") + "/v1/search"
    with httpx.Client(timeout=60) as client:
        for query in queries:
            response = client.post(url, json={"query": query, "top_k": top_k}, headers={"X-User-ID": tenant})
            response.raise_for_status()
            body = response.json()
            print(f"\nQ: {query}   ({body['took_ms']:.0f} ms, mode hybrid)")
            for rank, hit in enumerate(body["results"], 1):
                page = f" p.{hit['page']}" if hit.get("page") else ""
                preview = " ".join(hit["text"].split())[:110]
                print(f"  {rank}. {hit['path']}{page}  score={hit['score']:.3f}\n     {preview}")


def main(argv: list[str] | None = None) -> int:
    """Upload, ingest, query; exit 0 when every query got at least one answer."""
    parser = argparse.ArgumentParser(prog="python -m cluster.local.demo")
    parser.add_argument("--corpus", default=os.environ.get("CORPUS") or str(REPO / "examples"))
    parser.add_argument("--tenant", default="demo")
    parser.add_argument("--query", action="append", help="a query to ask (repeatable); default: three examples")
    args = parser.parse_args(argv)
    corpus = Path(args.corpus).resolve()
    if not corpus.is_dir():
        raise SystemExit(f"CORPUS={corpus} is not a folder")
    print(f"uploading {corpus} to tenant {args.tenant!r} ...", flush=True)
    print(f"{upload_folder(corpus, args.tenant)} files uploaded", flush=True)
    summary = submit_ingest(args.tenant)
    print("ingest summary:", json.dumps(summary))
    ask(args.query or list(DEFAULT_QUERIES), args.tenant)
    print("\nRay dashboard: http://127.0.0.1:8265  (jobs, Ray Data progress, Serve)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
