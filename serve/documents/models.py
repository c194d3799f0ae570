"""The answers of the ``documents`` application, as its OpenAPI document declares them (README, "HTTP API")."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from core.metadata import KEY_PATTERN, MAX_KEYS, MAX_STRING_LENGTH

#: A metadata key and value as ``core.metadata`` accepts them (it checks the 8 KiB total too).
MetadataKey = Annotated[str, StringConstraints(pattern=KEY_PATTERN.pattern)]
MetadataValue = Annotated[str, StringConstraints(max_length=MAX_STRING_LENGTH)] | int | float | bool | list[
    Annotated[str, StringConstraints(max_length=MAX_STRING_LENGTH)]]


class DocumentView(BaseModel):
    """``GET /v1/documents/{id}``: the document, the state of its newest content, and the shown version's metadata
    and properties. ``latest_version`` is the searchable version (0 while none is), ``head_version`` the newest
    content; ``error`` is the newest content's failure, when it failed."""

    document_id: str
    path: str
    latest_version: int
    head_version: int
    status: str
    deleted: bool
    metadata: dict[str, Any]
    properties: dict[str, Any]
    error: str | None = None


class VersionView(BaseModel):
    """One entry of ``GET /v1/documents/{id}/versions`` (oldest first)."""

    version: int
    status: str
    is_latest: bool
    restorable: bool
    sha256: str
    size: int
    content_type: str
    chunk_count: int | None
    error: str | None
    created_at: str | None
    metadata: dict[str, Any]
    properties: dict[str, Any]


class MetadataBody(BaseModel):
    """The body of ``PATCH /v1/documents/{id}``: the new user metadata (README, "Document metadata")."""

    model_config = ConfigDict(extra="forbid")

    metadata: dict[MetadataKey, MetadataValue] = Field(max_length=MAX_KEYS)


class MetadataReplaced(BaseModel):
    """The answer of ``PATCH /v1/documents/{id}``: the metadata now held and the versions it was written to."""

    document_id: str
    metadata: dict[str, Any]
    versions: list[int]


class Restored(BaseModel):
    """The answer of a restore: the document with its restored version now the searchable one."""

    document_id: str
    path: str
    latest_version: int


class DeadLetter(BaseModel):
    """One entry of ``GET /v1/dead-letters``: a version that failed, at which stage and why."""

    id: int
    document_id: str
    path: str
    version: int
    stage: str
    reason: str
    detail: str | None
    created_at: str | None
    replayed_at: str | None


class Check(BaseModel):
    """One service of ``GET /v1/readyz``."""

    status: str
    latency_ms: float
    detail: str | None = None


class Readiness(BaseModel):
    """``GET /v1/readyz``: ``ready`` only when every service answers (else 503 with the same body)."""

    status: str
    checks: dict[str, Check]


class Liveness(BaseModel):
    """``GET /v1/healthz``: the process is up."""

    status: str


class KeyRequest(BaseModel):
    """``POST /v1/keys``: a new API key of the caller's tenant."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["reader", "writer", "admin"]
    name: str = Field(default="", max_length=200)
    #: Days until the key expires: at least one minute (1/1440), at most ten years; none: never.
    expires_days: float | None = Field(default=None, ge=1 / 1440, le=3650)


class KeyView(BaseModel):
    """One API key as ``GET /v1/keys`` shows it (never its secret)."""

    key_id: str
    tenant: str
    role: str
    name: str
    created_at: str
    expires_at: str | None
    revoked_at: str | None


class KeyCreated(KeyView):
    """``POST /v1/keys``: the record and the key itself, shown this once."""

    key: str


class AuditEntry(BaseModel):
    """One event of ``GET /v1/audit`` (newest first)."""

    id: int
    at: str
    request_id: str
    subject: str
    tenant: str
    role: str
    action: str
    target: str
    outcome: str
    status: int


class UsageLimits(BaseModel):
    """The limits of a tenant (0: none)."""

    max_tenant_bytes: int
    max_open_uploads: int
    rate_limit_key_rps: int
    rate_limit_tenant_rps: int


class UsageView(BaseModel):
    """``GET /v1/usage``: the tenant's storage and uploads now, and its limits."""

    tenant: str
    bytes_stored: int
    bytes_reserved: int
    documents: int
    uploads_open: int
    limits: UsageLimits
