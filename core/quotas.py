"""What a tenant may use: request rates per key and per tenant (Redis), bytes stored and uploads open (the catalog)
(README, "Security", "Limits").

* :class:`RateLimiter`: fixed one-second windows in Redis, one counter per key and one per tenant
  (``sluice:rate:key:<tenant>:<subject>:<second>``, ``sluice:rate:tenant:<tenant>:<second>``, ``INCR`` then ``EXPIRE``, one round trip). Past
  ``rate_limit_key_rps`` or ``rate_limit_tenant_rps`` a request is refused until the second ends. Redis being down
  never refuses a request (fail-open, logged once per interval, like the search cache).
* :class:`TenantUsage` (mixed into :class:`core.catalog.Catalog`): a tenant's bytes stored (the newest version of
  each document it has not deleted, plus what its open uploads declared) and its open uploads, checked when an upload
  is created against ``max_tenant_bytes`` and ``max_open_uploads``. Two uploads created at the same instant may both
  pass a check that only one of them would: the limits are exact to within the uploads being created at once.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import redis

from core.settings import Settings

logger = logging.getLogger(__name__)

_REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
#: Seconds the limiter leaves Redis alone after a failure.
RETRY_AFTER_S = 5.0


@dataclasses.dataclass(frozen=True)
class RateRefusal:
    """Why a request is refused: the limit (``key`` or ``tenant``), its rate, and the seconds until it may retry."""

    limit: str
    rps: int
    retry_after_s: int


class RateLimiter:
    """Requests per second per API key (or token subject) and per tenant, counted in Redis.

    Args:
        settings: ``redis_url``, ``rate_limit_key_rps`` and ``rate_limit_tenant_rps`` (0: no limit).
    """

    def __init__(self, settings: Settings, *, timeout_s: float = 0.5) -> None:
        self.key_rps = settings.rate_limit_key_rps
        self.tenant_rps = settings.rate_limit_tenant_rps
        self.redis_url = settings.redis_url
        self.timeout_s = timeout_s
        self._client: redis.Redis | None = None
        self._down_until = 0.0

    @property
    def enabled(self) -> bool:
        return bool(self.key_rps or self.tenant_rps)

    def check(self, tenant: str, subject: str) -> RateRefusal | None:
        """Count one request of ``subject`` in ``tenant``; the refusal when it is over a limit, else ``None``."""
        if not self.enabled or time.monotonic() < self._down_until:
            return None
        now = time.time()
        second = int(now)
        counters = [(name, rps, f"sluice:rate:{name}:{who}:{second}")
                    for name, rps, who in (("key", self.key_rps, f"{tenant}:{subject}"), ("tenant", self.tenant_rps, tenant))
                    if rps]
        try:
            if self._client is None:
                self._client = redis.Redis.from_url(self.redis_url, socket_timeout=self.timeout_s,
                                                    socket_connect_timeout=self.timeout_s)
            pipe = self._client.pipeline(transaction=False)
            for _, _, key in counters:
                pipe.incr(key)
                pipe.expire(key, 2)
            counts = pipe.execute()[::2]
        except _REDIS_ERRORS as exc:
            self._down_until = time.monotonic() + RETRY_AFTER_S
            logger.warning("redis unavailable: rate limits not applied for %.0f s: %s", RETRY_AFTER_S, exc)
            return None
        for (name, rps, _), count in zip(counters, counts):
            if int(count) > rps:
                return RateRefusal(name, rps, 1)
        return None


@dataclasses.dataclass(frozen=True)
class Usage:
    """A tenant's use of storage: ``bytes_stored`` (newest version of each live document), ``bytes_reserved`` (what
    its open uploads declared), ``documents`` (live ones) and ``uploads_open`` (``pending`` or ``completing``)."""

    bytes_stored: int
    bytes_reserved: int
    documents: int
    uploads_open: int


class TenantUsage:
    """The catalog method on a tenant's usage, as a method of :class:`Catalog`."""

    def tenant_usage(self, tenant: str) -> Usage:
        """``tenant``'s :class:`Usage`, now."""

        def read(conn) -> Usage:
            stored = conn.execute(
                "SELECT count(*) AS documents, coalesce(sum(v.size), 0) AS bytes FROM documents d "
                "JOIN document_versions v ON v.document_id = d.document_id AND v.version = d.head_version "
                "WHERE d.tenant = %s AND NOT d.deleted", (tenant,)).fetchone()
            uploads = conn.execute(
                "SELECT count(*) AS open, coalesce(sum(size), 0) AS bytes FROM uploads "
                "WHERE tenant = %s AND status IN ('pending', 'completing')", (tenant,)).fetchone()
            return Usage(int(stored["bytes"]), int(uploads["bytes"]), int(stored["documents"]), int(uploads["open"]))

        return self._run(read)
