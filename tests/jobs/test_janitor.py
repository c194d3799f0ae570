"""``jobs.janitor``: expiring abandoned uploads, retrying stuck completions, sweeping orphans (real S3 and PostgreSQL)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from core.catalog import Catalog
from core.objects import ObjectStore
from core.uploads import STAGING_PREFIX, Upload, UploadService, staging_key
from jobs.janitor import run_janitor

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PART = 5 * 1024**2
SUMMARY_KEYS = {"expired", "retried_completed", "retried_failed", "orphan_multipart_aborted", "orphan_objects_removed",
                "seconds"}


@pytest.fixture
def janitor_settings(settings):
    return settings.model_copy(update={"upload_part_size": PART})


@pytest.fixture
def service(janitor_settings):
    svc = UploadService(janitor_settings)
    svc.objects.ensure_bucket()
    yield svc
    svc.close()


def begin(service: UploadService, path: str, data: bytes, parts: list[int] | None = None) -> Upload:
    upload = service.prepare("acme", path, len(data), sha256=hashlib.sha256(data).hexdigest())
    upload = service.record(upload, service.start_multipart(upload))
    for n in parts if parts is not None else range(1, upload.part_count + 1):
        chunk = data[(n - 1) * PART : n * PART]
        service.store_part(upload, n, chunk, hashlib.md5(chunk).hexdigest())
    return upload


def age(service: UploadService, upload_id: str) -> None:
    """Move an upload's expiry into the past (as if the TTL had gone by)."""
    with service.store.transaction() as conn:
        conn.execute("UPDATE uploads SET expires_at = now() - interval '1 second' WHERE upload_id = %s", (upload_id,))


def s3_multipart_uploads(objects: ObjectStore) -> list[str]:
    """Every multipart upload S3 lists in the bucket, by the SDK's own ListMultipartUploads call."""
    return [u.object_name for u in objects.client._list_multipart_uploads(objects.bucket).uploads]


def test_the_janitor_expires_an_abandoned_upload(service, janitor_settings):
    data = os.urandom(PART + 10)
    abandoned = begin(service, "abandoned.bin", data, parts=[1])
    fresh = begin(service, "fresh.bin", data, parts=[1])
    age(service, abandoned.upload_id)
    summary = run_janitor(janitor_settings)
    assert summary["expired"] == 1 and summary["expire_errors"] == 0
    after = service.store.get(abandoned.upload_id)
    assert after.status == "expired" and "expired" in after.last_error
    assert service.store.parts(abandoned.upload_id) == []
    assert s3_multipart_uploads(service.objects) == [fresh.s3_key]  # no leftover of the abandoned one
    with pytest.raises(KeyError):
        service.objects.stat("acme/abandoned.bin")
    answer = service.complete("acme", abandoned.upload_id)
    assert answer.status_code == 409 and answer.body["error"] == "upload_expired"
    assert service.describe(after)["status"] == "expired"
    assert service.store.get(fresh.upload_id).status == "pending"
    assert run_janitor(janitor_settings)["expired"] == 0  # nothing left to do


def test_the_janitor_completes_an_upload_a_dead_process_left_completing(service, janitor_settings):
    data = os.urandom(PART + 10)
    upload = begin(service, "stuck/complete.bin", data)
    service.store.claim(upload.upload_id)  # the process died right after claiming the completion
    summary = run_janitor(janitor_settings)
    assert summary["retried_completed"] == 1, summary
    after = service.store.get(upload.upload_id)
    assert after.status == "completed" and after.result["body"]["version"] == 1
    assert service.objects.get_bytes("acme/stuck/complete.bin") == data
    assert Catalog(janitor_settings).list_versions(after.result["body"]["document_id"])[0].status == "pending"
    assert s3_multipart_uploads(service.objects) == []
    assert [o.key for o in service.objects.list_objects(STAGING_PREFIX)] == []


def test_the_janitor_gives_up_after_the_maximum_attempts(janitor_settings):
    settings = janitor_settings.model_copy(update={"upload_max_attempts": 2})
    service = UploadService(settings)
    service.objects.ensure_bucket()
    upload = begin(service, "stuck/forever.bin", os.urandom(PART + 1))
    service.store.claim(upload.upload_id)
    service.store.claim(upload.upload_id)  # two attempts started, both died
    service.store.note_error(upload.upload_id, "s3 unavailable: ConnectionRefusedError")
    summary = run_janitor(settings)
    assert summary["retried_failed"] == 1, summary
    after = service.store.get(upload.upload_id)
    assert after.status == "failed" and "ConnectionRefusedError" in after.last_error
    assert after.result["body"]["error"] == "upload_failed"
    assert s3_multipart_uploads(service.objects) == []
    with pytest.raises(KeyError):
        service.objects.stat("acme/stuck/forever.bin")
    service.close()


def test_the_sweep_removes_what_no_live_upload_owns(service):
    live = begin(service, "live.bin", os.urandom(PART + 1), parts=[1])
    orphan_key = staging_key(str(uuid.uuid4()))
    service.objects.create_multipart_upload(orphan_key)
    service.objects.put_bytes(staging_key(str(uuid.uuid4())), b"left by a crash")
    failed = begin(service, "failed.bin", b"x")
    service.objects.put_bytes(staging_key(failed.upload_id), b"staged")  # as a crash after a staged join leaves it
    service.store.end(failed.upload_id, "failed", "test", None)

    assert service.sweep(min_age_s=3600) == {"orphan_multipart_aborted": 1, "orphan_objects_removed": 1}  # failed's
    swept = service.sweep(min_age_s=0)
    assert swept == {"orphan_multipart_aborted": 1, "orphan_objects_removed": 1}
    assert s3_multipart_uploads(service.objects) == [live.s3_key]
    assert [o.key for o in service.objects.list_objects(STAGING_PREFIX)] == []


def test_janitors_running_at_once_expire_each_upload_once(service, janitor_settings):
    uploads = [begin(service, f"many/{i}.bin", b"abc", parts=[]) for i in range(6)]
    for upload in uploads:
        age(service, upload.upload_id)
    with ThreadPoolExecutor(3) as pool:
        summaries = list(pool.map(lambda _: run_janitor(janitor_settings), range(3)))
    assert sum(s["expired"] for s in summaries) == 6
    assert all(s["expire_errors"] == 0 for s in summaries)
    assert {service.store.get(u.upload_id).status for u in uploads} == {"expired"}
    assert s3_multipart_uploads(service.objects) == []


def env_of(settings) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(Path.home()),
        "SLUICE_POSTGRES_DSN": settings.postgres_dsn,
        "SLUICE_S3_ENDPOINT": settings.s3_endpoint,
        "SLUICE_S3_ACCESS_KEY": settings.s3_access_key,
        "SLUICE_S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
        "SLUICE_S3_BUCKET": settings.s3_bucket,
    }


def test_the_command_prints_its_summary_last(service, janitor_settings):
    upload = begin(service, "cli.bin", b"abc", parts=[])
    age(service, upload.upload_id)
    result = subprocess.run([sys.executable, "-m", "jobs.janitor"], cwd=REPO, env=env_of(janitor_settings),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert SUMMARY_KEYS <= set(summary) and summary["expired"] == 1


def test_an_unreachable_database_exits_2_naming_it(janitor_settings, unused_port):
    settings = janitor_settings.model_copy(update={"postgres_dsn": f"postgresql://postgres@127.0.0.1:{unused_port}/x"})
    result = subprocess.run([sys.executable, "-m", "jobs.janitor"], cwd=REPO, env=env_of(settings),
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 2
    assert json.loads(result.stdout.strip().splitlines()[-1])["service"] == "postgres"


def test_giving_up_removes_unverified_bytes_it_joined_but_nothing_else(janitor_settings):
    settings = janitor_settings.model_copy(update={"upload_max_attempts": 1})
    service = UploadService(settings)
    service.objects.ensure_bucket()
    upload = begin(service, "joined/then-died.bin", os.urandom(PART + 1))
    service.store.claim(upload.upload_id)
    parts = [(p.part_number, p.etag) for p in service.store.parts(upload.upload_id)]
    service.objects.complete_multipart_upload(upload.s3_key, upload.s3_upload_id, parts)  # joined, then the crash
    assert run_janitor(settings)["retried_failed"] == 1
    with pytest.raises(KeyError):
        service.objects.stat("acme/joined/then-died.bin")  # never verified: not left behind as a document

    other = begin(service, "theirs.bin", b"v1")
    service.objects.put_bytes("acme/theirs.bin", b"someone else's version")
    service.store.claim(other.upload_id)
    assert run_janitor(settings)["retried_failed"] == 1
    assert service.objects.get_bytes("acme/theirs.bin") == b"someone else's version"
    service.close()
