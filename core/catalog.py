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

The methods of :class:`Catalog` are grouped by concept in mixin modules: the version life cycle in
``core.version_lifecycle``, dead letters in ``core.dead_letters``, index models in ``core.index_models``,
stage attempts at documents whose worker may die in ``core.document_attempts``, API keys in ``core.api_keys``,
the audit log in ``core.audit``, a tenant's usage in ``core.quotas``; the
records they return (:class:`CatalogConflict`, :class:`Registration`, :class:`Claim`) in ``core.catalog_records``,
re-exported here. This module holds the connections, the migrations and the read-only queries.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from core.api_keys import ApiKeys
from core.audit import AuditLog
from core.quotas import TenantUsage
from core.catalog_records import _DOCUMENT_COLUMNS, _VERSION_COLUMNS, CatalogConflict, Claim, Registration, _version
from core.dead_letters import DeadLetters
from core.errors import ConfigurationError
from core.document_attempts import DocumentAttempts
from core.index_models import IndexModels
from core.retry import call_with_retry
from core.settings import Settings
from core.types import Document, Version
from core.version_lifecycle import VersionLifecycle

__all__ = ["MIGRATION_LOCK_KEY", "Catalog", "CatalogConflict", "Claim", "Registration"]

logger = logging.getLogger(__name__)

#: Key of the advisory lock held while migrations run (an arbitrary, fixed 64-bit number).
MIGRATION_LOCK_KEY = 0x511CE_0001
_TRANSIENT = (psycopg.OperationalError, PoolTimeout)


class Catalog(VersionLifecycle, DeadLetters, IndexModels, DocumentAttempts, ApiKeys, AuditLog,
              TenantUsage):
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
        #: The migrations this process applied when it opened the pool.
        self.applied_migrations: list[str] = []

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
            if self.settings.migrate_on_start:
                self.applied_migrations = self.migrate()
            else:
                self.check_schema()
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

    @staticmethod
    def _migration_files() -> list:
        return sorted((f for f in resources.files("core.migrations").iterdir() if f.name.endswith(".sql")),
                      key=lambda f: f.name)

    def check_schema(self) -> None:
        """Check that every migration is applied (``migrate_on_start=false``: the schema is the operator's step).

        Raises:
            ConfigurationError: migrations are missing; the message names them and the command that applies them.
        """
        def applied(conn: psycopg.Connection) -> set[str]:
            exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL AS present").fetchone()
            if not exists["present"]:
                return set()
            return {r["name"] for r in conn.execute("SELECT name FROM schema_migrations").fetchall()}

        missing = [f.name for f in self._migration_files() if f.name not in self._run(applied)]
        if missing:
            raise ConfigurationError(
                f"the catalog lacks migrations {', '.join(missing)}: run `python -m jobs.migrate` with the schema "
                "owner's DSN (SLUICE_MIGRATION_DSN), or set SLUICE_MIGRATE_ON_START=true")

    def migrate(self) -> list[str]:
        """Apply the migrations not applied yet, in file-name order.

        Returns:
            The names of the migrations applied by this call.
        """
        files = self._migration_files()

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

    # -- documents and versions (reads; the life cycle is in core.version_lifecycle) ---------------------------

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

    def pending_versions(self) -> int:
        """Head versions of live documents, every tenant, waiting for an ingest (``pending``): the backlog."""
        row = self._run(
            lambda conn: conn.execute(
                "SELECT count(*) AS n FROM document_versions v "
                "JOIN documents d ON v.document_id = d.document_id AND v.version = d.head_version "
                "WHERE NOT d.deleted AND v.status = 'pending'"
            ).fetchone()
        )
        return int(row["n"])
