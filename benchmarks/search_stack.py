"""A search stack over the Vaswani collection for the search benchmarks: servers, the real ingest, and Serve.

:func:`vaswani_search` starts its own PostgreSQL, Redis and S3 servers and a local Ray (:mod:`benchmarks.servers`, as
``benchmarks/ingest_throughput.py`` does), puts the Vaswani documents into S3 as
``<tenant>/vaswani/<docno>.txt``, runs the real ingest job (``pipelines.ingest.run_ingest`` with ``scan=True``),
and deploys the ``search`` application at ``/v1/search`` on a free port. With ``index_dir`` the embedded Qdrant
folder is kept there, and a later run with the same folder and document count skips the ingest (the latency
benchmark reuses what the quality benchmark built).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.servers import bench_servers, put_documents, serve_app, settings_overrides, start_ray, stop_ray
from benchmarks.vaswani import read_documents

TENANT = "bench"
COLLECTION = "vaswani"


@dataclasses.dataclass
class SearchStack:
    """What :func:`vaswani_search` started.

    Attributes:
        base_url: ``http://127.0.0.1:PORT`` of Serve (``POST {base_url}/v1/search``).
        settings: the ``Settings`` of the stack. docs: ``{docno: text}`` of the ingested documents.
        ingest: the ingest summary (``None`` when an existing index was reused). ingest_s: its wall-clock seconds.
    """

    base_url: str
    settings: Any
    docs: dict[str, str]
    ingest: Any
    ingest_s: float


def docno_of(path: str) -> str:
    """The Vaswani document number of a result path ``vaswani/<docno>.txt``."""
    return Path(path).stem


@contextlib.contextmanager
def vaswani_search(root: Path, *, limit_docs: int = 0, index_dir: Path | None = None,
                   app_args: dict[str, Any] | None = None, **settings_fields: Any) -> Iterator[SearchStack]:
    """Start the stack, ingest Vaswani (or reuse ``index_dir``), deploy search; stop everything on exit.

    Args:
        root: the Vaswani folder (``corpus/doc-text.trec``, ``qrels``, ``query-text.trec``).
        limit_docs: only the first N documents (0: all 11,429).
        index_dir: keep the embedded Qdrant folder here (reused when it holds the same documents).
        app_args: more ``build_app`` arguments (deployment options).
        settings_fields: ``Settings`` fields for the search replicas (e.g. ``search_cache_ttl_s=0``).
    """
    from pipelines.ingest import run_ingest
    from serve.search.app import build_app

    docs = read_documents(root)
    if limit_docs:
        docs = dict(list(docs.items())[:limit_docs])
    with tempfile.TemporaryDirectory(prefix="sluice-search-bench-") as tmp:
        work = Path(tmp)
        qdrant = Path(index_dir) if index_dir else work / "qdrant"
        marker = qdrant / "sluice-bench.json"
        reuse = marker.exists() and json.loads(marker.read_text()).get("documents") == len(docs)
        with bench_servers(work, qdrant_path=qdrant, qdrant_collection=COLLECTION) as settings:
            try:
                start_ray(namespace="sluice")
                summary, ingest_s = None, 0.0
                if not reuse:
                    put_documents(settings, TENANT, docs)
                    started = time.perf_counter()
                    summary = run_ingest(settings, tenant=TENANT, scan=True)
                    ingest_s = time.perf_counter() - started
                    marker.write_text(json.dumps({"documents": len(docs), "chunks": summary.chunks_indexed}))
                search_settings = settings.model_copy(update=settings_fields)
                app = build_app({"settings_overrides": settings_overrides(search_settings), **(app_args or {})})
                base_url = serve_app(app, "search", "/v1/search")
                yield SearchStack(base_url, search_settings, docs, summary, ingest_s)
            finally:
                stop_ray()
