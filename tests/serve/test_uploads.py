"""The ``/v1/uploads`` contract through Ray Serve over real HTTP, on real S3 (SeaweedFS), PostgreSQL and Redis.

Every test checks that the bytes in S3 equal the bytes sent, or that nothing is there.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata

import httpx
import pytest

from core.ids import document_id
from core.objects import ObjectStore
from core.uploads import EMPTY_SHA256, STAGING_PREFIX
from tests.serve.upload_helpers import (
    PART,
    MiB,
    Uploads,
    md5_b64,
    new_tenant,
    random_bytes,
    settings_overrides,
    sha256_hex,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def base_url(upload_settings, objects, serve_http) -> str:
    from serve.uploads.app import build_app

    app = build_app({"settings_overrides": settings_overrides(upload_settings), "complete_wait_s": 2.0})
    return serve_http(app, "uploads", route_prefix="/v1/uploads")


@pytest.fixture
def client(base_url, tenant) -> Uploads:
    return Uploads(base_url, tenant)


def assert_stored(objects: ObjectStore, tenant: str, path: str, data: bytes) -> None:
    assert objects.get_bytes(f"{tenant}/{unicodedata.normalize('NFC', path)}") == data


def assert_absent(objects: ObjectStore, key: str) -> None:
    with pytest.raises(KeyError):
        objects.stat(key)


def no_staging_left(objects: ObjectStore, upload_id: str) -> bool:
    staged = [o.key for o in objects.list_objects(STAGING_PREFIX) if upload_id in o.key]
    multipart = [m for m in objects.list_multipart_uploads(STAGING_PREFIX) if upload_id in m.key]
    return not staged and not multipart


def test_create_send_complete_answers_the_contract(client, objects, tenant):
    data = random_bytes(11 * MiB)
    created = client.create("reports/q1.bin", len(data), sha256=sha256_hex(data))
    assert created.status_code == 201, created.text
    assert created.headers["X-Request-ID"]
    body = created.json()
    assert {"upload_id", "part_size", "part_count", "expires_at"} <= set(body)
    assert body["part_size"] == PART and body["part_count"] == 3
    uid = body["upload_id"]

    status = client.status(uid).json()
    assert status["status"] == "pending"
    assert status["received_parts"] == [] and status["missing_parts"] == [1, 2, 3] and status["bytes_received"] == 0

    part = client.put(uid, 1, data[:PART])
    assert part.status_code == 200, part.text
    assert set(part.json()) >= {"part_number", "etag", "size"}
    assert part.json()["part_number"] == 1 and part.json()["size"] == PART
    client.send_all(uid, data, PART, order=[3, 2])
    status = client.status(uid).json()
    assert status["received_parts"] == [1, 2, 3] and status["missing_parts"] == []
    assert status["bytes_received"] == len(data)

    done = client.complete(uid)
    assert done.status_code == 200, done.text
    answer = done.json()
    assert answer["document_id"] == document_id(tenant, "reports/q1.bin")
    assert answer["version"] == 1 and answer["sha256"] == sha256_hex(data) and answer["size"] == len(data)
    assert_stored(objects, tenant, "reports/q1.bin", data)
    assert client.status(uid).json()["status"] == "completed"
    assert no_staging_left(objects, uid)


def test_parts_out_of_order_and_concurrently(client, objects, tenant):
    from concurrent.futures import ThreadPoolExecutor

    data = random_bytes(3 * PART + 123)
    uid = client.create("data/parallel.bin", len(data), sha256=sha256_hex(data)).json()["upload_id"]

    def send(n: int) -> int:
        return Uploads(client.base.rsplit("/v1/uploads", 1)[0], tenant).put(uid, n, data[(n - 1) * PART : n * PART]).status_code

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(send, [4, 2, 3, 1])) == [200] * 4
    done = client.complete(uid)
    assert done.status_code == 200, done.text
    assert_stored(objects, tenant, "data/parallel.bin", data)


def test_sending_a_part_again_replaces_it(client, objects, tenant):
    data = random_bytes(PART + 10)
    uid = client.create("data/again.bin", len(data), sha256=sha256_hex(data)).json()["upload_id"]
    wrong = random_bytes(PART)
    assert client.put(uid, 1, wrong).status_code == 200
    assert client.put(uid, 1, data[:PART]).status_code == 200  # the right bytes replace the wrong ones
    assert client.put(uid, 2, data[PART:]).status_code == 200
    assert client.put(uid, 2, data[PART:]).status_code == 200  # the same part twice
    status = client.status(uid).json()
    assert status["received_parts"] == [1, 2] and status["bytes_received"] == len(data)
    assert client.complete(uid).status_code == 200
    assert_stored(objects, tenant, "data/again.bin", data)


def test_a_wrong_digest_stores_nothing(client, objects, tenant):
    data = random_bytes(PART + 10)
    uid = client.create("data/digest.bin", len(data)).json()["upload_id"]
    bad_md5 = client.put(uid, 2, data[PART:], headers={"Content-MD5": md5_b64(b"other bytes")})
    assert bad_md5.status_code == 400 and bad_md5.json()["error"] == "bad_digest"
    bad_sha = client.put(uid, 2, data[PART:], md5=False, headers={"X-Checksum-SHA256": sha256_hex(b"other")})
    assert bad_sha.status_code == 400 and bad_sha.json()["error"] == "bad_digest"
    both = client.put(uid, 2, data[PART:], sha256=True, headers={"Content-MD5": md5_b64(b"x")})
    assert both.status_code == 400 and both.json()["error"] == "bad_digest"
    assert client.status(uid).json()["received_parts"] == []
    staged = client_upload(objects, uid)
    assert objects.list_parts(staged.s3_key, staged.s3_upload_id) == []  # S3 never saw the part
    assert client.put(uid, 2, data[PART:], md5=False, sha256=True).status_code == 200  # SHA-256 alone is enough
    assert client.status(uid).json()["received_parts"] == [2]


def client_upload(objects: ObjectStore, upload_id: str):
    from core.uploads import UploadStore

    store = UploadStore(objects.settings)
    try:
        return store.get(upload_id)
    finally:
        store.close()


def test_completion_with_a_part_missing_names_it(client, objects, tenant):
    data = random_bytes(2 * PART + 5)
    uid = client.create("data/missing.bin", len(data), sha256=sha256_hex(data)).json()["upload_id"]
    client.send_all(uid, data, PART, order=[1, 3])
    answer = client.complete(uid)
    assert answer.status_code == 409
    assert answer.json()["error"] == "missing_parts" and answer.json()["missing_parts"] == [2]
    assert client.status(uid).json()["status"] == "pending"
    assert_absent(objects, f"{tenant}/data/missing.bin")
    client.send_all(uid, data, PART, order=[2])
    assert client.complete(uid).status_code == 200
    assert_stored(objects, tenant, "data/missing.bin", data)


def test_a_wrong_declared_sha256_fails_and_leaves_nothing(client, objects, tenant):
    data = random_bytes(PART + 99)
    uid = client.create("data/liar.bin", len(data), sha256=sha256_hex(b"something else")).json()["upload_id"]
    client.send_all(uid, data, PART)
    answer = client.complete(uid)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"] == "checksum_mismatch"
    assert answer.json()["actual"] == sha256_hex(data)
    assert_absent(objects, f"{tenant}/data/liar.bin")
    assert no_staging_left(objects, uid)
    status = client.status(uid).json()
    assert status["status"] == "failed" and "checksum_mismatch" in status["error"]
    again = client.complete(uid)
    assert again.status_code == 422 and again.json() == answer.json()


def test_a_wrong_upload_never_touches_the_current_version(client, objects, tenant):
    good = random_bytes(PART + 1)
    assert client.upload("keep/me.bin", good).status_code == 200
    bad = random_bytes(PART + 1)
    uid = client.create("keep/me.bin", len(bad), sha256=sha256_hex(good[:10])).json()["upload_id"]
    client.send_all(uid, bad, PART)
    assert client.complete(uid).status_code == 422
    assert_stored(objects, tenant, "keep/me.bin", good)


def test_a_zero_byte_file(client, objects, tenant):
    created = client.create("empty.txt", 0, sha256=EMPTY_SHA256)
    assert created.status_code == 201, created.text
    assert created.json()["part_count"] == 0
    uid = created.json()["upload_id"]
    assert client.status(uid).json()["missing_parts"] == []
    assert client.put(uid, 1, b"").json()["error"] == "bad_part_number"
    done = client.complete(uid)
    assert done.status_code == 200, done.text
    assert done.json()["size"] == 0 and done.json()["sha256"] == EMPTY_SHA256
    assert_stored(objects, tenant, "empty.txt", b"")

    wrong = client.create("empty2.txt", 0, sha256=sha256_hex(b"x")).json()["upload_id"]
    assert client.complete(wrong).json()["error"] == "checksum_mismatch"
    assert_absent(objects, f"{tenant}/empty2.txt")


def test_the_same_bytes_again_are_deduplicated(client, objects, tenant):
    data = random_bytes(1000)
    first = client.upload("dup/a.txt", data)
    assert first.status_code == 200 and first.json()["version"] == 1
    again = client.create("dup/a.txt", len(data), sha256=sha256_hex(data))
    assert again.status_code == 200
    assert again.json() == again.json() | {"deduplicated": True, "document_id": first.json()["document_id"], "version": 1}
    assert "upload_id" not in again.json()
    changed = client.upload("dup/a.txt", data + b"!")
    assert changed.status_code == 200 and changed.json()["version"] == 2
    assert_stored(objects, tenant, "dup/a.txt", data + b"!")


def test_on_conflict_reject_refuses_an_existing_path(client, tenant):
    assert client.upload("conflict.txt", b"one").status_code == 200
    refused = client.create("conflict.txt", 3, sha256=sha256_hex(b"two"), on_conflict="reject")
    assert refused.status_code == 409 and refused.json()["error"] == "conflict"
    fresh = client.create("conflict-new.txt", 3, on_conflict="reject")
    assert fresh.status_code == 201


def test_on_conflict_reject_is_checked_again_at_completion(client, objects, tenant):
    late = client.create("race.txt", 4, sha256=sha256_hex(b"late"), on_conflict="reject").json()["upload_id"]
    client.send_all(late, b"late", PART)
    assert client.upload("race.txt", b"first").status_code == 200
    answer = client.complete(late)
    assert answer.status_code == 409 and answer.json()["error"] == "conflict"
    assert_stored(objects, tenant, "race.txt", b"first")


def test_completing_twice_returns_the_first_answer(client, tenant):
    data = random_bytes(2000)
    created = client.create("twice.bin", len(data), sha256=sha256_hex(data)).json()
    client.send_all(created["upload_id"], data, PART)
    first = client.complete(created["upload_id"])
    second = client.complete(created["upload_id"])
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    late_part = client.put(created["upload_id"], 1, data)
    assert late_part.status_code == 409 and late_part.json()["status"] == "completed"
    late_abort = client.abort(created["upload_id"])
    assert late_abort.status_code == 409 and late_abort.json()["error"] == "not_pending"


def test_abort(client, objects, tenant):
    data = random_bytes(PART + 1)
    uid = client.create("aborted.bin", len(data)).json()["upload_id"]
    client.send_all(uid, data, PART, order=[1])
    aborted = client.abort(uid)
    assert aborted.status_code == 204 and aborted.content == b""
    assert aborted.headers["X-Request-ID"]
    assert client.status(uid).json()["status"] == "aborted"
    assert no_staging_left(objects, uid)
    assert client.put(uid, 2, data[PART:]).status_code == 409
    assert client.complete(uid).status_code == 409
    assert client.abort(uid).status_code == 204  # idempotent
    from core.uploads import UploadStore

    store = UploadStore(objects.settings)
    assert store.parts(uid) == []
    store.close()
    assert_absent(objects, f"{tenant}/aborted.bin")


def test_a_direct_upload_over_http_sends_its_parts_to_s3(client, objects, tenant, base_url):
    data = random_bytes(2 * PART + 9)
    created = client.create("direct/over-http.bin", len(data), sha256=sha256_hex(data), transfer="direct")
    assert created.status_code == 201 and created.json()["transfer"] == "direct"
    upload_id, size = created.json()["upload_id"], created.json()["part_size"]
    chunks = {n: data[(n - 1) * size : n * size] for n in (1, 2, 3)}
    signed = client.part_urls(upload_id, {n: hashlib.md5(c).hexdigest() for n, c in chunks.items()})
    assert signed.status_code == 200
    assert [p["part_number"] for p in signed.json()["parts"]] == [1, 2, 3]
    for part in signed.json()["parts"]:
        assert part["method"] == "PUT" and part["size"] == len(chunks[part["part_number"]])
        sent = httpx.put(part["url"], content=chunks[part["part_number"]], headers=part["headers"])
        assert sent.status_code == 200, sent.text
    assert client.status(upload_id).json()["received_parts"] == [1, 2, 3]

    proxied = client.put(upload_id, 1, chunks[1])
    assert proxied.status_code == 409 and proxied.json()["error"] == "wrong_transfer"
    assert Uploads(base_url, new_tenant()).part_urls(upload_id, {1: "0" * 32}).status_code == 404

    done = client.complete(upload_id)
    assert done.status_code == 200, done.text
    assert done.json()["verified"] == "md5_parts" and done.json()["transfer"] == "direct"
    assert_stored(objects, tenant, "direct/over-http.bin", data)
    assert client.part_urls(upload_id, {1: "0" * 32}).json()["error"] == "not_pending"


def test_part_urls_are_refused_with_reasons(client):
    data = random_bytes(PART + 1)
    proxied = client.create("p.bin", len(data), sha256=sha256_hex(data)).json()
    assert proxied["transfer"] == "proxy"
    answer = client.part_urls(proxied["upload_id"], {1: "0" * 32})
    assert answer.status_code == 409 and answer.json()["error"] == "wrong_transfer"
    no_sha = client.create("d.bin", len(data), transfer="direct")
    assert no_sha.status_code == 422 and "sha256" in no_sha.json()["detail"]
    direct = client.create("d.bin", len(data), sha256=sha256_hex(data), transfer="direct").json()
    for digests, status, code in [({3: "0" * 32}, 400, "bad_part_number"), ({1: "xyz"}, 422, "invalid_request")]:
        answer = client.part_urls(direct["upload_id"], digests)
        assert (answer.status_code, answer.json()["error"]) == (status, code), answer.text
    assert client.http.post(f"{client.base}/{direct['upload_id']}/part-urls", json={"parts": []},
                            headers=client.headers()).status_code == 422


def test_another_tenants_upload_is_not_found(client, base_url):
    uid = client.create("private.bin", 10).json()["upload_id"]
    other = Uploads(base_url, new_tenant())
    for response in (other.status(uid), other.put(uid, 1, b"0123456789"), other.complete(uid), other.abort(uid)):
        assert response.status_code == 404, response.text
        assert response.json()["error"] == "upload_not_found"
    assert client.status(uid).json()["status"] == "pending"
    assert client.put(uid, 1, b"0123456789").status_code == 200


@pytest.mark.parametrize("path", [
    "", "/etc/passwd", "a/../b", "..", "a/./b", "a//b", "a/", "a\x00b", "a\nb", "tab\there", "del\x7f",
    "c1\x85", "x" * 256, "a/" * 600 + "b", "line\u2028sep", "lone\ud800surrogate",
])
def test_hostile_paths_are_refused(client, path):
    body = json.dumps({"path": path, "size": 10})  # ASCII-escaped, so a lone surrogate travels as \\ud800
    response = client.http.post(client.base, content=body, headers=client.headers(**{"Content-Type": "application/json"}))
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "bad_path"


def test_unicode_paths_nfc_and_nfd_are_one_document(client, objects, tenant):
    nfd = unicodedata.normalize("NFD", "café/Ångström.txt")
    nfc = unicodedata.normalize("NFC", nfd)
    assert nfd != nfc
    first = client.upload(nfd, b"first")
    assert first.status_code == 200 and first.json()["path"] == nfc
    second = client.upload(nfc, b"second")
    assert second.json()["document_id"] == first.json()["document_id"] == document_id(tenant, nfc)
    assert second.json()["version"] == 2
    assert_stored(objects, tenant, nfc, b"second")
    assert [o.key for o in objects.list_objects(f"{tenant}/caf")] == [f"{tenant}/{nfc}"]
    emoji = client.upload("rapports/été 🌞/データ.txt", b"unicode")
    assert emoji.status_code == 200
    assert_stored(objects, tenant, "rapports/été 🌞/データ.txt", b"unicode")


def test_two_tenants_upload_identical_bytes_to_different_paths(base_url, objects):
    data = random_bytes(PART + 3)
    alice, bob = Uploads(base_url, new_tenant()), Uploads(base_url, new_tenant())
    a = alice.upload("mine/report.bin", data, content_type="application/x-alice")
    assert a.status_code == 200
    # Bob declares the same SHA-256: nothing of Alice's is deduplicated into his namespace.
    created = bob.create("his/other.bin", len(data), sha256=sha256_hex(data))
    assert created.status_code == 201
    bob.send_all(created.json()["upload_id"], data, created.json()["part_size"])
    b = bob.complete(created.json()["upload_id"])
    assert b.status_code == 200
    assert a.json()["document_id"] != b.json()["document_id"]
    assert a.json()["version"] == b.json()["version"] == 1
    from core.catalog import Catalog

    catalog = Catalog(objects.settings)
    (va,), (vb,) = catalog.list_versions(a.json()["document_id"]), catalog.list_versions(b.json()["document_id"])
    assert (va.tenant, va.path, va.content_type) == (alice.tenant, "mine/report.bin", "application/x-alice")
    assert (vb.tenant, vb.path, vb.content_type) == (bob.tenant, "his/other.bin", "application/octet-stream")
    assert va.object_key == f"{alice.tenant}/mine/report.bin" and vb.object_key == f"{bob.tenant}/his/other.bin"
    assert objects.get_bytes(va.object_key) == objects.get_bytes(vb.object_key) == data
    catalog.close()


def test_size_limits(client):
    too_big = client.create("huge.bin", 6 * 1024**4)
    assert too_big.status_code == 413 and too_big.json()["error"] == "too_large"
    many = client.create("many.bin", 10_001 * PART, part_size=PART)
    assert many.status_code == 201
    assert many.json()["part_count"] <= 10_000 and many.json()["part_size"] == 6 * MiB
    assert client.abort(many.json()["upload_id"]).status_code == 204
    small = client.create("small.bin", 10, part_size=MiB)
    assert small.status_code == 422 and "part_size" in small.json()["detail"]
    big_part = client.create("big.bin", 10, part_size=6 * 1024**3)
    assert big_part.status_code == 422


def test_a_crash_between_the_s3_call_and_the_db_commit_then_resume(client, objects, tenant):
    """S3 stored part 2 but the replica died before recording it: the client sees it missing and sends it again."""
    data = random_bytes(2 * PART + 7)
    uid = client.create("crash/resume.bin", len(data), sha256=sha256_hex(data)).json()["upload_id"]
    client.send_all(uid, data, PART, order=[1])
    upload = client_upload(objects, uid)
    objects.upload_part(upload.s3_key, upload.s3_upload_id, 2, data[PART : 2 * PART], content_md5=md5_b64(data[PART : 2 * PART]))
    objects.upload_part(upload.s3_key, upload.s3_upload_id, 3, b"garbage", content_md5=md5_b64(b"garbage"))
    status = client.status(uid).json()
    assert status["received_parts"] == [1] and status["missing_parts"] == [2, 3]
    client.send_all(uid, data, PART, order=status["missing_parts"])
    done = client.complete(uid)
    assert done.status_code == 200, done.text
    assert_stored(objects, tenant, "crash/resume.bin", data)


def test_a_completion_retried_after_a_client_timeout(client, objects, tenant):
    import httpx

    from core.catalog import Catalog

    data = random_bytes(2 * PART + 1)
    created = client.create("slow/complete.bin", len(data), sha256=sha256_hex(data)).json()
    client.send_all(created["upload_id"], data, PART)
    with pytest.raises(httpx.TimeoutException):
        client.complete(created["upload_id"], timeout_s=0.005)
    for _ in range(60):
        retried = client.complete(created["upload_id"])
        if retried.status_code != 409:
            break
        assert retried.json()["error"] == "completion_in_progress" and retried.headers["Retry-After"]
    assert retried.status_code == 200, retried.text
    assert retried.json()["version"] == 1
    assert client.complete(created["upload_id"]).json() == retried.json()
    catalog = Catalog(objects.settings)
    assert len(catalog.list_versions(created["document_id"])) == 1
    catalog.close()
    assert_stored(objects, tenant, "slow/complete.bin", data)


def test_a_completion_signals_the_new_version(client, upload_settings, tenant):
    from core.events import EventListener

    with EventListener(upload_settings) as listener:
        done = client.upload("events/new.txt", b"fresh").json()
        events = [e for e in listener.events(timeout_s=10, max_events=1) if e.tenant == tenant]
    assert events and events[0].document_id == done["document_id"] and events[0].version == 1
    assert events[0].path == "events/new.txt" and events[0].upload_id == done["upload_id"]


def test_listing_the_callers_uploads(client, base_url):
    uid = client.create("list/me.bin", 10).json()["upload_id"]
    listed = client.http.get(client.base, params={"status": "pending"}, headers=client.headers()).json()["uploads"]
    assert [u["upload_id"] for u in listed] == [uid]
    other = Uploads(base_url, new_tenant())
    assert other.http.get(other.base, headers=other.headers()).json()["uploads"] == []


def test_hostile_requests_get_clear_json_errors(client, base_url):
    data = random_bytes(PART + 10)
    uid = client.create("hostile/target.bin", len(data)).json()["upload_id"]

    def error(response, status: int, code: str) -> None:
        assert response.status_code == status, response.text
        assert response.json()["error"] == code, response.text
        assert response.headers["X-Request-ID"]

    for number in ("0", "10001", "-1", "abc", "1.5", "%20", "99999999999999999999"):
        error(client.put(uid, number, data[:PART]), 400, "bad_part_number")
    error(client.put(uid, 3, b"x"), 400, "bad_part_number")  # the upload has 2 parts
    error(client.put(uid, 1, data[:PART] + b"extra"), 413, "part_too_large")
    error(client.put(uid, 2, data[PART:] + b"x"), 400, "bad_part_size")  # the last part has an exact size
    error(client.put(uid, 1, data[: PART - 1]), 400, "bad_part_size")  # only the last part may be smaller
    error(client.put(uid, 1, data[:PART], md5=False), 400, "missing_digest")
    error(client.put(uid, 1, data[:PART], headers={"Content-MD5": "not base64!"}), 400, "invalid_digest")
    error(client.put(uid, 1, data[:PART], md5=False, headers={"X-Checksum-SHA256": "abc"}), 400, "invalid_digest")

    def chunks(payload: bytes):
        for i in range(0, len(payload), MiB):
            yield payload[i : i + MiB]

    streamed = client.http.put(f"{client.base}/{uid}/parts/1", content=chunks(data[:PART] + b"more"),
                               headers=client.headers(**{"Content-MD5": md5_b64(data[:PART])}))
    error(streamed, 413, "part_too_large")  # chunked, no Content-Length: cut off at the part size
    assert client.status(uid).json()["received_parts"] == []

    post = lambda content, **h: client.http.post(client.base, content=content, headers=client.headers(**h))  # noqa: E731
    error(post(b"{not json"), 400, "invalid_json")
    error(post(b"[" * 100_000), 413, "body_too_large")
    error(post(b"[" * 50_000), 400, "invalid_json")  # nested too deep to parse
    error(post(b"[1, 2]"), 422, "invalid_request")
    error(client.create("ok.bin", -1), 422, "invalid_request")
    error(client.create("ok.bin", "10"), 422, "invalid_request")
    error(client.create("ok.bin", 10.5), 422, "invalid_request")
    error(client.create("ok.bin", True), 422, "invalid_request")
    error(client.create("ok.bin", 10, sha256="xyz"), 422, "invalid_request")
    error(client.create("ok.bin", 10, sha_256="0" * 64), 422, "invalid_request")  # a misspelt field is not ignored
    error(client.create("ok.bin", 10, on_conflict="overwrite"), 422, "invalid_request")
    error(client.create("ok.bin", 10, content_type="text/plain\r\nX-Evil: 1"), 422, "invalid_request")
    error(client.create(["a"], 10), 422, "invalid_request")
    error(Uploads(base_url, None).create("ok.bin", 10), 401, "unauthenticated")
    for user in ("acme", "a/b", ".."):  # X-User-ID alone names nobody
        error(httpx.post(f"{base_url}/v1/uploads", json={"path": "ok.bin", "size": 10}, headers={"X-User-ID": user},
                         timeout=60), 401, "unauthenticated")
    for bad_id in ("not-a-uuid", "00000000-0000-0000-0000-000000000000", "' OR 1=1 --"):
        error(client.status(bad_id), 404, "upload_not_found")
        error(client.complete(bad_id), 404, "upload_not_found")
        error(client.abort(bad_id), 404, "upload_not_found")
        error(client.put(bad_id, 1, b"x"), 404, "upload_not_found")
    error(client.http.patch(f"{client.base}/{uid}", headers=client.headers()), 405, "http_error")
    assert client.status(uid).json()["status"] == "pending"
