"""``make demo``: upload a folder of real files through the uploads API, ingest it with a Ray job, ask three queries.

Run after ``make up`` with ``.sluice/env`` sourced (the Makefile does both). Uses the ``sluice`` client, httpx and
the ``ray job submit`` command, like any client of a running Sluice would.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
DEFAULT_QUERIES = (
    "how do I read a MIME type from a file's magic bytes",
    "validate data with Python type hints",
    "distributed computing framework for machine learning",
)


def upload_folder(corpus: Path) -> int:
    """Upload every file under ``corpus`` through ``POST /v1/uploads`` with the ``sluice`` client; return the count.

    Each top-level entry of the folder (but its README.md) is passed to ``sluice upload``, so document paths are the
    files' paths relative to ``corpus``. Every completed upload registers a pending version for the ingest job.

    Raises:
        SystemExit: the client could not store every file (its output names which and why).
    """
    entries = sorted(p for p in corpus.iterdir() if not p.name.startswith(".") and p.name.upper() != "README.MD")
    url = os.environ.get("SLUICE_SERVE_URL", "http://127.0.0.1:8000")
    cmd = [sys.executable, "-m", "serve.client", "--url", url, "upload", "--no-progress", *map(str, entries)]
    print("$ sluice upload", " ".join(p.name for p in entries), flush=True)  # the key in $SLUICE_API_KEY names the tenant
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(f"sluice upload failed (exit {proc.returncode})")
    return sum(1 for line in proc.stdout.splitlines() if line.split(" ", 1)[0] in {"uploaded", "unchanged", "resumed"})


def submit_ingest(tenant: str) -> dict:
    """Run ``jobs.ingest`` (the pending versions the uploads made) through ``ray job submit``; return its summary."""
    dashboard = os.environ.get("RAY_DASHBOARD_ADDRESS", "http://127.0.0.1:8265")
    cmd = [
        "ray", "job", "submit", "--address", dashboard, "--working-dir", str(REPO),
        "--runtime-env-json", json.dumps({"excludes": [".venv", ".sluice", ".git", "benchmarks"]}),
        "--", "python", "-m", "jobs.ingest", "--tenant", tenant,
    ]
    print("$", " ".join(cmd[:6]), "... -- python -m jobs.ingest --tenant", tenant, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    sys.stdout.write(proc.stdout[-4000:])
    if proc.returncode != 0:
        raise SystemExit(f"the ingest job failed (exit {proc.returncode})")
    for line in reversed(proc.stdout.splitlines()):
        line = line.strip()
        if line.startswith("{") and "documents_seen" in line:
            return json.loads(line)
    raise SystemExit("the ingest job printed no JSON summary")


def ask(queries: list[str], api_key: str, top_k: int = 3) -> None:
    """Print the top answers to each query from ``POST /v1/search``."""
    url = os.environ.get("SLUICE_SERVE_URL", "http://127.0.0.1:8000") + "/v1/search"
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {api_key}"}) as client:
        for query in queries:
            response = client.post(url, json={"query": query, "top_k": top_k})
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
    parser.add_argument("--tenant", default=os.environ.get("SLUICE_TENANT") or "demo",
                        help="the tenant of $SLUICE_API_KEY (make up writes both into .sluice/env)")
    parser.add_argument("--query", action="append", help="a query to ask (repeatable); default: three examples")
    args = parser.parse_args(argv)
    api_key = os.environ.get("SLUICE_API_KEY")
    if not api_key:
        raise SystemExit("SLUICE_API_KEY is not set: run `make up` and `source .sluice/env` (make demo does both)")
    corpus = Path(args.corpus).resolve()
    if not corpus.is_dir():
        raise SystemExit(f"CORPUS={corpus} is not a folder")
    print(f"uploading {corpus} to tenant {args.tenant!r} ...", flush=True)
    print(f"{upload_folder(corpus)} files stored", flush=True)
    summary = submit_ingest(args.tenant)
    print("ingest summary:", json.dumps(summary))
    ask(args.query or list(DEFAULT_QUERIES), api_key)
    print("\nRay dashboard: http://127.0.0.1:8265  (jobs, Ray Data progress, Serve)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
