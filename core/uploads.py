"""Uploads: their state in PostgreSQL (``uploads``, ``upload_parts``) and the locks that keep it consistent.

An upload is ``pending`` while parts arrive, ``completing`` once a completion was claimed, then ``completed``,
``failed``, ``aborted`` or ``expired`` (ARCHITECTURE.md, "Data model"). Only what resuming, completing and cleaning
up need is stored, never payload bytes. :class:`UploadStore` holds the state; :class:`UploadService` runs the steps
that also talk to S3 (create, store a part, complete, abort, expire, sweep), for the Serve app and ``jobs.janitor``.

Consistency rules:

- A part row is written only after S3 accepted the part, in a transaction that first takes a ``FOR SHARE`` lock on
  the upload row and checks that it is still ``pending`` (so an abort or an expiry, which take ``FOR UPDATE``, and a
  part record never interleave).
- One completion at a time per upload: a PostgreSQL session-level advisory lock held on a dedicated connection for
  the whole completion (:class:`CompletionLock`). A process that dies loses its connection and with it the lock, so
  an upload left ``completing`` with its lock free is known to be abandoned (``jobs.janitor`` retries it).
- The first answer to a completion is stored (``result``) and returned to every later call.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import math
import mimetypes
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from minio.error import S3Error
from psycopg_pool import PoolTimeout

from core.catalog import Catalog
from core.errors import ServiceUnavailableError, SluiceError
from core.events import NewVersionEvent, notify_new_version
from core.ids import document_id as make_document_id
from core.ids import normalise_path, object_key
from core.objects import BadDigestError, NoSuchUploadError, ObjectStore, multipart_etag
from core.retry import call_with_retry
from core.settings import Settings
from core.types import Version

logger = logging.getLogger(__name__)

# S3 limits (https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html).
MIN_PART_SIZE = 5 * 1024**2
MAX_PART_SIZE = 5 * 1024**3
MAX_PARTS = 10_000
MAX_OBJECT_BYTES = 5 * 1024**4
#: SHA-256 of zero bytes.
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#: A new version of an existing path is uploaded under this key prefix until its bytes are verified. It holds no
#: ``/``, so a staging key is never ``<tenant>/<path>``: ``jobs.ingest --scan`` skips it as an invalid key and no
#: tenant's listing shows it.
STAGING_PREFIX = "_sluice_staging."
STATUSES = ("pending", "completing", "completed", "failed", "aborted", "expired")
#: Statuses after which nothing more happens to an upload.
FINAL_STATUSES = frozenset({"completed", "failed", "aborted", "expired"})
#: Key class of the completion advisory locks (two-key form; the catalog uses the one-key form).
LOCK_CLASS = 0x511CE
_TRANSIENT = (psycopg.OperationalError, PoolTimeout)


class UploadError(SluiceError):
    """An upload request that cannot be carried out; ``code`` is a stable, machine-readable reason.

    The tree (``core/errors.py`` is another module's; these live here)::

        UploadError
        ├── UploadNotFoundError        no such upload for this tenant
        ├── UploadStateError           the upload is not in a status that allows the request
        ├── CompletionInProgressError  another completion of the upload holds its lock
        ├── MissingPartsError          parts are missing or have the wrong size
        └── PartIntegrityError         S3 stored a part whose ETag is not the MD5 of the bytes sent
    """

    code = "upload_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UploadNotFoundError(UploadError):
    """No upload with this id belongs to the caller (another tenant's upload is not found either)."""

    code = "upload_not_found"


class UploadStateError(UploadError):
    """The upload's status forbids the request. Attributes: status: the upload's status."""

    code = "not_pending"

    def __init__(self, status: str, detail: str = "") -> None:
        super().__init__(detail or f"the upload is {status}")
        self.status = status


class CompletionInProgressError(UploadError):
    """Another request or job is completing this upload right now."""

    code = "completion_in_progress"


class MissingPartsError(UploadError):
    """Completion needs every part, each of its expected size.

    Attributes:
        missing: part numbers never received. wrong_size: part numbers received with another size.
    """

    code = "missing_parts"

    def __init__(self, missing: list[int], wrong_size: list[int]) -> None:
        detail = f"{len(missing)} part(s) missing" + (f", {len(wrong_size)} of a wrong size" if wrong_size else "")
        super().__init__(detail)
        self.missing = missing
        self.wrong_size = wrong_size


class PartIntegrityError(UploadError):
    """S3 answered a part with an ETag that is not the MD5 of the bytes sent; the part was not recorded."""

    code = "etag_mismatch"


def plan_parts(size: int, part_size: int | None, default_part_size: int) -> tuple[int, int]:
    """The part size and count of an upload of ``size`` bytes.

    The part size is the requested one (else ``default_part_size``), raised to a whole number of MiB when more
    than 10,000 parts would be needed (S3: at most 10,000 parts, each 5 MiB to 5 GiB except the last).

    Returns:
        ``(part_size, part_count)``; ``part_count`` is 0 for an empty file.

    Raises:
        ValueError: ``size`` is negative or above 5 TiB, or ``part_size`` is outside 5 MiB to 5 GiB.
    """
    if size < 0 or size > MAX_OBJECT_BYTES:
        raise ValueError(f"size={size} must be 0 to {MAX_OBJECT_BYTES} bytes (5 TiB, the S3 limit)")
    chosen = part_size if part_size is not None else default_part_size
    if not MIN_PART_SIZE <= chosen <= MAX_PART_SIZE:
        raise ValueError(f"part_size={chosen} must be {MIN_PART_SIZE} (5 MiB) to {MAX_PART_SIZE} (5 GiB) bytes")
    if math.ceil(size / chosen) > MAX_PARTS:
        mib = 1024**2
        chosen = math.ceil(math.ceil(size / MAX_PARTS) / mib) * mib
    return chosen, math.ceil(size / chosen)


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
        answer ``{"status_code", "body"}``. created_at, updated_at, expires_at: UTC times.
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
        """Whether the multipart upload goes straight to ``object_key`` (a new path) rather than a staging key."""
        return self.s3_key == self.object_key

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


def _uuid_or_none(value: str) -> str | None:
    try:
        return str(uuid.UUID(str(value)))
    except (ValueError, AttributeError, TypeError):
        return None


class UploadStore:
    """Reads and writes ``uploads`` and ``upload_parts`` (and reads the catalog's latest versions).

    Shares the connection pool of a :class:`core.catalog.Catalog` (which applies the migrations when it opens).

    Args:
        settings: ``postgres_dsn`` is used.
        catalog: the catalog whose pool to use; a new one with 8 connections when omitted.
    """

    def __init__(self, settings: Settings, *, catalog: Catalog | None = None) -> None:
        self.settings = settings
        self.catalog = catalog or Catalog(settings, max_connections=8)

    def close(self) -> None:
        """Close the pool (idempotent)."""
        self.catalog.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        """One transaction on a pooled connection (no retry: the caller decides)."""
        with self.catalog.pool.connection() as conn, conn.transaction():
            yield conn

    def _run(self, fn, *args: Any) -> Any:
        """Run ``fn(conn, *args)`` in one transaction, retrying connection failures (``fn`` must be idempotent)."""

        def attempt():
            with self.transaction() as conn:
                return fn(conn, *args)

        return call_with_retry("postgres", attempt, transient=_TRANSIENT)

    # -- reads ---------------------------------------------------------------------------------------------------

    def latest_version(self, tenant: str, path: str) -> Version | None:
        """The newest content of a live document (the version new bytes are compared with), or ``None``.

        Read-only on ``documents``/``document_versions``: the head version when the catalog tracks one
        (``documents.head_version``), else ``latest_version``.
        """
        doc_id = make_document_id(tenant, path)
        fields = {f.name for f in dataclasses.fields(Version)}

        def select(conn: psycopg.Connection) -> Version | None:
            doc = conn.execute("SELECT * FROM documents WHERE document_id = %s AND NOT deleted", (doc_id,)).fetchone()
            newest = (doc.get("head_version") or doc.get("latest_version")) if doc else 0
            if not newest:
                return None
            row = conn.execute(
                "SELECT v.*, v.document_id::text AS document_id, d.tenant, d.path FROM document_versions v "
                "JOIN documents d USING (document_id) WHERE v.document_id = %s AND v.version = %s",
                (doc_id, newest),
            ).fetchone()
            return Version(**{k: v for k, v in row.items() if k in fields}) if row else None

        return self._run(select)

    def get(self, upload_id: str, tenant: str | None = None) -> Upload | None:
        """The upload, or ``None`` when there is none with this id for ``tenant`` (any tenant when ``None``)."""
        uid = _uuid_or_none(upload_id)
        if uid is None:
            return None
        row = self._run(
            lambda conn: conn.execute(
                "SELECT * FROM uploads WHERE upload_id = %s AND (%s::text IS NULL OR tenant = %s)", (uid, tenant, tenant)
            ).fetchone()
        )
        return Upload.from_row(row) if row else None

    def parts(self, upload_id: str) -> list[UploadPart]:
        """The recorded parts, by part number."""
        rows = self._run(
            lambda conn: conn.execute(
                "SELECT part_number, size, md5, etag FROM upload_parts WHERE upload_id = %s ORDER BY part_number",
                (upload_id,),
            ).fetchall()
        )
        return [UploadPart(**r) for r in rows]

    def list(self, tenant: str, *, status: str | None = None, limit: int = 100) -> list[Upload]:
        """The tenant's uploads, newest first, optionally of one status."""
        rows = self._run(
            lambda conn: conn.execute(
                "SELECT * FROM uploads WHERE tenant = %s AND (%s::text IS NULL OR status = %s) "
                "ORDER BY created_at DESC LIMIT %s",
                (tenant, status, status, limit),
            ).fetchall()
        )
        return [Upload.from_row(r) for r in rows]

    def ids_with_status(self, status: str, limit: int = 1000) -> list[str]:
        """Ids of uploads of one status, oldest change first."""
        rows = self._run(
            lambda conn: conn.execute(
                "SELECT upload_id::text AS id FROM uploads WHERE status = %s ORDER BY updated_at LIMIT %s", (status, limit)
            ).fetchall()
        )
        return [r["id"] for r in rows]

    def statuses_by_s3_upload_id(self, s3_upload_ids: list[str]) -> dict[str, str]:
        """``{s3_upload_id: status}`` of the uploads that own these S3 multipart uploads."""
        if not s3_upload_ids:
            return {}
        rows = self._run(
            lambda conn: conn.execute(
                "SELECT s3_upload_id, status FROM uploads WHERE s3_upload_id = ANY(%s)", (s3_upload_ids,)
            ).fetchall()
        )
        return {r["s3_upload_id"]: r["status"] for r in rows}

    # -- writes --------------------------------------------------------------------------------------------------

    def insert(self, upload: Upload, ttl_s: int) -> Upload:
        """Record a new ``pending`` upload that expires ``ttl_s`` seconds from now; returns it as stored."""
        row = self._run(
            lambda conn: conn.execute(
                "INSERT INTO uploads (upload_id, tenant, path, object_key, s3_key, s3_upload_id, size, sha256, "
                "content_type, part_size, on_conflict, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                "%s, now() + make_interval(secs => %s)) ON CONFLICT (upload_id) DO UPDATE SET updated_at = now() "
                "RETURNING *",
                (upload.upload_id, upload.tenant, upload.path, upload.object_key, upload.s3_key,
                 upload.s3_upload_id or None, upload.size, upload.sha256, upload.content_type, upload.part_size,
                 upload.on_conflict, ttl_s),
            ).fetchone()
        )
        return Upload.from_row(row)

    def record_part(self, upload_id: str, part: UploadPart) -> None:
        """Record a part S3 accepted, replacing an earlier one of that number.

        Raises:
            UploadNotFoundError: no such upload. UploadStateError: it is no longer ``pending``.
        """

        def record(conn: psycopg.Connection) -> None:
            row = conn.execute("SELECT status FROM uploads WHERE upload_id = %s FOR SHARE", (upload_id,)).fetchone()
            if row is None:
                raise UploadNotFoundError(f"no upload {upload_id}")
            if row["status"] != "pending":
                raise UploadStateError(row["status"], f"the upload is {row['status']}; part {part.part_number} was not recorded")
            conn.execute(
                "INSERT INTO upload_parts (upload_id, part_number, size, md5, etag) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (upload_id, part_number) DO UPDATE SET size = EXCLUDED.size, md5 = EXCLUDED.md5, "
                "etag = EXCLUDED.etag, created_at = now()",
                (upload_id, part.part_number, part.size, part.md5, part.etag),
            )

        self._run(record)

    def reopen(self, upload_id: str) -> None:
        """Put a ``completing`` upload back to ``pending`` (parts must be sent again)."""
        self._run(
            lambda conn: conn.execute(
                "UPDATE uploads SET status = 'pending', updated_at = now() WHERE upload_id = %s AND status = 'completing'",
                (upload_id,),
            )
        )

    def forget_parts(self, upload_id: str, part_numbers: list[int]) -> None:
        """Delete part rows (parts S3 no longer holds as recorded)."""
        self._run(
            lambda conn: conn.execute(
                "DELETE FROM upload_parts WHERE upload_id = %s AND part_number = ANY(%s)", (upload_id, part_numbers)
            )
        )

    def claim(self, upload_id: str) -> Upload:
        """Move a ``pending`` upload with every part to ``completing``, or take over an abandoned ``completing`` one.

        Call it while holding the upload's :class:`CompletionLock`. Counts one more attempt.

        Returns:
            The upload as claimed; when it already has a stored ``result`` (another completion finished first), as
            it is, unchanged.

        Raises:
            UploadNotFoundError: no such upload. UploadStateError: aborted, expired, or failed without an answer.
            MissingPartsError: parts are missing or of the wrong size (the upload stays ``pending``).
        """

        def claim(conn: psycopg.Connection) -> Upload:
            row = conn.execute("SELECT * FROM uploads WHERE upload_id = %s FOR UPDATE", (upload_id,)).fetchone()
            if row is None:
                raise UploadNotFoundError(f"no upload {upload_id}")
            upload = Upload.from_row(row)
            if upload.result is not None:
                return upload
            if upload.status not in ("pending", "completing"):
                raise UploadStateError(upload.status)
            if upload.status == "pending":
                sizes = {
                    r["part_number"]: r["size"]
                    for r in conn.execute(
                        "SELECT part_number, size FROM upload_parts WHERE upload_id = %s", (upload_id,)
                    ).fetchall()
                }
                missing = [n for n in range(1, upload.part_count + 1) if n not in sizes]
                wrong = sorted(
                    n for n, size in sizes.items()
                    if n > upload.part_count or size != upload.expected_part_size(n)
                )
                if missing or wrong or sum(sizes.values()) != upload.size:
                    raise MissingPartsError(missing, wrong)
            row = conn.execute(
                "UPDATE uploads SET status = 'completing', attempts = attempts + 1, updated_at = now() "
                "WHERE upload_id = %s RETURNING *",
                (upload_id,),
            ).fetchone()
            return Upload.from_row(row)

        return self._run(claim)

    def save_progress(self, upload_id: str, **steps: Any) -> None:
        """Merge ``steps`` into the upload's ``progress``."""
        self._run(
            lambda conn: conn.execute(
                "UPDATE uploads SET progress = progress || %s, updated_at = now() WHERE upload_id = %s",
                (Jsonb(steps), upload_id),
            )
        )

    def note_error(self, upload_id: str, error: str) -> None:
        """Record why an attempt failed; the upload stays as it is (``completing``: to be retried)."""
        self._run(
            lambda conn: conn.execute(
                "UPDATE uploads SET last_error = %s, updated_at = now() WHERE upload_id = %s", (error[:2000], upload_id)
            )
        )

    def finish(self, upload_id: str, answer: dict[str, Any], event: NewVersionEvent | None) -> None:
        """Mark ``completed`` with its answer, drop its part rows and send ``event``, in one transaction."""

        def finish(conn: psycopg.Connection) -> None:
            conn.execute(
                "UPDATE uploads SET status = 'completed', result = %s, last_error = NULL, updated_at = now() "
                "WHERE upload_id = %s",
                (Jsonb(answer), upload_id),
            )
            conn.execute("DELETE FROM upload_parts WHERE upload_id = %s", (upload_id,))
            if event is not None:
                notify_new_version(conn, event)

        self._run(finish)

    def end(self, upload_id: str, status: str, reason: str, answer: dict[str, Any] | None) -> None:
        """Move to a final status other than ``completed`` with its reason and answer; drop its part rows."""
        if status not in FINAL_STATUSES - {"completed"}:
            raise ValueError(f"status={status!r} must be one of failed, aborted, expired")

        def end(conn: psycopg.Connection) -> None:
            conn.execute(
                "UPDATE uploads SET status = %s, last_error = %s, result = %s, updated_at = now() WHERE upload_id = %s",
                (status, reason[:2000], Jsonb(answer) if answer is not None else None, upload_id),
            )
            conn.execute("DELETE FROM upload_parts WHERE upload_id = %s", (upload_id,))

        self._run(end)

    def mark_aborted(self, upload_id: str, tenant: str) -> Upload:
        """Abort a ``pending`` upload in the catalog (idempotent for an aborted or expired one).

        Returns:
            The upload as it was before (its S3 multipart upload is the caller's to abort).

        Raises:
            UploadNotFoundError: no such upload for ``tenant``. UploadStateError: completing, completed or failed.
        """

        def abort(conn: psycopg.Connection) -> Upload:
            row = conn.execute(
                "SELECT * FROM uploads WHERE upload_id = %s AND tenant = %s FOR UPDATE", (upload_id, tenant)
            ).fetchone()
            if row is None:
                raise UploadNotFoundError(f"no upload {upload_id}")
            upload = Upload.from_row(row)
            if upload.status in ("aborted", "expired"):
                return upload
            if upload.status != "pending":
                raise UploadStateError(upload.status, f"an upload that is {upload.status} cannot be aborted")
            answer = {"status_code": 409, "body": {"error": "not_pending", "detail": "the upload was aborted"}}
            conn.execute(
                "UPDATE uploads SET status = 'aborted', last_error = 'aborted by the client', result = %s, "
                "updated_at = now() WHERE upload_id = %s",
                (Jsonb(answer), upload_id),
            )
            conn.execute("DELETE FROM upload_parts WHERE upload_id = %s", (upload_id,))
            return upload

        return self._run(abort)


class CompletionLock:
    """The advisory lock that allows one completion of an upload at a time.

    A session-level ``pg_try_advisory_lock`` on a dedicated connection (not the pool's: the lock must live exactly
    as long as the completion, and dies with the process that holds it).

    Args:
        settings: ``postgres_dsn`` is used. upload_id: the upload.
    """

    def __init__(self, settings: Settings, upload_id: str) -> None:
        self.settings = settings
        self.key = int.from_bytes(uuid.UUID(upload_id).bytes[:4], "big", signed=True)
        self._conn: psycopg.Connection | None = None
        self.held = False

    def acquire(self, wait_s: float = 0.0, poll_s: float = 0.25) -> bool:
        """Try to take the lock, polling for up to ``wait_s`` seconds; ``True`` when held.

        Raises:
            ServiceUnavailableError: PostgreSQL cannot be reached.
        """
        if self._conn is None:
            self._conn = call_with_retry(
                "postgres",
                lambda: psycopg.connect(self.settings.postgres_dsn, autocommit=True, connect_timeout=5, row_factory=dict_row),
                transient=_TRANSIENT,
            )
        deadline = time.monotonic() + wait_s
        while True:
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s, %s) AS ok", (LOCK_CLASS, self.key)).fetchone()
            if row["ok"]:
                self.held = True
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)

    def release(self) -> None:
        """Release the lock and close the connection (idempotent)."""
        if self._conn is not None:
            try:
                self._conn.close()  # ends the session, which releases its advisory locks
            finally:
                self._conn = None
                self.held = False

    def __enter__(self) -> "CompletionLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def answer_json(status_code: int, body: dict[str, Any]) -> dict[str, Any]:
    """The stored form of an answer: ``{"status_code", "body"}`` (JSON-safe)."""
    return {"status_code": int(status_code), "body": json.loads(json.dumps(body, default=str))}


class UploadTooLargeError(UploadError):
    """The declared size is above ``settings.max_upload_bytes``."""

    code = "too_large"


@dataclasses.dataclass(frozen=True)
class Answer:
    """An answer to a completion. Attributes: status_code (HTTP); body (JSON object)."""

    status_code: int
    body: dict[str, Any]


class UploadService:
    """The upload steps that touch S3 and PostgreSQL together; used by the Serve app and ``jobs.janitor``.

    Bytes go to an S3 multipart upload; completion joins the parts and streams the object back to compute its
    SHA-256 (the bytes S3 really holds, not the ones the client meant to send). A new path's upload goes straight to
    ``<tenant>/<path>`` and is removed there when the digest does not match. A new version of an existing path goes
    to a staging key (:func:`staging_key`) and is copied to ``<tenant>/<path>`` only once verified, so a wrong
    upload never overwrites, and its clean-up never removes, the current version of a document (the copy is the
    price of that safety, paid by re-uploads only).

    Args:
        settings: services, ``max_upload_bytes``, ``upload_part_size``, ``upload_ttl_s``, ``upload_max_attempts``.
        objects: the S3 adapter (a seam for tests); by default one with a 300 s read timeout (a copy or a completion
            of a large object answers only when done).
        store: the state store; by default one on a new catalog pool.
    """

    def __init__(self, settings: Settings, *, objects: ObjectStore | None = None, store: UploadStore | None = None) -> None:
        self.settings = settings
        self.objects = objects if objects is not None else ObjectStore(settings, timeout_s=300.0)
        self.store = store if store is not None else UploadStore(settings)
        self.catalog = self.store.catalog

    def close(self) -> None:
        """Close the database pool."""
        self.store.close()

    # -- create --------------------------------------------------------------------------------------------------

    def prepare(
        self, tenant: str, path: str, size: int, *, sha256: str | None = None, content_type: str = "",
        part_size: int | None = None, on_conflict: str = "new_version",
    ) -> Upload:
        """Validate a new upload and plan its parts; nothing is stored or sent.

        Raises:
            InvalidPathError: the path or tenant breaks the rules of ``core.ids`` (the key is over 1024 bytes...).
            UploadTooLargeError: ``size`` is above ``max_upload_bytes``.
            ValueError: the part size is outside 5 MiB to 5 GiB, or ``on_conflict`` is unknown.
        """
        key = object_key(tenant, path)
        if size > self.settings.max_upload_bytes:
            raise UploadTooLargeError(f"size={size} is above the limit of {self.settings.max_upload_bytes} bytes")
        if on_conflict not in ("new_version", "reject"):
            raise ValueError(f"on_conflict={on_conflict!r} must be 'new_version' or 'reject'")
        chosen, _ = plan_parts(size, part_size, self.settings.upload_part_size)
        normalised = normalise_path(path)
        upload_id = str(uuid.uuid4())
        return Upload(
            upload_id=upload_id, tenant=tenant, path=normalised, object_key=key, s3_key=key,
            s3_upload_id="", size=size, sha256=sha256.lower() if sha256 else None,
            content_type=content_type or mimetypes.guess_type(normalised)[0] or "", part_size=chosen,
            on_conflict=on_conflict,
        )

    def start_multipart(self, upload: Upload) -> str:
        """Create the S3 multipart upload (none for an empty file: ``""``)."""
        if upload.size == 0:
            return ""
        return self.objects.create_multipart_upload(upload.s3_key, upload.content_type)

    def stage_if_needed(self, upload: Upload, s3_upload_id: str, latest: Version | None) -> tuple[Upload, str]:
        """Move the multipart upload to its staging key when the path already has a version.

        A new path's upload goes straight to ``<tenant>/<path>`` (no copy at completion); a new version of an
        existing path is staged, so that bytes failing their check never overwrite the current version.

        Returns:
            The upload and its S3 upload id, changed or not.
        """
        if latest is None or upload.size == 0 or upload.s3_key != upload.object_key:
            return upload, s3_upload_id
        self.discard_multipart(upload, s3_upload_id)
        staged = dataclasses.replace(upload, s3_key=staging_key(upload.upload_id))
        return staged, self.start_multipart(staged)

    def record(self, upload: Upload, s3_upload_id: str) -> Upload:
        """Store the new upload as ``pending``, expiring after ``upload_ttl_s``."""
        return self.store.insert(dataclasses.replace(upload, s3_upload_id=s3_upload_id), self.settings.upload_ttl_s)

    def discard_multipart(self, upload: Upload, s3_upload_id: str) -> None:
        """Abort a multipart upload that turned out not to be needed (best effort: the janitor sweeps leftovers)."""
        if not s3_upload_id:
            return
        try:
            self.objects.abort_multipart_upload(upload.s3_key, s3_upload_id)
        except Exception as exc:  # noqa: BLE001 - an orphan is swept by jobs.janitor
            logger.warning("could not abort unused multipart upload %s: %s", s3_upload_id, exc)

    # -- parts and status ----------------------------------------------------------------------------------------

    def store_part(self, upload: Upload, part_number: int, data: bytes | bytearray, md5_hex: str) -> UploadPart:
        """Send a verified part to S3 with its Content-MD5, check the ETag, then record it.

        Raises:
            UploadStateError: the upload is no longer pending (S3 or the catalog says so).
            PartIntegrityError: S3 refused the digest or answered another ETag; nothing was recorded.
        """
        content_md5 = base64.b64encode(bytes.fromhex(md5_hex)).decode()
        try:
            etag = self.objects.upload_part(upload.s3_key, upload.s3_upload_id, part_number, data, content_md5=content_md5)
        except NoSuchUploadError as exc:
            current = self.store.get(upload.upload_id)
            raise UploadStateError(current.status if current else "aborted", "the S3 multipart upload is gone") from exc
        except BadDigestError as exc:
            raise PartIntegrityError(f"S3 refused part {part_number}: its bytes did not match their MD5") from exc
        if etag.lower() != md5_hex:
            raise PartIntegrityError(f"S3 answered ETag {etag!r} for part {part_number}, not its MD5 {md5_hex}")
        part = UploadPart(part_number, len(data), md5_hex, etag)
        self.store.record_part(upload.upload_id, part)
        return part

    def describe(self, upload: Upload) -> dict[str, Any]:
        """What a client needs to resume or learn the outcome (the body of ``GET /v1/uploads/{id}``)."""
        parts: list[UploadPart] = []
        if upload.status == "completed":
            received, missing, received_bytes = list(range(1, upload.part_count + 1)), [], upload.size
        elif upload.status in FINAL_STATUSES:
            received, missing, received_bytes = [], [], 0
        else:
            parts = self.store.parts(upload.upload_id)
            have = {p.part_number for p in parts}
            received = sorted(have)
            missing = [n for n in range(1, upload.part_count + 1) if n not in have]
            received_bytes = sum(p.size for p in parts)
        body: dict[str, Any] = {
            "upload_id": upload.upload_id, "status": upload.status, "path": upload.path,
            "document_id": upload.document_id, "size": upload.size, "sha256": upload.sha256,
            "part_size": upload.part_size, "part_count": upload.part_count, "received_parts": received,
            "missing_parts": missing, "bytes_received": received_bytes,
            "parts": [{"part_number": p.part_number, "size": p.size, "etag": p.etag} for p in parts],
            "attempts": upload.attempts,
            "created_at": upload.created_at.isoformat() if upload.created_at else None,
            "expires_at": upload.expires_at.isoformat() if upload.expires_at else None,
        }
        if upload.last_error and upload.status != "completed":
            body["error"] = upload.last_error
        if upload.result is not None:
            body["result"] = upload.result.get("body")
        return body

    # -- complete ------------------------------------------------------------------------------------------------

    def complete(self, tenant: str | None, upload_id: str, *, wait_s: float = 10.0) -> Answer:
        """Complete an upload, or return the answer of the completion that already ended.

        Args:
            tenant: the caller (``None``: any, for the janitor). upload_id: the upload.
            wait_s: how long to wait for a completion in progress elsewhere before giving up.

        Returns:
            200 with ``document_id``, ``version``, ``sha256``, ``size``...; or the stored failure (422
            ``checksum_mismatch``, 409 ``conflict``, 409 ``upload_lost``, 409 ``upload_failed``).

        Raises:
            UploadNotFoundError, UploadStateError, MissingPartsError, CompletionInProgressError.
            ServiceUnavailableError: S3 or PostgreSQL failed; the upload stays ``completing`` and may be retried.
        """
        upload = self.store.get(upload_id, tenant)
        if upload is None:
            raise UploadNotFoundError(f"no upload {upload_id}")
        if upload.result is not None:
            return Answer(**upload.result)
        if upload.status not in ("pending", "completing"):
            raise UploadStateError(upload.status)
        with CompletionLock(self.settings, upload.upload_id) as lock:
            if not lock.acquire(wait_s):
                raise CompletionInProgressError("another completion of this upload is running; retry later")
            claimed = self.store.claim(upload.upload_id)
            if claimed.result is not None:
                return Answer(**claimed.result)
            if claimed.attempts > self.settings.upload_max_attempts:
                return self._give_up(claimed)
            return self._run_completion(claimed)

    def _run_completion(self, up: Upload) -> Answer:
        """The completion steps, each skipped when ``progress`` says an earlier attempt did it."""
        progress = dict(up.progress)
        try:
            if up.on_conflict == "reject" and "sha256" not in progress:
                latest = self.store.latest_version(up.tenant, up.path)
                if latest is not None:
                    return self._fail(up, 409, "conflict", f"{up.path!r} exists (version {latest.version}) and "
                                      "on_conflict is 'reject'", document_id=latest.document_id)
            if up.size == 0:
                if up.sha256 and up.sha256 != EMPTY_SHA256:
                    return self._fail(up, 422, "checksum_mismatch", "the declared SHA-256 is not that of 0 bytes",
                                      expected=up.sha256, actual=EMPTY_SHA256)
                sha, etag = EMPTY_SHA256, self.objects.put_bytes(up.object_key, b"", up.content_type or "application/octet-stream")
            else:
                if "sha256" not in progress:
                    failed = self._join_parts(up)
                    if failed is not None:
                        return failed
                    try:
                        sha, size = self.objects.sha256(up.s3_key)
                    except S3Error as exc:
                        if exc.code not in ("NoSuchKey", "NoSuchObject"):
                            raise
                        return self._fail(up, 409, "upload_lost", "the completed object is gone from S3")
                    if size != up.size:
                        return self._fail(up, 422, "size_mismatch", f"S3 holds {size} bytes, {up.size} were declared",
                                          ours=True)
                    if up.sha256 and sha != up.sha256:
                        return self._fail(up, 422, "checksum_mismatch", f"the declared SHA-256 is {up.sha256}, the "
                                          f"stored bytes hash to {sha}", ours=True, expected=up.sha256, actual=sha)
                    verified = {"sha256": sha, "size": size}
                    if up.direct:
                        verified["etag"] = self.objects.stat(up.s3_key).etag
                    self.store.save_progress(up.upload_id, **verified)
                    progress.update(verified)
                if not up.direct:
                    if not progress.get("copied"):
                        info = self.objects.copy(up.s3_key, up.object_key, content_type=up.content_type)
                        self.store.save_progress(up.upload_id, copied=True, etag=info.etag)
                        progress.update(copied=True, etag=info.etag)
                    self.objects.remove(up.s3_key)
                sha, etag = progress["sha256"], progress["etag"]
            registration = self.catalog.register_version(
                up.tenant, up.path, object_key=up.object_key, sha256=sha, size=up.size,
                content_type=up.content_type, etag=etag,
            )
            version = registration.version
            answer = answer_json(200, {
                "document_id": version.document_id, "version": version.version, "sha256": sha, "size": up.size,
                "path": up.path, "etag": etag, "deduplicated": not registration.created, "upload_id": up.upload_id,
            })
            event = (NewVersionEvent(up.tenant, version.document_id, version.version, up.path, up.upload_id)
                     if registration.created else None)
            self.store.finish(up.upload_id, answer, event)
            logger.info("upload %s completed: %s version %d", up.upload_id, version.document_id, version.version)
            return Answer(**answer)
        except ServiceUnavailableError as exc:
            with contextlib.suppress(Exception):
                self.store.note_error(up.upload_id, f"{exc.service} unavailable: {exc.detail}")
            raise

    def _join_parts(self, up: Upload) -> Answer | None:
        """CompleteMultipartUpload with the recorded parts; ``None`` when the object is there, else the failure."""
        parts = self.store.parts(up.upload_id)
        try:
            self.objects.complete_multipart_upload(up.s3_key, up.s3_upload_id, [(p.part_number, p.etag) for p in parts])
        except NoSuchUploadError:
            # AWS answers NoSuchUpload to a repeated completion whose first answer was lost: look for the object.
            try:
                info = self.objects.stat(up.s3_key)
            except KeyError:
                info = None
            if info is None or info.size != up.size:
                return self._fail(up, 409, "upload_lost", "the S3 multipart upload no longer exists")
            logger.info("upload %s: S3 had already completed it (%d bytes)", up.upload_id, info.size)
        except S3Error as exc:
            if exc.code not in ("InvalidPart", "InvalidPartOrder"):
                raise
            stale = self._stale_parts(up, parts)
            if not stale:
                raise
            self.store.forget_parts(up.upload_id, stale)
            self.store.reopen(up.upload_id)
            raise MissingPartsError(stale, []) from exc
        return None

    def _stale_parts(self, up: Upload, parts: list[UploadPart]) -> list[int]:
        """Recorded parts that S3 holds with another ETag, or not at all (a crash after a re-send)."""
        held = {(p.part_number, p.etag) for p in self.objects.list_parts(up.s3_key, up.s3_upload_id)}
        return [p.part_number for p in parts if (p.part_number, p.etag) not in held]

    def _fail(self, up: Upload, status_code: int, code: str, detail: str, *, ours: bool = False, **extra: Any) -> Answer:
        """End the upload as ``failed`` with this answer, after removing what it left in S3.

        Args:
            ours: the object at ``s3_key`` is known to hold this upload's bytes (joined, then refused).
        """
        self._clean_s3(up, ours=ours)
        answer = answer_json(status_code, {"error": code, "detail": detail, **extra})
        self.store.end(up.upload_id, "failed", f"{code}: {detail}", answer)
        logger.info("upload %s failed: %s: %s", up.upload_id, code, detail)
        return Answer(**answer)

    def _give_up(self, up: Upload) -> Answer:
        """After ``upload_max_attempts``: clean up and fail; finish instead when verified bytes are in place."""
        if up.progress.get("copied") or (up.direct and "sha256" in up.progress):
            return self._run_completion(up)
        reason = f"completion failed {up.attempts - 1} time(s); last error: {up.last_error or 'unknown'}"
        return self._fail(up, 409, "upload_failed", reason)

    def _clean_s3(self, up: Upload, *, ours: bool = False) -> None:
        """Abort the multipart upload and remove what it wrote (idempotent, best effort: the janitor sweeps).

        A staging object is always this upload's. The document's own key (a new path's upload goes there) is
        removed only when it surely holds this upload's bytes: ``ours``, or its ETag is the one S3 gives an object
        joined from this upload's parts; otherwise it may be another upload's version.
        """
        try:
            if up.s3_upload_id:
                self.objects.abort_multipart_upload(up.s3_key, up.s3_upload_id)
            if not up.size:
                return
            if ours or not up.direct:
                self.objects.remove(up.s3_key)
                return
            parts = self.store.parts(up.upload_id)
            if len(parts) != up.part_count:
                return
            try:
                info = self.objects.stat(up.s3_key)
            except KeyError:
                return
            if info.etag == multipart_etag(p.md5 for p in parts):
                self.objects.remove(up.s3_key)
        except Exception as exc:  # noqa: BLE001 - jobs.janitor sweeps leftovers of final uploads
            logger.warning("upload %s: S3 clean-up left for the janitor: %s", up.upload_id, exc)

    # -- abort, expire, sweep ------------------------------------------------------------------------------------

    def abort(self, tenant: str, upload_id: str) -> None:
        """Abort a pending upload: marked ``aborted``, part rows deleted, S3 multipart upload aborted.

        Raises:
            UploadNotFoundError, UploadStateError (completing, completed or failed).
        """
        if _uuid_or_none(upload_id) is None:
            raise UploadNotFoundError(f"no upload {upload_id}")
        upload = self.store.mark_aborted(upload_id, tenant)
        self._clean_s3(upload)

    def expire_due(self, limit: int = 1000) -> dict[str, int]:
        """Abort (in S3) and mark ``expired`` the pending uploads past ``expires_at``.

        Safe beside other janitors: each upload is taken with ``FOR UPDATE SKIP LOCKED``.

        Returns:
            ``{"expired": n, "expire_errors": n}``.
        """
        expired = errors = 0
        skip: list[str] = []
        while expired + errors < limit:
            with self.store.transaction() as conn:
                row = conn.execute(
                    "SELECT * FROM uploads WHERE status = 'pending' AND expires_at < now() "
                    "AND NOT (upload_id = ANY(%s::uuid[])) ORDER BY expires_at LIMIT 1 FOR UPDATE SKIP LOCKED",
                    (skip,),
                ).fetchone()
                if row is None:
                    break
                up = Upload.from_row(row)
                try:
                    if up.s3_upload_id:
                        self.objects.abort_multipart_upload(up.s3_key, up.s3_upload_id)
                except ServiceUnavailableError as exc:
                    logger.warning("upload %s: could not abort in S3, left for the next run: %s", up.upload_id, exc)
                    skip.append(up.upload_id)
                    errors += 1
                    continue
                detail = f"not completed within {self.settings.upload_ttl_s} s"
                answer = answer_json(409, {"error": "upload_expired", "detail": detail})
                conn.execute(
                    "UPDATE uploads SET status = 'expired', last_error = %s, result = %s, updated_at = now() "
                    "WHERE upload_id = %s",
                    (f"expired: {detail}", Jsonb(answer), up.upload_id),
                )
                conn.execute("DELETE FROM upload_parts WHERE upload_id = %s", (up.upload_id,))
            expired += 1
            logger.info("upload %s expired", up.upload_id)
        return {"expired": expired, "expire_errors": errors}

    def retry_stuck(self) -> dict[str, int]:
        """Retry uploads left ``completing`` by a completion that died; fail them after ``upload_max_attempts``.

        Returns:
            ``{"retried_completed": n, "retried_failed": n, "retry_errors": n, "busy": n}``.
        """
        counts = {"retried_completed": 0, "retried_failed": 0, "retry_errors": 0, "busy": 0}
        for upload_id in self.store.ids_with_status("completing"):
            with CompletionLock(self.settings, upload_id) as lock:
                if not lock.acquire(0.0):
                    counts["busy"] += 1
                    continue
                upload = self.store.get(upload_id)
                if upload is None or upload.status != "completing":
                    continue
                try:
                    if upload.attempts >= self.settings.upload_max_attempts:
                        answer = self._give_up(dataclasses.replace(upload, attempts=upload.attempts + 1))
                    else:
                        answer = self._run_completion(self.store.claim(upload_id))
                except (ServiceUnavailableError, UploadError, S3Error) as exc:
                    logger.warning("upload %s: retried completion failed: %s", upload_id, exc)
                    counts["retry_errors"] += 1
                    continue
                counts["retried_completed" if answer.status_code == 200 else "retried_failed"] += 1
        return counts

    def sweep(self, min_age_s: float) -> dict[str, int]:
        """Remove what no live upload owns: multipart uploads in the bucket, and staging objects.

        A leftover owned by a final upload goes at once; one owned by no upload only once older than ``min_age_s``
        (it may belong to an upload being created right now).

        Returns:
            ``{"orphan_multipart_aborted": n, "orphan_objects_removed": n}``.
        """
        now = datetime.now(timezone.utc)

        def old(when: datetime | None) -> bool:
            return when is not None and (now - when).total_seconds() >= min_age_s

        live = ("pending", "completing")
        aborted = removed = 0
        in_progress = self.objects.list_multipart_uploads("")  # the bucket is Sluice's: every upload is ours
        owners = self.store.statuses_by_s3_upload_id([m.upload_id for m in in_progress])
        for mp in in_progress:
            status = owners.get(mp.upload_id)
            if status in live or (status is None and not old(mp.initiated)):
                continue
            self.objects.abort_multipart_upload(mp.key, mp.upload_id)
            aborted += 1
        for info in self.objects.list_objects(STAGING_PREFIX):
            upload = self.store.get(info.key[len(STAGING_PREFIX):])
            if (upload is not None and upload.status in live) or (upload is None and not old(info.last_modified)):
                continue
            self.objects.remove(info.key)
            removed += 1
        return {"orphan_multipart_aborted": aborted, "orphan_objects_removed": removed}
