"""The owner of the embedded store: one named, detached Ray actor per storage folder, and the proxy that calls it.

Qdrant Edge lets one process open a shard folder at a time, so one actor holds the :class:`EdgeBackend` of a folder
and every reader and writer (ingest workers, search replicas, jobs) calls it through :class:`EmbeddedBackend`, one
actor call per operation (a batch of queries is one call). The actor is threaded: queries run side by side, writes
one at a time, and the HNSW build runs in its own thread. It is found by name or created (``get_if_exists``),
detached so that it outlives the job that made it, restarted by Ray when its process dies (Edge then replays its
WAL: every write acknowledged before the crash is there), and takes no CPU slot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qdrant_client import models

from core.errors import ServiceUnavailableError

#: Calls the actor serves at once (queries of every search replica, writes of every ingest worker).
ACTOR_CONCURRENCY = 32


class _EdgeOwner:
    """The body of the embedded-store actor."""

    def __init__(self, path: str) -> None:
        from core.vectorstore.edge import EdgeBackend

        self.backend = EdgeBackend(path)

    def call(self, method: str, args: tuple, kwargs: dict) -> Any:
        return getattr(self.backend, method)(*args, **kwargs)

    def pid(self) -> int:
        import os

        return os.getpid()


def embedded_actor_name(path: Path | str) -> str:
    """The Ray actor name of the embedded store of a storage folder (one actor per folder)."""
    digest = hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:12]
    return f"sluice-qdrant-{digest}"


def pack(point: Any) -> Any:
    """A point as ``(id, {name: vector | (indices, values)}, payload)``: a tenth of a ``PointStruct``'s pickle."""
    if not isinstance(point, models.PointStruct):
        return point
    vectors = point.vector if isinstance(point.vector, dict) else {}
    return (str(point.id),
            {name: (list(v.indices), list(v.values)) if isinstance(v, models.SparseVector) else v
             for name, v in vectors.items()},
            point.payload or {})


class EmbeddedBackend:
    """The backend interface of :class:`EdgeBackend`, forwarded to the actor that owns the folder.

    Args:
        path: the storage folder. namespace: the Ray namespace of the actor.
        timeout_s: the limit of one call, seconds (a call never hangs).
        ray_address: passed to ``ray.init`` when Ray is not initialised yet.
    """

    def __init__(self, path: Path | str, *, namespace: str = "sluice", timeout_s: float = 300.0,
                 ray_address: str = "") -> None:
        import ray

        if not ray.is_initialized():
            ray.init(address=ray_address or None, namespace=namespace, log_to_driver=False)
        self.path = str(Path(path).resolve())
        self.timeout_s = timeout_s
        owner = ray.remote(_EdgeOwner).options(
            name=embedded_actor_name(self.path),
            namespace=namespace,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            max_task_retries=3,
            max_concurrency=ACTOR_CONCURRENCY,
            num_cpus=0,
        )
        self._actor = owner.remote(self.path)
        self._ray = ray

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._ray.get(self._actor.call.remote(method, args, kwargs), timeout=self.timeout_s)
        except self._ray.exceptions.GetTimeoutError as exc:
            raise ServiceUnavailableError("qdrant", f"embedded store call {method} took over {self.timeout_s} s") from exc
        except self._ray.exceptions.RayActorError as exc:
            raise ServiceUnavailableError("qdrant", f"embedded store actor died: {exc}") from exc
        except self._ray.exceptions.RayTaskError as exc:
            cause = exc.as_instanceof_cause()
            original = getattr(exc, "cause", None)
            raise (original if isinstance(original, Exception) else cause) from None

    def upsert(self, collection: str, points: Sequence[Any]) -> None:
        if points:
            self._call("upsert", collection, [pack(p) for p in points])

    def actor_pid(self) -> int:
        """The process id of the actor (for fault tests)."""
        return int(self._ray.get(self._actor.pid.remote(), timeout=self.timeout_s))

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._call(method, *args, **kwargs)

        call.__name__ = method
        return call
