"""Session-wide fixtures: real PostgreSQL, Redis and S3 servers, started once per test session.

Each server listens on a free port of ``127.0.0.1`` with its data in a temporary folder, and is stopped at the end of
the session, also after a failure or Ctrl-C; the servers also get SIGTERM if the test process dies
(``die_with_parent``). Nothing here depends on a server that happens to be running, such as the one of ``make up``.

Fixtures:
    stack_dir: the session's folder for the servers' data and logs.
    postgres_dsn: ``postgresql://postgres@127.0.0.1:PORT/sluice``.
    redis_url: ``redis://127.0.0.1:PORT/0``.
    s3_endpoint: :class:`S3Endpoint` (endpoint ``127.0.0.1:PORT``, plain HTTP, access and secret key).
    settings: a :class:`core.settings.Settings` pointing at those servers, with a bucket, a Qdrant collection and
        an embedded Qdrant folder unique to the test.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.local.stack import free_port, start_postgres, start_redis, start_s3
from tests.auth import use_postgres

#: Keys of the test S3 identity (not secrets: the server lives only for the session, on loopback).
S3_ACCESS_KEY = "sluice-test"
S3_SECRET_KEY = "sluice-test-secret"


@dataclasses.dataclass(frozen=True)
class S3Endpoint:
    """Where the session's S3 server listens and the keys it accepts.

    Attributes:
        endpoint: ``host:port``, as the minio SDK takes it.
        access_key: Access key id.
        secret_key: Secret key.
        secure: Always ``False``: plain HTTP.
        region: Region to sign requests for.
    """

    endpoint: str
    access_key: str
    secret_key: str
    secure: bool = False
    region: str = "us-east-1"


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for the session's servers: one sub-folder each, holding data and log."""
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def postgres_dsn(stack_dir: Path) -> Iterator[str]:
    """DSN of a PostgreSQL server of this session, with an empty database ``sluice``."""
    server = start_postgres(stack_dir / "postgres", free_port(), die_with_parent=True)
    use_postgres(server.dsn)  # tests.auth makes the tests' API keys there
    try:
        yield server.dsn
    finally:
        server.stop(timeout_s=10)


@pytest.fixture(scope="session")
def redis_url(stack_dir: Path) -> Iterator[str]:
    """URL of a Redis server of this session (database 0, no persistence)."""
    server = start_redis(stack_dir / "redis", free_port(), die_with_parent=True)
    try:
        yield server.url
    finally:
        server.stop(timeout_s=5)


@pytest.fixture(scope="session")
def s3_endpoint(stack_dir: Path) -> Iterator[S3Endpoint]:
    """An S3 server of this session (SeaweedFS, or MinIO when on PATH); it starts with no bucket."""
    server = start_s3(stack_dir / "s3", free_port(), S3_ACCESS_KEY, S3_SECRET_KEY, die_with_parent=True)
    try:
        yield S3Endpoint(server.endpoint, server.access_key, server.secret_key, region=server.region)
    finally:
        # The data is thrown away: no need to wait out SeaweedFS's 15 s graceful gRPC stop.
        server.stop(timeout_s=2)


def _unique_name(request: pytest.FixtureRequest, prefix: str, max_len: int) -> str:
    """``<prefix>-<test name>-<random>``, lower-case letters, digits and ``-``, at most ``max_len`` characters."""
    suffix = uuid.uuid4().hex[:8]
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    slug = slug[: max_len - len(prefix) - len(suffix) - 2].strip("-")
    return f"{prefix}-{slug}-{suffix}" if slug else f"{prefix}-{suffix}"


@pytest.fixture
def settings(request: pytest.FixtureRequest, make_settings, tmp_path: Path):
    """Settings pointing at the session's servers, with names unique to this test.

    The bucket (a valid S3 name, not created here: the S3 adapter creates it on first use) and the Qdrant collection
    are unique per test and carry its name; the embedded Qdrant store lives in the test's ``tmp_path``.
    """
    return make_settings(
        s3_bucket=_unique_name(request, "t", 63),
        qdrant_collection=_unique_name(request, "t", 63).replace("-", "_"),
        qdrant_path=tmp_path / "qdrant",
    )


#: Ray, Serve and multi-settings fixtures live beside this file.
pytest_plugins = ["tests.fixtures"]

#: The session, kept for :func:`pytest_unconfigure` (its ``exitstatus`` is final by then).
_SESSION: list[pytest.Session] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    """Keep the session, whose exit status :func:`pytest_unconfigure` ends the process with."""
    _SESSION[:] = [session]


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the test process with pytest's exit status as soon as pytest is done, skipping interpreter tear-down.

    A whole-suite run once passed every test and then died of SIGSEGV in the interpreter's tear-down (``make:
    Segmentation fault``, exit 2): the process has loaded torch, onnxruntime, Ray's core worker and Qdrant Edge's
    Rust engine, whose native destructors and threads may run in any order once modules are torn down. Nothing
    the tests assert happens after this hook: every fixture, each server included, has been torn down. So the
    process ends here with the status pytest computed, after flushing what was written. ``SLUICE_TEST_SOFT_EXIT=1``
    keeps the ordinary exit (to debug a tear-down).
    """
    if os.environ.get("SLUICE_TEST_SOFT_EXIT") == "1" or not _SESSION:
        return
    status = int(_SESSION[0].exitstatus)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(status)
