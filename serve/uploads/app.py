"""Serve application ``uploads``: resumable, checksummed, multipart uploads into S3 (FastAPI ingress).

Routes (docs/DESIGN.md, "Interfaces (contract)"), each for the caller its credential names (``serve.auth``: reading
needs ``reader``, the rest ``writer``); another tenant's upload is 404:

- ``POST /v1/uploads``: create (201), or 200 ``deduplicated`` when the SHA-256 equals the latest version's.
- ``PUT /v1/uploads/{id}/parts/{n}``: one part, streamed, checked against ``Content-MD5``/``X-Checksum-SHA256``.
- ``POST /v1/uploads/{id}/part-urls``: presigned S3 URLs for the parts of a ``direct`` upload (the bytes then go
  from the client straight to S3).
- ``GET /v1/uploads/{id}``: status, received and missing parts (what a client needs to resume).
- ``POST /v1/uploads/{id}/complete``: join, verify the SHA-256 of the stored bytes, create the document version.
- ``DELETE /v1/uploads/{id}``: abort (204).
- ``GET /v1/uploads``: the caller's uploads, newest first (``?status=pending`` to find resumable ones).

Errors are JSON ``{"error": code, "detail": text, ...}``. Built by :func:`build_app` for ``serve deploy``. The
routes are the contract's absolute paths, so the application serves them under the route prefix ``/v1/uploads``
(as ``serve/config.yaml`` deploys it) as well as under ``/``.
"""

# No ``from __future__ import annotations`` here: FastAPI must see real annotations (``Request``) on the methods
# that ``serve.ingress`` turns into routes.
import asyncio
import logging
import os
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from ray import serve
from ray.serve import Application

from core.access import Principal, Role
from core.errors import InvalidPathError, ServiceUnavailableError
from core.settings import Settings
from core.uploads import (
    MAX_PART_SIZE,
    MAX_PARTS,
    CompletionInProgressError,
    MissingPartsError,
    PartIntegrityError,
    STATUSES,
    UploadError,
    UploadNotFoundError,
    UploadService,
    UploadStateError,
    UploadTooLargeError,
    WrongTransferError,
)
from serve.http import (ApiError, ContractPaths, checked_metadata, install_common_handlers, public_detail,
                        read_json_body, validation_detail)
from serve.uploads.body import ByteBudget, NativeMemory, check_declared_length, parse_digests, read_part, verify
from serve import openapi
from serve.auth import Authenticator, allow
from serve.uploads.models import (CreateUpload, PartStored, PartUrls, PartUrlsRequest, UploadCompleted, UploadCreated,
                                  UploadDeduplicated, UploadList, UploadStatus, check_path_characters)

logger = logging.getLogger(__name__)

#: The contract's path of this application.
PREFIX = "/v1/uploads"

# The documents are at the contract's paths too (under the route prefix ``/v1/uploads``, the default
# ``/openapi.json`` would be ``/v1/uploads/openapi.json`` relative to an empty root path, and miss).
api = FastAPI(title="Sluice uploads", version="0.1.0", generate_unique_id_function=openapi.operation_id("upload_"),
              openapi_url=PREFIX + "/openapi.json", docs_url=PREFIX + "/docs", redoc_url=None)
install_common_handlers(api)
api.add_middleware(ContractPaths, prefix=PREFIX)
#: The request bodies the routes read themselves (``serve.openapi.json_body``).
BODIES = (CreateUpload, PartUrlsRequest)
openapi.install(api, BODIES)

#: Seconds a client should wait before retrying after a 503 or a completion in progress.
RETRY_AFTER_S = 5
#: The largest JSON body accepted (a create request is a few hundred bytes).
MAX_JSON_BYTES = 64 * 1024


def api_error(exc: Exception) -> ApiError:
    """The HTTP form of an upload or service error."""
    if isinstance(exc, UploadNotFoundError):
        return ApiError(404, exc.code, "no such upload")
    if isinstance(exc, MissingPartsError):
        return ApiError(409, exc.code, exc.detail, extra={"missing_parts": exc.missing, "wrong_size_parts": exc.wrong_size})
    if isinstance(exc, UploadStateError):
        return ApiError(409, exc.code, exc.detail, extra={"status": exc.status})
    if isinstance(exc, CompletionInProgressError):
        return ApiError(409, exc.code, exc.detail, headers={"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(exc, PartIntegrityError):
        return ApiError(502, exc.code, f"{exc.detail}; send the part again")
    if isinstance(exc, WrongTransferError):
        return ApiError(409, exc.code, exc.detail)
    if isinstance(exc, UploadTooLargeError):
        return ApiError(413, exc.code, exc.detail)
    if isinstance(exc, UploadError):
        return ApiError(400, exc.code, exc.detail)
    if isinstance(exc, ServiceUnavailableError):
        logger.error("upload request failed: %s", exc)
        return ApiError(503, "service_unavailable", f"{exc.service} is unavailable; retry later",
                        headers={"Retry-After": str(RETRY_AFTER_S)})
    raise exc


async def _part_urls_body(request: Request) -> PartUrlsRequest:
    raw = await read_json_body(request, MAX_JSON_BYTES)
    try:
        return PartUrlsRequest.model_validate(raw)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", validation_detail(exc)) from None


async def _create_body(request: Request) -> CreateUpload:
    raw = await read_json_body(request, MAX_JSON_BYTES)
    if not isinstance(raw, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    if isinstance(raw.get("path"), str):
        try:
            check_path_characters(raw["path"])  # before pydantic, which refuses lone surrogates as a type error
        except InvalidPathError as exc:
            raise ApiError(400, "bad_path", exc.reason) from None
    if raw.get("metadata") is not None:  # before pydantic, so that the error names the key at fault
        raw["metadata"] = checked_metadata(raw["metadata"])
    try:
        return CreateUpload.model_validate(raw)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", validation_detail(exc)) from None


def _part_number(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not value.isdigit() or not 1 <= number <= MAX_PARTS:
        raise ApiError(400, "bad_part_number", f"a part number is 1 to {MAX_PARTS}; got {value[:32]!r}")
    return number


@serve.deployment(name="UploadsAPI", max_ongoing_requests=16, ray_actor_options={"num_cpus": 0.5})
@serve.ingress(api)
class UploadsAPI:
    """The uploads deployment: one :class:`core.uploads.UploadService` per replica.

    Memory: Ray Serve pulls a request's whole body into the replica as soon as the request starts there, so a
    replica holds at most ``max_ongoing_requests`` (16) part bodies; of those, at most ``part_memory_bytes`` are
    being checked and sent to S3 at once (one more copy each). Further requests wait in the proxy.

    Args:
        settings_overrides: ``Settings`` fields that override the environment (tests use it).
        part_memory_bytes: part bytes one replica holds at once (0: four default part sizes); also a
            ``user_config`` key.
        complete_wait_s: how long a completion waits for another one of the same upload; also a ``user_config`` key.
        max_part_bytes: the largest part this deployment accepts (S3 allows 5 GiB; a part is held in memory, so an
            operator may lower it; uploads whose parts would be larger are refused with 413).
    """

    def __init__(
        self, settings_overrides: dict[str, Any] | None = None, part_memory_bytes: int = 0, complete_wait_s: float = 10.0,
        max_part_bytes: int = MAX_PART_SIZE,
    ) -> None:
        self.settings = Settings(**(settings_overrides or {}))
        self.max_part_bytes = max_part_bytes
        self.service = UploadService(self.settings)
        api.state.auth = Authenticator(self.settings, self.service.catalog)
        self.budget = ByteBudget(part_memory_bytes or 4 * self.settings.upload_part_size)
        self.complete_wait_s = complete_wait_s
        self.native_memory = NativeMemory()

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Apply ``user_config``: ``part_memory_bytes``, ``complete_wait_s``."""
        if config.get("part_memory_bytes"):
            self.budget = ByteBudget(int(config["part_memory_bytes"]))
        if config.get("complete_wait_s") is not None:
            self.complete_wait_s = float(config["complete_wait_s"])

    def replica_pid(self) -> int:
        """This replica's process id (benchmarks sample its memory)."""
        return os.getpid()

    def part_memory_peak(self) -> int:
        """The most part bytes this replica held at once."""
        return self.budget.peak

    def part_bytes_received(self) -> int:
        """The part bytes this replica has received since it started (a direct upload's never pass through it)."""
        return self.budget.total

    async def _upload(self, upload_id: str, tenant: str):
        upload = await self._call(self.service.store.get, upload_id, tenant)
        if upload is None:
            raise ApiError(404, "upload_not_found", "no such upload")
        return upload

    async def _check_quotas(self, tenant: str, size: int) -> None:
        """Refuse an upload past the tenant's open uploads (429) or bytes (413) limit (``core.quotas``)."""
        s = self.settings
        if not (s.max_open_uploads or s.max_tenant_bytes):
            return
        usage = await self._call(self.service.catalog.tenant_usage, tenant)
        if s.max_open_uploads and usage.uploads_open >= s.max_open_uploads:
            raise ApiError(429, "too_many_uploads", f"this tenant has {usage.uploads_open} uploads open, the most it "
                           "may have: complete or abort some first",
                           extra={"limit": "max_open_uploads", "max": s.max_open_uploads, "used": usage.uploads_open},
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        used = usage.bytes_stored + usage.bytes_reserved
        if s.max_tenant_bytes and used + size > s.max_tenant_bytes:
            raise ApiError(413, "quota_exceeded", f"this tenant stores {used} bytes (open uploads included); "
                           f"{size} more would pass its limit of {s.max_tenant_bytes}",
                           extra={"limit": "max_tenant_bytes", "max": s.max_tenant_bytes, "used": used})

    async def _call(self, fn, *args, **kwargs):
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except (UploadError, ServiceUnavailableError) as exc:
            raise api_error(exc) from None

    @api.post(PREFIX, status_code=201, response_model=UploadCreated, openapi_extra=openapi.json_body(CreateUpload),
              responses={200: {"model": UploadDeduplicated, "description": "The bytes equal the latest version's."},
                         **openapi.errors(400, 401, 409, 413, 422, 429, 503)})
    async def create(self, request: Request, caller: Principal = Depends(allow(Role.WRITER))) -> JSONResponse:
        """Create an upload: validate, then start the S3 multipart upload while reading the catalog."""
        tenant = caller.tenant
        body = await _create_body(request)
        try:
            upload = self.service.prepare(
                tenant, body.path, body.size, sha256=body.sha256, content_type=body.content_type,
                part_size=body.part_size, on_conflict=body.on_conflict, metadata=body.metadata,
                transfer=body.transfer,
            )
        except InvalidPathError as exc:
            raise ApiError(400, "bad_path", exc.reason) from None
        except UploadTooLargeError as exc:
            raise api_error(exc) from None
        except ValueError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None
        if upload.part_size > self.max_part_bytes:
            raise ApiError(413, "too_large", f"parts of {upload.part_size} bytes would be needed; this server takes "
                           f"parts of at most {self.max_part_bytes} bytes")
        await self._check_quotas(tenant, upload.size)
        started, latest = await asyncio.gather(
            asyncio.to_thread(self.service.start_multipart, upload),
            asyncio.to_thread(self.service.store.latest_version, tenant, upload.path),
            return_exceptions=True,
        )
        for outcome in (started, latest):
            if isinstance(outcome, BaseException):
                if isinstance(started, str):
                    await asyncio.to_thread(self.service.discard_multipart, upload, started)
                if isinstance(outcome, ServiceUnavailableError):
                    raise api_error(outcome)
                raise outcome
        if latest is not None and upload.sha256 is not None and latest.sha256 == upload.sha256:
            await asyncio.to_thread(self.service.discard_multipart, upload, started)
            return JSONResponse({"deduplicated": True, "document_id": latest.document_id, "version": latest.version,
                                 "path": upload.path, "sha256": latest.sha256, "size": latest.size})
        if latest is not None and upload.on_conflict == "reject":
            await asyncio.to_thread(self.service.discard_multipart, upload, started)
            raise ApiError(409, "conflict", f"{upload.path!r} exists (version {latest.version}) and on_conflict is "
                           "'reject'", extra={"document_id": latest.document_id, "version": latest.version})
        try:
            stored = await asyncio.to_thread(self.service.record, upload, started)
        except ServiceUnavailableError as exc:
            await asyncio.to_thread(self.service.discard_multipart, upload, started)
            raise api_error(exc) from None
        request.state.audit_target = stored.upload_id
        logger.info("upload %s created for %s/%s: %d bytes in %d parts", stored.upload_id, tenant, stored.path,
                    stored.size, stored.part_count)
        return JSONResponse(
            {"upload_id": stored.upload_id, "part_size": stored.part_size, "part_count": stored.part_count,
             "expires_at": stored.expires_at.isoformat() if stored.expires_at else None, "path": stored.path,
             "document_id": stored.document_id, "size": stored.size, "transfer": stored.transfer},
            status_code=201, headers={"Location": f"/v1/uploads/{stored.upload_id}"},
        )

    @api.get(PREFIX, response_model=UploadList, responses=openapi.errors(401, 422, 503))
    async def list_uploads(self, request: Request,
                           caller: Principal = Depends(allow(Role.READER)), status: str | None = None,
                           limit: int = 100) -> JSONResponse:
        """The caller's uploads, newest first."""
        tenant = caller.tenant
        if status is not None and status not in STATUSES:
            raise ApiError(422, "invalid_request", f"status must be one of {', '.join(STATUSES)}")
        if not 1 <= limit <= 1000:
            raise ApiError(422, "invalid_request", "limit must be 1 to 1000")
        uploads = await self._call(self.service.store.list, tenant, status=status, limit=limit)
        return JSONResponse({"uploads": [
            {"upload_id": u.upload_id, "path": u.path, "size": u.size, "status": u.status,
             "created_at": u.created_at.isoformat() if u.created_at else None,
             "expires_at": u.expires_at.isoformat() if u.expires_at else None}
            for u in uploads
        ]})

    @api.put(PREFIX + "/{upload_id}/parts/{part_number}", response_model=PartStored,
             responses=openapi.errors(400, 401, 404, 409, 413, 502, 503),
             openapi_extra=openapi.raw_body("application/octet-stream", "the part's bytes, with Content-MD5 (base64) or "
                                            "X-Checksum-SHA256 (hex)"))
    async def put_part(self, upload_id: str, part_number: str, request: Request,
                       caller: Principal = Depends(allow(Role.WRITER))) -> JSONResponse:
        """Receive one part: size and digest checked before S3 sees it; recorded only after S3 stored it."""
        tenant = caller.tenant
        number = _part_number(part_number)
        digests = parse_digests(request)
        upload = await self._upload(upload_id, tenant)
        if upload.status != "pending":
            raise ApiError(409, "not_pending", f"the upload is {upload.status}", extra={"status": upload.status})
        if number > upload.part_count:
            raise ApiError(400, "bad_part_number", f"this upload has {upload.part_count} part(s); got part {number}")
        try:
            self.service.check_proxied(upload)  # before reading the body: a direct upload's parts go to S3
        except WrongTransferError as exc:
            raise api_error(exc) from None
        expected = upload.expected_part_size(number)
        check_declared_length(request, number, expected, upload.part_size)
        async with self.budget.reserve(expected):
            body = await read_part(request, number, expected, upload.part_size, sha256=digests.sha256 is not None)
            verify(body, digests, number)
            part = await self._call(self.service.store_part, upload, number, body.data, body.md5)
            del body
        self.native_memory.trim()  # at most once a second
        return JSONResponse({"part_number": part.part_number, "etag": part.etag, "size": part.size})

    @api.post(PREFIX + "/{upload_id}/part-urls", response_model=PartUrls, openapi_extra=openapi.json_body(PartUrlsRequest),
              responses=openapi.errors(400, 401, 404, 409, 413, 422, 503))
    async def part_urls(self, upload_id: str, request: Request,
                        caller: Principal = Depends(allow(Role.WRITER))) -> JSONResponse:
        """Presigned S3 URLs for parts of a ``direct`` upload, each for the MD5 declared for it (409
        ``wrong_transfer`` for a proxied upload). Signing a part again gives a new URL and replaces its MD5."""
        tenant = caller.tenant
        body = await _part_urls_body(request)
        upload = await self._upload(upload_id, tenant)
        if upload.status != "pending":
            raise ApiError(409, "not_pending", f"the upload is {upload.status}", extra={"status": upload.status})
        digests = {p.part_number: p.md5 for p in body.parts}
        beyond = sorted(n for n in digests if n > upload.part_count)
        if beyond:
            raise ApiError(400, "bad_part_number", f"this upload has {upload.part_count} part(s); got part {beyond[0]}")
        signed = await self._call(self.service.sign_parts, upload, digests)
        return JSONResponse({"parts": signed})

    @api.get(PREFIX + "/{upload_id}", response_model=UploadStatus, responses=openapi.errors(401, 404, 503))
    async def status(self, upload_id: str, request: Request,
                     caller: Principal = Depends(allow(Role.READER))) -> JSONResponse:
        """Status, received and missing parts, bytes received; the outcome once final."""
        upload = await self._upload(upload_id, caller.tenant)
        body = await self._call(self.service.describe, upload)
        if body.get("error"):
            body["error"] = public_detail(body["error"], bucket=self.settings.s3_bucket)
        return JSONResponse(body)

    @api.post(PREFIX + "/{upload_id}/complete", response_model=UploadCompleted,
              responses=openapi.errors(401, 404, 409, 422, 503))
    async def complete(self, upload_id: str, request: Request,
                       caller: Principal = Depends(allow(Role.WRITER))) -> JSONResponse:
        """Complete (one at a time per upload); a second call returns the first answer."""
        tenant = caller.tenant
        answer = await self._call(self.service.complete, tenant, upload_id, wait_s=self.complete_wait_s)
        body = dict(answer.body)
        if answer.status_code >= 400 and isinstance(body.get("detail"), str):
            body["detail"] = public_detail(body["detail"], reason=str(body.get("error", "")),
                                           bucket=self.settings.s3_bucket)
        return JSONResponse(body, status_code=answer.status_code)

    @api.delete(PREFIX + "/{upload_id}", status_code=204, responses=openapi.errors(401, 404, 409, 503))
    async def abort(self, upload_id: str, request: Request,
                    caller: Principal = Depends(allow(Role.WRITER))) -> Response:
        """Abort: the S3 multipart upload is aborted and the part rows deleted (204; again: 204)."""
        tenant = caller.tenant
        await self._call(self.service.abort, tenant, upload_id)
        return Response(status_code=204)


class AppArgs(BaseModel):
    """Arguments of ``build_app`` (the ``args`` of the application in ``serve/config.yaml``)."""

    settings_overrides: dict[str, Any] = {}
    part_memory_bytes: int = Field(default=0, ge=0)
    complete_wait_s: float = Field(default=10.0, ge=0)
    max_part_bytes: int = Field(default=MAX_PART_SIZE, ge=5 * 1024**2, le=MAX_PART_SIZE)


def build_app(args: dict[str, Any]) -> Application:
    """Build the ``uploads`` application (Ray Serve "application builder" pattern)."""
    parsed = AppArgs.model_validate(args or {})
    return UploadsAPI.bind(parsed.settings_overrides or None, parsed.part_memory_bytes, parsed.complete_wait_s,
                           parsed.max_part_bytes)
