"""Direct uploads: the client sends each part straight to S3 through a presigned URL; Sluice signs, checks and joins.

Against the session's real S3 server (SeaweedFS) and PostgreSQL, at the service level; the HTTP route and the client
library are in ``test_uploads_api.py`` and ``test_client.py``.
"""

from __future__ import annotations

import base64
import hashlib
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from core.errors import ServiceUnavailableError
from core.events import EventListener
from core.objects import NoSuchUploadError, ObjectChangedError, ObjectStore
from core.uploads import STAGING_PREFIX, MissingPartsError, UploadService, WrongTransferError
from tests.serve.upload_helpers import (  # noqa: F401 (service, catalog: fixtures)
    PART, assert_object_is_the_head, begin, catalog, new_tenant, random_bytes, send_part, service, sha256_hex)

pytestmark = pytest.mark.integration


class CountingObjects(ObjectStore):
    """An ``ObjectStore`` that counts the calls that would read or copy a whole object."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.full_reads = 0
        self.copies = 0

    def sha256(self, key):
        self.full_reads += 1
        return super().sha256(key)

    def copy(self, source_key, key, *, content_type=""):
        self.copies += 1
        return super().copy(source_key, key, content_type=content_type)


@pytest.fixture
def objects(settings) -> CountingObjects:
    store = CountingObjects(settings.model_copy(update={"upload_part_size": PART}))
    store.ensure_bucket()
    return store


def test_a_direct_upload_is_joined_in_place_with_no_copy_and_no_read_back(service, objects, catalog):
    tenant, path, data = new_tenant(), "direct/file.bin", random_bytes(2 * PART + 1000)
    upload = begin(service, tenant, path, data, transfer="direct")
    assert upload.direct and upload.s3_key == f"{tenant}/{path}"

    answer = service.complete(tenant, upload.upload_id)

    assert answer.status_code == 200, answer.body
    assert answer.body["transfer"] == "direct" and answer.body["verified"] == "md5_parts"
    assert answer.body["sha256"] == sha256_hex(data) and answer.body["version"] == 1
    assert objects.full_reads == 0 and objects.copies == 0
    assert_object_is_the_head(objects, catalog, tenant, path, data)
    assert not [o for o in objects.list_objects(STAGING_PREFIX) if upload.upload_id in o.key]
    assert service.complete(tenant, upload.upload_id).body == answer.body  # a second completion: the same answer


def test_a_direct_upload_needs_a_sha256_and_is_proxied_where_the_server_does_not_offer_it(service, objects):
    with pytest.raises(ValueError, match="sha256"):
        service.prepare("acme", "a.bin", 10, transfer="direct")
    with pytest.raises(ValueError, match="transfer"):
        service.prepare("acme", "a.bin", 10, sha256=sha256_hex(b"x"), transfer="carrier-pigeon")
    off = UploadService(objects.settings.model_copy(update={"upload_direct": False}), objects=objects)
    try:
        upload = off.prepare("acme", "a.bin", 10, sha256=sha256_hex(b"x"), transfer="direct")
        assert upload.transfer == "proxy" and upload.s3_key.startswith(STAGING_PREFIX)
    finally:
        off.close()


def test_each_transfer_refuses_the_other_ones_parts(service):
    tenant, data = new_tenant(), random_bytes(PART + 10)
    direct = begin(service, tenant, "d.bin", data, transfer="direct", send=False)
    proxied = begin(service, tenant, "p.bin", data, send=False)
    with pytest.raises(WrongTransferError):
        service.store_part(direct, 1, data[:PART], hashlib.md5(data[:PART]).hexdigest())
    with pytest.raises(WrongTransferError):
        service.sign_parts(proxied, {1: hashlib.md5(data[:PART]).hexdigest()})
    with pytest.raises(ValueError):
        service.sign_parts(direct, {3: "0" * 32})  # the upload has 2 parts
    with pytest.raises(ValueError):
        service.sign_parts(direct, {1: "not-an-md5"})


def test_s3_refuses_bytes_that_are_not_the_declared_ones_and_completion_refuses_undeclared_parts(service, objects, catalog):
    tenant, path, data = new_tenant(), "bad/part.bin", random_bytes(2 * PART + 7)
    upload = begin(service, tenant, path, data, transfer="direct", send=False)
    first, second = data[:PART], data[PART : 2 * PART]
    (signed,) = service.sign_parts(upload, {1: hashlib.md5(first).hexdigest()})

    damaged = httpx.put(signed["url"], content=b"\0" + first[1:], headers=signed["headers"], timeout=60)
    assert damaged.status_code == 400 and "BadDigest" in damaged.text  # S3 checks the declared MD5

    # Sent without the header, other bytes are stored by S3 but are not the part that was declared: missing.
    send_part(service, upload, 1, b"\0" + first[1:], declared=first)
    send_part(service, upload, 2, second)
    send_part(service, upload, 3, data[2 * PART :])
    status = service.describe(service.store.get(upload.upload_id))
    assert status["received_parts"] == [2, 3] and status["missing_parts"] == [1]
    with pytest.raises(MissingPartsError) as refused:
        service.complete(tenant, upload.upload_id)
    assert refused.value.missing == [1]
    assert service.store.get(upload.upload_id).status == "pending"
    with pytest.raises(KeyError):
        objects.stat(f"{tenant}/{path}")  # nothing was joined

    send_part(service, upload, 1, first)  # sent again, right
    answer = service.complete(tenant, upload.upload_id)
    assert answer.status_code == 200, answer.body
    assert_object_is_the_head(objects, catalog, tenant, path, data)


def test_a_part_url_allows_one_part_of_one_upload_until_it_expires(service, objects):
    tenant, data = new_tenant(), random_bytes(2 * PART)
    upload = begin(service, tenant, "scoped.bin", data, transfer="direct", send=False)
    other = begin(service, tenant, "other.bin", data, transfer="direct", send=False)
    part = data[:PART]
    (signed,) = service.sign_parts(upload, {1: hashlib.md5(part).hexdigest()})
    headers = signed["headers"]

    another_part = httpx.put(signed["url"].replace("partNumber=1", "partNumber=2"), content=part, headers=headers)
    another_key = httpx.put(signed["url"].replace("/scoped.bin?", "/other.bin?"), content=part, headers=headers)
    another_upload = httpx.put(signed["url"].replace(upload.s3_upload_id, other.s3_upload_id), content=part,
                               headers=headers)
    assert (another_part.status_code, another_key.status_code, another_upload.status_code) == (403, 403, 403)

    short = objects.presign_upload_part(upload.s3_key, upload.s3_upload_id, 1, expires_s=1)
    time.sleep(2.5)
    expired = httpx.put(short, content=part, headers=headers)
    assert expired.status_code == 403 and "expired" in expired.text.lower()
    assert objects.list_parts(upload.s3_key, upload.s3_upload_id) == []  # none of those stored anything


def test_a_wrong_declared_sha256_is_caught_by_the_read_ingest_makes(service, objects, catalog):
    """Sluice does not read a direct upload's bytes at completion; the one full read (ingest's) checks them."""
    tenant, path, data = new_tenant(), "liar.bin", random_bytes(PART + 3)
    upload = begin(service, tenant, path, data, sha256=sha256_hex(b"other bytes"), transfer="direct")
    answer = service.complete(tenant, upload.upload_id)
    assert answer.status_code == 200 and answer.body["verified"] == "md5_parts"
    head = catalog.latest_versions(tenant)[path]
    with pytest.raises(ObjectChangedError, match="SHA-256"):
        objects.get_verified(head.object_key, head.size, head.sha256)  # what the prepare stage reads with


def test_direct_uploads_racing_on_one_path_leave_the_last_promoted_as_the_head(service, objects, catalog):
    tenant, path = new_tenant(), "race/direct.bin"
    assert service.complete(tenant, begin(service, tenant, path, b"v1").upload_id).status_code == 200
    contents = [random_bytes(PART + n) for n in range(1, 5)]
    uploads = [begin(service, tenant, path, data, transfer="direct") for data in contents]
    with ThreadPoolExecutor(len(uploads)) as pool:
        answers = list(pool.map(lambda u: service.complete(tenant, u.upload_id), uploads))
    assert [a.status_code for a in answers] == [200] * len(uploads)
    last = max(answers, key=lambda a: a.body["version"])
    assert sorted(a.body["version"] for a in answers) == [2, 3, 4, 5]
    assert_object_is_the_head(objects, catalog, tenant, path, contents[answers.index(last)])


@pytest.mark.parametrize("step", ["join", "join-as-on-aws", "register", "finish"])
def test_a_direct_completion_broken_after_any_step_is_retried_with_one_version_and_one_event(
        monkeypatch, service, objects, catalog, step):
    """The attempt dies right after the step; the retry joins again (SeaweedFS allows it), or, as on AWS, is told
    ``NoSuchUpload`` and recognises its own join by the object's ETag."""
    tenant, path = new_tenant(), "broken/direct.bin"
    assert service.complete(tenant, begin(service, tenant, path, b"v1").upload_id).status_code == 200
    data = random_bytes(2 * PART + 5)
    upload = begin(service, tenant, path, data, transfer="direct")
    owner, name = {"join": (service.objects, "complete_multipart_upload"), "register": (service, "_register"),
                   "finish": (service.store, "finish_in")}[step.replace("-as-on-aws", "")]
    real, fired = getattr(owner, name), []

    def once(*args, **kwargs):
        if fired and step == "join-as-on-aws":
            raise NoSuchUploadError(upload.s3_key, upload.s3_upload_id)
        result = real(*args, **kwargs)
        if not fired:
            fired.append(True)
            raise ServiceUnavailableError("postgres", f"died right after {name}")
        return result

    monkeypatch.setattr(owner, name, once)
    with EventListener(objects.settings) as events:
        with pytest.raises(ServiceUnavailableError):
            service.complete(tenant, upload.upload_id)
        assert catalog.latest_versions(tenant)[path].version == 1  # nothing registered by the broken attempt
        answer = service.complete(tenant, upload.upload_id)
        assert answer.status_code == 200, answer.body
        assert answer.body["version"] == 2 and not answer.body["deduplicated"]
        assert_object_is_the_head(objects, catalog, tenant, path, data)
        received = [e for e in events.events(timeout_s=2) if e.tenant == tenant]
    assert [(e.version, e.upload_id) for e in received] == [(2, upload.upload_id)]


def test_status_of_a_direct_upload_lists_the_parts_s3_holds_as_declared(service):
    tenant, data = new_tenant(), random_bytes(2 * PART + 1)
    upload = begin(service, tenant, "half.bin", data, transfer="direct", send=False)
    send_part(service, upload, 2, data[PART : 2 * PART])
    status = service.describe(service.store.get(upload.upload_id))
    assert status["transfer"] == "direct"
    assert status["received_parts"] == [2] and status["missing_parts"] == [1, 3]
    assert status["bytes_received"] == PART
    assert base64.b64decode(service.sign_parts(upload, {1: hashlib.md5(data[:PART]).hexdigest()})[0]["headers"][
        "Content-MD5"]) == hashlib.md5(data[:PART]).digest()
