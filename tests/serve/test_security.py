"""Security from outside, over real HTTP (README, "Security"): credentials, roles, tenants, JWTs, the gateway mode,
key management, the audit log, and no key in any log.

The three applications run as ``serve/config.yaml`` deploys them, with ``SLUICE_AUTH_MODE=both`` (API keys and
JWTs of a JWKS file this module writes), a key cache of 1 s, and at most 2 open uploads and 1,000 bytes per
tenant; a second documents application at ``/gw`` runs in ``trusted_header`` mode, with at most 5 requests per
second per key and 8 per tenant.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from core.access import InvalidTenant, canonical_tenant
from core.catalog import Catalog
from core.ids import document_id
from tests.auth import bearer, make_key
from tests.serve.upload_helpers import settings_overrides

pytestmark = pytest.mark.integration

ISSUER, AUDIENCE = "https://idp.example.test", "sluice"
GATEWAY_SECRET = "gateway-shared-secret-for-tests"
ACME, GLOBEX = "acme-sec", "globex-sec"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
#: Every key this module made or saw: none may appear in any log.
SEEN_KEYS: set[str] = set()


def _jwks(path: Path) -> None:
    keys = [RSAAlgorithm.to_jwk(RSA_KEY.public_key(), as_dict=True) | {"kid": "rsa-1", "alg": "RS256", "use": "sig"},
            ECAlgorithm.to_jwk(EC_KEY.public_key(), as_dict=True) | {"kid": "ec-1", "alg": "ES256", "use": "sig"}]
    path.write_text(json.dumps({"keys": keys}))


def token(claims: dict | None = None, *, key=RSA_KEY, alg: str = "RS256", kid: str = "rsa-1",
          without: tuple[str, ...] = ()) -> str:
    """A JWT of the test identity provider: a reader of ACME unless ``claims`` say otherwise."""
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now + 300, "iat": now, "tenant": ACME,
            "role": "reader"} | (claims or {})
    for name in without:
        body.pop(name)
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


def key_of(tenant: str, role: str) -> str:
    key = make_key(tenant, role)
    SEEN_KEYS.add(key)
    return key


def auth(tenant: str, role: str) -> dict[str, str]:
    key_of(tenant, role)
    return bearer(tenant, role)


@pytest.fixture(scope="module")
def stack(serve_http, make_settings, tmp_path_factory):
    from serve.documents.app import build_app as documents_app
    from serve.search.app import build_app as search_app
    from serve.uploads.app import build_app as uploads_app

    folder = tmp_path_factory.mktemp("idp")
    _jwks(folder / "jwks.json")
    settings = make_settings(auth_mode="both", jwt_jwks=str(folder / "jwks.json"), jwt_issuer=ISSUER,
                             jwt_audience=AUDIENCE, auth_cache_s=1.0, max_open_uploads=2, max_tenant_bytes=1000)
    args = {"settings_overrides": settings_overrides(settings)}
    serve_http(uploads_app(args), "uploads", "/v1/uploads")
    serve_http(documents_app(args), "documents", "/v1")
    # A second documents application (the test machine's 2 CPUs hold no more replicas): behind a gateway, with
    # small rate limits.
    gateway = settings_overrides(settings) | {"auth_mode": "trusted_header", "gateway_secret": GATEWAY_SECRET,
                                              "rate_limit_key_rps": 5, "rate_limit_tenant_rps": 8}
    serve_http(documents_app({"settings_overrides": gateway}), "gateway", "/gw")
    base = serve_http(search_app(args), "search", "/v1/search")
    # One pending document of ACME, made through the API.
    created = httpx.post(f"{base}/v1/uploads", json={"path": "kb/secret.txt", "size": 6}, headers=auth(ACME, "writer"),
                         timeout=60).json()
    part = httpx.put(f"{base}/v1/uploads/{created['upload_id']}/parts/1", content=b"hidden",
                     headers=auth(ACME, "writer") | {"X-Checksum-SHA256": hashlib.sha256(b"hidden").hexdigest()},
                     timeout=60)
    assert part.status_code == 200, part.text
    done = httpx.post(f"{base}/v1/uploads/{created['upload_id']}/complete", headers=auth(ACME, "writer"), timeout=60)
    assert done.status_code == 200, done.text
    return base, settings, {"document_id": done.json()["document_id"], "upload_id": created["upload_id"]}


def _refused(answer: httpx.Response, status: int = 401) -> None:
    assert answer.status_code == status, (answer.status_code, answer.text)
    body = answer.json()
    assert body["error"] == ("unauthenticated" if status == 401 else "forbidden"), body
    assert body["detail"]
    if status == 401:
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")


def _upload(base: str, tenant: str, path: str, data: bytes) -> str:
    """Upload ``data`` as ``path`` of ``tenant`` through the API; return its document id (a pending version)."""
    writer = auth(tenant, "writer")
    made = httpx.post(f"{base}/v1/uploads", json={"path": path, "size": len(data)}, headers=writer, timeout=60).json()
    httpx.put(f"{base}/v1/uploads/{made['upload_id']}/parts/1", content=data, timeout=60,
              headers=writer | {"X-Checksum-SHA256": hashlib.sha256(data).hexdigest()})
    done = httpx.post(f"{base}/v1/uploads/{made['upload_id']}/complete", headers=writer, timeout=60)
    assert done.status_code == 200, done.text
    return done.json()["document_id"]


def _search(base: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{base}/v1/search", json={"query": "hidden"}, headers=headers, timeout=60)


# -- canonical tenants -------------------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("name", ["Acme", " acme", "acme ", "a..b", "ａｃｍｅ", "acme\u0301", "-acme", ".acme", "_acme",
                                  "a" * 64, "", "a/b", "a:b", "sluice", "admin", "ac me", "é"])
def test_non_canonical_tenants_are_refused(name):
    with pytest.raises(InvalidTenant):
        canonical_tenant(name)


@pytest.mark.unit
@pytest.mark.parametrize("name", ["acme", "a", "0day", "acme.eu-1_x", "a" * 63])
def test_canonical_tenants_are_kept_as_they_are(name):
    assert canonical_tenant(name) == name


# -- keys from the command line ----------------------------------------------------------------------------------


def _keys_cli(settings, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, SLUICE_POSTGRES_DSN=settings.postgres_dsn)
    return subprocess.run([sys.executable, "-m", "jobs.keys", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_keys_are_made_listed_and_revoked_from_the_command_line_and_stored_only_hashed(stack):
    base, settings, _ = stack
    made = _keys_cli(settings, "create", "--tenant", ACME, "--role", "reader", "--name", "ci", "--expires-days", "2")
    assert made.returncode == 0, made.stderr
    record = json.loads(made.stdout.splitlines()[-1])
    SEEN_KEYS.add(record["key"])
    assert {"key_id", "key", "tenant", "role"} <= set(record) and record["tenant"] == ACME
    assert record["role"] == "reader" and record["key"].startswith("sluice_") and record["expires_at"]
    assert _search(base, {"Authorization": f"Bearer {record['key']}"}).status_code == 200

    listed = _keys_cli(settings, "list", "--tenant", ACME)
    assert listed.returncode == 0, listed.stderr
    assert record["key_id"] in listed.stdout and record["key"] not in listed.stdout
    with psycopg.connect(settings.postgres_dsn) as conn:
        rows = conn.execute("SELECT * FROM api_keys").fetchall()
    assert rows and not any(record["key"].split("_")[-1] in str(row) for row in rows)

    for bad in ("Acme", "a..b", "ａｃｍｅ", "sluice", "x" * 64):
        refused = _keys_cli(settings, "create", "--tenant", bad, "--role", "reader")
        assert refused.returncode == 1 and json.loads(refused.stdout.splitlines()[-1])["error"] == "invalid_arguments"
    assert _keys_cli(settings, "create", "--tenant", ACME, "--role", "owner").returncode != 0
    assert _keys_cli(settings, "revoke", "0123456789abcdef").returncode == 1

    revoked = _keys_cli(settings, "revoke", record["key_id"])
    assert revoked.returncode == 0 and json.loads(revoked.stdout.splitlines()[-1])["revoked_at"]
    deadline = time.monotonic() + 10
    while _search(base, {"Authorization": f"Bearer {record['key']}"}).status_code != 401:
        assert time.monotonic() < deadline, "a revoked key still works after 10 s"
        time.sleep(0.25)
    _refused(_search(base, {"Authorization": f"Bearer {record['key']}"}))


# -- who is refused ------------------------------------------------------------------------------------------------


def test_missing_malformed_unknown_and_expired_credentials_are_401(stack):
    base, settings, ids = stack
    good = key_of(ACME, "admin")
    key_id = good.split("_")[1]
    expired_record, expired = Catalog(settings).create_api_key(ACME, "reader", name="expires")
    SEEN_KEYS.add(expired)
    with psycopg.connect(settings.postgres_dsn) as conn:
        conn.execute("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE key_id = %s",
                     (expired_record.key_id,))
    cases = {
        "nothing": {},
        "X-User-ID alone": {"X-User-ID": ACME},
        "Basic": {"Authorization": "Basic " + base64.b64encode(f"{ACME}:{good}".encode()).decode()},
        "Bearer without a credential": {"Authorization": "Bearer"},
        "a made-up key": {"Authorization": f"Bearer sluice_{key_id}_{'A' * 43}"},
        "an unknown key id": {"Authorization": f"Bearer sluice_{'f' * 16}_{good.split('_')[2]}"},
        "a malformed key": {"Authorization": "Bearer sluice_nope"},
        "garbage": {"Authorization": "Bearer not.a.token"},
        "an expired key": {"Authorization": f"Bearer {expired}"},
        "the gateway's secret on the ordinary apps": {"X-Sluice-Gateway-Secret": GATEWAY_SECRET, "X-User-ID": ACME},
    }
    for name, headers in cases.items():
        for answer in (_search(base, headers),
                       httpx.get(f"{base}/v1/documents/{ids['document_id']}", headers=headers, timeout=60),
                       httpx.get(f"{base}/v1/uploads/{ids['upload_id']}", headers=headers, timeout=60)):
            try:
                _refused(answer)
            except AssertionError as exc:
                raise AssertionError(f"{name}: {exc}") from None
            assert good not in answer.text and expired not in answer.text
    assert httpx.get(f"{base}/v1/healthz", timeout=60).status_code == 200  # probes need no credential


def test_each_role_may_call_exactly_its_endpoints(stack):
    """Every operation of the OpenAPI document, with each role: 403 below its ``x-required-role``, never 401 or
    403 from it up (the calls use unknown ids, so nothing is changed)."""
    base, _, _ = stack
    doc = httpx.get(f"{base}/v1/openapi.json", timeout=60).json()
    order = ["reader", "writer", "admin"]
    seen_roles = set()
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            needed = operation.get("x-required-role")
            if needed is None:
                assert path in ("/v1/healthz", "/v1/readyz"), path
                continue
            seen_roles.add(needed)
            url = base + path.format(document_id=uuid.uuid4(), upload_id=uuid.uuid4(), part_number=1, version=1,
                                     key_id="0123456789abcdef")
            for role in order:
                answer = httpx.request(method.upper(), url, headers=auth(GLOBEX, role), timeout=60,
                                       **({"json": {}} if method in ("post", "patch") else {}))
                if order.index(role) < order.index(needed):
                    _refused(answer, 403)
                else:
                    assert answer.status_code not in (401, 403), (method, path, role, answer.text)
    assert seen_roles == set(order)


def test_another_tenants_documents_uploads_and_search_are_invisible(stack):
    base, _, ids = stack
    theirs = auth(GLOBEX, "admin")
    assert httpx.get(f"{base}/v1/documents/{ids['document_id']}", headers=theirs, timeout=60).status_code == 404
    assert httpx.delete(f"{base}/v1/documents/{ids['document_id']}", headers=theirs, timeout=60).status_code == 404
    assert httpx.get(f"{base}/v1/uploads/{ids['upload_id']}", headers=theirs, timeout=60).status_code == 404
    assert httpx.get(f"{base}/v1/uploads", headers=theirs, timeout=60).json()["uploads"] == []
    assert _search(base, theirs).json()["results"] == []
    # The document id is the caller's own tenant's: the same path under GLOBEX is another document.
    assert document_id(GLOBEX, "kb/secret.txt") != ids["document_id"]
    mine = httpx.get(f"{base}/v1/documents/{ids['document_id']}", headers=auth(ACME, "reader"), timeout=60)
    assert mine.status_code == 200 and mine.json()["path"] == "kb/secret.txt"


# -- tokens --------------------------------------------------------------------------------------------------------


def test_a_valid_jwt_names_tenant_and_role(stack):
    base, _, ids = stack
    for good in (token(), token(key=EC_KEY, alg="ES256", kid="ec-1")):
        assert _search(base, {"Authorization": f"Bearer {good}"}).status_code == 200
        answer = httpx.get(f"{base}/v1/documents/{ids['document_id']}", headers={"Authorization": f"Bearer {good}"},
                           timeout=60)
        assert answer.status_code == 200
    _refused(httpx.delete(f"{base}/v1/documents/{uuid.uuid4()}", headers={"Authorization": f"Bearer {token()}"},
                          timeout=60), 403)  # a reader


def test_forged_and_invalid_jwts_are_401(stack):
    base, _, _ = stack
    public_pem = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "none", "typ": "JWT", "kid": "rsa-1"}
    claims = {"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 300, "tenant": ACME, "role": "admin"}

    def b64(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


    def hs256(value: dict, secret: bytes) -> str:  # PyJWT itself refuses to sign so; an attacker would not
        signing_input = f"{b64({'alg': 'HS256', 'typ': 'JWT', 'kid': 'rsa-1'})}.{b64(value)}"
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = {
        "alg none": f"{b64(header)}.{b64(claims)}.",
        "HS256 with the public key as secret": hs256(claims, public_pem),
        "signed by another key": token(key=other),
        "RS256 on the EC key's kid": token(kid="ec-1"),
        "expired": token({"exp": int(time.time()) - 3600}),
        "not yet valid": token({"nbf": int(time.time()) + 3600}),
        "no exp": token(without=("exp",)),
        "wrong issuer": token({"iss": "https://evil.example"}),
        "wrong audience": token({"aud": "someone-else"}),
        "unknown kid": token(kid="rsa-9"),
        "a tenant that is not canonical": token({"tenant": "ACME"}),
        "a reserved tenant": token({"tenant": "sluice"}),
        "no role": token(without=("role",)),
        "no subject": token(without=("sub",)),
        "an unknown role": token({"role": "root"}),
        "a tampered payload": token().rsplit(".", 2)[0] + "." + b64(claims) + "." + token().rsplit(".", 1)[1],
    }
    for name, value in cases.items():
        try:
            _refused(_search(base, {"Authorization": f"Bearer {value}"}))
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


# -- the gateway mode ----------------------------------------------------------------------------------------------


def test_the_gateway_names_the_caller_only_with_its_secret(stack):
    base, _, ids = stack
    url = f"{base}/gw/documents/{ids['document_id']}"
    ok = httpx.get(url, headers={"X-Sluice-Gateway-Secret": GATEWAY_SECRET, "X-User-ID": ACME}, timeout=60)
    assert ok.status_code == 200 and ok.json()["path"] == "kb/secret.txt"
    _refused(httpx.get(url, headers={"X-User-ID": ACME}, timeout=60))
    _refused(httpx.get(url, headers={"X-Sluice-Gateway-Secret": "wrong", "X-User-ID": ACME}, timeout=60))
    _refused(httpx.get(url, headers={"X-Sluice-Gateway-Secret": GATEWAY_SECRET, "X-User-ID": "ACME"}, timeout=60))
    gateway = {"X-Sluice-Gateway-Secret": GATEWAY_SECRET, "X-User-ID": ACME}
    _refused(httpx.delete(url, headers=gateway, timeout=60), 403)  # a reader unless the gateway says more
    writer = httpx.delete(f"{base}/gw/documents/{uuid.uuid4()}", headers=gateway | {"X-User-Role": "writer"},
                          timeout=60)
    assert writer.status_code == 404
    # A client's own copy of a header the gateway sets is refused, never read first-wins.
    twice = [("X-Sluice-Gateway-Secret", GATEWAY_SECRET), ("X-User-ID", GLOBEX), ("X-User-ID", ACME)]
    _refused(httpx.get(url, headers=twice, timeout=60))
    role_twice = [("X-Sluice-Gateway-Secret", GATEWAY_SECRET), ("X-User-ID", ACME), ("X-User-Role", "admin"),
                  ("X-User-Role", "reader")]
    _refused(httpx.get(url, headers=role_twice, timeout=60))
    assert httpx.get(url, headers=auth(ACME, "reader"), timeout=60).status_code == 200  # keys still work


def test_one_tenants_change_leaves_the_others_cached_answers(stack):
    base, _, _ = stack
    body = {"query": "rivers of Europe", "top_k": 3}
    ask = lambda headers: httpx.post(f"{base}/v1/search", json=body, headers=headers, timeout=60).json()  # noqa: E731
    ask(auth(GLOBEX, "reader")), ask(auth(ACME, "reader"))
    assert ask(auth(GLOBEX, "reader"))["cached"] and ask(auth(ACME, "reader"))["cached"]
    doc = _upload(base, ACME, "kb/other.txt", b"abc")
    assert httpx.delete(f"{base}/v1/documents/{doc}", headers=auth(ACME, "writer"), timeout=60).status_code == 204
    assert ask(auth(GLOBEX, "reader"))["cached"]  # another tenant's delete
    assert not ask(auth(ACME, "reader"))["cached"]  # its own


def test_failures_shown_to_clients_carry_no_host_bucket_path_or_stack_trace(stack):
    base, settings, _ = stack
    doc = _upload(base, ACME, "kb/broken.pdf", b"%PDF-broken")
    leaky = (f"Traceback (most recent call last):\n  File \"/work/main/pipelines/prepare.py\", line 9\n"
             f"OSError: s3://{settings.s3_bucket}/acme-sec/kb/broken.pdf at {settings.s3_endpoint}")
    catalog = Catalog(settings)
    catalog.mark_failed(doc, 1, stage="extract", reason="pdf_corrupt", detail=f"cannot read {settings.s3_bucket}: {leaky}")
    catalog.mark_failed(doc, 1, stage="extract", reason="internal_error", detail=leaky)
    admin = auth(ACME, "admin")
    shown = [httpx.get(f"{base}/v1/dead-letters", params={"document_id": doc}, headers=admin, timeout=60),
             httpx.get(f"{base}/v1/documents/{doc}", headers=admin, timeout=60),
             httpx.get(f"{base}/v1/documents/{doc}/versions", headers=admin, timeout=60)]
    letters = shown[0].json()
    assert [d["reason"] for d in letters] == ["internal_error", "pdf_corrupt"], letters
    assert letters[0]["detail"] == "an internal error; the operator's logs have the details"
    assert letters[1]["detail"].startswith("cannot read [hidden]")
    assert shown[1].json()["error"].startswith("internal_error")
    for answer in shown:
        assert answer.status_code == 200
        for leak in ("Traceback", "/work/main", "s3://", settings.s3_bucket, settings.s3_endpoint, "prepare.py"):
            assert leak not in answer.text, (leak, answer.text)


@pytest.mark.unit
@pytest.mark.parametrize("overrides, needs", [
    ({"auth_mode": "jwt"}, "SLUICE_JWT_JWKS"),
    ({"auth_mode": "jwt", "jwt_jwks": "http://idp.example/jwks", "jwt_issuer": ISSUER, "jwt_audience": AUDIENCE},
     "https"),
    ({"auth_mode": "both", "jwt_jwks": "/x.json", "jwt_issuer": ISSUER, "jwt_audience": AUDIENCE,
      "jwt_algorithms": "RS256,HS256"}, "HS256"),
    ({"auth_mode": "trusted_header"}, "SLUICE_GATEWAY_SECRET"),
    ({"auth_mode": "trusted_header", "gateway_secret": "short"}, "at least 16"),
])
def test_an_incomplete_or_weak_auth_configuration_stops_the_service(overrides, needs):
    from core.settings import Settings
    from serve.auth import Authenticator

    with pytest.raises(ValueError, match=needs):
        Authenticator(Settings(**overrides), catalog=object())


@pytest.mark.unit
def test_public_detail_keeps_what_the_file_did_and_hides_the_system():
    from serve.http import public_detail

    assert public_detail("too_large: the file has 600 MB, more than 512 MB") == \
        "too_large: the file has 600 MB, more than 512 MB"
    assert public_detail("ocr_failed: at http://10.1.2.3:9000/x and minio.svc:9000 in /srv/a/b.py") == \
        "ocr_failed: at [hidden] and [hidden] in [hidden]"
    assert public_detail("worker_crash: pid 12 on 10.0.0.7") == "worker_crash: an internal error; the operator's logs have the details"
    assert public_detail(None) is None
    for text, secret in (("could not connect to minio:9000", "minio"), ("at [fd00::1]:9000", "fd00"),
                         ("in C:\\Users\\svc\\x.pdf", "Users"), ("password=hunter2 host=pg", "hunter2"),
                         ("via s3.eu-west-1.amazonaws.com", "amazonaws")):
        shown = public_detail(f"ocr_failed: {text}")
        assert shown.startswith("ocr_failed: ") and secret not in shown and "[hidden]" in shown, shown


# -- limits ---------------------------------------------------------------------------------------------------------


async def _burst(urls_and_headers: list[tuple[str, dict]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(*(client.get(url, headers=h) for url, h in urls_and_headers))


def _in_one_second(calls: list[tuple[str, dict]]) -> list[httpx.Response]:
    """The calls at once, starting just after a second begins (the limiter counts per second)."""
    time.sleep(1 - time.time() % 1 + 0.01)
    return asyncio.run(_burst(calls))


def test_requests_past_the_key_and_tenant_rates_are_429(stack):
    base, _, _ = stack
    tenant = "rated"
    url = f"{base}/gw/documents/{uuid.uuid4()}"
    answers = _in_one_second([(url, auth(tenant, "reader"))] * 12)  # 5 per second per key
    refused = [a for a in answers if a.status_code == 429]
    assert len(refused) >= 5 and all(a.status_code == 404 for a in answers if a not in refused), answers
    assert refused[0].json()["error"] == "rate_limited" and refused[0].json()["limit"] == "key_rps"
    assert refused[0].headers["Retry-After"] == "1"
    time.sleep(1.1)
    assert httpx.get(url, headers=auth(tenant, "reader"), timeout=60).status_code == 404  # the next second
    # Two keys, each within its 5, together past the tenant's 8.
    answers = _in_one_second([(url, auth(tenant, "writer"))] * 5 + [(url, auth(tenant, "admin"))] * 5)
    assert {a.json()["limit"] for a in answers if a.status_code == 429} == {"tenant_rps"}, [a.text for a in answers]
    audit = httpx.get(f"{base}/v1/audit", params={"action": "/documents"}, headers=auth(tenant, "admin"), timeout=60)
    assert any(e["status"] == 429 and e["outcome"] == "refused" for e in audit.json())


def test_open_uploads_and_bytes_stored_are_limited_per_tenant_and_shown_to_its_admin(stack):
    base, _, _ = stack
    uploads = f"{base}/v1/uploads"
    crowded, full = "crowded", "full-up"
    made = [httpx.post(uploads, json={"path": f"f{i}.txt", "size": 10}, headers=auth(crowded, "writer"), timeout=60)
            for i in range(3)]
    assert [m.status_code for m in made] == [201, 201, 429], [m.text for m in made]
    assert made[2].json()["error"] == "too_many_uploads" and made[2].json()["limit"] == "max_open_uploads"
    assert httpx.delete(f"{uploads}/{made[0].json()['upload_id']}", headers=auth(crowded, "writer"),
                        timeout=60).status_code == 204
    assert httpx.post(uploads, json={"path": "f3.txt", "size": 10}, headers=auth(crowded, "writer"),
                      timeout=60).status_code == 201

    first = httpx.post(uploads, json={"path": "big.bin", "size": 600}, headers=auth(full, "writer"), timeout=60)
    assert first.status_code == 201
    over = httpx.post(uploads, json={"path": "more.bin", "size": 500}, headers=auth(full, "writer"), timeout=60)
    assert over.status_code == 413 and over.json()["error"] == "quota_exceeded", over.text
    assert over.json()["limit"] == "max_tenant_bytes" and over.json()["used"] == 600
    usage = httpx.get(f"{base}/v1/usage", headers=auth(full, "admin"), timeout=60).json()
    assert usage | {"limits": None} == {"tenant": full, "bytes_stored": 0, "bytes_reserved": 600, "documents": 0,
                                        "uploads_open": 1, "limits": None}
    assert usage["limits"]["max_tenant_bytes"] == 1000 and usage["limits"]["max_open_uploads"] == 2
    _refused(httpx.get(f"{base}/v1/usage", headers=auth(full, "writer"), timeout=60), 403)


# -- keys over HTTP, and the audit log ----------------------------------------------------------------------------


def test_an_admin_manages_its_tenants_keys_and_reads_the_audit_log(stack):
    base, _, ids = stack
    admin = auth(ACME, "admin")
    too_soon = httpx.post(f"{base}/v1/keys", json={"role": "reader", "expires_days": 1e-9}, headers=admin, timeout=60)
    assert too_soon.status_code == 422 and too_soon.json()["error"] == "invalid_request"
    made = httpx.post(f"{base}/v1/keys", json={"role": "writer", "name": "robot"}, headers=admin, timeout=60)
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    SEEN_KEYS.add(key)
    assert made.json()["tenant"] == ACME and made.json()["role"] == "writer"
    listed = httpx.get(f"{base}/v1/keys", headers=admin, timeout=60)
    assert made.json()["key_id"] in listed.text and key not in listed.text
    assert all(k["tenant"] == ACME for k in listed.json())
    # Another tenant's admin neither sees nor revokes the key.
    assert made.json()["key_id"] not in httpx.get(f"{base}/v1/keys", headers=auth(GLOBEX, "admin"), timeout=60).text
    assert httpx.delete(f"{base}/v1/keys/{made.json()['key_id']}", headers=auth(GLOBEX, "admin"),
                        timeout=60).status_code == 404

    robot = {"Authorization": f"Bearer {key}"}
    refused = httpx.post(f"{base}/v1/documents/{ids['document_id']}/versions/1/restore", headers=robot, timeout=60)
    _refused(refused, 403)
    deleted = httpx.delete(f"{base}/v1/documents/{ids['document_id']}", headers=robot, timeout=60)
    assert deleted.status_code == 204
    assert httpx.delete(f"{base}/v1/keys/{made.json()['key_id']}", headers=admin, timeout=60).status_code == 204
    deadline = time.monotonic() + 10
    while _search(base, robot).status_code != 401:
        assert time.monotonic() < deadline, "a revoked key still works after 10 s"
        time.sleep(0.25)

    since = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=10)).isoformat()
    events = httpx.get(f"{base}/v1/audit", params={"since": since}, headers=admin, timeout=60)
    assert events.status_code == 200, events.text
    by_action = {(e["action"], e["outcome"], e["target"]): e for e in events.json()}
    robot_subject = f"key:{made.json()['key_id']}"
    delete = by_action[("DELETE /v1/documents/{document_id}", "ok", ids["document_id"])]
    assert delete["subject"] == robot_subject and delete["role"] == "writer" and delete["status"] == 204
    assert delete["request_id"]
    restore = by_action[("POST /v1/documents/{document_id}/versions/{version}/restore", "refused",
                         f"{ids['document_id']}/1")]
    assert restore["subject"] == robot_subject and restore["status"] == 403
    assert ("POST /v1/keys", "ok", made.json()["key_id"]) in by_action and ("DELETE /v1/keys/{key_id}", "ok", made.json()["key_id"]) in by_action
    assert any(e["outcome"] == "refused" and e["status"] == 401 and e["subject"] == robot_subject for e in events.json())
    only_deletes = httpx.get(f"{base}/v1/audit", params={"action": "DELETE", "since": since}, headers=admin, timeout=60)
    assert only_deletes.json() and all("DELETE" in e["action"] for e in only_deletes.json())
    assert not any(e["action"].startswith("POST /v1/search") and e["outcome"] == "ok" for e in events.json())
    theirs = httpx.get(f"{base}/v1/audit", headers=auth(GLOBEX, "admin"), timeout=60).json()
    assert theirs and all(e["tenant"] == GLOBEX for e in theirs)  # their own tries only
    assert robot_subject not in json.dumps(theirs)
    _refused(httpx.get(f"{base}/v1/audit", headers=auth(ACME, "writer"), timeout=60), 403)


def test_no_key_appears_in_any_log(stack, stack_dir):
    """Runs last in this module: every key the module made (and used) is searched for in every log the stack wrote:
    Ray's session (Serve's proxy, controller and replicas, the workers) and the servers' own logs."""
    import ray

    assert SEEN_KEYS
    session = Path(ray._private.worker._global_node.get_session_dir_path())
    logs = [p for p in (session / "logs").rglob("*") if p.is_file()] + sorted(stack_dir.glob("*/*.log"))
    secrets = {k.split("_", 2)[2] for k in SEEN_KEYS}  # the part after "sluice_<key_id>_"
    assert all(len(secret) == 43 for secret in secrets)
    found, scanned = [], 0
    for path in logs:
        scanned += 1
        data = path.read_bytes()
        found += [str(path) for secret in secrets if secret.encode() in data]
    assert scanned > 5 and not found, found
