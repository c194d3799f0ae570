"""``python -m jobs.watch`` through outages: it reconnects with backoff, catches up, and stops cleanly on SIGTERM."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from core.catalog import Catalog
from core.errors import ServiceUnavailableError
from core.events import NewVersionEvent, notify_new_version
from core.objects import ObjectStore
from jobs.watch import Watcher
from pipelines.ingest import IngestSummary
from tests.pipelines.support import fresh_dsn, pipe, tiny_model

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TENANT = "watched"


class OutageProxy:
    """A TCP proxy in front of PostgreSQL whose link can be cut: the network between the watcher and its database.

    ``cut()`` closes every connection through it and resets new ones (the server looks gone); ``restore()``
    forwards again. The database itself stays up, so the test can write to it directly while the watcher is cut off.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.down = False
        self._live: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            if self.down:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()  # RST: connection refused, as from a server that is gone
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._live.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()

    def cut(self) -> None:
        self.down = True
        with self._lock:
            live, self._live = self._live, set()
        for s in live:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def restore(self) -> None:
        self.down = False

    def close(self) -> None:
        self.cut()
        self._sock.close()


def _port(dsn: str) -> int:
    return int(dsn.rsplit(":", 1)[1].split("/", 1)[0])


def _env(settings, postgres_dsn: str, ray_address: str) -> dict[str, str]:
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(Path.home()),
        "RAY_ADDRESS": ray_address,
        "RAY_AUTH_MODE": "disabled",  # as the ray_local fixture's cluster
        "SLUICE_POSTGRES_DSN": postgres_dsn,
        "SLUICE_REDIS_URL": settings.redis_url,
        "SLUICE_S3_ENDPOINT": settings.s3_endpoint,
        "SLUICE_S3_ACCESS_KEY": settings.s3_access_key,
        "SLUICE_S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
        "SLUICE_S3_BUCKET": settings.s3_bucket,
        "SLUICE_QDRANT_URL": "",
        "SLUICE_QDRANT_PATH": str(settings.qdrant_path),
        "SLUICE_QDRANT_COLLECTION": settings.qdrant_collection,
        "SLUICE_TEXT_MODEL": settings.text_model,
        "SLUICE_ASR_MODEL": "",
    }


class Lines:
    """The watcher's standard output, read on a thread: one JSON summary per ingest run."""

    def __init__(self, stream) -> None:
        self.summaries: list[dict] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            try:
                self.summaries.append(json.loads(line))
            except json.JSONDecodeError:
                pass


def _wait(what: str, condition, *, timeout_s: float, alive=lambda: True, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        if not alive():
            break
        time.sleep(0.1)
    tail = log.read_text()[-4000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def test_the_watcher_rides_out_outages_catches_up_and_stops_on_sigterm(ray_local, make_settings, tmp_path):
    base = make_settings()
    dsn = fresh_dsn(base.postgres_dsn)  # its own catalog: the catch-up runs ingest every tenant in it
    settings = make_settings(postgres_dsn=dsn, text_model=tiny_model(tmp_path / "tiny"))
    proxy = OutageProxy(_port(dsn))
    through_proxy = dsn.replace(f":{_port(dsn)}/", f":{proxy.port}/")
    objects = ObjectStore(settings)
    objects.ensure_bucket()
    log = tmp_path / "watch.log"
    with log.open("w") as err:
        job = subprocess.Popen(
            [sys.executable, "-m", "jobs.watch", "--quiet-s", "0.2", "--backoff-max-s", "1"], cwd=REPO,
            env=_env(settings, through_proxy, ray_local["gcs_address"]), stdout=subprocess.PIPE, stderr=err, text=True)
    out = Lines(job.stdout)
    alive = lambda: job.poll() is None  # noqa: E731
    try:
        _wait("the first catch-up run", lambda: len(out.summaries) >= 1, timeout_s=300, alive=alive, log=log)

        # 1. The listening connection is killed by the server: it reconnects at once and catches up.
        with psycopg.connect(dsn, autocommit=True) as conn:
            killed = conn.execute("SELECT count(*) AS n FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE datname = current_database() AND query ILIKE 'LISTEN %') t").fetchone()[0]
        assert killed == 1
        _wait("the catch-up after the killed connection", lambda: len(out.summaries) >= 2, timeout_s=120,
              alive=alive, log=log)
        assert "outage: postgres is unavailable" in log.read_text()

        # 2. The database is unreachable for a while; a version arrives meanwhile, its NOTIFY sent to nobody.
        proxy.cut()
        _wait("the outage to be seen", lambda: log.read_text().count("outage:") >= 2, timeout_s=60, alive=alive,
              log=log)
        data = b"# Missed\n\nThis version was registered while the watcher could not reach its database.\n"
        objects.put_bytes(f"{TENANT}/missed.md", data)
        catalog = Catalog(settings)
        try:
            version = catalog.register_version(TENANT, "missed.md", object_key=f"{TENANT}/missed.md",
                                               sha256=hashlib.sha256(data).hexdigest(), size=len(data)).version
            with psycopg.connect(dsn, autocommit=True) as conn:
                notify_new_version(conn, NewVersionEvent(TENANT, version.document_id, version.version, "missed.md"))
            _wait("a failed reconnection attempt", lambda: "still unavailable (attempt 2" in log.read_text(),
                  timeout_s=60, alive=alive, log=log)
            assert len(out.summaries) == 2  # nothing ran while the database was gone
            proxy.restore()
            _wait("the missed version to be indexed", lambda: any(s.get("documents_indexed") == 1 for s in out.summaries),
                  timeout_s=180, alive=alive, log=log)
            assert catalog.list_versions(version.document_id)[-1].status == "indexed"
        finally:
            catalog.close()
        text = log.read_text()
        assert "recovered: listening again after" in text and "caught up on pending versions" in text

        # 3. SIGTERM (what `ray job stop` sends) ends it cleanly.
        job.send_signal(signal.SIGTERM)
        assert job.wait(timeout=60) == 0, log.read_text()[-4000:]
        assert "SIGTERM: stopping" in log.read_text()
    finally:
        if job.poll() is None:
            job.kill()
            job.wait(timeout=30)
        proxy.close()


def test_an_ingest_run_that_meets_an_outage_is_caught_up_once_it_ends(make_settings):
    settings = make_settings()
    calls: list[str | None] = []

    def ingest(settings, tenant=None):
        calls.append(tenant)
        if len(calls) == 2:  # the run for the event finds S3 gone
            raise ServiceUnavailableError("s3", "connection refused")
        return IngestSummary()

    watcher = Watcher(settings, ingest=ingest, quiet_s=0.05, backoff_s=0.05, backoff_max_s=0.1)
    runner = threading.Thread(target=watcher.watch, kwargs={"max_seconds": 60})
    runner.start()
    try:
        _wait("the first catch-up", lambda: calls == [None], timeout_s=30)
        with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
            notify_new_version(conn, NewVersionEvent("t-outage", "00000000-0000-0000-0000-000000000000", 1, "a.md"))
        _wait("the catch-up after the outage", lambda: len(calls) >= 3, timeout_s=30)
    finally:
        watcher.stop()
        runner.join(timeout=10)
    assert not runner.is_alive()
    assert calls[:3] == [None, "t-outage", None]  # the failed tenant's versions are picked up by the catch-up
    assert watcher.outages == 1 and watcher.runs == 2

