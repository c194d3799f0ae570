"""Tombstones: the search-side fence that keeps a deleted document out of every answer (:class:`Tombstones`).

A delete marks the catalog first and removes the points afterwards (``core.lifecycle.delete_document``); when the
vector store fails in between, the points stay until ``jobs.reconcile`` removes them. Search must not show them
meanwhile, whatever else fails, so the engine checks every fused list (fresh or cached) against the catalog, in one
query for the hits' document ids: a hit is dropped when its document is deleted, or when the document shows no
version (``latest_version == 0``: deleted and uploaded again but not indexed yet, whose old points a failed
delete may have left).

The catalog is the authority. So that search does not stop when PostgreSQL is briefly unreachable, each delete
also records a tombstone in Redis, ``sluice:<collection>:tombstones:<tenant>`` (a hash: document id to the head
version at the time of the delete; version numbers only grow, so a later upload of the path is not hidden), read
when the catalog cannot be asked. When neither answers, the search fails (``ServiceUnavailableError``) rather
than risk showing a deleted document.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

import psycopg
from psycopg_pool import PoolTimeout

from core.cache import Cache
from core.catalog import Catalog
from core.errors import ServiceUnavailableError
from core.settings import Settings

logger = logging.getLogger(__name__)

#: Seconds the fence leaves an unreachable catalog alone (reading Redis instead) before asking it again.
RETRY_AFTER_S = 5.0
_PG_ERRORS = (psycopg.OperationalError, PoolTimeout, ServiceUnavailableError)


class Tombstones:
    """Which search hits belong to deleted documents; and the Redis record of deletes that backs it up.

    Thread-safe (the catalog pool and the Redis client are).

    Args:
        settings: ``postgres_dsn`` (empty: only Redis is asked), ``redis_url``, ``qdrant_collection``.
        catalog: the catalog to ask; by default a small pool with a short connect timeout (search must not wait
            long on an unreachable database).
        cache: the Redis cache whose client and fail-open rules to use.
        retry_after_s: seconds to skip the catalog after it failed.
    """

    def __init__(self, settings: Settings, *, catalog: Catalog | None = None, cache: Cache | None = None,
                 retry_after_s: float = RETRY_AFTER_S) -> None:
        self.settings = settings
        self._catalog = catalog
        self.cache = cache if cache is not None else Cache(settings)
        self.retry_after_s = retry_after_s
        self._down_until = 0.0
        self._lock = threading.Lock()

    @property
    def catalog(self) -> Catalog | None:
        """The catalog, created on first use (``None`` when no PostgreSQL is configured)."""
        if self._catalog is None and self.settings.postgres_dsn:
            with self._lock:
                if self._catalog is None:
                    self._catalog = Catalog(self.settings, max_connections=4, connect_timeout_s=1.0)
        return self._catalog

    def key(self, tenant: str) -> str:
        """The Redis hash of ``tenant``'s tombstones."""
        return f"{self.cache.prefix}:tombstones:{tenant}"

    def record(self, tenant: str, document_id: str, version: int) -> bool:
        """Remember in Redis that ``document_id`` was deleted when its newest version was ``version``.

        Best effort (the catalog already says so; this only backs up the catalog for searches made while it is
        unreachable). Returns ``False`` when Redis is down.
        """
        done = self.cache._call("tombstone write", lambda c: c.hset(self.key(tenant), document_id, int(version)), None)
        return done is not None

    def hidden(self, tenant: str, hits: Iterable[tuple[str, int]]) -> set[tuple[str, int]]:
        """The ``(document_id, version)`` of ``hits`` that search must drop (one catalog query, or one Redis read).

        Raises:
            ServiceUnavailableError: neither the catalog nor Redis answered (``postgres``).
        """
        hits = {(str(d), int(v)) for d, v in hits if d}
        if not hits:
            return set()
        ids = sorted({d for d, _ in hits})
        failure = "no catalog is configured"
        if self.catalog is not None and time.monotonic() >= self._down_until:
            try:
                shown = self._from_catalog(ids)
            except _PG_ERRORS as exc:
                with self._lock:
                    self._down_until = time.monotonic() + self.retry_after_s
                failure = f"{type(exc).__name__}: {exc}"
                logger.warning("catalog unavailable for the delete fence (Redis tombstones used for %.0f s): %s",
                               self.retry_after_s, exc)
            else:
                return {(d, v) for d, v in hits if d in shown and shown[d] == 0}
        stones = self.cache._call("tombstone read", lambda c: c.hmget(self.key(tenant), ids), None)
        if stones is None:
            raise ServiceUnavailableError("postgres", f"search cannot tell deleted documents apart: the catalog "
                                          f"({failure}) and Redis are unreachable")
        upto = {d: int(raw) for d, raw in zip(ids, stones) if raw is not None}
        return {(d, v) for d, v in hits if d in upto and v <= upto[d]}

    def _from_catalog(self, ids: list[str]) -> dict[str, int]:
        """``{document_id: version shown}`` of the known documents among ``ids`` (0 when deleted or none shown)."""
        with self.catalog.pool.connection() as conn:
            rows = conn.execute(
                "SELECT document_id::text AS document_id, CASE WHEN deleted THEN 0 ELSE latest_version END AS shown "
                "FROM documents WHERE document_id = ANY(%s::uuid[])",
                (ids,),
            ).fetchall()
        return {r["document_id"]: int(r["shown"]) for r in rows}

    def close(self) -> None:
        """Close the catalog pool this object opened (idempotent)."""
        if self._catalog is not None:
            self._catalog.close()
