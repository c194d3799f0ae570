"""An HTTP client of the Sluice API (``/v1/uploads``, ``/v1/search``) with bounded retries.

Transient failures (connection errors, timeouts, 429, 500, 502, 503, 504) are retried with exponential backoff and
jitter (tenacity), a bounded number of times; any other answer is returned to the caller as it is. Every call of the
upload API is idempotent or safe to repeat: a part sent twice replaces itself, a completion sent twice returns the
first answer.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any, Self

import httpx
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

#: Statuses worth retrying.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
DEFAULT_URL = "http://127.0.0.1:8000"


class ApiAnswerError(Exception):
    """An answer that is not the expected one. Attributes: status_code; code (the JSON ``error``); body."""

    def __init__(self, response: httpx.Response) -> None:
        try:
            body = response.json()
        except ValueError:
            body = {"error": "http_error", "detail": response.text[:500]}
        if not isinstance(body, dict):
            body = {"error": "http_error", "detail": str(body)[:500]}
        self.status_code = response.status_code
        self.code = str(body.get("error", "http_error"))
        self.body = body
        super().__init__(f"HTTP {response.status_code} {self.code}: {body.get('detail', '')}")


class _Retryable(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, (httpx.TransportError, _Retryable))


def _credential_owner(api_key: str) -> str:
    """What names the resume state of a client given no tenant: an API key's id (``key:<id>``, public), or a
    digest of a token; never the secret."""
    parts = api_key.split("_")
    if len(parts) == 3 and parts[0] == "sluice":
        return f"key:{parts[1]}"
    return "token:" + hashlib.sha256(api_key.encode()).hexdigest()[:16]


class SluiceClient:
    """Calls one Sluice server as one tenant.

    Args:
        url: the server's base URL (``http://127.0.0.1:8000``).
        tenant: the caller's tenant: names its resume state; sent as ``X-User-ID`` only without a key (for a
            development gateway in ``trusted_header`` mode); may be empty when ``api_key`` is given.
        api_key: an API key or token, sent as ``Authorization: Bearer <key>`` (README, "Security"): it names the
            caller's tenant and role.
        timeout_s: seconds per request (connect, read, write).
        attempts: tries per request, the first included.
        transport: an ``httpx`` transport (a seam for tests: ``httpx.MockTransport``).
    """

    def __init__(
        self, url: str, tenant: str, *, api_key: str | None = None, timeout_s: float = 120.0, attempts: int = 6,
        transport: httpx.BaseTransport | None = None, max_wait_s: float = 20.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url={url!r} must start with http:// or https://")
        if not tenant and not api_key:
            raise ValueError("no credential: set SLUICE_API_KEY (or pass --api-key)")
        if attempts < 1:
            raise ValueError(f"attempts={attempts} must be at least 1")
        self.url = url.rstrip("/")
        self.tenant = tenant or _credential_owner(api_key or "")
        self.attempts = attempts
        self.max_wait_s = max_wait_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {"X-User-ID": tenant}
        self.http = httpx.Client(
            base_url=self.url, timeout=timeout_s, transport=transport, headers=headers,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
        )
        self.timeout_s = timeout_s
        self._transport = transport
        self._s3: httpx.Client | None = None

    @property
    def s3(self) -> httpx.Client:
        """A plain HTTP client for presigned S3 URLs (no Sluice credentials: the URL's signature is the credential)."""
        if self._s3 is None:
            self._s3 = httpx.Client(timeout=self.timeout_s, transport=self._transport,
                                    limits=httpx.Limits(max_connections=64, max_keepalive_connections=32))
        return self._s3

    def close(self) -> None:
        """Close the connections."""
        self.http.close()
        if self._s3 is not None:
            self._s3.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, *, http: httpx.Client | None = None, **kwargs: Any) -> httpx.Response:
        """Send a request, retrying transient failures; returns the last response (any status).

        ``http``: the client to send it with (default: the Sluice API's; :attr:`s3` for a presigned URL).

        Raises:
            httpx.TransportError: the server could not be reached after every attempt.
        """
        http = http or self.http

        def attempt() -> httpx.Response:
            response = http.request(method, path, **kwargs)
            if response.status_code in RETRY_STATUSES:
                raise _Retryable(response)
            return response

        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_random_exponential(multiplier=0.5, max=self.max_wait_s),
            retry=retry_if_exception(_transient),
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _Retryable as exc:
            return exc.response

    def _json(self, response: httpx.Response, *ok: int) -> Any:
        if response.status_code not in ok:
            raise ApiAnswerError(response)
        return response.json() if response.content else {}

    # -- uploads -------------------------------------------------------------------------------------------------

    def create_upload(self, path: str, size: int, *, sha256: str | None = None, content_type: str = "",
                      part_size: int | None = None, on_conflict: str = "new_version",
                      metadata: dict[str, Any] | None = None, transfer: str = "proxy") -> dict[str, Any]:
        """``POST /v1/uploads``: 201 (a new upload) or 200 (``deduplicated``).

        ``metadata``: the new version's user metadata (``None``: it keeps its predecessor's). ``transfer``:
        ``direct`` asks to send the parts straight to S3 (the answer's ``transfer`` says whether it was granted).

        Raises:
            ApiAnswerError: any other answer (400 bad path, 409 conflict, 413 too large...).
        """
        body: dict[str, Any] = {"path": path, "size": size, "on_conflict": on_conflict}
        if sha256:
            body["sha256"] = sha256
        if content_type:
            body["content_type"] = content_type
        if part_size:
            body["part_size"] = part_size
        if metadata is not None:
            body["metadata"] = metadata
        if transfer != "proxy":
            body["transfer"] = transfer
        return self._json(self.request("POST", "/v1/uploads", json=body), 200, 201)

    def part_urls(self, upload_id: str, digests: dict[int, str]) -> list[dict[str, Any]]:
        """``POST /v1/uploads/{id}/part-urls``: a presigned URL per part of a direct upload, for its MD5 (hex).

        Raises:
            ApiAnswerError: any answer but 200.
        """
        body = {"parts": [{"part_number": n, "md5": md5} for n, md5 in sorted(digests.items())]}
        return self._json(self.request("POST", f"/v1/uploads/{upload_id}/part-urls", json=body), 200)["parts"]

    def put_presigned(self, signed: dict[str, Any], data: bytes) -> str:
        """Send a part's bytes to its presigned URL (``signed``: an entry of :meth:`part_urls`); its ETag.

        Raises:
            ApiAnswerError: S3 refused it (403: the URL expired; 400 ``BadDigest``: the bytes are not those whose
                MD5 was declared).
            ConnectionError: S3 could not be reached at the URL's address, even after the retries (that file
                fails; the server's ``SLUICE_S3_PUBLIC_URL`` must be an address clients reach).
        """
        try:
            response = self.request(signed.get("method", "PUT"), signed["url"], http=self.s3, content=data,
                                    headers=signed.get("headers") or {})
        except httpx.TransportError as exc:
            host = httpx.URL(signed["url"]).netloc.decode()
            raise ConnectionError(f"S3 at {host} could not be reached for a direct upload ({exc}); the server's "
                                  "SLUICE_S3_PUBLIC_URL must be an address this client reaches, or send the file "
                                  "with --transfer proxy") from exc
        if response.status_code != 200:
            raise ApiAnswerError(response)
        return response.headers.get("etag", "").strip('"')

    def put_part(self, upload_id: str, part_number: int, data: bytes) -> dict[str, Any]:
        """``PUT /v1/uploads/{id}/parts/{n}`` with the part's ``Content-MD5``.

        Raises:
            ApiAnswerError: any answer but 200.
        """
        headers = {"Content-MD5": base64.b64encode(hashlib.md5(data).digest()).decode(),
                   "Content-Type": "application/octet-stream"}
        response = self.request("PUT", f"/v1/uploads/{upload_id}/parts/{part_number}", content=data, headers=headers)
        return self._json(response, 200)

    def upload_status(self, upload_id: str) -> dict[str, Any] | None:
        """``GET /v1/uploads/{id}``; ``None`` when the server does not know it (404)."""
        response = self.request("GET", f"/v1/uploads/{upload_id}")
        if response.status_code == 404:
            return None
        return self._json(response, 200)

    def complete(self, upload_id: str, *, timeout_s: float | None = None) -> httpx.Response:
        """``POST /v1/uploads/{id}/complete``; the response as it is (200, 409, 422...)."""
        kwargs: dict[str, Any] = {"timeout": timeout_s} if timeout_s else {}
        return self.request("POST", f"/v1/uploads/{upload_id}/complete", **kwargs)

    def abort(self, upload_id: str) -> None:
        """``DELETE /v1/uploads/{id}`` (404 and 409 are ignored: nothing left to abort)."""
        response = self.request("DELETE", f"/v1/uploads/{upload_id}")
        if response.status_code not in (204, 404, 409):
            raise ApiAnswerError(response)

    # -- search --------------------------------------------------------------------------------------------------

    def search(self, query: str, *, top_k: int = 10, mode: str = "hybrid", path_prefix: str = "",
               metadata: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
        """``POST /v1/search``; ``metadata``: only documents whose metadata has these values (``filters.metadata``).

        ``options``: any other field of the request body (``offset``, ``fusion``, ``modalities``, ``version``,
        ``filters``...), passed as it is, so the client need not change when the server learns a new one;
        ``path_prefix`` and ``metadata`` are added to ``filters``.

        Raises:
            ApiAnswerError: any answer but 200 (422 for an option the server does not know).
        """
        body: dict[str, Any] = {"query": query, "top_k": top_k, "mode": mode, **options}
        filters: dict[str, Any] = dict(options.get("filters") or {})
        if path_prefix:
            filters["path_prefix"] = path_prefix
        if metadata:
            filters["metadata"] = metadata
        if filters:
            body["filters"] = filters
        return self._json(self.request("POST", "/v1/search", json=body), 200)
