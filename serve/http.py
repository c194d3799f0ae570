"""What every Sluice HTTP application shares: request ids, the tenant header, and JSON errors.

Every response carries ``X-Request-ID`` (the client's when it sent one, else a new one) and every error is JSON
``{"error": code, "detail": text}`` (ARCHITECTURE.md, "Interfaces"). Under Ray Serve the proxy already assigns the
request id (taking the client's ``X-Request-ID`` when sent) and returns it; the middleware then logs with that id and
only sets the header when the app runs outside Serve.
"""

from __future__ import annotations

import logging
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
TENANT_HEADER = "X-User-ID"


class ApiError(HTTPException):
    """An HTTP error with a stable ``code``; rendered as ``{"error": code, "detail": detail}``."""

    def __init__(self, status_code: int, code: str, detail: str) -> None:
        super().__init__(status_code=status_code, detail=detail)
        self.code = code


def tenant_of(request: Request) -> str:
    """The caller's tenant from ``X-User-ID``.

    Raises:
        ApiError: 401 ``missing_user`` when the header is absent or blank, 400 ``bad_user`` when it holds a ``/``
            or a control character.
    """
    tenant = (request.headers.get(TENANT_HEADER) or "").strip()
    if not tenant:
        raise ApiError(401, "missing_user", f"the {TENANT_HEADER} header names the caller and is required")
    if "/" in tenant or any(ord(c) < 32 for c in tenant) or len(tenant) > 128:
        raise ApiError(400, "bad_user", f"{TENANT_HEADER} must be at most 128 characters, without '/' or control characters")
    return tenant


def validation_detail(exc: Exception) -> str:
    """A one-line account of a pydantic ``ValidationError``: ``field: message; ...``."""
    errors = exc.errors() if hasattr(exc, "errors") else []
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors) or str(exc)


def _serve_request_id() -> str | None:
    """The request id Ray Serve assigned to the current request, or ``None`` outside Serve."""
    try:
        from ray.serve.context import _get_serve_request_context

        return _get_serve_request_context().request_id or None
    except Exception:  # not running under Serve
        return None


def install_common_handlers(app: FastAPI) -> None:
    """Add the request-id middleware and the JSON error handlers to ``app``."""

    @app.middleware("http")
    async def request_id(request: Request, call_next):
        serve_rid = _serve_request_id()
        rid = serve_rid or request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        started = time.perf_counter()
        logger.info("request %s start %s %s", rid, request.method, request.url.path)
        try:
            response = await call_next(request)
        except Exception:
            logger.exception("request %s failed", rid)
            response = JSONResponse({"error": "internal_error", "detail": "an unexpected error occurred"}, status_code=500)
        if not serve_rid:  # under Serve, the proxy sets the header itself
            response.headers[REQUEST_ID_HEADER] = rid
        logger.info("request %s end %d in %.1f ms", rid, response.status_code, (time.perf_counter() - started) * 1000)
        return response

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.code, "detail": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": "http_error", "detail": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "invalid_request", "detail": validation_detail(exc)}, status_code=422)
