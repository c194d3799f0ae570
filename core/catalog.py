"""The PostgreSQL catalog: documents, their versions, dead letters and index models (psycopg 3, a connection pool).

Version life cycle (``document_versions.status``)::

    pending ──claim──▶ indexing ──commit──▶ indexed ──(newer committed, or restore)──▶ superseded
       │                  │  └──fail──▶ failed ──(--retry-failed)──▶ pending
       └──(newer head)──▶ superseded

``documents.latest_version`` is the version search shows (0: none); ``documents.head_version`` the newest content
(what the next ingest indexes). A delete keeps every row, sets ``deleted`` and shows nothing.

Schema changes are the numbered SQL files in ``core/migrations``, applied in order at start-up, each once, under a
transaction-scoped advisory lock so that concurrent starters do not race (PostgreSQL documentation, "Advisory Locks").
Connection failures are retried by ``core.retry`` and then raise ``ServiceUnavailableError("postgres", ...)``.
"""

from __future__ import annotations

import dataclasses
import logging
from importlib import resources
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from core.errors import SluiceError
from core.ids import document_id as make_document_id
from core.ids import normalise_path
from core.retry import call_with_retry
from core.settings import Settings
from core.types import Document, Version

logger = logging.getLogger(__name__)

#: Key of the advisory lock held while migrations run (an arbitrary, fixed 64-bit number).
MIGRATION_LOCK_KEY = 0x511CE_0001
_TRANSIENT = (psycopg.OperationalError, PoolTimeout)

_VERSION_COLUMNS = """
    v.document_id::text AS document_id, v.version, d.tenant, d.path, v.object_key, v.sha256, v.size,
    v.content_type, v.status, v.etag, v.chunk_count, v.error, v.created_at, v.written_count
"""
_DOCUMENT_COLUMNS = "document_id::text AS document_id, tenant, path, latest_version, deleted, head_version"


class CatalogConflict(SluiceError):
    """A catalog change that the current state forbids (e.g. restoring a version whose points are gone).

    Attributes:
        code: a stable machine-readable code (``not_found``, ``deleted``, ``not_restorable``).
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class Registration:
    """The outcome of :meth:`Catalog.register_version`.

    Attributes:
        version: the version now latest for the path.
        created: ``False`` when the bytes equal the latest version's (nothing new was recorded).
    """

    version: Version
    created: bool


@dataclasses.dataclass(frozen=True)
class Claim:
    """A version claimed for indexing by :meth:`Catalog.claim_versions`.

    Attributes:
        version: the version, now ``indexing``.
        previous_status: its status before the claim: ``pending`` for a first attempt; ``indexing`` when a run that
            died left it (its points may be partly written), or another status under ``force``.
    """

    version: Version
    previous_status: str

    @property
    def first_attempt(self) -> bool:
        """Whether no point of this version can exist yet (so nothing stale needs deleting)."""
        return self.previous_status == "pending"


def _version(row: dict[str, Any]) -> Version:
    return Version(**row)


class Catalog:
    """Reads and writes the catalog tables.

    The pool opens lazily on first use (so a ``Catalog`` pickles to Ray workers cheaply) and applies the
    migrations once per process.

    Args:
        settings: ``postgres_dsn`` is used.
        max_connections: the pool's maximum size.
        connect_timeout_s: how long to wait for a connection before retrying, seconds.
    """

    def __init__(self, settings: Settings, *, max_connections: int = 4, connect_timeout_s: float = 5.0) -> None:
        if not settings.postgres_dsn:
            raise ValueError("settings.postgres_dsn is empty: set SLUICE_POSTGRES_DSN")
        if max_connections < 1:
            raise ValueError(f"max_connections={max_connections} must be at least 1")
        self.settings = settings
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        self._pool: ConnectionPool | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pool"] = None
        return state

    # -- connections -------------------------------------------------------------------------------------------

    @property
    def pool(self) -> ConnectionPool:
        """The connection pool, opened (and the schema migrated) on first use.

        Raises:
            ServiceUnavailableError: PostgreSQL cannot be reached.
        """
        if self._pool is None:

            def open_pool() -> ConnectionPool:
                pool = ConnectionPool(
                    self.settings.postgres_dsn,
                    min_size=1,
                    max_size=self.max_connections,
                    kwargs={
                        "row_factory": dict_row,
                        "connect_timeout": max(1, int(self.connect_timeout_s)),
                        # Every statement has a time limit, so a stuck server fails the call instead of hanging it.
                        "options": f"-c statement_timeout={int(self.settings.remote_call_timeout_s * 1000)}",
                    },
                    timeout=self.connect_timeout_s,
                    open=False,
                )
                try:
                    pool.open(wait=True, timeout=self.connect_timeout_s)
                except BaseException:
                    pool.close()
                    raise
                return pool

            pool = call_with_retry("postgres", open_pool, transient=_TRANSIENT)
            self._pool = pool
            self.migrate()
        return self._pool

    def close(self) -> None:
        """Close the pool (idempotent)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _run(self, fn, *args: Any) -> Any:
        """Run ``fn(conn, *args)`` in one transaction, retrying connection failures."""

        def attempt():
            with self.pool.connection() as conn, conn.transaction():
                return fn(conn, *args)

        return call_with_retry("postgres", attempt, transient=_TRANSIENT)

    def migrate(self) -> list[str]:
        """Apply the migrations not applied yet, in file-name order.

        Returns:
            The names of the migrations applied by this call.
        """
        files = sorted(
            (f for f in resources.files("core.migrations").iterdir() if f.name.endswith(".sql")), key=lambda f: f.name
        )

        def apply(conn: psycopg.Connection) -> list[str]:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["name"] for r in conn.execute("SELECT name FROM schema_migrations").fetchall()}
            applied = []
            for f in files:
                if f.name in done:
                    continue
                conn.execute(f.read_text(encoding="utf-8"))
                conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (f.name,))
                applied.append(f.name)
            return applied

        assert self._pool is not None
        applied = self._run(apply)
        if applied:
            logger.info("applied migrations %s", applied)
        return applied

    def check(self) -> None:
        """Fail fast when PostgreSQL cannot be reached (raises ``ServiceUnavailableError``)."""
        self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    # -- documents and versions --------------------------------------------------------------------------------

    def register_version(
        self, tenant: str, path: str, *, object_key: str, sha256: str, size: int, content_type: str = "", etag: str = ""
    ) -> Registration:
        """Record new content of a path as a new ``pending`` head version, unless it equals the head version.

        The document row is locked (``SELECT ... FOR UPDATE``) so concurrent registrations of one path number their
        versions without gaps or duplicates; a retry after a lost commit finds the version already there. Numbers
        only grow: a path deleted and uploaded again continues after its last version. What search shows
        (``latest_version``) does not change until the new version is committed by an ingest.

        Args:
            tenant, path: the document (the path is normalised: NFC and NFD spellings are one document).
            object_key: where the bytes are. sha256: hex digest of the bytes. size: bytes.
            content_type: MIME type, ``""`` if unknown. etag: the object's S3 ETag.

        Raises:
            InvalidPathError: a bad path.
        """
        path = normalise_path(path)
        doc_id = make_document_id(tenant, path)

        def register(conn: psycopg.Connection) -> Registration:
            conn.execute(
                "INSERT INTO documents (document_id, tenant, path) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (doc_id, tenant, path),
            )
            doc = conn.execute(
                "SELECT head_version, deleted FROM documents WHERE document_id = %s FOR UPDATE", (doc_id,)
            ).fetchone()
            head = doc["head_version"]
            if head and not doc["deleted"]:
                row = conn.execute(
                    f"SELECT {_VERSION_COLUMNS} FROM document_versions v JOIN documents d USING (document_id) "
                    "WHERE v.document_id = %s AND v.version = %s",
                    (doc_id, head),
                ).fetchone()
                if row["sha256"] == sha256:
                    if etag and row["etag"] != etag or row["object_key"] != object_key:
                        conn.execute(
                            "UPDATE document_versions SET etag = %s, object_key = %s, updated_at = now() "
                            "WHERE document_id = %s AND version = %s",
                            (etag or row["etag"], object_key, doc_id, head),
                        )
                        row = {**row, "etag": etag or row["etag"], "object_key": object_key}
                    return Registration(_version(row), created=False)
            top = conn.execute(
                "SELECT coalesce(max(version), 0) AS n FROM document_versions WHERE document_id = %s", (doc_id,)
            ).fetchone()["n"]
            new = top + 1
            conn.execute(
                "INSERT INTO document_versions (document_id, version, object_key, sha256, size, content_type, etag) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (doc_id, new, object_key, sha256, size, content_type, etag),
            )
            # Older versions nobody indexed yet are never indexed now: only the newest content is.
            conn.execute(
                "UPDATE document_versions SET status = 'superseded', written_count = NULL, updated_at = now() "
                "WHERE document_id = %s AND version < %s AND status IN ('pending', 'indexing')",
                (doc_id, new),
            )
            conn.execute(
                "UPDATE documents SET head_version = %s, deleted = false, deleted_at = NULL, updated_at = now() "
                "WHERE document_id = %s",
                (new, doc_id),
            )
            return Registration(
                Version(document_id=doc_id, version=new, tenant=tenant, path=path, object_key=object_key,
                        sha256=sha256, size=size, content_type=content_type, etag=etag),
                created=True,
            )

        return self._run(register)

    def latest_versions(self, tenant: str, prefix: str = "") -> dict[str, Version]:
        """The head version (newest content) of every live document of ``tenant`` under ``prefix``, by path."""

        def select(conn: psycopg.Connection) -> dict[str, Version]:
            rows = conn.execute(
                f"SELECT {_VERSION_COLUMNS} FROM documents d JOIN document_versions v "
                "ON v.document_id = d.document_id AND v.version = d.head_version "
                "WHERE d.tenant = %s AND starts_with(d.path, %s) AND NOT d.deleted",
                (tenant, prefix),
            ).fetchall()
            return {r["path"]: _version(r) for r in rows}

        return self._run(select)

    def rolled_back(self, tenant: str, prefix: str = "") -> dict[str, list[tuple[str, int, Any]]]:
        """Bytes deliberately retired, by path: ``(etag, size, not_after)``.

        Versions newer than the head (rolled back by a restore; ``not_after`` is ``None``), and the head version of
        a deleted document (``not_after`` is the time of the delete). ``--scan`` skips an object that still holds
        such bytes, unless it was written after ``not_after`` (then it is a re-upload and makes a new version).
        """

        def select(conn: psycopg.Connection) -> dict[str, list[tuple[str, int, Any]]]:
            rows = conn.execute(
                "SELECT d.path, v.etag, v.size, CASE WHEN d.deleted THEN d.deleted_at END AS not_after "
                "FROM documents d JOIN document_versions v ON v.document_id = d.document_id "
                "AND (v.version > d.head_version OR (d.deleted AND v.version = d.head_version)) "
                "WHERE d.tenant = %s AND starts_with(d.path, %s) AND v.etag <> ''",
                (tenant, prefix),
            ).fetchall()
            out: dict[str, list[tuple[str, int, Any]]] = {}
            for r in rows:
                out.setdefault(r["path"], []).append((r["etag"], int(r["size"]), r["not_after"]))
            return out

        return self._run(select)

    def claim_versions(self, tenant: str | None, prefix: str = "", *, force: bool = False) -> list[Claim]:
        """Mark the versions this run must index as ``indexing`` and return them with their previous status.

        Claimed: the head version of each live document (of ``tenant``, or of every tenant when ``None``) under
        ``prefix`` that is ``pending``, or ``indexing`` (left so by a run that died: it is resumed), or, with
        ``force``, ``indexed`` (re-embedded in place) or ``failed``.
        """
        statuses = ["pending", "indexing"] + (["indexed", "failed"] if force else [])

        def claim(conn: psycopg.Connection) -> list[Claim]:
            rows = conn.execute(
                "WITH target AS ("
                "  SELECT v.document_id, v.version, v.status AS previous_status FROM document_versions v "
                "  JOIN documents d ON v.document_id = d.document_id AND v.version = d.head_version "
                "  WHERE NOT d.deleted AND (%s::text IS NULL OR d.tenant = %s) AND starts_with(d.path, %s) "
                "  AND v.status = ANY(%s) FOR UPDATE OF v) "
                "UPDATE document_versions v SET status = 'indexing', error = NULL, updated_at = now(), "
                "  written_count = CASE WHEN t.previous_status = 'indexing' THEN v.written_count END "
                f"FROM target t, documents d WHERE v.document_id = t.document_id AND v.version = t.version "
                f"AND d.document_id = v.document_id RETURNING {_VERSION_COLUMNS}, t.previous_status",
                (tenant, tenant, prefix, statuses),
            ).fetchall()
            claims = [Claim(_version({k: r[k] for k in r if k != "previous_status"}), r["previous_status"]) for r in rows]
            return sorted(claims, key=lambda c: (c.version.tenant, c.version.path))

        return self._run(claim)

    def shown_versions(self, document_ids: list[str]) -> dict[str, int]:
        """``latest_version`` (the version search shows, 0 for none) of each given document."""
        if not document_ids:
            return {}
        rows = self._run(
            lambda conn: conn.execute(
                "SELECT document_id::text AS document_id, latest_version FROM documents WHERE document_id = ANY(%s::uuid[])",
                (document_ids,),
            ).fetchall()
        )
        return {r["document_id"]: int(r["latest_version"]) for r in rows}

    def mark_written(self, outcomes: list[tuple[str, int, int]]) -> None:
        """Record that every point of these ``(document_id, version, chunk_count)`` is written (not committed yet)."""
        if not outcomes:
            return

        def mark(conn: psycopg.Connection) -> None:
            with conn.cursor() as cur:
                cur.executemany(
                    "UPDATE document_versions SET written_count = %s, updated_at = now() "
                    "WHERE document_id = %s AND version = %s AND status = 'indexing'",
                    [(count, doc, version) for doc, version, count in outcomes],
                )

        self._run(mark)

    def commit_versions(self, outcomes: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
        """Make written versions the ones search shows, in one transaction.

        For each ``(document_id, version, chunk_count)`` whose version is still ``indexing``, the head, and whose
        document was not deleted meanwhile: the version becomes ``indexed`` with its chunk count and
        ``documents.latest_version``; the version shown before becomes ``superseded`` (its points stay, with
        ``is_latest`` false, while it is retained).

        Returns:
            The outcomes that were committed (the others lost a race with a delete or a newer version; their points
            must be removed by the caller).
        """
        if not outcomes:
            return []

        def commit(conn: psycopg.Connection) -> list[tuple[str, int, int]]:
            done = []
            for doc, version, count in outcomes:
                row = conn.execute(
                    "UPDATE document_versions v SET status = 'indexed', chunk_count = %s, written_count = NULL, "
                    "error = NULL, indexed_at = now(), updated_at = now() FROM documents d "
                    "WHERE v.document_id = %s AND v.version = %s AND v.status = 'indexing' "
                    "AND d.document_id = v.document_id AND d.head_version = v.version AND NOT d.deleted "
                    "RETURNING v.version",
                    (count, doc, version),
                ).fetchone()
                if row is None:
                    continue
                conn.execute(
                    "UPDATE document_versions SET status = 'superseded', updated_at = now() "
                    "WHERE document_id = %s AND version <> %s AND status = 'indexed'",
                    (doc, version),
                )
                conn.execute(
                    "UPDATE documents SET latest_version = %s, updated_at = now() WHERE document_id = %s",
                    (version, doc),
                )
                done.append((doc, version, count))
            return done

        return self._run(commit)

    def mark_indexed(self, document_id: str, version: int, chunk_count: int) -> None:
        """Commit one version (see :meth:`commit_versions`)."""
        self.commit_versions([(document_id, version, chunk_count)])

    def mark_indexed_many(self, outcomes: list[tuple[str, int, int]]) -> None:
        """Commit many versions (see :meth:`commit_versions`)."""
        self.commit_versions(outcomes)

    def mark_failed(self, document_id: str, version: int, *, stage: str, reason: str, detail: str = "") -> None:
        """Record a version as ``failed`` and add its ``dead_letters`` row; what search shows does not change.

        Args:
            stage: where it failed (``extract``, ``embed``, ``index``). reason: a stable reason code.
            detail: human-readable text (truncated to 2,000 characters).
        """
        detail = detail[:2000]

        def mark(conn: psycopg.Connection) -> None:
            conn.execute(
                "UPDATE document_versions SET status = 'failed', error = %s, written_count = NULL, updated_at = now() "
                "WHERE document_id = %s AND version = %s",
                (f"{reason}: {detail}" if detail else reason, document_id, version),
            )
            conn.execute(
                "INSERT INTO dead_letters (document_id, version, stage, reason, detail) VALUES (%s, %s, %s, %s, %s)",
                (document_id, version, stage, reason, detail),
            )

        self._run(mark)

    def retained_versions(self, document_id: str, retention: int) -> list[int]:
        """The versions of a document whose points are kept: the shown one and the newest other indexed ones.

        Args:
            retention: how many versions keep points, the shown one included (``settings.version_retention``).

        Returns:
            Version numbers, newest first; empty for a deleted document.
        """
        if retention < 1:
            raise ValueError(f"retention={retention} must be at least 1")

        def select(conn: psycopg.Connection) -> list[int]:
            doc = conn.execute("SELECT latest_version, deleted FROM documents WHERE document_id = %s", (document_id,)).fetchone()
            if doc is None or doc["deleted"]:
                return []
            rows = conn.execute(
                "SELECT version FROM document_versions WHERE document_id = %s AND chunk_count IS NOT NULL "
                "AND status IN ('indexed', 'superseded') AND version <> %s ORDER BY version DESC LIMIT %s",
                (document_id, doc["latest_version"], retention - (1 if doc["latest_version"] else 0)),
            ).fetchall()
            shown = [doc["latest_version"]] if doc["latest_version"] else []
            return shown + [r["version"] for r in rows]

        return self._run(select)

    def forget_points(self, document_id: str, versions: list[int]) -> None:
        """Record that these versions no longer have points (``chunk_count`` cleared; they cannot be restored)."""
        if versions:
            self._run(
                lambda conn: conn.execute(
                    "UPDATE document_versions SET chunk_count = NULL, updated_at = now() "
                    "WHERE document_id = %s AND version = ANY(%s) AND status = 'superseded'",
                    (document_id, versions),
                )
            )

    def restore_version(self, document_id: str, version: int) -> Document:
        """Make a retained older version the one search shows (and the head) again, in the catalog.

        Newer versions become ``superseded`` (those not indexed yet are never indexed). The caller flips the
        points' ``is_latest`` flags (``core.lifecycle.restore_version`` does both).

        Raises:
            CatalogConflict: ``not_found`` (no such document or version), ``deleted``, or ``not_restorable`` (the
                version was never indexed or its points are no longer retained).
        """

        def restore(conn: psycopg.Connection) -> Document:
            doc = conn.execute(f"SELECT {_DOCUMENT_COLUMNS} FROM documents WHERE document_id = %s FOR UPDATE",
                               (document_id,)).fetchone()
            if doc is None:
                raise CatalogConflict("not_found", f"no document {document_id}")
            if doc["deleted"]:
                raise CatalogConflict("deleted", f"document {document_id} was deleted")
            row = conn.execute(
                "SELECT status, chunk_count FROM document_versions WHERE document_id = %s AND version = %s",
                (document_id, version),
            ).fetchone()
            if row is None:
                raise CatalogConflict("not_found", f"document {document_id} has no version {version}")
            if row["status"] not in ("indexed", "superseded") or row["chunk_count"] is None:
                raise CatalogConflict("not_restorable", f"version {version} is {row['status']} and has no retained points")
            conn.execute(
                "UPDATE document_versions SET status = CASE WHEN version = %s THEN 'indexed' ELSE 'superseded' END, "
                "written_count = NULL, updated_at = now() WHERE document_id = %s "
                "AND (version = %s OR status IN ('indexed', 'pending', 'indexing'))",
                (version, document_id, version),
            )
            updated = conn.execute(
                f"UPDATE documents SET latest_version = %s, head_version = %s, updated_at = now() "
                f"WHERE document_id = %s RETURNING {_DOCUMENT_COLUMNS}",
                (version, version, document_id),
            ).fetchone()
            return Document(**updated)

        return self._run(restore)

    def mark_deleted(self, document_id: str) -> Document | None:
        """Mark a document deleted (rows kept): search shows nothing; versions not indexed yet never will be.

        Idempotent. Returns the document as it was before, or ``None`` when there is no such document.
        """

        def delete(conn: psycopg.Connection) -> Document | None:
            doc = conn.execute(f"SELECT {_DOCUMENT_COLUMNS} FROM documents WHERE document_id = %s FOR UPDATE",
                               (document_id,)).fetchone()
            if doc is None:
                return None
            conn.execute(
                "UPDATE documents SET deleted = true, deleted_at = coalesce(deleted_at, now()), latest_version = 0, "
                "updated_at = now() WHERE document_id = %s",
                (document_id,),
            )
            conn.execute(
                "UPDATE document_versions SET status = 'superseded', chunk_count = NULL, written_count = NULL, "
                "updated_at = now() WHERE document_id = %s AND status IN ('pending', 'indexing', 'indexed', 'superseded')",
                (document_id,),
            )
            return Document(**doc)

        return self._run(delete)

    def reset_to_pending(self, document_id: str, version: int) -> bool:
        """Set a live document's head version back to ``pending`` so the next ingest re-indexes it (reconcile)."""
        row = self._run(
            lambda conn: conn.execute(
                "UPDATE document_versions v SET status = 'pending', written_count = NULL, updated_at = now() "
                "FROM documents d WHERE v.document_id = %s AND v.version = %s AND d.document_id = v.document_id "
                "AND d.head_version = v.version AND NOT d.deleted RETURNING v.version",
                (document_id, version),
            ).fetchone()
        )
        return row is not None

    def get_document(self, document_id: str) -> Document | None:
        """One document, or ``None``."""
        row = self._run(
            lambda conn: conn.execute(f"SELECT {_DOCUMENT_COLUMNS} FROM documents WHERE document_id = %s",
                                      (document_id,)).fetchone()
        )
        return Document(**row) if row else None

    def list_versions(self, document_id: str) -> list[Version]:
        """Every version of a document, oldest first."""
        rows = self._run(
            lambda conn: conn.execute(
                f"SELECT {_VERSION_COLUMNS} FROM document_versions v JOIN documents d USING (document_id) "
                "WHERE v.document_id = %s ORDER BY v.version",
                (document_id,),
            ).fetchall()
        )
        return [_version(r) for r in rows]

    def documents(self, tenant: str | None, prefix: str = "", *, include_deleted: bool = True) -> list[Document]:
        """Every document of ``tenant`` (every tenant when ``None``) whose path starts with ``prefix``."""
        rows = self._run(
            lambda conn: conn.execute(
                f"SELECT {_DOCUMENT_COLUMNS} FROM documents WHERE (%s::text IS NULL OR tenant = %s) "
                "AND starts_with(path, %s) AND (%s OR NOT deleted) ORDER BY tenant, path",
                (tenant, tenant, prefix, include_deleted),
            ).fetchall()
        )
        return [Document(**r) for r in rows]

    def all_versions(self, tenant: str | None, prefix: str = "") -> list[Version]:
        """Every version of every document in scope (for reconciliation), by document then version."""
        rows = self._run(
            lambda conn: conn.execute(
                f"SELECT {_VERSION_COLUMNS} FROM document_versions v JOIN documents d USING (document_id) "
                "WHERE (%s::text IS NULL OR d.tenant = %s) AND starts_with(d.path, %s) ORDER BY v.document_id, v.version",
                (tenant, tenant, prefix),
            ).fetchall()
        )
        return [_version(r) for r in rows]

    def count_documents(self, tenant: str | None, prefix: str = "") -> int:
        """Live documents of ``tenant`` (every tenant when ``None``) whose path starts with ``prefix``."""
        row = self._run(
            lambda conn: conn.execute(
                "SELECT count(*) AS n FROM documents WHERE NOT deleted AND head_version > 0 "
                "AND (%s::text IS NULL OR tenant = %s) AND starts_with(path, %s)",
                (tenant, tenant, prefix),
            ).fetchone()
        )
        return int(row["n"])

    # -- dead letters ------------------------------------------------------------------------------------------

    def dead_letters(
        self, document_id: str | None = None, *, tenant: str | None = None, include_replayed: bool = True, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Dead-letter rows, newest first: of one document, of one tenant, or all (at most ``limit``)."""
        return self._run(
            lambda conn: conn.execute(
                "SELECT l.id, l.document_id::text AS document_id, d.path, l.version, l.stage, l.reason, l.detail, "
                "l.created_at, l.replayed_at FROM dead_letters l JOIN documents d USING (document_id) "
                "WHERE (%s::uuid IS NULL OR l.document_id = %s::uuid) AND (%s::text IS NULL OR d.tenant = %s) "
                "AND (%s OR l.replayed_at IS NULL) ORDER BY l.id DESC LIMIT %s",
                (document_id, document_id, tenant, tenant, include_replayed, limit),
            ).fetchall()
        )

    def replay_dead_letters(self, tenant: str | None, prefix: str = "") -> int:
        """Set the failed head versions with an open dead letter back to ``pending``; mark those letters replayed.

        Letters of versions that are no longer the head (newer content came, or the document was deleted) are
        marked replayed too: there is nothing left to retry for them.

        Returns:
            How many versions were set back to ``pending``.
        """

        def replay(conn: psycopg.Connection) -> int:
            rows = conn.execute(
                "UPDATE dead_letters l SET replayed_at = now() FROM documents d "
                "WHERE l.document_id = d.document_id AND l.replayed_at IS NULL "
                "AND (%s::text IS NULL OR d.tenant = %s) AND starts_with(d.path, %s) "
                "RETURNING l.document_id::text AS document_id, l.version",
                (tenant, tenant, prefix),
            ).fetchall()
            pending = 0
            for key in {(r["document_id"], r["version"]) for r in rows}:
                row = conn.execute(
                    "UPDATE document_versions v SET status = 'pending', error = NULL, updated_at = now() "
                    "FROM documents d WHERE v.document_id = %s AND v.version = %s AND v.status = 'failed' "
                    "AND d.document_id = v.document_id AND d.head_version = v.version AND NOT d.deleted "
                    "RETURNING v.version",
                    key,
                ).fetchone()
                pending += row is not None
            return pending

        return self._run(replay)

    # -- index models ------------------------------------------------------------------------------------------

    def index_model(self, collection: str, vector: str) -> dict[str, Any] | None:
        """The model recorded for a collection's named vector: ``{"model", "dimension"}``, or ``None``."""
        return self._run(
            lambda conn: conn.execute(
                "SELECT model, dimension FROM index_models WHERE collection = %s AND vector = %s", (collection, vector)
            ).fetchone()
        )

    def record_index_model(self, collection: str, vector: str, model: str, dimension: int) -> None:
        """Record (or replace) the model a collection's named vector is built with."""
        self._run(
            lambda conn: conn.execute(
                "INSERT INTO index_models (collection, vector, model, dimension) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (collection, vector) DO UPDATE SET model = EXCLUDED.model, "
                "dimension = EXCLUDED.dimension, created_at = now()",
                (collection, vector, model, dimension),
            )
        )
