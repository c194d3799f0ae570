"""The PostgreSQL catalog: documents, their versions, and dead letters (psycopg 3 with a connection pool).

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

from core.errors import ServiceUnavailableError
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
    v.content_type, v.status, v.etag, v.chunk_count, v.error, v.created_at
"""


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
                    kwargs={"row_factory": dict_row, "connect_timeout": max(1, int(self.connect_timeout_s))},
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
        """Record new content of a path as a new ``pending`` version, unless it equals the latest version.

        The document row is locked (``SELECT ... FOR UPDATE``) so concurrent registrations of one path number their
        versions without gaps or duplicates; a retry after a lost commit finds the version already there.

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
                "SELECT latest_version, deleted FROM documents WHERE document_id = %s FOR UPDATE", (doc_id,)
            ).fetchone()
            latest = doc["latest_version"]
            if latest and not doc["deleted"]:
                row = conn.execute(
                    f"SELECT {_VERSION_COLUMNS} FROM document_versions v JOIN documents d USING (document_id) "
                    "WHERE v.document_id = %s AND v.version = %s",
                    (doc_id, latest),
                ).fetchone()
                if row["sha256"] == sha256:
                    if etag and row["etag"] != etag or row["object_key"] != object_key:
                        conn.execute(
                            "UPDATE document_versions SET etag = %s, object_key = %s, updated_at = now() "
                            "WHERE document_id = %s AND version = %s",
                            (etag or row["etag"], object_key, doc_id, latest),
                        )
                        row = {**row, "etag": etag or row["etag"], "object_key": object_key}
                    return Registration(_version(row), created=False)
            new = latest + 1
            conn.execute(
                "INSERT INTO document_versions (document_id, version, object_key, sha256, size, content_type, etag) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (doc_id, new, object_key, sha256, size, content_type, etag),
            )
            conn.execute(
                "UPDATE documents SET latest_version = %s, deleted = false, updated_at = now() WHERE document_id = %s",
                (new, doc_id),
            )
            return Registration(
                Version(
                    document_id=doc_id,
                    version=new,
                    tenant=tenant,
                    path=path,
                    object_key=object_key,
                    sha256=sha256,
                    size=size,
                    content_type=content_type,
                    etag=etag,
                ),
                created=True,
            )

        return self._run(register)

    def latest_versions(self, tenant: str, prefix: str = "") -> dict[str, Version]:
        """The latest version of every live document of ``tenant`` whose path starts with ``prefix``, by path."""

        def select(conn: psycopg.Connection) -> dict[str, Version]:
            rows = conn.execute(
                f"SELECT {_VERSION_COLUMNS} FROM documents d JOIN document_versions v "
                "ON v.document_id = d.document_id AND v.version = d.latest_version "
                "WHERE d.tenant = %s AND starts_with(d.path, %s) AND NOT d.deleted",
                (tenant, prefix),
            ).fetchall()
            return {r["path"]: _version(r) for r in rows}

        return self._run(select)

    def claim_versions(self, tenant: str | None, prefix: str = "", *, force: bool = False) -> list[Claim]:
        """Mark the versions this run must index as ``indexing`` and return them with their previous status.

        Claimed: the latest version of each live document (of ``tenant``, or of every tenant when ``None``) under
        ``prefix`` that is ``pending``, or ``indexing`` (left so by a run that died: it is resumed), or any status
        with ``force``. Older versions still ``pending`` are marked ``superseded``: only the latest content is
        indexed.
        """
        statuses = ["pending", "indexing"] + (["indexed", "failed", "superseded"] if force else [])

        def claim(conn: psycopg.Connection) -> list[Claim]:
            conn.execute(
                "UPDATE document_versions v SET status = 'superseded', updated_at = now() FROM documents d "
                "WHERE v.document_id = d.document_id AND v.version < d.latest_version AND v.status = 'pending' "
                "AND (%s::text IS NULL OR d.tenant = %s) AND starts_with(d.path, %s)",
                (tenant, tenant, prefix),
            )
            rows = conn.execute(
                "WITH target AS ("
                "  SELECT v.document_id, v.version, v.status AS previous_status FROM document_versions v "
                "  JOIN documents d ON v.document_id = d.document_id AND v.version = d.latest_version "
                "  WHERE NOT d.deleted AND (%s::text IS NULL OR d.tenant = %s) AND starts_with(d.path, %s) "
                "  AND v.status = ANY(%s) FOR UPDATE OF v) "
                "UPDATE document_versions v SET status = 'indexing', error = NULL, updated_at = now() "
                f"FROM target t, documents d WHERE v.document_id = t.document_id AND v.version = t.version "
                f"AND d.document_id = v.document_id RETURNING {_VERSION_COLUMNS}, t.previous_status",
                (tenant, tenant, prefix, statuses),
            ).fetchall()
            claims = [Claim(_version({k: r[k] for k in r if k != "previous_status"}), r["previous_status"]) for r in rows]
            return sorted(claims, key=lambda c: (c.version.tenant, c.version.path))

        return self._run(claim)

    def mark_indexed(self, document_id: str, version: int, chunk_count: int) -> None:
        """Record a version as ``indexed`` with its chunk count; older versions become ``superseded``."""
        self.mark_indexed_many([(document_id, version, chunk_count)])

    def mark_indexed_many(self, outcomes: list[tuple[str, int, int]]) -> None:
        """:meth:`mark_indexed` for many ``(document_id, version, chunk_count)`` at once, in one transaction."""
        if not outcomes:
            return

        def mark(conn: psycopg.Connection) -> None:
            with conn.cursor() as cur:
                cur.executemany(
                    "UPDATE document_versions SET status = 'indexed', chunk_count = %s, error = NULL, "
                    "indexed_at = now(), updated_at = now() WHERE document_id = %s AND version = %s",
                    [(count, doc, version) for doc, version, count in outcomes],
                )
                older = [(doc, version) for doc, version, _ in outcomes if version > 1]
                if older:
                    cur.executemany(
                        "UPDATE document_versions SET status = 'superseded', updated_at = now() "
                        "WHERE document_id = %s AND version < %s AND status <> 'superseded'",
                        older,
                    )

        self._run(mark)

    def mark_failed(self, document_id: str, version: int, *, stage: str, reason: str, detail: str = "") -> None:
        """Record a version as ``failed`` and add its ``dead_letters`` row.

        Args:
            stage: where it failed (``extract``, ``embed``, ``index``). reason: a stable reason code.
            detail: human-readable text (truncated to 2,000 characters).
        """
        detail = detail[:2000]

        def mark(conn: psycopg.Connection) -> None:
            conn.execute(
                "UPDATE document_versions SET status = 'failed', error = %s, updated_at = now() "
                "WHERE document_id = %s AND version = %s",
                (f"{reason}: {detail}" if detail else reason, document_id, version),
            )
            conn.execute(
                "INSERT INTO dead_letters (document_id, version, stage, reason, detail) VALUES (%s, %s, %s, %s, %s)",
                (document_id, version, stage, reason, detail),
            )

        self._run(mark)

    def get_document(self, document_id: str) -> Document | None:
        """One document, or ``None``."""
        row = self._run(
            lambda conn: conn.execute(
                "SELECT document_id::text AS document_id, tenant, path, latest_version, deleted FROM documents "
                "WHERE document_id = %s",
                (document_id,),
            ).fetchone()
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

    def count_documents(self, tenant: str | None, prefix: str = "") -> int:
        """Live documents of ``tenant`` (every tenant when ``None``) whose path starts with ``prefix``."""
        row = self._run(
            lambda conn: conn.execute(
                "SELECT count(*) AS n FROM documents WHERE NOT deleted AND latest_version > 0 "
                "AND (%s::text IS NULL OR tenant = %s) AND starts_with(path, %s)",
                (tenant, tenant, prefix),
            ).fetchone()
        )
        return int(row["n"])

    def dead_letters(self, document_id: str | None = None) -> list[dict[str, Any]]:
        """Dead-letter rows, newest first; of one document when ``document_id`` is given."""
        return self._run(
            lambda conn: conn.execute(
                "SELECT id, document_id::text AS document_id, version, stage, reason, detail, created_at, replayed_at "
                "FROM dead_letters WHERE (%s::uuid IS NULL OR document_id = %s::uuid) ORDER BY id DESC",
                (document_id, document_id),
            ).fetchall()
        )
