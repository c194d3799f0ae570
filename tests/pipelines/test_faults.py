"""Crash and fault tests: the index after a fault equals the index of a clean run, point for point.

One Ray cluster for the module (``ray.cluster_utils.Cluster``): a head without CPUs (the driver and the embedded
Qdrant actor live there) and two worker nodes of 2 logical CPUs, where Ray Data's actors run. The corpus is put in
one bucket once; every run indexes it into its own catalog database and collection, so the same tenant and paths
give the same point ids, and a clean run is the reference.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from core import lifecycle
from core.cache import Cache
from core.catalog import Catalog
from core.errors import ServiceUnavailableError
from core.objects import ObjectStore
from core.vectorstore import VectorStore
from jobs.reconcile import reconcile
from pipelines.ingest import FaultInjection, run_ingest
from tests.pipelines.support import FlakyProxy, fresh_dsn, put_corpus, snapshot, tiny_model

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TENANT = "faults"
DOCUMENTS = 48


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    previous = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    ray.init(address=c.address, namespace="sluice", log_to_driver=False)  # alone, the driver attaches to the head
    workers = [c.add_node(num_cpus=2) for _ in range(2)]
    c.wait_for_nodes()
    try:
        yield c, workers
    finally:
        ray.shutdown()
        c.shutdown()
        if previous is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = previous


@pytest.fixture(scope="module")
def corpus(cluster, make_settings, tmp_path_factory):
    """The bucket with the corpus, the tiny model, and a factory of settings on a fresh catalog and collection."""
    base = make_settings(text_model=tiny_model(tmp_path_factory.mktemp("tiny")), write_batch_size=4)
    put_corpus(base, TENANT, DOCUMENTS)

    def fresh():
        return make_settings(text_model=base.text_model, write_batch_size=4, s3_bucket=base.s3_bucket,
                             postgres_dsn=fresh_dsn(base.postgres_dsn))

    return base, fresh


@pytest.fixture(scope="module")
def reference(corpus):
    """The points of a clean run (sorted ids and payloads)."""
    _, fresh = corpus
    settings = fresh()
    summary = run_ingest(settings, tenant=TENANT, scan=True)
    assert summary.documents_indexed == DOCUMENTS and summary.documents_failed == 0
    points = snapshot(settings)
    assert len(points) == summary.chunks_indexed > DOCUMENTS
    return points


def _env(settings, address: str) -> dict[str, str]:
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": str(Path.home()),
        "RAY_ADDRESS": address,
        "RAY_AUTH_MODE": "disabled",
        "SLUICE_POSTGRES_DSN": settings.postgres_dsn,
        "SLUICE_REDIS_URL": settings.redis_url,
        "SLUICE_S3_ENDPOINT": settings.s3_endpoint,
        "SLUICE_S3_ACCESS_KEY": settings.s3_access_key,
        "SLUICE_S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
        "SLUICE_S3_BUCKET": settings.s3_bucket,
        "SLUICE_QDRANT_PATH": str(settings.qdrant_path),
        "SLUICE_QDRANT_COLLECTION": settings.qdrant_collection,
        "SLUICE_TEXT_MODEL": settings.text_model,
        "SLUICE_WRITE_BATCH_SIZE": str(settings.write_batch_size),
    }


def _wait_for_points(store: VectorStore, *, while_alive, timeout_s: float = 300) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and while_alive():
        try:
            count = store.count()
        except Exception:  # the collection does not exist yet
            count = 0
        if count:
            return count
        time.sleep(0.05)
    raise AssertionError("no point was written while the run was alive")


def _assert_exact(settings, reference) -> None:
    assert snapshot(settings) == reference
    report = reconcile(settings, tenant=TENANT, check=True)
    assert report["clean"], report


def test_a_run_killed_with_sigkill_and_run_again_gives_the_clean_index(cluster, corpus, reference):
    c, _ = cluster
    _, fresh = corpus
    settings = fresh()
    lease_s = 2.0  # the dead run's claims: the next run resumes them once this has run out
    job = subprocess.Popen([sys.executable, "-m", "jobs.ingest", "--tenant", TENANT, "--scan"], cwd=REPO,
                           env=_env(settings, c.address) | {"SLUICE_INGEST_LEASE_S": str(lease_s)},
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        written = _wait_for_points(VectorStore(settings), while_alive=lambda: job.poll() is None)
        assert job.poll() is None, "the run ended before it could be killed"
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=30)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == -signal.SIGKILL and written > 0
    catalog = Catalog(settings)
    try:  # the dead run left versions indexing (or pending), and points nobody committed
        statuses = {v.status for v in catalog.all_versions(TENANT)}
        assert statuses & {"indexing", "pending"}, statuses
    finally:
        catalog.close()

    time.sleep(lease_s + 0.5)
    again = run_ingest(settings, tenant=TENANT, scan=True)
    assert again.documents_indexed + again.documents_unchanged == DOCUMENTS and again.documents_failed == 0
    _assert_exact(settings, reference)


def test_a_stage_whose_workers_die_at_random_still_finishes(corpus, reference, tmp_path):
    _, fresh = corpus
    settings = fresh()
    plan = FaultInjection(stage="prepare", exit_probability=0.7, max_exits=2, marker_dir=str(tmp_path))
    summary = run_ingest(settings, tenant=TENANT, scan=True, fault_injection=plan)
    assert plan.exits() >= 1  # a worker process really died
    assert summary.documents_indexed == DOCUMENTS and summary.documents_failed == 0
    _assert_exact(settings, reference)


CRASH_TENANT = "crashes"
POISON = "crashy/doc-04-poison.md"


def test_a_file_that_kills_its_worker_fails_alone_and_the_run_goes_on(corpus, tmp_path):
    from core.ids import document_id

    base, fresh = corpus
    settings = fresh().model_copy(update={"max_document_attempts": 2, "remote_call_timeout_s": 180.0})
    objects = ObjectStore(base)
    good = {f"crashy/doc-{i:02d}.md": f"# Good {i}\n\nThe good document {i} speaks of lanterns {i * 3}.\n".encode()
            for i in range(10)}
    for path, data in {**good, POISON: b"# Poison\n\nThis file kills whichever worker opens it.\n"}.items():
        objects.put_bytes(f"{CRASH_TENANT}/{path}", data)
    # One batch holds all eleven documents: the good ones beside the poison must get through the retries.
    plan = FaultInjection(stage="prepare", exit_probability=0.0, max_exits=0, marker_dir=str(tmp_path),
                          crash_paths=(POISON,))
    summary = run_ingest(settings, tenant=CRASH_TENANT, scan=True, fault_injection=plan)
    assert plan.crashes() == settings.max_document_attempts  # it really killed its worker, and only that often
    assert summary.documents_indexed == len(good) and summary.documents_failed == 1, summary
    assert summary.failures == {"worker_crash": 1}
    assert summary.seconds < settings.remote_call_timeout_s  # it never waited for the no-progress timeout

    catalog = Catalog(settings)
    try:
        poison = document_id(CRASH_TENANT, POISON)
        assert catalog.list_versions(poison)[-1].status == "failed"
        [letter] = catalog.dead_letters(poison)
        assert (letter["stage"], letter["reason"]) == ("prepare", "worker_crash")
        assert "died 2 times" in letter["detail"] and POISON in letter["detail"], letter["detail"]
        assert "SLUICE_MAX_DOCUMENT_ATTEMPTS=2" in letter["detail"]
        assert catalog.attempts_of(poison, 1) == {}  # the count ends with the recorded outcome
        for path in good:
            assert catalog.list_versions(document_id(CRASH_TENANT, path))[-1].status == "indexed"
    finally:
        catalog.close()
    assert reconcile(settings, tenant=CRASH_TENANT, check=True)["clean"]

    again = run_ingest(settings, tenant=CRASH_TENANT, scan=True, fault_injection=plan)
    assert plan.crashes() == settings.max_document_attempts  # failed, not pending: not tried again
    assert (again.documents_indexed, again.documents_failed, again.documents_unchanged) == (0, 0, len(good) + 1)


@pytest.mark.slow
def test_a_node_removed_mid_run_still_gives_the_exact_index(cluster, corpus, reference):
    from ray._private.state import state

    c, workers = cluster
    _, fresh = corpus
    settings = fresh()
    outcome: dict = {}

    def ingest():
        try:
            outcome["summary"] = run_ingest(settings, tenant=TENANT, scan=True)
        except BaseException as exc:  # reported by the assertion below
            outcome["error"] = exc

    def stage_nodes() -> set[str]:
        return {a["Address"]["NodeID"] for a in state.actor_table(None).values()
                if a["State"] == "ALIVE" and "mapworker" in a.get("ActorClassName", "").lower()}

    runner = threading.Thread(target=ingest)
    runner.start()
    victim, deadline = None, time.monotonic() + 300
    while victim is None and runner.is_alive() and time.monotonic() < deadline:
        busy = stage_nodes()
        victim = next((w for w in workers if w.node_id in busy), None)  # a node running a stage's actor
        time.sleep(0.05)
    assert victim is not None, "no stage actor ran on a worker node while the run was alive"
    c.remove_node(victim)
    runner.join(timeout=600)
    assert not runner.is_alive(), "the run did not end"
    assert "error" not in outcome, outcome.get("error")
    assert outcome["summary"].documents_failed == 0
    _assert_exact(settings, reference)


def _port(url_or_endpoint: str) -> int:
    parsed = urllib.parse.urlsplit(url_or_endpoint if "//" in url_or_endpoint else f"//{url_or_endpoint}")
    return parsed.port


def test_services_briefly_gone_are_retried_then_fail_clearly(corpus, unused_port):
    base, _ = corpus
    pg = FlakyProxy(_port(base.postgres_dsn), drop=2)
    s3 = FlakyProxy(_port(base.s3_endpoint), drop=2)
    rd = FlakyProxy(_port(base.redis_url), drop=2)
    try:
        flaky = base.model_copy(update={
            "postgres_dsn": base.postgres_dsn.replace(f":{_port(base.postgres_dsn)}/", f":{pg.port}/"),
            "s3_endpoint": f"127.0.0.1:{s3.port}",
            "redis_url": base.redis_url.replace(f":{_port(base.redis_url)}/", f":{rd.port}/"),
        })
        catalog = Catalog(flaky)
        try:
            assert catalog.count_documents(TENANT) >= 0
        finally:
            catalog.close()
        assert ObjectStore(flaky).get_bytes(f"{TENANT}/corpus/doc-000.md").startswith(b"# Document 0")
        assert lifecycle.bump_generation(Cache(flaky)) > 0
        assert (pg.dropped, s3.dropped, rd.dropped) == (2, 2, 2)  # each was gone, then retried
    finally:
        for proxy in (pg, s3, rd):
            proxy.close()

    gone = f"127.0.0.1:{unused_port}"
    for field, value, service in (
        ("postgres_dsn", f"postgresql://postgres@{gone}/sluice", "postgres"),
        ("s3_endpoint", gone, "s3"),
        ("redis_url", f"redis://{gone}/0", "redis"),
    ):
        broken = base.model_copy(update={field: value})
        with pytest.raises(ServiceUnavailableError) as info:
            if service == "postgres":
                Catalog(broken).check()
            elif service == "s3":
                ObjectStore(broken).check()
            else:
                lifecycle.bump_generation(Cache(broken), backoff_s=0.01)
        assert info.value.service == service


def test_an_ingest_whose_redis_is_gone_exits_2_naming_it(cluster, corpus, unused_port):
    c, _ = cluster
    _, fresh = corpus
    settings = fresh().model_copy(update={"redis_url": f"redis://127.0.0.1:{unused_port}/0"})
    result = subprocess.run([sys.executable, "-m", "jobs.ingest", "--tenant", TENANT, "--prefix", "corpus/doc-00", "--scan"],
                            cwd=REPO, env=_env(settings, c.address) | {"SLUICE_REDIS_URL": settings.redis_url},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "redis is unreachable" in result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["service"] == "redis"
