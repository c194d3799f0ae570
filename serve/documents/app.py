"""Serve application ``documents`` (FastAPI ingress, route prefix ``/v1``).

Routes (docs/DESIGN.md, "Interfaces (contract)"; paths relative to the prefix):

* ``GET /documents/{id}``: ``{"document_id", "path", "latest_version", "status", "error"?, "deleted", "metadata",
  "properties", ...}`` (metadata and properties of the shown version, else of the newest).
* ``PATCH /documents/{id}`` ``{"metadata": {...}}``: replaces the user metadata without re-embedding; 422
  ``invalid_metadata`` names the key at fault.
* ``GET /documents/{id}/versions``: the list of versions, oldest first, each with ``is_latest`` and ``restorable``.
* ``POST /documents/{id}/versions/{v}/restore``: makes a retained older version the searchable one (no
  re-embedding); 409 ``not_restorable`` when its points are gone, 409 ``deleted`` for a deleted document.
* ``DELETE /documents/{id}``: 204; its points leave the index (every version, every leg) and the cache.
* ``GET /dead-letters``: the caller's dead letters, newest first (``?document_id=``, ``?open=true``, ``?limit=``).
* ``GET /healthz`` and ``GET /readyz``: liveness and readiness (``serve.health``), open to anyone.
* ``GET /openapi.json`` (Swagger UI at ``/docs``): the whole API of the three applications (``serve.openapi``).

* ``GET /keys``, ``POST /keys`` ``{"role", "name"?, "expires_days"?}``, ``DELETE /keys/{key_id}``: the tenant's API keys
  (admin).
* ``GET /audit`` (``?since=``, ``?until=``, ``?action=``, ``?limit=``): the tenant's audit events (admin).

The caller and its role come from its credential (``serve.auth``; the role each route needs is in its
``Depends(allow(...))`` and the README's table); another tenant's document answers 404, exactly like a missing one.
"""


import asyncio
import dataclasses
import datetime
import logging
from typing import Any

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve import Application

from core import lifecycle
from core.access import Principal, Role
from core.catalog import Catalog, CatalogConflict
from core.errors import ServiceUnavailableError
from core.settings import Settings
from core.types import Document, Version
from core.vectorstore import VectorStore
from serve import openapi
from serve.auth import Authenticator, allow
from serve.documents.models import (AuditEntry, DeadLetter, DocumentView, KeyCreated, KeyRequest, KeyView, Liveness,
                                    MetadataBody, MetadataReplaced, Readiness, Restored, UsageView, VersionView)
from serve.health import Readiness as ReadinessChecks
from serve.http import (ApiError, checked_metadata, install_common_handlers, public_detail, read_json_body,
                        validation_detail)

logger = logging.getLogger(__name__)

api = FastAPI(title="Sluice documents", version="0.1.0", generate_unique_id_function=openapi.operation_id(""))
install_common_handlers(api)
#: The request bodies the routes read themselves (``serve.openapi.json_body``).
BODIES = (MetadataBody, KeyRequest)
openapi.install(api, BODIES, build=openapi.merged)

_CONFLICT_STATUS = {"not_found": 404, "deleted": 409, "not_restorable": 409}
#: The largest JSON body accepted (metadata is at most 8 KiB as compact JSON; escapes may make it longer).
MAX_JSON_BYTES = 64 * 1024


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def version_json(v: Version, document: Document, retention_keep: set[int], bucket: str = "") -> dict[str, Any]:
    """One version as the API shows it (its ``error`` as ``serve.http.public_detail`` shows it)."""
    return {
        "version": v.version,
        "status": v.status,
        "is_latest": v.version == document.latest_version and not document.deleted,
        "restorable": v.version in retention_keep and v.version != document.latest_version,
        "sha256": v.sha256,
        "size": v.size,
        "content_type": v.content_type,
        "chunk_count": v.chunk_count,
        "error": public_detail(v.error, bucket=bucket),
        "created_at": _iso(v.created_at),
        "metadata": v.metadata,
        "properties": v.properties,
    }


@serve.deployment(name="DocumentsAPI", max_ongoing_requests=32, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(api)
class DocumentsAPI:
    """The documents deployment: catalog reads, and the life-cycle operations of ``core.lifecycle``.

    Args:
        settings_overrides: ``Settings`` fields that override the environment (tests use it).
    """

    def __init__(self, settings_overrides: dict[str, Any] | None = None) -> None:
        self.settings = Settings(**(settings_overrides or {}))
        self.catalog = Catalog(self.settings)
        api.state.auth = Authenticator(self.settings, self.catalog)
        self.store = VectorStore(self.settings)  # one per replica: its backend and known payload indexes are kept
        self.readiness = ReadinessChecks(self.settings, catalog=self.catalog, store=self.store)

    def _document(self, tenant: str, document_id: str) -> "Document":
        try:
            doc = self.catalog.get_document(document_id)
        except ServiceUnavailableError:
            raise
        except Exception:  # not a uuid: PostgreSQL refuses it
            doc = None
        if doc is None or doc.tenant != tenant:
            raise ApiError(404, "not_found", f"no document {document_id}")
        return doc

    async def _call(self, fn, *args, **kwargs):
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except ServiceUnavailableError as exc:
            logger.error("documents call failed: %s", exc)
            raise ApiError(503, "service_unavailable", f"{exc.service} is unavailable") from exc

    @api.get("/documents/{document_id}", response_model=DocumentView, responses=openapi.errors(401, 404, 503))
    async def get_document(self, document_id: str, request: Request,
                           caller: Principal = Depends(allow(Role.READER))) -> JSONResponse:
        """The document and the state of its newest content."""
        doc = await self._call(self._document, caller.tenant, document_id)
        versions = await self._call(self.catalog.list_versions, document_id)
        head = next((v for v in versions if v.version == doc.head_version), None)
        shown = next((v for v in versions if v.version == doc.latest_version), None) or head
        status = "deleted" if doc.deleted else (head.status if head else "pending")
        body: dict[str, Any] = {
            "document_id": doc.document_id,
            "path": doc.path,
            "latest_version": doc.latest_version,
            "head_version": doc.head_version,
            "status": status,
            "deleted": doc.deleted,
            "metadata": shown.metadata if shown is not None else {},
            "properties": shown.properties if shown is not None else {},
        }
        if head is not None and head.error:
            body["error"] = public_detail(head.error, bucket=self.settings.s3_bucket)
        return JSONResponse(body)

    @api.patch("/documents/{document_id}", response_model=MetadataReplaced, openapi_extra=openapi.json_body(MetadataBody),
               responses=openapi.errors(400, 401, 404, 409, 413, 422, 503))
    async def patch_document(self, document_id: str, request: Request,
                             caller: Principal = Depends(allow(Role.WRITER))) -> JSONResponse:
        """Replace the document's user metadata (shown and head versions) without re-embedding; search sees it at once."""
        raw = await read_json_body(request, MAX_JSON_BYTES)
        if not isinstance(raw, dict) or set(raw) != {"metadata"}:
            raise ApiError(422, "invalid_request", 'the body is {"metadata": {...}}')
        metadata = checked_metadata(raw["metadata"])
        await self._call(self._document, caller.tenant, document_id)
        try:
            versions = await self._call(lifecycle.replace_metadata, self.settings, document_id, metadata,
                                        catalog=self.catalog, store=self.store)
        except CatalogConflict as exc:
            raise ApiError(_CONFLICT_STATUS.get(exc.code, 409), exc.code, exc.detail) from exc
        return JSONResponse({"document_id": document_id, "metadata": metadata, "versions": versions})

    @api.get("/documents/{document_id}/versions", response_model=list[VersionView],
             responses=openapi.errors(401, 404, 503))
    async def list_versions(self, document_id: str, request: Request,
                            caller: Principal = Depends(allow(Role.READER))) -> JSONResponse:
        """Every version, oldest first."""
        doc = await self._call(self._document, caller.tenant, document_id)
        versions = await self._call(self.catalog.list_versions, document_id)
        keep = set(await self._call(self.catalog.retained_versions, document_id, self.settings.version_retention))
        return JSONResponse([version_json(v, doc, keep, self.settings.s3_bucket) for v in versions])

    @api.post("/documents/{document_id}/versions/{version}/restore", response_model=Restored,
              responses=openapi.errors(401, 404, 409, 422, 503))
    async def restore(self, document_id: str, version: int, request: Request,
                      caller: Principal = Depends(allow(Role.ADMIN))) -> JSONResponse:
        """Make a retained version the searchable one again (no re-embedding)."""
        await self._call(self._document, caller.tenant, document_id)
        try:
            doc = await self._call(lifecycle.restore_version, self.settings, document_id, version, catalog=self.catalog,
                                   store=self.store)
        except CatalogConflict as exc:
            raise ApiError(_CONFLICT_STATUS.get(exc.code, 409), exc.code, exc.detail) from exc
        return JSONResponse({"document_id": doc.document_id, "path": doc.path, "latest_version": doc.latest_version})

    @api.delete("/documents/{document_id}", status_code=204, responses=openapi.errors(401, 404, 503))
    async def delete(self, document_id: str, request: Request,
                     caller: Principal = Depends(allow(Role.WRITER))) -> Response:
        """Delete the document: points of every version, cache, and the objects when ``delete_objects``."""
        await self._call(self._document, caller.tenant, document_id)
        await self._call(lifecycle.delete_document, self.settings, document_id, catalog=self.catalog, store=self.store)
        return Response(status_code=204)

    @api.get("/dead-letters", response_model=list[DeadLetter], responses=openapi.errors(401, 404, 422, 503))
    async def dead_letters(
        self,
        request: Request, caller: Principal = Depends(allow(Role.ADMIN)),
        document_id: str | None = Query(default=None),
        open: bool = Query(default=False, description="only letters not replayed yet"),
        limit: int = Query(default=100, ge=1, le=1000),
    ) -> JSONResponse:
        """The caller's dead letters, newest first."""
        tenant = caller.tenant
        if document_id is not None:
            await self._call(self._document, caller.tenant, document_id)
        rows = await self._call(self.catalog.dead_letters, document_id, tenant=tenant, include_replayed=not open, limit=limit)
        for row in rows:
            row["detail"] = public_detail(row["detail"], reason=row["reason"], bucket=self.settings.s3_bucket)
        return JSONResponse([{k: _iso(v) for k, v in row.items()} for row in rows])

    @api.get("/keys", response_model=list[KeyView], responses=openapi.errors(401, 403, 503))
    async def list_keys(self, request: Request, caller: Principal = Depends(allow(Role.ADMIN))) -> JSONResponse:
        """The tenant's API keys, oldest first, revoked ones included (never their secrets)."""
        keys = await self._call(self.catalog.list_api_keys, caller.tenant)
        return JSONResponse([k.to_json() for k in keys])

    @api.post("/keys", status_code=201, response_model=KeyCreated, openapi_extra=openapi.json_body(KeyRequest),
              responses=openapi.errors(400, 401, 403, 413, 422, 503))
    async def create_key(self, request: Request, caller: Principal = Depends(allow(Role.ADMIN))) -> JSONResponse:
        """A new API key of the caller's tenant; the answer holds the key itself, shown this once."""
        raw = await read_json_body(request, MAX_JSON_BYTES)
        try:
            body = KeyRequest.model_validate(raw)
        except ValidationError as exc:
            raise ApiError(422, "invalid_request", validation_detail(exc)) from None
        expires = (None if body.expires_days is None else
                   datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=body.expires_days))
        try:
            record, key = await self._call(self.catalog.create_api_key, caller.tenant, body.role, name=body.name,
                                           expires_at=expires)
        except ValueError as exc:  # an expiry that is already past (a fraction of a second of days)
            raise ApiError(422, "invalid_request", str(exc)) from None
        request.state.audit_target = record.key_id
        return JSONResponse(record.to_json() | {"key": key}, status_code=201)

    @api.delete("/keys/{key_id}", status_code=204, responses=openapi.errors(401, 403, 404, 503))
    async def revoke_key(self, key_id: str, request: Request,
                         caller: Principal = Depends(allow(Role.ADMIN))) -> Response:
        """Revoke one of the tenant's keys: every replica refuses it within ``auth_cache_s`` (5 s)."""
        if await self._call(self.catalog.revoke_api_key, key_id, tenant=caller.tenant) is None:
            raise ApiError(404, "not_found", f"no key {key_id}")
        return Response(status_code=204)

    @api.get("/usage", response_model=UsageView, responses=openapi.errors(401, 403, 503))
    async def usage(self, request: Request, caller: Principal = Depends(allow(Role.ADMIN))) -> JSONResponse:
        """The tenant's storage and uploads now, and the limits that apply to it."""
        used = await self._call(self.catalog.tenant_usage, caller.tenant)
        s = self.settings
        return JSONResponse({"tenant": caller.tenant, **dataclasses.asdict(used), "limits": {
            "max_tenant_bytes": s.max_tenant_bytes, "max_open_uploads": s.max_open_uploads,
            "rate_limit_key_rps": s.rate_limit_key_rps, "rate_limit_tenant_rps": s.rate_limit_tenant_rps}})

    @api.get("/audit", response_model=list[AuditEntry], responses=openapi.errors(401, 403, 422, 503))
    async def audit(
        self,
        request: Request,
        caller: Principal = Depends(allow(Role.ADMIN)),
        since: datetime.datetime | None = Query(default=None, description="events at or after this time (ISO 8601)"),
        until: datetime.datetime | None = Query(default=None, description="events before this time (ISO 8601)"),
        action: str | None = Query(default=None, max_length=200,
                                   description="events whose action contains this text (`DELETE`, `/keys`)"),
        limit: int = Query(default=100, ge=1, le=1000),
    ) -> JSONResponse:
        """The tenant's audit events, newest first: every mutating call and every refused one."""
        rows = await self._call(self.catalog.audit_events, caller.tenant, since=since, until=until, action=action,
                                limit=limit)
        return JSONResponse([{k: _iso(v) for k, v in row.items()} for row in rows])

    @api.get("/healthz", response_model=Liveness)
    async def healthz(self) -> JSONResponse:
        """Liveness: the replica serves HTTP (nothing else is touched)."""
        return JSONResponse({"status": "ok"})

    @api.get("/readyz", response_model=Readiness,
             responses={503: {"model": Readiness, "description": "A service did not answer; its check says why."}})
    async def readyz(self) -> JSONResponse:
        """Readiness: PostgreSQL, Redis, S3 and the vector store each answered (503 naming those that did not)."""
        ready, body = await self.readiness.run()
        return JSONResponse(body, status_code=200 if ready else 503)


class AppArgs(BaseModel):
    """Arguments of ``build_app`` (the ``args`` of the application in ``serve/config.yaml``)."""

    settings_overrides: dict[str, Any] = {}


def build_app(args: dict[str, Any]) -> Application:
    """Build the ``documents`` application (Ray Serve "application builder" pattern)."""
    parsed = AppArgs.model_validate(args or {})
    return DocumentsAPI.bind(parsed.settings_overrides or None)
