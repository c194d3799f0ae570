"""The vector store adapter: one Qdrant collection with named vectors, remote or embedded.

* ``SLUICE_QDRANT_URL`` set: a Qdrant server, through ``qdrant_client.QdrantClient(url=...)``.
* empty: the **embedded** store, qdrant-client local mode. Local mode allows one process per storage folder
  (qdrant-client documentation, "Local mode"), so the client lives in one named, detached Ray actor and every
  reader and writer (ingest workers, search replicas) calls it through :class:`EmbeddedQdrantClient`.

Nothing above this module knows which one it talks to. The collection (ARCHITECTURE.md, "Qdrant collection"):
named vectors ``text`` (dense, cosine, the text model's dimension), ``image`` (dense, cosine, the CLIP model's
dimension; only when an image model is configured) and ``bm25`` (sparse, ``Modifier.IDF``: Qdrant
computes IDF, we store BM25 term-frequency weights); payload indexes on tenant, document_id, is_latest, modality, kind (and the others of
``INDEXED_FIELDS``).
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
#: The dense CLIP vector of image chunks (only in collections built with an image model).
IMAGE_VECTOR = "image"
#: Payload fields that get an index (filters on them must stay fast as the collection grows).
INDEXED_FIELDS = {
    "tenant": models.PayloadSchemaType.KEYWORD,
    "document_id": models.PayloadSchemaType.KEYWORD,
    "is_latest": models.PayloadSchemaType.BOOL,
    "modality": models.PayloadSchemaType.KEYWORD,
    "kind": models.PayloadSchemaType.KEYWORD,
    "path": models.PayloadSchemaType.KEYWORD,
    "dirs": models.PayloadSchemaType.KEYWORD,
    "version": models.PayloadSchemaType.INTEGER,
    "content_type": models.PayloadSchemaType.KEYWORD,
    "created_at": models.PayloadSchemaType.DATETIME,
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


def one_version_per_document(points: Sequence[Any]) -> list[Any]:
    """Keep, for each document, only the points of the highest version among ``points`` (order preserved).

    This is the search side of the version switch (:meth:`VectorStore.set_latest`): while the flags move, the old
    and the new version are both ``is_latest`` for a moment, and an answer must never mix them. Points without a
    ``document_id``/``version`` payload are kept as they are.
    """
    top: dict[str, int] = {}
    for p in points:
        payload = getattr(p, "payload", None) or {}
        doc, version = payload.get("document_id"), payload.get("version")
        if doc is not None and isinstance(version, int):
            top[doc] = max(top.get(doc, version), version)
    return [
        p
        for p in points
        if (getattr(p, "payload", None) or {}).get("document_id") not in top
        or (p.payload or {}).get("version") == top[p.payload["document_id"]]
    ]


def _document(document_id: str) -> models.FieldCondition:
    return models.FieldCondition(key="document_id", match=models.MatchValue(value=document_id))


def _version(version: int) -> models.FieldCondition:
    return models.FieldCondition(key="version", match=models.MatchValue(value=int(version)))


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

    def ensure_collection(self, text_dim: int, image_dim: int | None = None) -> bool:
        """Create the collection and its payload indexes when missing; check the dense dimensions when present.

        Returns:
            ``True`` when the collection was created by this call.

        Args:
            text_dim: the text model's embedding dimension (e.g. 384 for all-MiniLM-L6-v2).
            image_dim: the image model's dimension (CLIP ``projection_dim``, e.g. 512), or ``None`` when no image
                model is configured: the collection then has no ``image`` vector (and an existing one that has it
                is used as it is).

        Raises:
            ConfigurationError: the collection exists with another ``text`` or ``image`` dimension, or without an
                ``image`` vector while an image model is configured (Qdrant cannot add a named vector to an
                existing collection): mixing models in one collection would corrupt the index, so the job stops.
            ServiceUnavailableError: Qdrant cannot be reached.
            ValueError: a dimension below 1.
        """
        if text_dim < 1:
            raise ValueError(f"text_dim={text_dim} must be positive")
        if image_dim is not None and image_dim < 1:
            raise ValueError(f"image_dim={image_dim} must be positive")
        try:
            exists = self.client.collection_exists(self.collection)
        except ServiceUnavailableError:
            raise
        except Exception as exc:  # qdrant-client raises transport-specific errors
            raise ServiceUnavailableError("qdrant", f"{type(exc).__name__}: {exc}") from exc
        if exists:
            info = self.client.get_collection(self.collection)
            vectors = info.config.params.vectors
            wanted = {TEXT_VECTOR: (text_dim, "text model", "SLUICE_TEXT_MODEL")}
            if image_dim is not None:
                wanted[IMAGE_VECTOR] = (image_dim, "image model", "SLUICE_IMAGE_MODEL")
            for name, (dim, what, variable) in wanted.items():
                have = vectors.get(name) if isinstance(vectors, dict) else None
                if have is None or have.size != dim:
                    raise ConfigurationError(
                        f"collection {self.collection!r} has a {name!r} vector of dimension "
                        f"{getattr(have, 'size', None)}, but the {what} ({variable}) gives {dim}: use another "
                        "SLUICE_QDRANT_COLLECTION for the new model and re-index into it: "
                        "python -m jobs.reindex --collection NEW"
                    )
            return False
        dense = {TEXT_VECTOR: models.VectorParams(size=text_dim, distance=models.Distance.COSINE)}
        if image_dim is not None:
            dense[IMAGE_VECTOR] = models.VectorParams(size=image_dim, distance=models.Distance.COSINE)
        self.client.create_collection(
            self.collection,
            vectors_config=dense,
            sparse_vectors_config={SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)},
        )
        for field, schema in INDEXED_FIELDS.items():
            self.client.create_payload_index(self.collection, field_name=field, field_schema=schema)
        logger.info("created collection %s (text dim %d, image dim %s)", self.collection, text_dim, image_dim)
        return True

    def upsert(self, points: Sequence[models.PointStruct]) -> None:
        """Write points (idempotent: point ids are deterministic), waiting until they are applied."""
        if points:
            self.client.upsert(self.collection, points=list(points), wait=True)

    def delete(self, flt: models.Filter) -> None:
        """Delete every point matching ``flt``."""
        self.client.delete(self.collection, points_selector=models.FilterSelector(filter=flt), wait=True)

    def set_latest(self, document_id: str, version: int) -> None:
        """Make ``version`` the document's searchable version: its points ``is_latest`` true, every other false.

        One ordered batch: first the new version's flags go up, then the others' go down. Qdrant applies a batch's
        operations in order but gives readers no multi-operation isolation, so between the two a search may see
        both versions (never neither); :func:`one_version_per_document`, applied by :meth:`query`, keeps one of
        them in any answer. The embedded store runs each call alone in its actor, so there the batch is atomic.
        Idempotent: running it again after a crash repairs the flags.
        """
        doc = _document(document_id)
        self.client.batch_update_points(
            self.collection,
            update_operations=[
                models.SetPayloadOperation(
                    set_payload=models.SetPayload(payload={"is_latest": True}, filter=models.Filter(must=[doc, _version(version)]))
                ),
                models.SetPayloadOperation(
                    set_payload=models.SetPayload(
                        payload={"is_latest": False}, filter=models.Filter(must=[doc], must_not=[_version(version)])
                    )
                ),
            ],
            wait=True,
        )

    def switch_latest(self, changes: Sequence[tuple[str, int, int]], *, group: int = 1000) -> None:
        """:meth:`set_latest` for many documents whose flags are in a known state, in few filter operations.

        Args:
            changes: ``(document_id, new_version, old_version)``: the points of ``new_version`` go up (they were
                written with ``is_latest`` false), then those of ``old_version`` go down (0: no version was shown).
            group: documents per filter (the embedded store evaluates each filter over every point, so a first
                ingest of many documents is one operation per ``group`` documents, not one per document).

        The order is the same as :meth:`set_latest`'s: every raise before any lowering, in one batch.
        """
        by_version: dict[int, list[str]] = {}
        for doc, new, _ in changes:
            by_version.setdefault(int(new), []).append(doc)
        ops: list[Any] = []
        for version, docs in sorted(by_version.items()):
            for start in range(0, len(docs), group):
                flt = models.Filter(
                    must=[models.FieldCondition(key="document_id", match=models.MatchAny(any=docs[start : start + group])),
                          _version(version)]
                )
                ops.append(models.SetPayloadOperation(set_payload=models.SetPayload(payload={"is_latest": True}, filter=flt)))
        for doc, new, old in changes:
            if old and old != new:
                flt = models.Filter(must=[_document(doc), _version(old)])
                ops.append(models.SetPayloadOperation(set_payload=models.SetPayload(payload={"is_latest": False}, filter=flt)))
        for start in range(0, len(ops), 256):
            self.client.batch_update_points(self.collection, update_operations=ops[start : start + 256], wait=True)

    def delete_document(self, document_id: str) -> None:
        """Delete every point of a document, every version and every named vector (one call)."""
        self.delete(models.Filter(must=[_document(document_id)]))

    def delete_versions(self, document_id: str, versions: Sequence[int]) -> None:
        """Delete every point of the given versions of a document."""
        if versions:
            self.delete(
                models.Filter(
                    must=[
                        _document(document_id),
                        models.FieldCondition(key="version", match=models.MatchAny(any=[int(v) for v in versions])),
                    ]
                )
            )

    def delete_versions_except(self, document_id: str, keep: Sequence[int]) -> None:
        """Delete every point of a document whose version is not in ``keep`` (retention, orphans)."""
        flt = models.Filter(must=[_document(document_id)])
        if keep:
            flt.must_not = [models.FieldCondition(key="version", match=models.MatchAny(any=[int(v) for v in keep]))]
        self.delete(flt)

    def delete_chunks_from(self, document_id: str, version: int, chunk_count: int) -> None:
        """Delete the points of one version whose ``chunk_index`` is ``chunk_count`` or more (left by a longer run)."""
        self.delete(
            models.Filter(
                must=[
                    _document(document_id),
                    _version(version),
                    models.FieldCondition(key="chunk_index", range=models.Range(gte=chunk_count)),
                ]
            )
        )

    def version_census(self, flt: models.Filter | None = None) -> dict[tuple[str, int], dict[str, int]]:
        """Per ``(document_id, version)``: ``points``, ``latest`` (how many are ``is_latest``) and ``max_chunk``.

        Reads payloads only (``document_id``, ``version``, ``is_latest``, ``chunk_index``), page by page.
        """
        census: dict[tuple[str, int], dict[str, int]] = {}
        offset = None
        fields = ["document_id", "version", "is_latest", "chunk_index", "tenant"]
        while True:
            records, offset = self.client.scroll(
                self.collection, scroll_filter=flt, limit=1024, offset=offset, with_payload=fields, with_vectors=False
            )
            for r in records:
                p = r.payload or {}
                key = (str(p.get("document_id")), int(p.get("version", -1)))
                entry = census.setdefault(key, {"points": 0, "latest": 0, "max_chunk": -1})
                entry["points"] += 1
                entry["latest"] += bool(p.get("is_latest"))
                entry["max_chunk"] = max(entry["max_chunk"], int(p.get("chunk_index", -1)))
            if offset is None:
                return census

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
        """``QdrantClient.query_points`` on the collection; returns its points, one version per document.

        The version fence (:func:`one_version_per_document`) drops the points of a document's other versions when
        a query ran while that document's ``is_latest`` flags were being moved (see :meth:`set_latest`).
        """
        return one_version_per_document(self.client.query_points(self.collection, **kwargs).points)

    def check(self) -> None:
        """Fail fast when the store cannot be reached (raises ``ServiceUnavailableError``)."""
        try:
            self.client.get_collections()
        except ServiceUnavailableError:
            raise
        except Exception as exc:
            raise ServiceUnavailableError("qdrant", f"{type(exc).__name__}: {exc}") from exc
