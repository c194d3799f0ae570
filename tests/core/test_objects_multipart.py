"""The multipart operations of ``core.objects.ObjectStore`` against a real S3 server (SeaweedFS, or MinIO)."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest

from core.objects import BadDigestError, NoSuchUploadError, ObjectStore, multipart_etag

pytestmark = pytest.mark.integration

MiB = 1024**2


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


@pytest.fixture
def objects(settings) -> ObjectStore:
    store = ObjectStore(settings)
    store.ensure_bucket()
    return store


def test_a_multipart_upload_from_parts_sent_out_of_order(objects):
    first, last = os.urandom(5 * MiB), os.urandom(1234)
    upload_id = objects.create_multipart_upload("stage/a", "text/plain")
    etag2 = objects.upload_part("stage/a", upload_id, 2, last, content_md5=md5_b64(last))
    etag1 = objects.upload_part("stage/a", upload_id, 1, bytearray(first), content_md5=md5_b64(first))
    assert etag1 == hashlib.md5(first).hexdigest() and etag2 == hashlib.md5(last).hexdigest()
    assert [(p.part_number, p.size) for p in objects.list_parts("stage/a", upload_id)] == [(1, 5 * MiB), (2, 1234)]
    assert [m.upload_id for m in objects.list_multipart_uploads("stage/")] == [upload_id]

    etag = objects.complete_multipart_upload("stage/a", upload_id, [(2, etag2), (1, etag1)])  # sorted for S3
    assert etag == multipart_etag([etag1, etag2])
    assert objects.get_bytes("stage/a") == first + last
    assert objects.stat("stage/a").etag == etag
    assert objects.list_multipart_uploads("stage/") == []


def test_the_completion_takes_the_sending_of_a_part_it_names(objects):
    upload_id = objects.create_multipart_upload("stage/b")
    objects.upload_part("stage/b", upload_id, 1, b"old", content_md5=md5_b64(b"old"))
    etag = objects.upload_part("stage/b", upload_id, 1, b"new", content_md5=md5_b64(b"new"))
    listed = {(p.part_number, p.etag) for p in objects.list_parts("stage/b", upload_id)}
    assert (1, etag) in listed  # AWS lists the last sending only; SeaweedFS lists both
    objects.complete_multipart_upload("stage/b", upload_id, [(1, etag)])
    assert objects.get_bytes("stage/b") == b"new"


def test_s3_refuses_bytes_that_do_not_match_their_md5(objects):
    upload_id = objects.create_multipart_upload("stage/c")
    with pytest.raises(BadDigestError):
        objects.upload_part("stage/c", upload_id, 1, b"payload", content_md5=md5_b64(b"other"))
    assert objects.list_parts("stage/c", upload_id) == []
    with pytest.raises(ValueError, match="part_number"):
        objects.upload_part("stage/c", upload_id, 10_001, b"x", content_md5=md5_b64(b"x"))


def test_abort_is_idempotent_and_ends_the_upload(objects):
    upload_id = objects.create_multipart_upload("stage/d")
    objects.upload_part("stage/d", upload_id, 1, b"x", content_md5=md5_b64(b"x"))
    assert objects.abort_multipart_upload("stage/d", upload_id) is True
    objects.abort_multipart_upload("stage/d", upload_id)  # AWS: NoSuchUpload (False); SeaweedFS: accepted
    with pytest.raises(NoSuchUploadError):
        objects.upload_part("stage/d", upload_id, 1, b"x", content_md5=md5_b64(b"x"))
    with pytest.raises(NoSuchUploadError):
        objects.list_parts("stage/d", upload_id)
    assert objects.list_multipart_uploads("stage/d") == []


def test_completing_an_upload_whose_object_is_gone_is_no_such_upload(objects):
    upload_id = objects.create_multipart_upload("stage/e")
    etag = objects.upload_part("stage/e", upload_id, 1, b"e", content_md5=md5_b64(b"e"))
    objects.complete_multipart_upload("stage/e", upload_id, [(1, etag)])
    objects.remove("stage/e")
    with pytest.raises(NoSuchUploadError):
        objects.complete_multipart_upload("stage/e", upload_id, [(1, etag)])


def test_copy_keeps_bytes_and_sets_the_content_type(objects):
    objects.put_bytes("stage/src", b"copy me", content_type="text/plain")
    info = objects.copy("stage/src", "tenant/dst.txt", content_type="text/markdown")
    assert info.size == 7 and objects.get_bytes("tenant/dst.txt") == b"copy me"
    assert objects.client.stat_object(objects.bucket, "tenant/dst.txt").content_type == "text/markdown"
    with pytest.raises(KeyError):
        objects.copy("stage/missing", "tenant/x")


def test_listing_many_uploads_pages_through_them(objects):
    ids = {objects.create_multipart_upload(f"many/{i:03d}") for i in range(5)}
    assert {m.upload_id for m in objects.list_multipart_uploads("many/")} == ids
    for m in objects.list_multipart_uploads("many/"):
        objects.abort_multipart_upload(m.key, m.upload_id)
    assert objects.list_multipart_uploads("many/") == []
