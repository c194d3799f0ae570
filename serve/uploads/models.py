"""Request bodies, answers and the path check of the ``uploads`` application."""

from __future__ import annotations

import unicodedata
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from core.errors import InvalidPathError
from core.ids import MAX_KEY_BYTES

#: Unicode categories refused in a path beyond ``core.ids`` (which refuses Cc): lone surrogates (Cs, which UTF-8
#: cannot encode) and the line and paragraph separators (Zl, Zp), which act as line breaks in logs and listings.
EXTRA_REFUSED_CATEGORIES = frozenset({"Cs", "Zl", "Zp"})


class CreateUpload(BaseModel):
    """The body of ``POST /v1/uploads`` (unknown fields are refused, so a misspelt ``sha256`` is not ignored).

    Attributes:
        path: the document path (relative, ``/``-separated; NFC and NFD spellings are one document).
        size: bytes of the whole file, 0 to ``SLUICE_MAX_UPLOAD_BYTES``.
        sha256: hex SHA-256 of the whole file; checked against the stored bytes at completion.
        content_type: MIME type (printable ASCII); guessed from the path when empty.
        part_size: bytes per part, 5 MiB to 5 GiB (raised so that at most 10,000 parts are needed).
        on_conflict: ``new_version`` (default) or ``reject`` (409 when the path exists).
        metadata: the new version's user metadata (README, "Document metadata"; checked by ``core.metadata``,
            which names the key at fault); omitted: the version keeps its predecessor's.
        transfer: ``proxy`` (default: the parts go through ``PUT /v1/uploads/{id}/parts/{n}``) or ``direct`` (the
            client sends them to S3 through the URLs of ``POST /v1/uploads/{id}/part-urls``; needs ``sha256``).
            The answer says which one the server granted.
    """

    model_config = ConfigDict(extra="forbid")

    path: StrictStr = Field(max_length=4096)
    size: StrictInt = Field(ge=0)
    sha256: StrictStr | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    content_type: StrictStr = Field(default="", max_length=255, pattern=r"^[\x20-\x7e]*$")
    part_size: StrictInt | None = Field(default=None, ge=1)
    on_conflict: Literal["new_version", "reject"] = "new_version"
    metadata: dict[str, StrictStr | StrictInt | StrictFloat | StrictBool | list[StrictStr]] | None = None
    transfer: Literal["proxy", "direct"] = "proxy"


class PartDigest(BaseModel):
    """A part a client is about to send to S3: its number and the MD5 of its bytes (hex)."""

    model_config = ConfigDict(extra="forbid")

    part_number: StrictInt = Field(ge=1, le=10_000)
    md5: StrictStr = Field(pattern=r"^[0-9a-fA-F]{32}$")


class PartUrlsRequest(BaseModel):
    """The body of ``POST /v1/uploads/{id}/part-urls``: the parts to sign, 1 to 1,000 at a time."""

    model_config = ConfigDict(extra="forbid")

    parts: list[PartDigest] = Field(min_length=1, max_length=1000)


class PartUrl(BaseModel):
    """Where and how to send one part: ``PUT`` the part's bytes to ``url`` with ``headers``, before ``expires_at``."""

    part_number: int
    url: str
    method: Literal["PUT"]
    headers: dict[str, str]
    size: int
    expires_at: str


class PartUrls(BaseModel):
    """200 of ``POST /v1/uploads/{id}/part-urls``."""

    parts: list[PartUrl]


def check_path_characters(path: str) -> None:
    """Refuse what ``core.ids.normalise_path`` lets through but a path must not hold.

    Raises:
        InvalidPathError: a lone surrogate, a line or paragraph separator, or more than 1024 bytes of UTF-8.
    """
    for c in path:
        if unicodedata.category(c) in EXTRA_REFUSED_CATEGORIES:
            raise InvalidPathError(path.encode("utf-8", "backslashreplace").decode("ascii", "replace"),
                                   f"the path contains the character U+{ord(c):04X}, which is not allowed")
    if len(path.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidPathError(path[:64] + "...", f"the path is longer than {MAX_KEY_BYTES} bytes")


# --- answers (what the OpenAPI document declares; README, "HTTP API") ------------------------------------------


class UploadCreated(BaseModel):
    """201 of ``POST /v1/uploads``: send parts 1 to ``part_count`` of ``part_size`` bytes (the last may be shorter)."""

    upload_id: str
    part_size: int
    part_count: int
    expires_at: str | None
    path: str
    document_id: str
    size: int
    transfer: Literal["proxy", "direct"] = "proxy"


class UploadDeduplicated(BaseModel):
    """200 of ``POST /v1/uploads`` (and of a completion) when the bytes equal the latest version's: nothing to send."""

    model_config = ConfigDict(extra="allow")

    deduplicated: bool
    document_id: str
    version: int
    path: str
    sha256: str
    size: int


class UploadSummary(BaseModel):
    """One entry of ``GET /v1/uploads``."""

    upload_id: str
    path: str
    size: int
    status: str
    created_at: str | None
    expires_at: str | None


class UploadList(BaseModel):
    """``GET /v1/uploads``: the caller's uploads, newest first."""

    uploads: list[UploadSummary]


class PartStored(BaseModel):
    """200 of ``PUT /v1/uploads/{id}/parts/{n}``: the part S3 stored."""

    part_number: int
    etag: str
    size: int


class StoredPart(BaseModel):
    """A part of ``GET /v1/uploads/{id}``."""

    part_number: int
    size: int
    etag: str


class UploadStatus(BaseModel):
    """``GET /v1/uploads/{id}``: what a client needs to resume (received and missing parts), or the outcome
    (``result``: the completion's answer) once final."""

    model_config = ConfigDict(extra="allow")

    upload_id: str
    status: str
    path: str
    document_id: str
    size: int
    sha256: str | None
    part_size: int
    part_count: int
    received_parts: list[int]
    missing_parts: list[int]
    bytes_received: int
    parts: list[StoredPart]
    attempts: int
    created_at: str | None
    expires_at: str | None
    transfer: Literal["proxy", "direct"] = "proxy"
    error: str | None = None
    result: dict[str, Any] | None = None


class UploadCompleted(BaseModel):
    """200 of ``POST /v1/uploads/{id}/complete``: the document version the bytes became (``deduplicated`` when
    they equal the latest version's, and no version was made)."""

    document_id: str
    version: int
    sha256: str
    size: int
    path: str
    etag: str
    deduplicated: bool
    upload_id: str
    transfer: Literal["proxy", "direct"] = "proxy"
    #: ``sha256``: Sluice hashed the stored bytes; ``md5_parts``: S3 holds every part with the MD5 the client
    #: declared, and ingest checks the declared SHA-256 when it reads the bytes.
    verified: Literal["sha256", "md5_parts"] = "sha256"
