"""The vector store: the operations the product needs, on one of two backends (README, "Vector store").

* ``SLUICE_QDRANT_URL`` empty (the default): the **embedded** store, Qdrant Edge in the owner actor
  (``core.vectorstore.edge``, ``core.vectorstore.owner``).
* ``SLUICE_QDRANT_URL`` set: a Qdrant server or cluster through qdrant-client (``core.vectorstore.server``).

Nothing above this module knows which one it talks to, nor touches a client. The collection: named vectors ``text``
(dense, cosine, the text model's dimension), ``image`` (dense, cosine, the CLIP dimension; only with an image model)
and ``bm25`` (sparse, IDF modifier: the engine computes IDF, we store BM25 term-frequency weights); payload indexes
on the fields of ``core.vectorstore.schema.INDEXED_FIELDS``, ``tenant`` as the tenant index.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from qdrant_client import models

from core.errors import CollectionNotFoundError, ConfigurationError, ServiceUnavailableError
from core.settings import Settings
from core.vectorstore import schema
from core.vectorstore.schema import IMAGE_VECTOR, SPARSE_VECTOR, TEXT_VECTOR, CollectionInfo, CollectionSpec

logger = logging.getLogger(__name__)


def make_backend(settings: Settings) -> Any:
    """The backend for ``settings``: the server when ``qdrant_url`` is set, else the embedded store's actor.

    Raises:
        ConfigurationError: the embedded folder still has the old local-mode layout (``jobs.migrate_store``).
    """
    if settings.qdrant_url:
        from qdrant_client import QdrantClient

        from core.vectorstore.server import QdrantClientBackend

        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return QdrantClientBackend(
            QdrantClient(url=settings.qdrant_url, api_key=api_key, timeout=int(settings.remote_call_timeout_s)))
    from core.vectorstore.legacy import legacy_collections, migration_message
    from core.vectorstore.owner import EmbeddedBackend

    if legacy_collections(settings.qdrant_path):
        raise ConfigurationError(migration_message(settings.qdrant_path))
    return EmbeddedBackend(settings.qdrant_path, namespace=settings.ray_namespace,
                           timeout_s=settings.remote_call_timeout_s, ray_address=settings.ray_address)


def _set(payload: dict, flt: models.Filter) -> models.SetPayloadOperation:
    return models.SetPayloadOperation(set_payload=models.SetPayload(payload=payload, filter=flt))


def _delete(flt: models.Filter) -> models.DeleteOperation:
    return models.DeleteOperation(delete=models.FilterSelector(filter=flt))


class VectorStore:
    """High-level operations on the Sluice collection.

    Args:
        settings: ``qdrant_url``/``qdrant_path`` choose the backend; ``qdrant_collection`` names the collection.
        client: an injection seam: any ``QdrantClient`` (e.g. ``QdrantClient(":memory:")``), used through the server
            backend. backend: an injection seam for a backend object (e.g. an in-process ``EdgeBackend``).
            When both are omitted, :func:`make_backend` builds one lazily, so a ``VectorStore`` pickles to workers.
    """

    def __init__(self, settings: Settings, *, client: Any | None = None, backend: Any | None = None) -> None:
        if not settings.qdrant_collection:
            raise ValueError("settings.qdrant_collection is empty: set SLUICE_QDRANT_COLLECTION")
        self.settings = settings
        self.collection = settings.qdrant_collection
        if client is not None:
            from core.vectorstore.server import QdrantClientBackend

            backend = QdrantClientBackend(client)
        self._backend = backend
        self._injected = backend is not None
        self._indexed: set[str] | None = None  # payload fields known to have an index (ensure_indexes)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if not self._injected:
            state["_backend"] = None
        return state

    @property
    def backend(self) -> Any:
        """The backend (the server's, or the embedded actor's proxy), created on first use."""
        if self._backend is None:
            self._backend = make_backend(self.settings)
        return self._backend

    # --- the collection ---------------------------------------------------------------------------------------

    def info(self) -> CollectionInfo | None:
        """The collection's vectors, points and segments (``None``: no collection yet)."""
        return self.backend.describe(self.collection)

    def vector_names(self) -> set[str]:
        """The named vectors of the collection (empty when there is none yet)."""
        info = self.info()
        return set(info.dense) | set(info.sparse) if info else set()

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
                ``image`` vector while an image model is configured: mixing models in one collection would corrupt
                the index, so the job stops.
            ServiceUnavailableError: the store cannot be reached.
            ValueError: a dimension below 1.
        """
        if text_dim < 1:
            raise ValueError(f"text_dim={text_dim} must be positive")
        if image_dim is not None and image_dim < 1:
            raise ValueError(f"image_dim={image_dim} must be positive")
        info = self.info()
        if info is not None:
            wanted = {TEXT_VECTOR: (text_dim, "text model", "SLUICE_TEXT_MODEL")}
            if image_dim is not None:
                wanted[IMAGE_VECTOR] = (image_dim, "image model", "SLUICE_IMAGE_MODEL")
            for name, (dim, what, variable) in wanted.items():
                have = info.dense.get(name)
                if have != dim:
                    raise ConfigurationError(
                        f"collection {self.collection!r} has a {name!r} vector of dimension {have}, but the {what} "
                        f"({variable}) gives {dim}: use another SLUICE_QDRANT_COLLECTION for the new model and "
                        "re-index into it: python -m jobs.reindex --collection NEW"
                    )
            self.ensure_indexes(schema.INDEXED_FIELDS)  # a collection made by an older release lacks newer ones
            return False
        dense = {TEXT_VECTOR: text_dim}
        if image_dim is not None:
            dense[IMAGE_VECTOR] = image_dim
        self.backend.create(self.collection, CollectionSpec(dense=dense, sparse=(SPARSE_VECTOR,)))
        logger.info("created collection %s (text dim %d, image dim %s)", self.collection, text_dim, image_dim)
        return True

    def ensure_indexes(self, fields: dict[str, models.PayloadSchemaType]) -> list[str]:
        """Index the payload fields that have no index yet; returns those created.

        Metadata keys (``metadata.<key>``) beyond :data:`schema.MAX_METADATA_INDEXES` in the collection are left
        unindexed (filters on them still work). The fields known to be indexed are remembered per instance.
        """
        known = self._indexed
        missing = {f: t for f, t in fields.items() if known is None or f not in known}
        if not missing:
            return []
        try:
            known = self._indexed = self.backend.indexes(self.collection)
        except CollectionNotFoundError:
            return []
        budget = schema.MAX_METADATA_INDEXES - sum(f.startswith(f"{schema.METADATA_FIELD}.") for f in known)
        created = []
        for field, kind in sorted(missing.items()):
            if field in known:
                continue
            if field.startswith(f"{schema.METADATA_FIELD}."):
                if budget <= 0:
                    continue
                budget -= 1
            self.backend.create_index(self.collection, field, kind)
            known.add(field)
            created.append(field)
        if created:
            logger.info("indexed payload fields %s of %s", created, self.collection)
        return created

    def drop(self) -> None:
        """Delete the whole collection (tests and benchmarks)."""
        self._indexed = None
        self.backend.drop(self.collection)

    def optimize(self, *, wait: bool = False) -> bool:
        """Build the vector indexes and merge segments (embedded store: in the owner's background thread)."""
        try:
            return bool(self.backend.optimize(self.collection, wait=wait))
        except CollectionNotFoundError:
            return False

    def flush(self) -> None:
        """Make every write so far durable in the segments (the WAL already has them)."""
        self.backend.flush(self.collection)

    def committed(self) -> None:
        """After an ingest or a repair commits: flush, and build the indexes off the query path."""
        try:
            self.flush()
        except CollectionNotFoundError:
            return
        self.optimize(wait=False)

    # --- writes -----------------------------------------------------------------------------------------------

    def upsert(self, points: Sequence[models.PointStruct]) -> None:
        """Write points (idempotent: point ids are deterministic), waiting until they are applied."""
        if points:
            self.backend.upsert(self.collection, list(points))

    def delete(self, flt: models.Filter) -> None:
        """Delete every point matching ``flt`` (none when nothing was ever ingested: no collection yet)."""
        self._update_existing([_delete(flt)])

    def set_payload(self, flt: models.Filter, payload: dict[str, Any]) -> None:
        """Set payload fields on every point matching ``flt`` (its other fields stay)."""
        self._update_existing([_set(payload, flt)])

    def _update_existing(self, operations: list) -> None:
        # A collection that does not exist holds no point: a delete or flag change of uploaded documents that
        # were never ingested has nothing to change (it used to fail the call with a 500).
        try:
            self.backend.update(self.collection, operations)
        except CollectionNotFoundError:
            logger.info("no collection %r yet: nothing to update", self.collection)

    def set_metadata(self, document_id: str, versions: Sequence[int], metadata: dict[str, Any]) -> None:
        """Replace the user metadata (payload ``metadata``) of the points of these versions of a document."""
        if versions:
            self.ensure_indexes(schema.metadata_indexes([metadata]))
            flt = models.Filter(must=[schema.document(document_id), schema.match("version", [int(v) for v in versions])])
            self.set_payload(flt, {schema.METADATA_FIELD: dict(metadata)})

    def set_latest(self, document_id: str, version: int) -> None:
        """Make ``version`` the document's searchable version: its points ``is_latest`` true, every other false.

        One ordered batch: first the new version's flags go up, then the others' go down. A server gives readers no
        multi-operation isolation, so between the two a search may see both versions (never neither);
        :func:`schema.one_version_per_document`, applied by :meth:`query`, keeps one of them in any answer. The
        embedded store applies the batch under its write lock. Idempotent: running it again repairs the flags.
        """
        doc = schema.document(document_id)
        self.backend.update(self.collection, [
            _set({"is_latest": True}, models.Filter(must=[doc, schema.version(version)])),
            _set({"is_latest": False}, models.Filter(must=[doc], must_not=[schema.version(version)])),
        ])

    def switch_latest(self, changes: Sequence[tuple[str, int, int]], *, group: int = 1000) -> None:
        """:meth:`set_latest` for many documents whose flags are in a known state, in few filter operations.

        Args:
            changes: ``(document_id, new_version, old_version)``: the points of ``new_version`` go up (they were
                written with ``is_latest`` false), then those of ``old_version`` go down (0: no version was shown).
            group: documents per filter.

        The order is the same as :meth:`set_latest`'s: every raise before any lowering, in one batch.
        """
        by_version: dict[int, list[str]] = {}
        for doc, new, _ in changes:
            by_version.setdefault(int(new), []).append(doc)
        ops: list[Any] = []
        for number, docs in sorted(by_version.items()):
            for start in range(0, len(docs), group):
                flt = models.Filter(must=[schema.match("document_id", docs[start : start + group]), schema.version(number)])
                ops.append(_set({"is_latest": True}, flt))
        for doc, new, old in changes:
            if old and old != new:
                ops.append(_set({"is_latest": False}, schema.version_filter(doc, old)))
        if ops:
            self.backend.update(self.collection, ops)

    def delete_document(self, document_id: str) -> None:
        """Delete every point of a document, every version and every named vector (one call)."""
        self.delete(models.Filter(must=[schema.document(document_id)]))

    def delete_versions(self, document_id: str, versions: Sequence[int]) -> None:
        """Delete every point of the given versions of a document."""
        if versions:
            self.delete(models.Filter(must=[schema.document(document_id),
                                            schema.match("version", [int(v) for v in versions])]))

    def delete_versions_except(self, document_id: str, keep: Sequence[int]) -> None:
        """Delete every point of a document whose version is not in ``keep`` (retention, orphans)."""
        flt = models.Filter(must=[schema.document(document_id)])
        if keep:
            flt.must_not = [schema.match("version", [int(v) for v in keep])]
        self.delete(flt)

    def delete_chunks_from(self, document_id: str, version: int, chunk_count: int) -> None:
        """Delete the points of one version whose ``chunk_index`` is ``chunk_count`` or more (left by a longer run)."""
        self.delete(models.Filter(must=[
            schema.document(document_id), schema.version(version),
            models.FieldCondition(key="chunk_index", range=models.Range(gte=chunk_count)),
        ]))

    def delete_stale(self, document_id: str, version: int, chunk_count: int) -> None:
        """Delete every point of a document except chunks ``0 .. chunk_count - 1`` of ``version``."""
        self.delete(models.Filter(
            must=[schema.document(document_id)],
            must_not=[models.Filter(must=[schema.version(version),
                                          models.FieldCondition(key="chunk_index", range=models.Range(lt=chunk_count))])],
        ))

    # --- reads ------------------------------------------------------------------------------------------------

    def version_census(self, flt: models.Filter | None = None) -> dict[tuple[str, int], dict[str, int]]:
        """Per ``(document_id, version)``: ``points``, ``latest`` (how many are ``is_latest``) and ``max_chunk``.

        Reads payloads only, page by page. No collection yet: an empty census.
        """
        census: dict[tuple[str, int], dict[str, int]] = {}
        fields = ["document_id", "version", "is_latest", "chunk_index", "tenant"]
        try:
            for r in self.scroll(flt, with_payload=fields):
                p = r.payload or {}
                key = (str(p.get("document_id")), int(p.get("version", -1)))
                entry = census.setdefault(key, {"points": 0, "latest": 0, "max_chunk": -1})
                entry["points"] += 1
                entry["latest"] += bool(p.get("is_latest"))
                entry["max_chunk"] = max(entry["max_chunk"], int(p.get("chunk_index", -1)))
        except CollectionNotFoundError:
            return {}
        return census

    def count(self, flt: models.Filter | None = None) -> int:
        """Exact number of points matching ``flt`` (all points when ``None``); 0 when there is no collection."""
        try:
            return self.backend.count(self.collection, flt)
        except CollectionNotFoundError:
            return 0

    def scroll(self, flt: models.Filter | None = None, *, with_vectors: bool = False, page: int = 1024,
               with_payload: Any = True) -> Iterable[models.Record]:
        """Every point matching ``flt``, with payload, page by page."""
        offset = None
        while True:
            records, offset = self.backend.scroll(self.collection, flt, limit=page, offset=offset,
                                                  with_payload=with_payload, with_vectors=with_vectors)
            yield from records
            if offset is None:
                return

    def retrieve(self, ids: Sequence[Any], *, with_payload: Any = True, with_vectors: bool = False) -> list[models.Record]:
        """The points of these ids that exist (any order)."""
        if not ids:
            return []
        try:
            return self.backend.retrieve(self.collection, list(ids), with_payload=with_payload, with_vectors=with_vectors)
        except CollectionNotFoundError:
            return []

    def query(self, request: models.QueryRequest) -> list[models.ScoredPoint]:
        """One Query API request; its points, one version per document (``[]``: no collection yet)."""
        return self.query_batch([request])[0]

    def query_batch(self, requests: Sequence[models.QueryRequest]) -> list[list[models.ScoredPoint]]:
        """Several requests in one call (the embedded store plans them as one batch), answers in order.

        The version fence (:func:`schema.one_version_per_document`) drops the points of a document's other versions
        when a query ran while that document's ``is_latest`` flags were being moved (see :meth:`set_latest`).
        """
        if not requests:
            return []
        try:
            answers = self.backend.query_batch(self.collection, list(requests))
        except CollectionNotFoundError:
            return [[] for _ in requests]
        return [schema.one_version_per_document(points) for points in answers]

    def query_pages(self, requests: Sequence[models.QueryRequest], pages: Sequence[tuple[int, int]]
                    ) -> list[list[models.ScoredPoint]]:
        """Several requests in one call, each answered with one page ``(offset, limit)`` of its ranking: one version
        per document (the fence of :meth:`query_batch`), equal scores ordered by point id, full payloads read for
        the page only (``core.vectorstore.backend``)."""
        if not requests:
            return []
        try:
            return self.backend.query_pages(self.collection, list(requests), [(int(o), int(n)) for o, n in pages])
        except CollectionNotFoundError:
            return [[] for _ in requests]

    def check(self) -> None:
        """Fail fast when the store cannot be reached (raises ``ServiceUnavailableError``)."""
        try:
            self.backend.ping()
        except (ServiceUnavailableError, ConfigurationError):
            raise
        except Exception as exc:  # noqa: BLE001 - any transport failure means the store is not there
            raise ServiceUnavailableError("qdrant", f"{type(exc).__name__}: {exc}") from exc
