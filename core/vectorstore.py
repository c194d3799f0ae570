"""The vector store adapter: one Qdrant collection with named vectors, remote or embedded.

* ``SLUICE_QDRANT_URL`` set: a Qdrant server, through ``qdrant_client.QdrantClient(url=...)``.
* empty: the **embedded** store, qdrant-client local mode. Local mode allows one process per storage folder
  (qdrant-client documentation, "Local mode"), so the client lives in one named, detached Ray actor and every
  reader and writer (ingest workers, search replicas) calls it through :class:`EmbeddedQdrantClient`.

Nothing above this module knows which one it talks to. The collection (ARCHITECTURE.md, "Qdrant collection"):
named vectors ``text`` (dense, cosine, the text model's dimension) and ``bm25`` (sparse, ``Modifier.IDF``: Qdrant
computes IDF, we store BM25 term-frequency weights); payload indexes on tenant, document_id, is_latest, modality.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from qdrant_client import QdrantClient, models

from core.errors import ConfigurationError, ServiceUnavailableError
from core.settings import Settings

logger = logging.getLogger(__name__)

TEXT_VECTOR = "text"
SPARSE_VECTOR = "bm25"
#: Payload fields that get an index (filters on them must stay fast as the collection grows).
INDEXED_FIELDS = {
    "tenant": models.PayloadSchemaType.KEYWORD,
    "document_id": models.PayloadSchemaType.KEYWORD,
    "is_latest": models.PayloadSchemaType.BOOL,
    "modality": models.PayloadSchemaType.KEYWORD,
    "path": models.PayloadSchemaType.KEYWORD,
    "dirs": models.PayloadSchemaType.KEYWORD,
    "version": models.PayloadSchemaType.INTEGER,
}


class _QdrantOwner:
    """The body of the embedded-store actor: owns the one local-mode client of a storage folder."""

    def __init__(self, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        self.client = QdrantClient(path=path)

    def call(self, method: str, args: tuple, kwargs: dict) -> Any:
        return getattr(self.client, method)(*args, **kwargs)

    def ping(self) -> bool:
        return True


def embedded_actor_name(path: Path | str) -> str:
    """The Ray actor name of the embedded store of a storage folder (one actor per folder)."""
    digest = hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:12]
    return f"sluice-qdrant-{digest}"


class EmbeddedQdrantClient:
    """A stand-in for ``QdrantClient`` that forwards each call to the actor owning the local-mode store.

    The actor is found by name or created (``get_if_exists``), detached so that it outlives the job that made it,
    restarted by Ray if its process dies (local mode reloads the folder), and takes no CPU slot.

    Args:
        path: the storage folder. namespace: the Ray namespace of the actor.
        timeout_s: the limit of one call, seconds (a call never hangs).
        ray_address: passed to ``ray.init`` when Ray is not initialised yet.
    """

    def __init__(self, path: Path | str, *, namespace: str = "sluice", timeout_s: float = 300.0, ray_address: str = "") -> None:
        import ray

        if not ray.is_initialized():
            ray.init(address=ray_address or None, namespace=namespace, log_to_driver=False)
        self.path = str(Path(path).resolve())
        self.timeout_s = timeout_s
        owner = ray.remote(_QdrantOwner).options(
            name=embedded_actor_name(self.path),
            namespace=namespace,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            max_task_retries=3,
            num_cpus=0,
        )
        self._actor = owner.remote(self.path)
        self._ray = ray

    def __getattr__(self, method: str):
        if method.startswith("_"):
            raise AttributeError(method)

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return self._ray.get(self._actor.call.remote(method, args, kwargs), timeout=self.timeout_s)
            except self._ray.exceptions.GetTimeoutError as exc:
                raise ServiceUnavailableError("qdrant", f"embedded store call {method} took over {self.timeout_s} s") from exc
            except self._ray.exceptions.RayActorError as exc:
                raise ServiceUnavailableError("qdrant", f"embedded store actor died: {exc}") from exc

        return call


def make_client(settings: Settings) -> Any:
    """A ``QdrantClient`` for ``settings``: remote when ``qdrant_url`` is set, else the embedded actor's proxy."""
    if settings.qdrant_url:
        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return QdrantClient(url=settings.qdrant_url, api_key=api_key, timeout=int(settings.remote_call_timeout_s))
    return EmbeddedQdrantClient(
        settings.qdrant_path,
        namespace=settings.ray_namespace,
        timeout_s=settings.remote_call_timeout_s,
        ray_address=settings.ray_address,
    )


def tenant_filter(tenant: str, *, extra: Sequence[models.Condition] = (), latest_only: bool = True) -> models.Filter:
    """The filter every query leg carries: ``tenant == caller`` (and ``is_latest`` unless asked otherwise)."""
    must: list[models.Condition] = [models.FieldCondition(key="tenant", match=models.MatchValue(value=tenant))]
    if latest_only:
        must.append(models.FieldCondition(key="is_latest", match=models.MatchValue(value=True)))
    must.extend(extra)
    return models.Filter(must=must)


class VectorStore:
    """High-level operations on the Sluice collection.

    Args:
        settings: ``qdrant_url``/``qdrant_path`` choose the backend; ``qdrant_collection`` names the collection.
        client: an injection seam: any object with ``QdrantClient``'s methods (e.g. ``QdrantClient(":memory:")``).
            When omitted, :func:`make_client` builds one lazily, so a ``VectorStore`` pickles to Ray workers.
    """

    def __init__(self, settings: Settings, *, client: Any | None = None) -> None:
        if not settings.qdrant_collection:
            raise ValueError("settings.qdrant_collection is empty: set SLUICE_QDRANT_COLLECTION")
        self.settings = settings
        self.collection = settings.qdrant_collection
        self._client = client
        self._injected = client is not None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if not self._injected:
            state["_client"] = None
        return state

    @property
    def client(self) -> Any:
        """The Qdrant client (remote, or the embedded actor's proxy), created on first use."""
        if self._client is None:
            self._client = make_client(self.settings)
        return self._client

    def ensure_collection(self, text_dim: int) -> None:
        """Create the collection and its payload indexes when missing; check the dense dimension when present.

        Args:
            text_dim: the text model's embedding dimension (e.g. 384 for all-MiniLM-L6-v2).

        Raises:
            ConfigurationError: the collection exists with another ``text`` dimension: mixing models in one
                collection would corrupt the index, so the job stops instead.
            ServiceUnavailableError: Qdrant cannot be reached.
        """
        if text_dim < 1:
            raise ValueError(f"text_dim={text_dim} must be positive")
        try:
            exists = self.client.collection_exists(self.collection)
        except ServiceUnavailableError:
            raise
        except Exception as exc:  # qdrant-client raises transport-specific errors
            raise ServiceUnavailableError("qdrant", f"{type(exc).__name__}: {exc}") from exc
        if exists:
            info = self.client.get_collection(self.collection)
            vectors = info.config.params.vectors
            have = vectors.get(TEXT_VECTOR) if isinstance(vectors, dict) else None
            if have is None or have.size != text_dim:
                raise ConfigurationError(
                    f"collection {self.collection!r} has a {TEXT_VECTOR!r} vector of dimension "
                    f"{getattr(have, 'size', None)}, but the text model gives {text_dim}: use another "
                    "SLUICE_QDRANT_COLLECTION for the new model and re-index into it"
                )
            return
        self.client.create_collection(
            self.collection,
            vectors_config={TEXT_VECTOR: models.VectorParams(size=text_dim, distance=models.Distance.COSINE)},
            sparse_vectors_config={SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)},
        )
        for field, schema in INDEXED_FIELDS.items():
            self.client.create_payload_index(self.collection, field_name=field, field_schema=schema)
        logger.info("created collection %s (text dim %d)", self.collection, text_dim)

    def upsert(self, points: Sequence[models.PointStruct]) -> None:
        """Write points (idempotent: point ids are deterministic), waiting until they are applied."""
        if points:
            self.client.upsert(self.collection, points=list(points), wait=True)

    def delete(self, flt: models.Filter) -> None:
        """Delete every point matching ``flt``."""
        self.client.delete(self.collection, points_selector=models.FilterSelector(filter=flt), wait=True)

    def delete_stale(self, document_id: str, version: int, chunk_count: int) -> None:
        """Delete every point of a document except chunks ``0 .. chunk_count - 1`` of ``version``.

        That removes older versions' points and chunks left over from an earlier, longer run of the same version,
        in one call.
        """
        self.delete(
            models.Filter(
                must=[models.FieldCondition(key="document_id", match=models.MatchValue(value=document_id))],
                must_not=[
                    models.Filter(
                        must=[
                            models.FieldCondition(key="version", match=models.MatchValue(value=version)),
                            models.FieldCondition(key="chunk_index", range=models.Range(lt=chunk_count)),
                        ]
                    )
                ],
            )
        )

    def count(self, flt: models.Filter | None = None) -> int:
        """Exact number of points matching ``flt`` (all points when ``None``)."""
        return int(self.client.count(self.collection, count_filter=flt, exact=True).count)

    def scroll(self, flt: models.Filter | None = None, *, with_vectors: bool = False, page: int = 1024) -> Iterable[models.Record]:
        """Every point matching ``flt``, with payload, page by page."""
        offset = None
        while True:
            records, offset = self.client.scroll(
                self.collection, scroll_filter=flt, limit=page, offset=offset, with_payload=True, with_vectors=with_vectors
            )
            yield from records
            if offset is None:
                return

    def query(self, **kwargs: Any) -> list[models.ScoredPoint]:
        """``QdrantClient.query_points`` on the collection; returns its points."""
        return self.client.query_points(self.collection, **kwargs).points

    def check(self) -> None:
        """Fail fast when the store cannot be reached (raises ``ServiceUnavailableError``)."""
        try:
            self.client.get_collections()
        except ServiceUnavailableError:
            raise
        except Exception as exc:
            raise ServiceUnavailableError("qdrant", f"{type(exc).__name__}: {exc}") from exc
