"""Liveness and readiness: ``GET /v1/healthz`` and ``GET /v1/readyz`` (README, "Health checks").

``healthz`` answers as soon as the process serves HTTP and touches nothing else, so a liveness probe never restarts a
replica because a dependency is down. ``readyz`` asks each service the product needs (PostgreSQL, Redis, S3 and the
vector store) at once, each bounded by :data:`CHECK_TIMEOUT_S`, and answers 503 naming the ones that did not answer;
a load balancer then sends no traffic to a replica that could not serve it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from core.cache import Cache
from core.catalog import Catalog
from core.errors import ServiceUnavailableError
from core.objects import ObjectStore
from core.settings import Settings
from core.vectorstore import VectorStore
from serve.http import public_detail

logger = logging.getLogger(__name__)

#: Seconds one service may take to answer before it counts as down.
CHECK_TIMEOUT_S = 3.0


class Readiness:
    """The readiness checks of one replica, over the clients it already holds.

    Args:
        settings: the replica's settings. catalog, store: its catalog and vector store (made when not given).
    """

    def __init__(self, settings: Settings, *, catalog: Catalog | None = None, store: VectorStore | None = None) -> None:
        self.catalog = catalog or Catalog(settings)
        self.store = store or VectorStore(settings)
        self.cache = Cache(settings)
        self.objects = ObjectStore(settings)

    def _ping_redis(self) -> None:
        try:
            self.cache.client.ping()
        except Exception as exc:  # noqa: BLE001 - any failure of the client means Redis is not there
            raise ServiceUnavailableError("redis", f"{type(exc).__name__}: {exc}") from exc

    def checks(self) -> dict[str, Callable[[], None]]:
        """Each service's check: returns when it answers, raises when it does not."""
        return {"postgres": self.catalog.check, "redis": self._ping_redis, "s3": self.objects.check,
                "vector_store": self.store.check}

    async def run(self) -> tuple[bool, dict[str, Any]]:
        """Run every check at once.

        Returns:
            ``(ready, body)``: ``body`` is ``{"status": "ready"|"not_ready", "checks": {name: {"status": "up"|"down",
            "latency_ms", "detail"?}}}``.
        """
        names, checks = zip(*self.checks().items())
        results = await asyncio.gather(*(_timed(check) for check in checks))
        found = dict(zip(names, results))
        ready = all(r["status"] == "up" for r in found.values())
        return ready, {"status": "ready" if ready else "not_ready", "checks": found}


async def _timed(check: Callable[[], None]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.to_thread(check), CHECK_TIMEOUT_S)
        outcome: dict[str, Any] = {"status": "up"}
    except asyncio.TimeoutError:
        outcome = {"status": "down", "detail": f"no answer within {CHECK_TIMEOUT_S:.0f} s"}
    except Exception as exc:  # noqa: BLE001 - the probe reports every failure, it never raises
        # Open to anyone: the detail names the failure, never the service's host, address or credentials.
        logger.warning("readiness check failed: %s", exc)
        outcome = {"status": "down", "detail": public_detail(str(getattr(exc, "detail", None) or exc)[:300])}
    outcome["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return outcome
