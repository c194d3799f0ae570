"""What every Sluice HTTP application shares: request ids, the tenant header, and JSON errors.

Every response carries ``X-Request-ID`` (the client's when it sent one, else a new one) and every error is JSON
``{"error": code, "detail": text}`` (docs/DESIGN.md, "Interfaces (contract)"). Under Ray Serve the proxy already assigns the
request id (taking the client's ``X-Request-ID`` when sent) and returns it; the middleware then logs with that id and
only sets the header when the app runs outside Serve.
"""

from __future__ import annotations

import json
import logging
import time
import unicodedata
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
TENANT_HEADER = "X-User-ID"


class ApiError(HTTPException):
    """An HTTP error with a stable ``code``; rendered as ``{"error": code, "detail": detail, **extra}``.

    Args:
        status_code: the HTTP status. code: the stable error code. detail: human-readable text.
        extra: more fields of the JSON body (e.g. ``missing_parts``). headers: response headers (``Retry-After``).
    """

    def __init__(
        self, status_code: int, code: str, detail: str, *, extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=detail, headers=headers)
        self.code = code
        self.extra = dict(extra or {})

    def response(self) -> JSONResponse:
        """The JSON response of this error."""
        return JSONResponse(
            {"error": self.code, "detail": self.detail, **self.extra}, status_code=self.status_code, headers=self.headers
        )


def tenant_of(request: Request) -> str:
    """The caller's tenant from ``X-User-ID``.

    Raises:
        ApiError: 401 ``missing_user`` when the header is absent or blank, 400 ``bad_user`` when it holds a ``/``
            or a control character, is longer than 128 characters, or is ``.`` or ``..``.
    """
    tenant = (request.headers.get(TENANT_HEADER) or "").strip()
    if not tenant:
        raise ApiError(401, "missing_user", f"the {TENANT_HEADER} header names the caller and is required")
    if "/" in tenant or any(unicodedata.category(c) == "Cc" for c in tenant) or len(tenant) > 128 or tenant in {".", ".."}:
        raise ApiError(
            400, "bad_user", f"{TENANT_HEADER} must be at most 128 characters, without '/' or control characters, "
            "and not '.' or '..'",
        )
    return tenant


def checked_metadata(value: Any) -> dict[str, Any]:
    """User metadata checked by ``core.metadata.validate_metadata``.

    Raises:
        ApiError: 422 ``invalid_metadata`` with ``key`` (the key at fault, ``""`` for the whole object) and
            ``detail``.
    """
    from core.metadata import MetadataError, validate_metadata

    try:
        return validate_metadata(value)
    except MetadataError as exc:
        raise ApiError(422, "invalid_metadata", str(exc), extra={"key": exc.key}) from None


def validation_detail(exc: Exception) -> str:
    """A one-line account of a pydantic ``ValidationError``: ``field: message; ...``."""
    errors = exc.errors() if hasattr(exc, "errors") else []
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors) or str(exc)


async def read_json_body(request: Request, max_bytes: int) -> Any:
    """Read and decode a JSON request body of at most ``max_bytes`` bytes, streaming it.

    Args:
        request: the Starlette request. max_bytes: the largest body accepted, bytes.

    Returns:
        The decoded JSON value (any JSON type: callers check its shape).

    Raises:
        ApiError: 413 ``body_too_large`` past ``max_bytes`` (read no further); 400 ``invalid_json`` when the body is
            not JSON (RFC 8259), including nesting too deep for the decoder (``RecursionError``).
    """
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, "body_too_large", f"the JSON body is limited to {max_bytes} bytes")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_json", "the body is not JSON") from None


def _serve_request_id() -> str | None:
    """The request id Ray Serve assigned to the current request, or ``None`` outside Serve."""
    try:
        from ray.serve.context import _get_serve_request_context

        return _get_serve_request_context().request_id or None
    except Exception:  # not running under Serve
        return None


class RequestLog:
    """ASGI middleware: logs each request's start and end with its request id, sets ``X-Request-ID``, and turns an
    unhandled exception into a JSON 500.

    A plain ASGI middleware rather than ``@app.middleware("http")``: it leaves the request body stream untouched
    (Starlette's ``BaseHTTPMiddleware`` relays every body chunk through a memory stream).
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        serve_rid = _serve_request_id()
        rid = serve_rid or headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        started = time.perf_counter()
        state = {"status": 0}
        logger.info("request %s start %s %s user=%s", rid, scope.get("method"), scope.get("path"),
                    headers.get(TENANT_HEADER, "-"))

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                if not serve_rid:  # under Serve, the proxy sets the header itself
                    MutableHeaders(scope=message)[REQUEST_ID_HEADER] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("request %s failed", rid)
            if state["status"]:
                raise
            response = JSONResponse({"error": "internal_error", "detail": "an unexpected error occurred"}, status_code=500)
            await response(scope, receive, send_with_id)
        finally:
            logger.info("request %s end %d in %.1f ms", rid, state["status"] or 500, (time.perf_counter() - started) * 1000)


def install_common_handlers(app: FastAPI) -> None:
    """Add the request-id middleware and the JSON error handlers to ``app``."""

    app.add_middleware(RequestLog)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": "http_error", "detail": str(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "invalid_request", "detail": validation_detail(exc)}, status_code=422)


class ContractPaths:
    """ASGI middleware that routes on the contract's absolute paths whatever the Serve route prefix.

    Ray Serve mounts an application at its route prefix (``scope["root_path"]``), and Starlette routes on the path
    below it; an application whose routes are the contract's paths (``/v1/uploads/...``) and that is deployed at the
    route prefix ``/v1/uploads`` would then never match. This sets ``root_path`` to what precedes ``prefix`` in the
    path (a global root path stays honoured).

    Args:
        app: the ASGI application. prefix: the contract path the routes start with.
    """

    def __init__(self, app, prefix: str) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope, receive, send) -> None:
        if scope.get("type") in ("http", "websocket"):
            index = scope.get("path", "").find(self.prefix)
            if index >= 0 and scope.get("root_path", "") != scope["path"][:index]:
                scope = dict(scope, root_path=scope["path"][:index])
        await self.app(scope, receive, send)
