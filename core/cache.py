"""The Redis cache: query embeddings, whole search answers, and the index generation that keeps answers fresh.

Three kinds of keys, all under ``sluice:``:

* ``sluice:<collection>:generation`` and ``sluice:<collection>:generation:<tenant>``: the *index generation* of the
  collection and of each tenant, integers that a change advances (:meth:`Cache.bump_generation`): an ingest, delete,
  restore or metadata change advances the generation of the tenants it changed, a repair of unknown scope the
  collection's. A tenant's generation is the pair (:meth:`Cache.tenant_generation`), so one tenant's delete leaves
  every other tenant's cached answers in place.
* ``sluice:<collection>:search:<generation>:<sha256 of the parameters>``: a whole answer, keyed by the tenant, every
  request parameter and the tenant's generation it was computed under. Once that generation moves, no request can
  reach the older answers (they expire after ``search_cache_ttl_s``), so a stale answer is never served.
* ``sluice:emb:<sha256 of the model>:<sha256 of the text>``: a query embedding (raw ``float32`` bytes). It depends on
  the model and the text only, so it outlives generations (:data:`EMBEDDING_TTL_S`).

Redis being down never fails a search (fail-open): reads miss, writes are skipped, and the first failure is logged
at WARNING. After a failure the cache stays away from Redis for :data:`RETRY_AFTER_S` seconds, so an unreachable
Redis costs one connect timeout per interval instead of one per call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import redis

from core.settings import Settings

logger = logging.getLogger(__name__)

_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
#: Seconds a query embedding stays cached (it depends only on the model and the text).
EMBEDDING_TTL_S = 24 * 3600
#: Seconds the cache leaves Redis alone after a connection failure.
RETRY_AFTER_S = 5.0


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Cache:
    """JSON answers, query embeddings and the index generation counter, in Redis; thread-safe, fail-open.

    Args:
        settings: ``redis_url``, ``qdrant_collection`` (namespaces the answer keys) and ``search_cache_ttl_s``.
        timeout_s: socket connect and read timeout, seconds (kept short: the cache must never slow a search much).
        retry_after_s: seconds to skip Redis after a connection failure.
    """

    def __init__(self, settings: Settings, *, timeout_s: float = 0.5, retry_after_s: float = RETRY_AFTER_S) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s={timeout_s} must be positive")
        if retry_after_s < 0:
            raise ValueError(f"retry_after_s={retry_after_s} must be 0 or more")
        self.settings = settings
        self.prefix = f"sluice:{settings.qdrant_collection}"
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self._client: redis.Redis | None = None
        self._down_until = 0.0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_client"] = None
        state["_down_until"] = 0.0
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def client(self) -> redis.Redis:
        """The Redis client (a thread-safe connection pool), created on first use."""
        if self._client is None:
            self._client = redis.Redis.from_url(
                self.settings.redis_url, socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s
            )
        return self._client

    @property
    def available(self) -> bool:
        """``False`` while the cache is skipping Redis after a failure."""
        return time.monotonic() >= self._down_until

    def _call(self, what: str, fn, default: Any) -> Any:
        """Run ``fn(client)``; on a Redis failure log it, skip Redis for a while and return ``default``."""
        if not self.available:
            return default
        try:
            result = fn(self.client)
        except _REDIS_ERRORS as exc:
            with self._lock:
                first = self.available
                self._down_until = time.monotonic() + self.retry_after_s
            if first:
                logger.warning("redis unavailable (%s skipped; cache bypassed for %.0f s): %s", what, self.retry_after_s, exc)
            return default
        return result

    # --- the index generation ----------------------------------------------------------------------------------

    def generation(self) -> int | None:
        """The current index generation, or ``None`` when Redis cannot be reached (answers are then not cached)."""
        raw = self._call("generation read", lambda c: c.get(f"{self.prefix}:generation") or 0, None)
        return None if raw is None else int(raw)

    def tenant_generation(self, tenant: str) -> str | None:
        """``<collection generation>.<tenant generation>``, or ``None`` when Redis cannot be reached."""
        raw = self._call("generation read", lambda c: c.mget(f"{self.prefix}:generation",
                                                             f"{self.prefix}:generation:{tenant}"), None)
        return None if raw is None else ".".join(str(int(v or 0)) for v in raw)

    def bump_generation(self, tenant: str | None = None) -> int | None:
        """Advance the index generation of ``tenant`` (``None``: of the collection, so of every tenant): the cached
        answers it covers become unreachable. ``None`` if Redis is down.

        Called after every change to the index (ingest, delete, restore, metadata). Never skipped by the retry
        interval: a missed bump would leave stale answers reachable, so it always tries Redis once.
        """
        key = f"{self.prefix}:generation" + (f":{tenant}" if tenant is not None else "")
        try:
            return int(self.client.incr(key))
        except _REDIS_ERRORS as exc:
            logger.warning("redis unavailable, index generation not advanced: %s", exc)
            return None

    # --- whole answers -----------------------------------------------------------------------------------------

    def key(self, kind: str, generation: int | str, params: dict[str, Any]) -> str:
        """A cache key: ``sluice:<collection>:<kind>:<generation>:<sha256 of the canonical JSON params>``."""
        digest = _digest(json.dumps(params, sort_keys=True, default=str))
        return f"{self.prefix}:{kind}:{generation}:{digest}"

    def get_json(self, key: str) -> Any | None:
        """The cached value, or ``None`` when absent or Redis is down."""
        raw = self._call("read", lambda c: c.get(key), None)
        return json.loads(raw) if raw else None

    def set_json(self, key: str, value: Any, ttl_s: int | None = None) -> None:
        """Cache ``value`` for ``ttl_s`` seconds (default ``search_cache_ttl_s``; 0 disables); skipped when Redis is down."""
        ttl = self.settings.search_cache_ttl_s if ttl_s is None else ttl_s
        if ttl > 0:
            self._call("write", lambda c: c.set(key, json.dumps(value), ex=ttl), None)

    # --- query embeddings --------------------------------------------------------------------------------------

    @staticmethod
    def embedding_key(model: str, text: str) -> str:
        """``sluice:emb:<sha256(model)[:16]>:<sha256(text)>``: one query embedding of one model."""
        return f"sluice:emb:{_digest(model)[:16]}:{_digest(text)}"

    def get_embeddings(self, model: str, texts: Sequence[str]) -> list[np.ndarray | None]:
        """The cached embeddings of ``texts`` under ``model`` (one ``MGET``).

        Returns:
            One entry per text: a ``float32`` vector of shape ``(dim,)``, or ``None`` when not cached (every entry
            is ``None`` when Redis is down).
        """
        if not texts:
            return []
        keys = [self.embedding_key(model, t) for t in texts]
        raws = self._call("embedding read", lambda c: c.mget(keys), None) or [None] * len(texts)
        return [np.frombuffer(raw, dtype=np.float32).copy() if raw else None for raw in raws]

    def set_embeddings(self, model: str, texts: Sequence[str], vectors: np.ndarray | Sequence[np.ndarray],
                       ttl_s: int = EMBEDDING_TTL_S) -> None:
        """Cache query embeddings (``float32``, one row per text) in one pipeline; skipped when Redis is down."""
        if not texts or ttl_s <= 0:
            return

        def write(client: redis.Redis) -> None:
            pipe = client.pipeline(transaction=False)
            for text, vector in zip(texts, vectors):
                pipe.set(self.embedding_key(model, text), np.asarray(vector, dtype=np.float32).tobytes(), ex=ttl_s)
            pipe.execute()

        self._call("embedding write", write, None)
