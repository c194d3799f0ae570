"""The Redis cache: query answers keyed by the index generation.

Every ingest (and, later, delete and restore) advances the collection's *index generation*; answers are cached under
a key that includes it, so a cached answer can never outlive the index it was computed from. Redis being down never
fails a search: reads and writes are skipped and logged (fail-open).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import redis

from core.settings import Settings

logger = logging.getLogger(__name__)

_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class Cache:
    """A small JSON cache and the index generation counter.

    Args:
        settings: ``redis_url``, ``qdrant_collection`` (namespaces the keys) and ``search_cache_ttl_s`` are used.
        timeout_s: socket connect and read timeout, seconds (kept short: the cache must never slow a search much).
    """

    def __init__(self, settings: Settings, *, timeout_s: float = 0.5) -> None:
        self.settings = settings
        self.prefix = f"sluice:{settings.qdrant_collection}"
        self.timeout_s = timeout_s
        self._client: redis.Redis | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    @property
    def client(self) -> redis.Redis:
        """The Redis client, created on first use."""
        if self._client is None:
            self._client = redis.Redis.from_url(
                self.settings.redis_url, socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s
            )
        return self._client

    def generation(self) -> int | None:
        """The current index generation, or ``None`` when Redis cannot be reached."""
        try:
            return int(self.client.get(f"{self.prefix}:generation") or 0)
        except _REDIS_ERRORS as exc:
            logger.warning("redis unavailable, cache bypassed: %s", exc)
            return None

    def bump_generation(self) -> int | None:
        """Advance the index generation (every cached answer becomes unreachable); ``None`` if Redis is down."""
        try:
            return int(self.client.incr(f"{self.prefix}:generation"))
        except _REDIS_ERRORS as exc:
            logger.warning("redis unavailable, index generation not advanced: %s", exc)
            return None

    def key(self, kind: str, generation: int, params: dict[str, Any]) -> str:
        """A cache key: ``sluice:<collection>:<kind>:<generation>:<sha256 of the canonical JSON params>``."""
        digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()
        return f"{self.prefix}:{kind}:{generation}:{digest}"

    def get_json(self, key: str) -> Any | None:
        """The cached value, or ``None`` when absent or Redis is down."""
        try:
            raw = self.client.get(key)
        except _REDIS_ERRORS as exc:
            logger.warning("redis unavailable, cache read skipped: %s", exc)
            return None
        return json.loads(raw) if raw else None

    def set_json(self, key: str, value: Any, ttl_s: int | None = None) -> None:
        """Cache ``value`` for ``ttl_s`` seconds (default ``search_cache_ttl_s``); skipped when Redis is down."""
        ttl = self.settings.search_cache_ttl_s if ttl_s is None else ttl_s
        if ttl <= 0:
            return
        try:
            self.client.set(key, json.dumps(value), ex=ttl)
        except _REDIS_ERRORS as exc:
            logger.warning("redis unavailable, cache write skipped: %s", exc)
