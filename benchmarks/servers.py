"""The local stack a benchmark runs on: its own PostgreSQL, Redis and S3 servers, a local Ray, and Serve.

Shared by ``benchmarks/ingest_throughput.py``, ``benchmarks/upload_throughput.py`` and ``benchmarks/search_stack.py``.
The servers come from ``cluster.local.stack`` on free ports, each in its own folder, and die with this process; the
S3 bucket, access key and tenant are ``bench``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cluster.local.stack import free_port, start_postgres, start_redis, start_s3

#: The S3 bucket and access key of the benchmarks' S3 server.
BUCKET = "bench"
#: The secret key of the benchmarks' S3 server.
SECRET = "bench-secret"


@contextlib.contextmanager
def bench_servers(work: Path, *, qdrant_path: Path, **settings_fields: Any) -> Iterator[Any]:
    """Start PostgreSQL, Redis and S3 under ``work``; yield ``Settings`` for them; stop the servers on exit.

    Args:
        work: an empty folder for the servers' data (``pg``, ``redis``, ``s3`` below it).
        qdrant_path: the embedded Qdrant folder of the ``Settings``.
        settings_fields: more ``Settings`` fields (``qdrant_collection``, ``upload_part_size``, ...).

    Yields:
        ``core.settings.Settings`` pointing at the three servers (bucket ``bench``, not yet created).
    """
    from core.settings import Settings

    from tests.auth import use_postgres

    pg = start_postgres(work / "pg", free_port(), die_with_parent=True)
    use_postgres(pg.dsn)  # the benchmarks' API keys are made there
    rd = start_redis(work / "redis", free_port(), die_with_parent=True)
    s3 = start_s3(work / "s3", free_port(), BUCKET, SECRET, die_with_parent=True)
    try:
        yield Settings(
            postgres_dsn=pg.dsn, redis_url=rd.url, s3_endpoint=s3.endpoint, s3_access_key=BUCKET,
            s3_secret_key=SECRET, s3_bucket=BUCKET, qdrant_path=qdrant_path, **settings_fields,
        )
    finally:
        for server in (s3, rd, pg):
            server.stop(timeout_s=5)


def start_ray(**init_args: Any) -> None:
    """``ray.init`` a local Ray with one CPU per core, no dashboard, workers' logs kept off the driver.

    Ray's token authentication is off unless ``RAY_AUTH_MODE`` says otherwise. ``init_args``: more ``ray.init``
    arguments (``namespace``).
    """
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, **init_args)


def settings_overrides(settings) -> dict[str, Any]:
    """``Settings`` as ``build_app`` arguments (the secret in clear: the replicas rebuild ``Settings``)."""
    return settings.model_dump(mode="python") | {
        "s3_secret_key": settings.s3_secret_key.get_secret_value(),
        "qdrant_path": str(settings.qdrant_path),
        "qdrant_api_key": None,
    }


def serve_app(app, name: str, route_prefix: str) -> str:
    """Start Serve's HTTP proxy on a free port of 127.0.0.1 and deploy ``app`` there; its ``http://host:port``."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app, name=name, route_prefix=route_prefix)
    return f"http://127.0.0.1:{port}"


def stop_ray() -> None:
    """Shut Serve and Ray down, best effort (on the way out of a benchmark)."""
    import ray
    from ray import serve

    with contextlib.suppress(Exception):
        serve.shutdown()
    with contextlib.suppress(Exception):
        ray.shutdown()


def put_documents(settings, tenant: str, docs: Mapping[str, str], folder: str = "vaswani") -> None:
    """Create the bucket and put each document as ``<tenant>/<folder>/<docno>.txt`` (UTF-8), 16 at a time."""
    from core.objects import ObjectStore

    objects = ObjectStore(settings)
    objects.ensure_bucket()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: objects.put_bytes(f"{tenant}/{folder}/{kv[0]}.txt", kv[1].encode()), docs.items()))
