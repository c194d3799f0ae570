"""``sluice``: the command-line client of a Sluice server.

    sluice upload PATH... [--to PREFIX] [--parallel 4] [--jobs 4] [--transfer direct|proxy] [--json]
    sluice search "query" [--top-k 10] [--mode hybrid|dense|sparse] [--prefix P] [--json]

The server is ``--url`` or ``$SLUICE_URL`` (default http://127.0.0.1:8000); the credential is ``$SLUICE_API_KEY``
(or ``--api-key``), sent as ``Authorization: Bearer``: it names the tenant (``make up`` writes one for the tenant
``demo`` into ``.sluice/env``).
``upload`` sends files and folders (a folder keeps its name: ``docs/a.md`` under ``--to kb`` becomes
``kb/docs/a.md``), resumes uploads an earlier run left unfinished (state in ``$SLUICE_STATE_FILE``, by default
``~/.local/state/sluice/uploads.json``), and prints one line per file. Exit status: 0 when every file is stored, 1
when some failed, 2 when the server cannot be reached or the arguments are wrong. Programs use the same client as
a library: ``serve.client.Client``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from serve.client.api import DEFAULT_URL, ApiAnswerError, SluiceClient
from serve.client.library import Client
from serve.client.uploader import FileResult, plan

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
MiB = 1024**2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description="Upload files to, and search, a Sluice server.")
    parser.add_argument("--url", default=os.environ.get("SLUICE_URL", DEFAULT_URL),
                        help="server base URL (default: $SLUICE_URL or %(default)s)")
    parser.add_argument("--tenant", default=os.environ.get("SLUICE_TENANT", ""),
                        help="your tenant: names the resume state (default: $SLUICE_TENANT; the key names the tenant "
                        "the server uses)")
    parser.add_argument("--api-key", default=os.environ.get("SLUICE_API_KEY") or None,
                        help="sent as Authorization: Bearer (default: $SLUICE_API_KEY; prefer it, a command line shows in ps)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each request")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("upload", help="upload files and folders (resumable)")
    up.add_argument("paths", nargs="+", help="files and folders to upload")
    up.add_argument("--to", default="", metavar="PREFIX", help="document path prefix (folder) to upload into")
    up.add_argument("--parallel", type=int, default=4, help="parts in flight per file (default %(default)s)")
    up.add_argument("--jobs", type=int, default=4, help="files uploaded at once (default %(default)s)")
    up.add_argument("--part-size-mib", type=int, default=0, help="part size in MiB (default: the server's)")
    up.add_argument("--state-file", type=Path, default=None, help="resume state (default: $SLUICE_STATE_FILE or "
                    "~/.local/state/sluice/uploads.json)")
    up.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                    help="user metadata of every file uploaded (repeatable; a key given twice holds a list)")
    up.add_argument("--transfer", choices=("direct", "proxy"), default="direct",
                    help="direct: parts straight to S3 through presigned URLs when the server offers it (default); "
                    "proxy: parts through the server")
    up.add_argument("--no-progress", action="store_true", help="no progress bar")
    up.add_argument("--json", action="store_true", help="print one JSON object per file instead of text")

    se = sub.add_parser("search", help="search your documents")
    se.add_argument("query")
    se.add_argument("--top-k", type=int, default=10)
    se.add_argument("--mode", choices=("hybrid", "dense", "sparse"), default="hybrid")
    se.add_argument("--prefix", default="", help="only documents whose path starts with this")
    se.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                    help="only documents whose metadata KEY is VALUE (repeatable: keys ANDed, one key twice: any)")
    se.add_argument("--json", action="store_true", help="print the server's JSON answer")
    return parser


def parse_meta(items: list[str]) -> dict[str, Any] | None:
    """``--meta KEY=VALUE`` options as metadata: string values; a key given twice holds a list of its values.

    Returns ``None`` when there is none (each file keeps its previous version's metadata).

    Raises:
        ValueError: an item without ``=`` or with an empty key (the server checks the rest).
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--meta {item!r} is not KEY=VALUE")
        if key in out:
            out[key] = (out[key] if isinstance(out[key], list) else [out[key]]) + [value]
        else:
            out[key] = value
    return out or None


def _describe(result: FileResult) -> str:
    if not result.ok:
        return f"failed    {result.remote}: {result.error}"
    what = "unchanged" if result.deduplicated else ("resumed  " if result.resumed else "uploaded ")
    return f"{what} {result.remote} ({result.size / MiB:.1f} MiB) -> document {result.document_id} version {result.version}"


def run_upload(args: argparse.Namespace, client: Client) -> int:
    """The ``upload`` command."""
    if args.parallel < 1 or args.jobs < 1:
        print("sluice: --parallel and --jobs must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        files = plan(args.paths, args.to)
    except FileNotFoundError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        metadata = parse_meta(args.meta)
    except ValueError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return EXIT_USAGE
    total = sum(p.stat().st_size for p, _ in files)
    from tqdm import tqdm

    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"{len(files)} file(s)",
               disable=args.no_progress or args.json or not sys.stderr.isatty(), file=sys.stderr)

    def report(result: FileResult) -> None:
        line = json.dumps(dataclasses.asdict(result), ensure_ascii=False) if args.json else _describe(result)
        bar.write(line, file=sys.stdout)

    try:
        results = client.upload(args.paths, args.to, args.parallel, metadata, jobs=args.jobs,
                                part_size=args.part_size_mib * MiB or None, on_progress=bar.update, on_result=report,
                                transfer=args.transfer)
    finally:
        bar.close()
    failed = sum(not r.ok for r in results)
    if not args.json:
        print(f"{len(files) - failed} of {len(files)} file(s) stored", file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def run_search(args: argparse.Namespace, client: SluiceClient) -> int:
    """The ``search`` command."""
    try:
        metadata = parse_meta(args.meta)
    except ValueError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return EXIT_USAGE
    answer = client.search(args.query, top_k=args.top_k, mode=args.mode, path_prefix=args.prefix, metadata=metadata)
    if args.json:
        print(json.dumps(answer, ensure_ascii=False))
        return EXIT_OK
    results = answer.get("results", [])
    if not results:
        print("no results")
    for rank, hit in enumerate(results, 1):
        where = f"page {hit['page']}" if hit.get("page") else f"chunk {hit.get('chunk_index', 0)}"
        print(f"{rank:>2}. {hit['path']}  (version {hit['version']}, {hit.get('modality', 'text')}, {where})  "
              f"score {hit['score']:.4f}")
        text = " ".join(str(hit.get("text", "")).split())
        print(f"    {text[:200]}{'...' if len(text) > 200 else ''}")
    print(f"{len(results)} result(s) in {answer.get('took_ms', 0):.0f} ms{' (cached)' if answer.get('cached') else ''}",
          file=sys.stderr)
    return EXIT_OK


def main(argv: list[str] | None = None, *, transport: httpx.BaseTransport | None = None) -> int:
    """Run ``sluice``; returns the exit status.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
        transport: an ``httpx`` transport for the client (a seam for tests).
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        client = Client(args.url, args.tenant, api_key=args.api_key, timeout_s=args.timeout, transport=transport,
                        state_file=getattr(args, "state_file", None))
    except ValueError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with client:
            return run_upload(args, client) if args.command == "upload" else run_search(args, client)
    except httpx.TransportError as exc:
        print(f"sluice: cannot reach {args.url}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ApiAnswerError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.status_code in (400, 401, 422) else EXIT_SOME_FAILED


if __name__ == "__main__":
    sys.exit(main())
