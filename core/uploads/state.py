"""Upload state in PostgreSQL: :class:`UploadStore`, the SQL on ``uploads`` and ``upload_parts``.

A part row is written only after S3 accepted the part, in a transaction that first takes a ``FOR SHARE`` lock on the
upload row and checks that it is still ``pending`` (so an abort or an expiry, which take ``FOR UPDATE``, and a part
record never interleave). The first answer to a completion is stored (``result``) and returned to every later call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import PoolTimeout

from core.catalog import Catalog
from core.events import NewVersionEvent, notify_new_version
from core.ids import document_id as make_document_id
from core.retry import call_with_retry
from core.settings import Settings
from core.types import Version
from core.uploads.errors import MissingPartsError, UploadNotFoundError, UploadStateError
from core.uploads.model import FINAL_STATUSES, Upload, UploadPart

_TRANSIENT = (psycopg.OperationalError, PoolTimeout)


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
                "content_type, part_size, on_conflict, metadata, transfer, expires_at) VALUES (%s, %s, %s, %s, %s, %s, "
                "%s, %s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s)) ON CONFLICT (upload_id) DO UPDATE SET "
                "updated_at = now() RETURNING *",
                (upload.upload_id, upload.tenant, upload.path, upload.object_key, upload.s3_key,
                 upload.s3_upload_id or None, upload.size, upload.sha256, upload.content_type, upload.part_size,
                 upload.on_conflict, Jsonb(upload.metadata) if upload.metadata is not None else None,
                 upload.transfer, ttl_s),
            ).fetchone()
        )
        return Upload.from_row(row)

    def record_part(self, upload_id: str, part: UploadPart) -> None:
        """Record a part S3 accepted, replacing an earlier one of that number.

        Raises:
            UploadNotFoundError: no such upload. UploadStateError: it is no longer ``pending``.
        """

        def record(conn: psycopg.Connection) -> None:
            self._check_pending(conn, upload_id, f"part {part.part_number} was not recorded")
            self._upsert_parts(conn, upload_id, [part])

        self._run(record)

    def record_digests(self, upload_id: str, digests: dict[int, str]) -> None:
        """Record the MD5 the client declared for each part it is given a URL for (a part signed again: replaced).

        Raises:
            UploadNotFoundError: no such upload. UploadStateError: it is no longer ``pending``.
        """

        def record(conn: psycopg.Connection) -> None:
            self._check_pending(conn, upload_id, "no part URL was signed")
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO upload_part_digests (upload_id, part_number, md5) VALUES (%s, %s, %s) "
                    "ON CONFLICT (upload_id, part_number) DO UPDATE SET md5 = EXCLUDED.md5, signed_at = now()",
                    [(upload_id, n, md5) for n, md5 in sorted(digests.items())],
                )

        self._run(record)

    def digests(self, upload_id: str) -> dict[int, str]:
        """``{part_number: md5}`` the client declared for a direct upload's parts."""
        rows = self._run(
            lambda conn: conn.execute(
                "SELECT part_number, md5 FROM upload_part_digests WHERE upload_id = %s", (upload_id,)
            ).fetchall()
        )
        return {r["part_number"]: r["md5"] for r in rows}

    def replace_parts(self, upload_id: str, parts: list[UploadPart]) -> None:
        """Make ``parts`` the upload's recorded parts (a direct upload's: those S3 holds as declared), and only them.

        Raises:
            UploadNotFoundError: no such upload. UploadStateError: it is no longer ``pending``.
        """

        def record(conn: psycopg.Connection) -> None:
            self._check_pending(conn, upload_id, "its parts were not recorded")
            conn.execute("DELETE FROM upload_parts WHERE upload_id = %s", (upload_id,))
            self._upsert_parts(conn, upload_id, parts)

        self._run(record)

    @staticmethod
    def _upsert_parts(conn: psycopg.Connection, upload_id: str, parts: list[UploadPart]) -> None:
        """Insert part records, replacing those of the same numbers."""
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO upload_parts (upload_id, part_number, size, md5, etag) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (upload_id, part_number) DO UPDATE SET size = EXCLUDED.size, md5 = EXCLUDED.md5, "
                "etag = EXCLUDED.etag, created_at = now()",
                [(upload_id, p.part_number, p.size, p.md5, p.etag) for p in parts],
            )

    @staticmethod
    def drop_parts(conn: psycopg.Connection, upload_id: str) -> None:
        """Delete an upload's part records and declared part digests (it reached a final status)."""
        conn.execute("DELETE FROM upload_parts WHERE upload_id = %s", (upload_id,))
        conn.execute("DELETE FROM upload_part_digests WHERE upload_id = %s", (upload_id,))

    @staticmethod
    def _check_pending(conn: psycopg.Connection, upload_id: str, consequence: str) -> None:
        row = conn.execute("SELECT status FROM uploads WHERE upload_id = %s FOR SHARE", (upload_id,)).fetchone()
        if row is None:
            raise UploadNotFoundError(f"no upload {upload_id}")
        if row["status"] != "pending":
            raise UploadStateError(row["status"], f"the upload is {row['status']}; {consequence}")

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
        self._run(lambda conn: self.finish_in(conn, upload_id, answer, event))

    @staticmethod
    def finish_in(conn: psycopg.Connection, upload_id: str, answer: dict[str, Any], event: NewVersionEvent | None) -> None:
        """:meth:`finish` inside the caller's transaction (the promotion's, which also registered the version).

        The event is a ``pg_notify`` of that transaction, so it is delivered exactly when the version and the answer
        commit: a completion that dies before the commit leaves neither, and its retry registers and notifies again.
        """
        conn.execute(
            "UPDATE uploads SET status = 'completed', result = %s, last_error = NULL, updated_at = now() "
            "WHERE upload_id = %s",
            (Jsonb(answer), upload_id),
        )
        UploadStore.drop_parts(conn, upload_id)
        if event is not None:
            notify_new_version(conn, event)

    def end(self, upload_id: str, status: str, reason: str, answer: dict[str, Any] | None) -> None:
        """Move to a final status other than ``completed`` with its reason and answer; drop its part rows."""
        if status not in FINAL_STATUSES - {"completed"}:
            raise ValueError(f"status={status!r} must be one of failed, aborted, expired")

        def end(conn: psycopg.Connection) -> None:
            conn.execute(
                "UPDATE uploads SET status = %s, last_error = %s, result = %s, updated_at = now() WHERE upload_id = %s",
                (status, reason[:2000], Jsonb(answer) if answer is not None else None, upload_id),
            )
            self.drop_parts(conn, upload_id)

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
            self.drop_parts(conn, upload_id)
            return upload

        return self._run(abort)
