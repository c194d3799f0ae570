"""What every Sluice HTTP application shares: request ids, JSON errors, the request log and the audit trail.

Every response carries ``X-Request-ID`` (the client's when it sent one, else a new one) and every error is JSON
``{"error": code, "detail": text}`` (docs/DESIGN.md, "Interfaces (contract)"). Under Ray Serve the proxy already assigns the
request id (taking the client's ``X-Request-ID`` when sent) and returns it; the middleware then logs with that id and
only sets the header when the app runs outside Serve.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.audit import AuditEvent

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
#: Statuses that mean the caller was refused (audited whatever the call).
REFUSED_STATUSES = frozenset({401, 403, 429})


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


#: Failure reasons whose detail is the system's, not the file's: clients see only that it happened.
INTERNAL_REASONS = frozenset({"internal_error", "worker_crash"})
_INTERNAL_TEXT = "an internal error; the operator's logs have the details"
_HIDDEN = (
    re.compile(r"Traceback \(most recent call last\):.*", re.S),  # a stack trace, to the end
    re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>]+", re.I),  # URLs (s3://bucket/key, http://host:port/...)
    re.compile(r"\b(?:password|passwd|pwd|secret|token|user|host|dbname)\s*=\s*\S+", re.I),  # DSN key=value pairs
    re.compile(r"\[[0-9a-f:.]*:[0-9a-f:.]*\](?::\d+)?", re.I),  # IPv6 addresses, bracketed, with their port
    re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"),  # IPv4 addresses, with their port
    re.compile(r"\b[a-z0-9][a-z0-9.-]*:\d{2,5}\b", re.I),  # any host:port (minio:9000, db.example.com:5432)
    re.compile(r"\b(?:localhost|[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:internal|local|svc|cluster\.local|amazonaws\.com))\b",
               re.I),  # internal host names without a port
    re.compile(r"(?<![\w/])/(?:[\w.@-]+/)+[\w.@-]+"),  # absolute file paths
    re.compile(r"\b[a-z]:\\[^\s'\"]+|\\\\[^\s'\"]+", re.I),  # Windows paths (C:\..., \\server\share)
)


def public_detail(text: str | None, *, reason: str = "", bucket: str = "") -> str | None:
    """A failure's detail as a client may see it: no stack trace, URL, internal host, file path or bucket name.

    Args:
        text: the stored detail (a dead letter's, a version's ``error``: ``reason: detail``).
        reason: the failure's reason code; an internal one (:data:`INTERNAL_REASONS`) shows no detail at all.
        bucket: the S3 bucket's name, removed where it appears as a word.
    """
    if text is None:
        return None
    if reason in INTERNAL_REASONS:
        return _INTERNAL_TEXT
    head = text.split(":", 1)[0].strip()  # a version's error is "reason: detail"
    if not reason and head in INTERNAL_REASONS:
        return f"{head}: {_INTERNAL_TEXT}"
    for pattern in _HIDDEN:
        text = pattern.sub("[hidden]", text)
    if bucket:
        text = re.sub(rf"(?<![\w-]){re.escape(bucket)}(?![\w-])", "[hidden]", text)
    return text


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
    """ASGI middleware: logs each request's start and end with its request id and caller, sets ``X-Request-ID``,
    turns an unhandled exception into a JSON 500, and records the call in the audit log (``core.audit``) when it
    is mutating or refused.

    A call is mutating when its route needs more than the ``reader`` role and its method is not ``GET`` (the
    dependency ``serve.auth.allow`` notes the role and the caller in ``request.state``); refused is 401, 403 or 429,
    whatever the route. The event is written after the answer is sent, through the app's ``state.auth.catalog``; a
    failure to write it is logged, never turned into an error of a call that already happened.

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
        request_state = scope.setdefault("state", {})
        request_state["request_id"] = rid
        logger.info("request %s start %s %s", rid, scope.get("method"), scope.get("path"))

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
            code = state["status"] or 500
            principal = request_state.get("principal")
            logger.info("request %s end %d in %.1f ms caller=%s", rid, code, (time.perf_counter() - started) * 1000,
                        principal.subject if principal else "-")
            needed = request_state.get("needed_role")
            mutating = needed is not None and needed.value != "reader" and scope.get("method") != "GET"
            auth = getattr(getattr(scope.get("app"), "state", None), "auth", None)
            if auth is not None and (mutating or code in REFUSED_STATUSES):
                await _audit(auth.catalog, scope, request_state, code)


async def _audit(catalog, scope, request_state: dict, code: int) -> None:
    """Record the call of ``scope`` (answered ``code``) in the audit log."""
    principal = request_state.get("principal")
    claimed = request_state.get("claimed") or ("", "")
    route = getattr(scope.get("route"), "path", None)
    params = scope.get("path_params") or {}
    event = AuditEvent(
        action=f"{scope.get('method')} {scope.get('root_path', '') + route if route else scope.get('path', '')}",
        outcome="ok" if code < 400 else "refused" if code in REFUSED_STATUSES else "failed",
        status=code,
        # The ids in the path, or what the call made (a new key's or upload's id, noted by the route).
        target="/".join(str(v) for v in params.values()) or str(request_state.get("audit_target", "")),
        request_id=str(request_state.get("request_id", "")),
        subject=principal.subject if principal else claimed[1],
        tenant=principal.tenant if principal else claimed[0],
        role=principal.role.value if principal else "",
    )
    try:
        await asyncio.to_thread(catalog.record_audit, event)
    except Exception as exc:  # the call happened; its answer is sent
        logger.error("audit event of %s not recorded: %s", event.action, exc)


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
