"""Helpers shared by the upload tests: an HTTP client of ``/v1/uploads`` for one tenant, the app's settings, and the
``service`` and ``catalog`` fixtures, :func:`begin` and :func:`assert_object_is_the_head` of the service-level
tests."""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from typing import Any

import httpx
import pytest

from tests.auth import bearer

MiB = 1024**2
#: The smallest part S3 allows; tests use it with files of at most ~11 MiB to stay fast.
PART = 5 * MiB


def settings_overrides(settings) -> dict[str, Any]:
    """``Settings`` as ``settings_overrides`` of a Serve app (secrets and paths as plain values)."""
    values = settings.model_dump(mode="python")
    return {k: v.get_secret_value() if hasattr(v, "get_secret_value") else v for k, v in values.items()} | {
        "qdrant_path": str(settings.qdrant_path),
        "qdrant_api_key": None,
    }


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def random_bytes(size: int) -> bytes:
    """``size`` random bytes."""
    return os.urandom(size)


def new_tenant() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


class Uploads:
    """A thin client of ``/v1/uploads`` for one tenant (raw HTTP, no retries: tests see every answer)."""

    def __init__(self, base_url: str, tenant: str | None, timeout_s: float = 60.0) -> None:
        self.base = f"{base_url}/v1/uploads"
        self.tenant = tenant
        self.http = httpx.Client(timeout=timeout_s)

    def headers(self, **extra: str) -> dict[str, str]:
        h = bearer(self.tenant, "writer") if self.tenant is not None else {}
        h.update(extra)
        return h

    def create(self, path: str, size: int, **fields: Any) -> httpx.Response:
        return self.http.post(self.base, json={"path": path, "size": size, **fields}, headers=self.headers())

    def put(self, upload_id: str, n: int | str, data: bytes, *, md5: bool = True, sha256: bool = False,
            headers: dict[str, str] | None = None) -> httpx.Response:
        h = self.headers(**(headers or {}))
        if md5:
            h.setdefault("Content-MD5", md5_b64(data))
        if sha256:
            h.setdefault("X-Checksum-SHA256", sha256_hex(data))
        return self.http.put(f"{self.base}/{upload_id}/parts/{n}", content=data, headers=h)

    def part_urls(self, upload_id: str, digests: dict[int, str]) -> httpx.Response:
        body = {"parts": [{"part_number": n, "md5": md5} for n, md5 in digests.items()]}
        return self.http.post(f"{self.base}/{upload_id}/part-urls", json=body, headers=self.headers())

    def status(self, upload_id: str) -> httpx.Response:
        return self.http.get(f"{self.base}/{upload_id}", headers=self.headers())

    def complete(self, upload_id: str, timeout_s: float | None = None) -> httpx.Response:
        kwargs = {"timeout": timeout_s} if timeout_s is not None else {}
        return self.http.post(f"{self.base}/{upload_id}/complete", headers=self.headers(), **kwargs)

    def abort(self, upload_id: str) -> httpx.Response:
        return self.http.delete(f"{self.base}/{upload_id}", headers=self.headers())

    def send_all(self, upload_id: str, data: bytes, part_size: int, order: list[int] | None = None) -> None:
        count = max(1, -(-len(data) // part_size)) if data else 0
        for n in order or range(1, count + 1):
            r = self.put(upload_id, n, data[(n - 1) * part_size : n * part_size])
            assert r.status_code == 200, r.text

    def upload(self, path: str, data: bytes, **fields: Any) -> httpx.Response:
        """Create, send every part, complete; the completion's answer."""
        created = self.create(path, len(data), sha256=sha256_hex(data), **fields)
        assert created.status_code == 201, created.text
        body = created.json()
        self.send_all(body["upload_id"], data, body["part_size"])
        return self.complete(body["upload_id"])


@pytest.fixture
def catalog(objects):
    """A ``Catalog`` on the settings of the test module's ``objects`` fixture."""
    from core.catalog import Catalog

    catalog = Catalog(objects.settings)
    yield catalog
    catalog.close()


def assert_object_is_the_head(objects, catalog, tenant: str, path: str, data: bytes) -> None:
    """The object at ``<tenant>/<path>`` holds ``data``, and the catalog's head version names exactly those bytes."""
    assert objects.get_bytes(f"{tenant}/{path}") == data
    head = catalog.latest_versions(tenant)[path]
    assert head.sha256 == objects.sha256(f"{tenant}/{path}")[0] == sha256_hex(data) and head.size == len(data)
    assert head.etag == objects.stat(f"{tenant}/{path}").etag


@pytest.fixture
def service(objects):
    """An ``UploadService`` on the test module's own ``objects`` fixture (an ``ObjectStore`` with its faults)."""
    from core.uploads import UploadService

    svc = UploadService(objects.settings, objects=objects)
    yield svc
    svc.close()


def begin(service, tenant: str, path: str, data: bytes, *, sha256: str | None = "auto", send: bool = True,
          transfer: str = "proxy"):
    """Create an upload as ``POST /v1/uploads`` does and send every part (``send``): through the service for a
    proxied upload, to the presigned URLs (with their headers) for a direct one. Returns the stored upload."""
    upload = service.prepare(tenant, path, len(data), sha256=sha256_hex(data) if sha256 == "auto" else sha256,
                             transfer=transfer)
    upload = service.record(upload, service.start_multipart(upload))
    if send:
        for n in range(1, upload.part_count + 1):
            send_part(service, upload, n, data[(n - 1) * upload.part_size : n * upload.part_size])
    return upload


def send_part(service, upload, n: int, chunk: bytes, *, declared: bytes | None = None) -> httpx.Response | None:
    """Send part ``n``: through the service (proxied), or to its presigned URL signed for the MD5 of ``declared``
    (default: ``chunk``; the URL's ``Content-MD5`` header is sent only when it is the chunk's own)."""
    md5 = hashlib.md5(chunk if declared is None else declared).hexdigest()
    if not upload.direct:
        service.store_part(upload, n, chunk, md5)
        return None
    (signed,) = service.sign_parts(upload, {n: md5})
    headers = signed["headers"] if declared is None else {}
    response = httpx.put(signed["url"], content=chunk, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    return response
