"""The server backend: a Qdrant server or cluster through qdrant-client (``SLUICE_QDRANT_URL``).

The same operations as the Edge backend (``core.vectorstore.edge``), in qdrant-client calls. Any ``QdrantClient``
works, ``QdrantClient(":memory:")`` included: the congruence tests run one suite on both backends that way
(``tests/core/test_vectorstore_congruence.py``). Transport errors become ``ServiceUnavailableError``; a missing
collection becomes ``CollectionNotFoundError`` (told apart by the HTTP status, or by the check for the collection).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from core import metrics
from core.errors import CollectionNotFoundError, ServiceUnavailableError
from core.vectorstore.backend import PagedQueries
from core.vectorstore.schema import INDEXED_FIELDS, TENANT_FIELD, CollectionInfo, CollectionSpec


def _sparse(v: Any) -> Any:
    if isinstance(v, tuple):
        return models.SparseVector(indices=list(v[0]), values=list(v[1]))
    return v


class QdrantClientBackend(PagedQueries):
    """The collections of a Qdrant server (or of any ``QdrantClient``).

    Args:
        client: the client (``QdrantClient(url=...)`` in production).
    """

    def __init__(self, client: QdrantClient) -> None:
        self.client = client

    def _call(self, collection: str, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except UnexpectedResponse as exc:
            if exc.status_code == 404:
                raise CollectionNotFoundError(collection) from exc
            raise ServiceUnavailableError("qdrant", f"{method}: HTTP {exc.status_code}: {exc.content!r}") from exc
        except ResponseHandlingException as exc:
            raise ServiceUnavailableError("qdrant", f"{method}: {exc}") from exc
        except (ConnectionError, TimeoutError, OSError) as exc:
            raise ServiceUnavailableError("qdrant", f"{method}: {type(exc).__name__}: {exc}") from exc
        except ValueError as exc:  # local and :memory: modes raise ValueError for a missing collection
            if not self.client.collection_exists(collection):
                raise CollectionNotFoundError(collection) from exc
            raise

    def collections(self) -> list[str]:
        return sorted(c.name for c in self._call("", "get_collections").collections)

    def describe(self, collection: str) -> CollectionInfo | None:
        if not self._call(collection, "collection_exists", collection):
            return None
        info = self._call(collection, "get_collection", collection)
        metrics.vectorstore_info(collection, int(info.points_count or 0), int(info.segments_count or 0))
        vectors = info.config.params.vectors
        dense = {name: int(p.size) for name, p in vectors.items()} if isinstance(vectors, dict) else {}
        sparse = tuple(sorted((info.config.params.sparse_vectors or {}).keys()))
        return CollectionInfo(dense=dense, sparse=sparse, points=int(info.points_count or 0),
                              segments=int(info.segments_count or 0), indexed_vectors=int(info.indexed_vectors_count or 0))

    def create(self, collection: str, spec: CollectionSpec) -> None:
        if self._call(collection, "collection_exists", collection):
            return
        self._call(
            collection, "create_collection", collection,
            vectors_config={name: models.VectorParams(size=dim, distance=models.Distance.COSINE)
                            for name, dim in spec.dense.items()},
            sparse_vectors_config={name: models.SparseVectorParams(modifier=models.Modifier.IDF) for name in spec.sparse},
        )
        for field, schema in INDEXED_FIELDS.items():
            field_schema: Any = schema
            if field == TENANT_FIELD:
                field_schema = models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True)
            self._call(collection, "create_payload_index", collection, field_name=field, field_schema=field_schema)

    def indexes(self, collection: str) -> set[str]:
        return set((self._call(collection, "get_collection", collection).payload_schema or {}).keys())

    def create_index(self, collection: str, field: str, schema: models.PayloadSchemaType) -> None:
        self._call(collection, "create_payload_index", collection, field_name=field, field_schema=schema, wait=True)

    def drop(self, collection: str) -> None:
        self._call(collection, "delete_collection", collection)

    def upsert(self, collection: str, points: Sequence[Any]) -> None:
        if not points:
            return
        structs = [p if isinstance(p, models.PointStruct) else models.PointStruct.model_construct(
            id=p[0], vector={k: _sparse(v) for k, v in p[1].items()}, payload=p[2]) for p in points]
        self._call(collection, "upsert", collection, points=structs, wait=True)

    def update(self, collection: str, operations: Sequence[Any]) -> None:
        for start in range(0, len(operations), 256):
            self._call(collection, "batch_update_points", collection,
                       update_operations=list(operations[start : start + 256]), wait=True)

    def flush(self, collection: str) -> None:
        """The server flushes on its own schedule and keeps a WAL: nothing to do."""

    def optimize(self, collection: str, *, wait: bool = True) -> bool:
        """The server's optimizers run on their own: nothing to do."""
        return False

    def query_batch(self, collection: str, requests: Sequence[models.QueryRequest]) -> list[list[models.ScoredPoint]]:
        if len(requests) == 1:
            r = requests[0]
            answer = self._call(collection, "query_points", collection, query=r.query, using=r.using,
                                prefetch=r.prefetch, query_filter=r.filter, search_params=r.params, limit=r.limit,
                                offset=r.offset, with_payload=r.with_payload, with_vectors=r.with_vector,
                                score_threshold=r.score_threshold)
            return [answer.points]
        return [a.points for a in self._call(collection, "query_batch_points", collection, requests=list(requests))]

    def count(self, collection: str, flt: models.Filter | None) -> int:
        return int(self._call(collection, "count", collection, count_filter=flt, exact=True).count)

    def scroll(self, collection: str, flt: models.Filter | None, *, limit: int, offset: Any = None,
               with_payload: Any = True, with_vectors: Any = False) -> tuple[list[models.Record], Any]:
        return self._call(collection, "scroll", collection, scroll_filter=flt, limit=limit, offset=offset,
                          with_payload=with_payload, with_vectors=with_vectors)

    def retrieve(self, collection: str, ids: Sequence[Any], *, with_payload: Any = True,
                 with_vectors: Any = False) -> list[models.Record]:
        return self._call(collection, "retrieve", collection, ids=list(ids), with_payload=with_payload,
                          with_vectors=with_vectors)

    def ping(self) -> bool:
        self._call("", "get_collections")
        return True

    def close(self) -> None:
        self.client.close()
