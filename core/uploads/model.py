"""The upload records: :class:`Upload` (a row of ``uploads``), :class:`UploadPart`, their statuses, staging keys, and
the stored form of a completion's answer (:class:`Answer`, :func:`answer_json`)."""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import datetime
from typing import Any

from core.ids import document_id as make_document_id

#: A proxied upload is uploaded under this key prefix until its bytes are verified. It holds no
#: ``/``, so a staging key is never ``<tenant>/<path>``: ``jobs.ingest --scan`` skips it as an invalid key and no
#: tenant's listing shows it.
STAGING_PREFIX = "_sluice_staging."
STATUSES = ("pending", "completing", "completed", "failed", "aborted", "expired")
#: Statuses after which nothing more happens to an upload.
FINAL_STATUSES = frozenset({"completed", "failed", "aborted", "expired"})


@dataclasses.dataclass(frozen=True)
class UploadPart:
    """A part S3 accepted. Attributes: part_number; size in bytes; md5 (hex); etag (without quotes)."""

    part_number: int
    size: int
    md5: str
    etag: str


@dataclasses.dataclass(frozen=True)
class Upload:
    """One upload (a row of ``uploads``).

    Attributes:
        upload_id: uuid4 string. tenant, path: the document (path NFC). object_key: ``<tenant>/<path>``, where the
        verified bytes end. s3_key: the staging key of the S3 multipart upload. s3_upload_id: its S3 id (``""`` for
        an empty file, which needs none). size: declared bytes. sha256: declared hex digest or ``None``.
        content_type: MIME type or ``""``. part_size: bytes per part (the last may be smaller). on_conflict:
        ``new_version`` or ``reject``. status: see ``STATUSES``. attempts: completion attempts started.
        last_error: why the last attempt failed. progress: completion steps done. result: the stored first
        answer ``{"status_code", "body"}``. created_at, updated_at, expires_at: UTC times. metadata: the user
        metadata the new version gets (checked by ``core.metadata``), ``None`` when none was given (the version
        then keeps its predecessor's). transfer: ``proxy`` (the parts go through the Serve app, to a staging key)
        or ``direct`` (the client sends them to S3 through presigned URLs; the multipart upload is at
        ``object_key`` and is joined there only under the path's lock, README "Uploads").
    """

    upload_id: str
    tenant: str
    path: str
    object_key: str
    s3_key: str
    s3_upload_id: str
    size: int
    sha256: str | None
    content_type: str
    part_size: int
    on_conflict: str = "new_version"
    status: str = "pending"
    attempts: int = 0
    last_error: str | None = None
    progress: dict[str, Any] = dataclasses.field(default_factory=dict)
    result: dict[str, Any] | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    expires_at: datetime | None = None
    metadata: dict[str, Any] | None = None
    transfer: str = "proxy"

    @property
    def part_count(self) -> int:
        """Parts the upload needs (0 for an empty file)."""
        return math.ceil(self.size / self.part_size)

    @property
    def document_id(self) -> str:
        """The id of the document this upload writes."""
        return make_document_id(self.tenant, self.path)

    @property
    def direct(self) -> bool:
        """Whether the client sends the parts straight to S3 through presigned URLs (``transfer == "direct"``)."""
        return self.transfer == "direct"

    @property
    def legacy_in_place(self) -> bool:
        """A proxied upload recorded before every proxied upload was staged: its multipart upload is at
        ``object_key`` and its bytes were verified there, before the path's lock was taken."""
        return self.transfer == "proxy" and self.s3_key == self.object_key

    def expected_part_size(self, part_number: int) -> int:
        """Bytes part ``part_number`` must have: ``part_size``, except the last, which holds the rest.

        Raises:
            ValueError: the part number is outside 1 to ``part_count``.
        """
        if not 1 <= part_number <= self.part_count:
            raise ValueError(f"part_number={part_number} must be 1 to {self.part_count} for this upload")
        if part_number < self.part_count:
            return self.part_size
        return self.size - (self.part_count - 1) * self.part_size

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Upload":
        """Build from a ``SELECT *`` row of ``uploads``."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in row.items() if k in fields}
        values["upload_id"] = str(row["upload_id"])
        values["s3_upload_id"] = row.get("s3_upload_id") or ""
        values["s3_key"] = row.get("s3_key") or ""
        values["progress"] = dict(row.get("progress") or {})
        return cls(**values)


def staging_key(upload_id: str) -> str:
    """Where the multipart upload of ``upload_id`` lives until its bytes are verified."""
    return f"{STAGING_PREFIX}{upload_id}"


def answer_json(status_code: int, body: dict[str, Any]) -> dict[str, Any]:
    """The stored form of an answer: ``{"status_code", "body"}`` (JSON-safe)."""
    return {"status_code": int(status_code), "body": json.loads(json.dumps(body, default=str))}


@dataclasses.dataclass(frozen=True)
class Answer:
    """An answer to a completion. Attributes: status_code (HTTP); body (JSON object)."""

    status_code: int
    body: dict[str, Any]
