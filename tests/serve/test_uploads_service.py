"""``core.uploads.UploadService`` under failures, on real S3 and PostgreSQL, with faults injected into the S3 adapter.

The faults model what users of S3 clients report: a completion whose answer was lost (AWS then says
``NoSuchUpload``), a process that died between two steps, a multipart upload removed behind our back, and a part
record that S3 no longer matches. Each case ends with the right bytes under the document's key, or nothing there.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from core.catalog import Catalog
from core.errors import ServiceUnavailableError
from core.objects import NoSuchUploadError, ObjectStore
from core.uploads import (
    STAGING_PREFIX,
    MissingPartsError,
    PartIntegrityError,
    Upload,
    UploadPart,
    UploadService,
)
from tests.serve.upload_helpers import PART, begin, random_bytes, service, sha256_hex  # noqa: F401 (service: a fixture)

pytestmark = pytest.mark.integration


class FaultyObjects(ObjectStore):
    """An ``ObjectStore`` whose chosen methods run a fault first (``faults[name](*args)``), once each."""

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.faults: dict[str, object] = {}
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def _fault(self, name: str):
        with self._lock:
            self.calls[name] = self.calls.get(name, 0) + 1
            return self.faults.pop(name, None)

    def complete_multipart_upload(self, key, upload_id, parts):
        fault = self._fault("complete_multipart_upload")
        if fault == "answer_lost":
            super().complete_multipart_upload(key, upload_id, parts)
            raise ServiceUnavailableError("s3", "ReadTimeoutError: the answer never came")
        if fault == "no_such_upload":
            super().complete_multipart_upload(key, upload_id, parts)
            raise NoSuchUploadError(key, upload_id)  # what AWS answers to a repeated completion
        if fault == "down":
            raise ServiceUnavailableError("s3", "ConnectionRefusedError")
        return super().complete_multipart_upload(key, upload_id, parts)

    def stat(self, key):
        if self._fault("stat") == "down":
            raise ServiceUnavailableError("s3", "ConnectionResetError")
        return super().stat(key)

    def remove(self, key):
        if self._fault("remove") == "down":
            raise ServiceUnavailableError("s3", "ConnectionResetError")
        return super().remove(key)

    def upload_part(self, key, upload_id, part_number, data, *, content_md5):
        etag = super().upload_part(key, upload_id, part_number, data, content_md5=content_md5)
        return "0" * 32 if self._fault("upload_part") == "wrong_etag" else etag


@pytest.fixture
def objects(settings) -> FaultyObjects:
    store = FaultyObjects(settings.model_copy(update={"upload_part_size": PART}))
    store.ensure_bucket()
    return store


def staging_left(objects: ObjectStore, upload: Upload) -> list[str]:
    return [o.key for o in objects.list_objects(STAGING_PREFIX) if upload.upload_id in o.key] + [
        m.key for m in objects.list_multipart_uploads(STAGING_PREFIX) if upload.upload_id in m.key
    ]


def test_a_lost_completion_answer_is_retried_safely(service, objects):
    data = random_bytes(PART + 100)
    upload = begin(service, "acme", "lost/answer.bin", data)
    objects.faults["complete_multipart_upload"] = "answer_lost"
    with pytest.raises(ServiceUnavailableError):
        service.complete("acme", upload.upload_id)
    stuck = service.store.get(upload.upload_id)
    assert stuck.status == "completing" and stuck.attempts == 1 and "s3 unavailable" in stuck.last_error
    objects.faults["complete_multipart_upload"] = "no_such_upload"  # AWS: the upload is gone, the object is there
    answer = service.complete("acme", upload.upload_id)
    assert answer.status_code == 200, answer.body
    assert objects.get_bytes("acme/lost/answer.bin") == data
    assert staging_left(objects, upload) == []


def test_a_crash_during_a_new_paths_completion_is_retried(service, objects):
    data = random_bytes(PART + 1)
    upload = begin(service, "acme", "crash/new.bin", data)
    assert upload.s3_key != upload.object_key  # a new path is staged under its own key too (two uploads of it never share one)
    objects.faults["stat"] = "down"  # after the copy to the path, before anything is recorded
    with pytest.raises(ServiceUnavailableError):
        service.complete("acme", upload.upload_id)
    answer = service.complete("acme", upload.upload_id)
    assert answer.status_code == 200 and answer.body["version"] == 1
    assert objects.get_bytes("acme/crash/new.bin") == data
    assert objects.stat("acme/crash/new.bin").etag == answer.body["etag"]


def test_a_crash_after_the_copy_finishes_without_redoing_it(service, objects):
    assert service.complete("acme", begin(service, "acme", "crash/after-copy.bin", b"v1").upload_id).status_code == 200
    data = random_bytes(PART + 1)
    upload = begin(service, "acme", "crash/after-copy.bin", data)
    assert upload.s3_key != upload.object_key  # a new version is staged
    objects.calls.clear()
    objects.faults["remove"] = "down"
    with pytest.raises(ServiceUnavailableError):
        service.complete("acme", upload.upload_id)
    progress = service.store.get(upload.upload_id).progress
    assert progress["copied"] is True and progress["sha256"] == sha256_hex(data)
    answer = service.complete("acme", upload.upload_id)
    assert answer.status_code == 200 and answer.body["version"] == 2
    assert objects.calls["complete_multipart_upload"] == 1  # not joined twice
    assert len(Catalog(objects.settings).list_versions(answer.body["document_id"])) == 2
    assert objects.get_bytes("acme/crash/after-copy.bin") == data
    assert staging_left(objects, upload) == []


def test_a_multipart_upload_gone_from_s3_fails_cleanly(service, objects):
    data = random_bytes(PART + 1)
    upload = begin(service, "acme", "gone/away.bin", data)
    objects.abort_multipart_upload(upload.s3_key, upload.s3_upload_id)
    answer = service.complete("acme", upload.upload_id)
    assert answer.status_code == 409 and answer.body["error"] == "upload_lost"
    assert service.store.get(upload.upload_id).status == "failed"
    with pytest.raises(KeyError):
        objects.stat("acme/gone/away.bin")


def test_a_part_record_that_s3_does_not_match_is_asked_for_again(service, objects):
    data = random_bytes(PART + 1)
    upload = begin(service, "acme", "stale/part.bin", data)
    wrong = random_bytes(PART)
    service.store.record_part(upload.upload_id, UploadPart(1, PART, hashlib.md5(wrong).hexdigest(), hashlib.md5(wrong).hexdigest()))
    with pytest.raises(MissingPartsError) as missing:
        service.complete("acme", upload.upload_id)
    assert missing.value.missing == [1]
    assert service.store.get(upload.upload_id).status == "pending"
    service.store_part(upload, 1, data[:PART], hashlib.md5(data[:PART]).hexdigest())
    assert service.complete("acme", upload.upload_id).status_code == 200
    assert objects.get_bytes("acme/stale/part.bin") == data


def test_concurrent_completions_do_the_work_once(service, objects):
    data = random_bytes(2 * PART + 1)
    upload = begin(service, "acme", "race/complete.bin", data)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: service.complete("acme", upload.upload_id, wait_s=60), range(4)))
    assert {a.status_code for a in answers} == {200}
    assert all(a.body == answers[0].body for a in answers)
    assert objects.calls["complete_multipart_upload"] == 1
    assert len(Catalog(objects.settings).list_versions(answers[0].body["document_id"])) == 1


def test_after_the_maximum_attempts_the_upload_fails_and_s3_is_clean(objects):
    service = UploadService(objects.settings.model_copy(update={"upload_max_attempts": 1}), objects=objects)
    data = random_bytes(PART + 1)
    upload = begin(service, "acme", "give/up.bin", data)
    objects.faults["complete_multipart_upload"] = "down"
    with pytest.raises(ServiceUnavailableError):
        service.complete("acme", upload.upload_id)
    answer = service.complete("acme", upload.upload_id)
    assert answer.status_code == 409 and answer.body["error"] == "upload_failed"
    assert "ConnectionRefusedError" in answer.body["detail"]
    assert service.store.get(upload.upload_id).status == "failed"
    assert staging_left(objects, upload) == []
    service.close()


def test_an_etag_that_is_not_the_md5_is_not_recorded(service, objects):
    data = random_bytes(100)
    upload = begin(service, "acme", "etag/odd.bin", data, send=False)
    objects.faults["upload_part"] = "wrong_etag"
    with pytest.raises(PartIntegrityError):
        service.store_part(upload, 1, data, hashlib.md5(data).hexdigest())
    assert service.store.parts(upload.upload_id) == []


def test_the_part_plan_respects_the_s3_limits():
    from core.uploads import plan_parts

    assert plan_parts(0, None, PART) == (PART, 0)
    assert plan_parts(PART, None, PART) == (PART, 1)
    assert plan_parts(PART + 1, None, PART) == (PART, 2)
    size, count = plan_parts(5 * 1024**4, None, PART)
    assert count <= 10_000 and size % 1024**2 == 0 and size * count >= 5 * 1024**4
    for bad in (PART - 1, 5 * 1024**3 + 1):
        with pytest.raises(ValueError, match="part_size"):
            plan_parts(10, bad, PART)
    with pytest.raises(ValueError, match="size"):
        plan_parts(-1, None, PART)
