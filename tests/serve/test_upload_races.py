"""Uploads of one path at once, and completions that fail half-way, on real S3, PostgreSQL (and Ray for ``--scan``).

Every upload writes to its own staging key and is promoted to ``<tenant>/<path>`` under the path's lock, in the
transaction that registers its version and sends its event. These tests race uploads of one path and break a
completion at each of its steps, then check the three things a user relies on: the object holds the bytes of the
last version registered (and the catalog's SHA-256 is the object's), a failed upload removes nothing but its own
key, and every registered version is announced exactly once.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from core.errors import ServiceUnavailableError
from core.events import EventListener
from core.ids import document_id
from core.objects import ObjectStore
from core.uploads import Upload, UploadService
from tests.serve.upload_helpers import (  # noqa: F401 (service, catalog: fixtures)
    PART, assert_object_is_the_head, begin, catalog, new_tenant, random_bytes, service, sha256_hex)

pytestmark = pytest.mark.integration


class SlowCopies(ObjectStore):
    """An ``ObjectStore`` whose server-side copies take a while, so that racing promotions overlap for sure."""

    delay_s = 0.4

    def copy(self, source_key, key, *, content_type=""):
        time.sleep(self.delay_s)
        return super().copy(source_key, key, content_type=content_type)


@pytest.fixture
def objects(settings) -> SlowCopies:
    store = SlowCopies(settings.model_copy(update={"upload_part_size": PART}))
    store.ensure_bucket()
    return store


def test_uploads_are_staged_under_their_own_keys(service):
    tenant = new_tenant()
    first, second = (begin(service, tenant, "same/new.bin", random_bytes(100)) for _ in range(2))
    assert first.s3_key != second.s3_key
    assert first.s3_key != first.object_key and second.s3_key != second.object_key
    assert f"{tenant}/" not in first.s3_key + second.s3_key


def test_a_failed_upload_never_removes_the_completed_one_and_a_scan_keeps_the_document(
        ray_local, service, objects, catalog, tmp_path):
    from pipelines.ingest import run_ingest
    from tests.pipelines.support import tiny_model

    tenant, path = new_tenant(), "race/new.md"
    good = b"# Good\n\nThe bytes that were completed first.\n"
    good_upload = begin(service, tenant, path, good)
    liar = begin(service, tenant, path, b"# Bad\n\nBytes whose declared digest is wrong.\n",
                 sha256=sha256_hex(b"something else"))
    assert service.complete(tenant, good_upload.upload_id).status_code == 200
    failed = service.complete(tenant, liar.upload_id)
    assert failed.status_code == 422 and failed.body["error"] == "checksum_mismatch"
    assert_object_is_the_head(objects, catalog, tenant, path, good)

    settings = objects.settings.model_copy(update={"text_model": tiny_model(tmp_path / "tiny")})
    summary = run_ingest(settings, tenant=tenant, scan=True)
    assert summary.documents_deleted == 0 and summary.documents_indexed == 1
    doc = catalog.get_document(document_id(tenant, path))
    assert not doc.deleted and doc.latest_version == 1
    assert objects.get_bytes(f"{tenant}/{path}") == good


def _break(monkeypatch, service: UploadService, step: str) -> None:
    """Make one completion step do its work and then raise, once (as a process dying right after it would)."""

    def once(owner, name):
        real = getattr(owner, name)
        fired = []

        def broken(*args, **kwargs):
            result = real(*args, **kwargs)
            if not fired:
                fired.append(True)
                raise ServiceUnavailableError("postgres", f"died right after {name}")
            return result

        monkeypatch.setattr(owner, name, broken)

    owner, name = {"copy": (service.objects, "copy"), "remove": (service.objects, "remove"),
                   "register": (service, "_register"), "finish": (service.store, "finish_in"),
                   "verify": (service.store, "save_progress")}[step]
    once(owner, name)


@pytest.mark.parametrize("existing", [False, True], ids=["new-path", "new-version"])
@pytest.mark.parametrize("step", ["verify", "copy", "remove", "register", "finish"])
def test_a_completion_broken_at_any_step_is_retried_with_the_same_answer_and_one_event(
        monkeypatch, service, objects, catalog, step, existing):
    tenant, path = new_tenant(), "broken/step.bin"
    if existing:
        assert service.complete(tenant, begin(service, tenant, path, b"v1").upload_id).status_code == 200
    data = random_bytes(PART + 7)
    upload = begin(service, tenant, path, data)
    expected_version = 2 if existing else 1
    with EventListener(objects.settings) as listener:
        _break(monkeypatch, service, step)
        with pytest.raises(ServiceUnavailableError):
            service.complete(tenant, upload.upload_id)
        assert len(catalog.list_versions(document_id(tenant, path))) == expected_version - 1  # nothing registered
        answer = service.complete(tenant, upload.upload_id)
        events = [e for e in listener.events(timeout_s=2) if e.tenant == tenant]
    assert answer.status_code == 200, answer.body
    assert answer.body | {} == {**answer.body, "version": expected_version, "deduplicated": False,
                                "sha256": sha256_hex(data), "upload_id": upload.upload_id}
    assert service.complete(tenant, upload.upload_id).body == answer.body  # and so on, for every later call
    assert [(e.document_id, e.version, e.upload_id) for e in events] == [
        (answer.body["document_id"], expected_version, upload.upload_id)]
    assert len(catalog.list_versions(answer.body["document_id"])) == expected_version
    assert_object_is_the_head(objects, catalog, tenant, path, data)
    assert [o.key for o in objects.list_objects(upload.s3_key)] == []  # the staging object is gone


def test_completions_racing_on_one_path_register_in_order_and_the_object_is_the_last(service, objects, catalog):
    tenant, path = new_tenant(), "race/versions.bin"
    assert service.complete(tenant, begin(service, tenant, path, b"v1").upload_id).status_code == 200
    contents = [random_bytes(PART + n) for n in (1, 2, 3)]
    uploads = [begin(service, tenant, path, data) for data in contents]
    start = threading.Barrier(len(uploads))

    def complete(upload: Upload):
        start.wait()
        return service.complete(tenant, upload.upload_id, wait_s=60)

    with EventListener(objects.settings) as listener:
        with ThreadPoolExecutor(len(uploads)) as pool:
            answers = list(pool.map(complete, uploads))
        events = [e for e in listener.events(timeout_s=2) if e.tenant == tenant]
    assert {a.status_code for a in answers} == {200}
    assert sorted(a.body["version"] for a in answers) == [2, 3, 4]
    assert sorted(e.version for e in events) == [2, 3, 4]
    last = max(range(len(answers)), key=lambda i: answers[i].body["version"])
    assert_object_is_the_head(objects, catalog, tenant, path, contents[last])
    versions = {v.version: v for v in catalog.list_versions(document_id(tenant, path))}
    for data, answer in zip(contents, answers):
        assert versions[answer.body["version"]].sha256 == sha256_hex(data) == answer.body["sha256"]


def test_two_new_uploads_of_one_path_both_completing_make_versions_1_and_2(service, objects, catalog):
    tenant, path = new_tenant(), "race/both.bin"
    contents = [random_bytes(300), random_bytes(301)]
    uploads = [begin(service, tenant, path, data) for data in contents]
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda u: service.complete(tenant, u.upload_id, wait_s=60), uploads))
    assert sorted(a.body["version"] for a in answers) == [1, 2]
    last = max(range(2), key=lambda i: answers[i].body["version"])
    assert_object_is_the_head(objects, catalog, tenant, path, contents[last])
