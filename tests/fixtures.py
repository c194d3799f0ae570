"""Fixtures for tests that need Ray, Ray Serve, or several settings in one module (loaded by ``tests/conftest.py``).

Fixtures:
    make_settings: a factory of :class:`core.settings.Settings` on the session's servers, each call with its own
        bucket, collection and embedded Qdrant folder (for module-scoped fixtures, which cannot use ``settings``),
        and no ASR model unless given.
    ray_local: a local Ray instance for the test module (one per module, STYLE.md habit 11), in namespace ``sluice``.
    serve_http: a factory that runs a Serve application on a free HTTP port (at its route prefix) and returns the
        base URL of the Serve proxy.
    unused_port: a loopback port nothing listens on (to simulate an unreachable service).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cluster.local.stack import free_port


@pytest.fixture(scope="session")
def make_settings(postgres_dsn, redis_url, s3_endpoint, tmp_path_factory) -> Callable[..., object]:
    """``make_settings(**overrides)`` returns fresh Settings with unique bucket, collection and Qdrant folder."""
    from core.settings import Settings

    def make(**overrides):
        name = uuid.uuid4().hex[:12]
        values = dict(
            postgres_dsn=postgres_dsn,
            redis_url=redis_url,
            s3_endpoint=s3_endpoint.endpoint,
            s3_access_key=s3_endpoint.access_key,
            s3_secret_key=s3_endpoint.secret_key,
            s3_secure=False,
            s3_bucket=f"m-{name}",
            qdrant_url="",
            qdrant_collection=f"m_{name}",
            qdrant_path=Path(tmp_path_factory.mktemp("qdrant")),
            # No speech recognition unless a test asks for it (the multimodal tests pass a tiny Whisper): the
            # audio stage's actor pool would otherwise take a share of the 2 test CPUs in every ingest run.
            asr_model="",
        )
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture(scope="module")
def ray_local() -> Iterator[dict]:
    """A local Ray for the module (2 CPUs, no dashboard); yields ``ray.init``'s address info.

    Token authentication is off (``RAY_AUTH_MODE=disabled``): Ray 2.5x turns it on for a new cluster whenever
    ``~/.ray/auth_token`` exists, which would make subprocess clients depend on the machine's history.
    """
    import ray

    if ray.is_initialized():
        ray.shutdown()
    previous = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    # address="local": always a new instance, never a cluster some `ray start` left on this machine.
    context = ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="sluice", log_to_driver=False)
    try:
        yield context.address_info
    finally:
        ray.shutdown()
        if previous is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = previous


@pytest.fixture(scope="module")
def serve_http(ray_local) -> Iterator[Callable[[object, str], str]]:
    """``serve_http(app, name, route_prefix="/")`` runs a Serve application and returns ``http://127.0.0.1:PORT``.

    Several applications may run side by side in one module, each at its own prefix (Serve routes a request to the
    longest matching prefix), as ``serve/config.yaml`` deploys them.
    """
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})

    def run(app, name: str, route_prefix: str = "/") -> str:
        serve.run(app, name=name, route_prefix=route_prefix)
        return f"http://127.0.0.1:{port}"

    try:
        yield run
    finally:
        serve.shutdown()


@pytest.fixture
def unused_port() -> int:
    """A loopback port with no listener: connecting to it is refused at once."""
    return free_port()
