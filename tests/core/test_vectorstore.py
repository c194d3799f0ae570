"""The vector store's version operations, on qdrant-client's in-memory mode (the same code as the embedded store)."""

import pytest
from qdrant_client import QdrantClient, models

from core.ids import point_id
from core.settings import Settings
from core.vectorstore import VectorStore, one_version_per_document, tenant_filter

pytestmark = pytest.mark.unit


def _store() -> VectorStore:
    store = VectorStore(Settings(qdrant_collection="vs_test"), client=QdrantClient(":memory:"))
    store.ensure_collection(4)
    return store


def _write(store: VectorStore, doc: str, version: int, chunks: int, *, latest: bool) -> None:
    store.upsert([
        models.PointStruct(
            id=point_id(doc, version, "text", i),
            vector={"text": [1.0, float(i), 0.0, float(version)]},
            payload={"tenant": "t", "document_id": doc, "version": version, "is_latest": latest, "chunk_index": i},
        )
        for i in range(chunks)
    ])


def _flags(store: VectorStore, doc: str) -> dict[int, set[bool]]:
    out: dict[int, set[bool]] = {}
    for r in store.scroll(models.Filter(must=[models.FieldCondition(key="document_id", match=models.MatchValue(value=doc))])):
        out.setdefault(r.payload["version"], set()).add(r.payload["is_latest"])
    return out


def test_set_latest_moves_the_flags_of_one_document_only():
    store = _store()
    _write(store, "a", 1, 3, latest=True)
    _write(store, "a", 2, 2, latest=False)
    _write(store, "b", 2, 2, latest=False)
    store.set_latest("a", 2)
    assert _flags(store, "a") == {1: {False}, 2: {True}}
    assert _flags(store, "b") == {2: {False}}
    store.set_latest("a", 1)  # a restore goes back the same way
    assert _flags(store, "a") == {1: {True}, 2: {False}}


def test_switch_latest_groups_many_documents():
    store = _store()
    _write(store, "a", 1, 2, latest=False)
    _write(store, "b", 3, 2, latest=False)
    _write(store, "b", 2, 2, latest=True)
    _write(store, "c", 1, 1, latest=False)  # not switched
    store.switch_latest([("a", 1, 0), ("b", 3, 2)], group=1)
    assert _flags(store, "a") == {1: {True}}
    assert _flags(store, "b") == {2: {False}, 3: {True}}
    assert _flags(store, "c") == {1: {False}}
    assert store.count(tenant_filter("t")) == 4


def test_deletes_by_version_and_chunk():
    store = _store()
    _write(store, "a", 1, 3, latest=False)
    _write(store, "a", 2, 10, latest=True)
    store.delete_chunks_from("a", 2, 3)
    census = store.version_census()
    assert census[("a", 2)] == {"points": 3, "latest": 3, "max_chunk": 2}
    store.delete_versions_except("a", [2])
    assert set(store.version_census()) == {("a", 2)}
    store.delete_document("a")
    assert store.count() == 0


def test_the_fence_keeps_one_version_per_document():
    def point(doc, version, score):
        return models.ScoredPoint(id=point_id(doc, version, "text", score), version=0, score=score,
                                  payload={"document_id": doc, "version": version})

    points = [point("a", 1, 9), point("b", 1, 8), point("a", 2, 7), point("a", 1, 6)]
    kept = one_version_per_document(points)
    assert [(p.payload["document_id"], p.payload["version"]) for p in kept] == [("b", 1), ("a", 2)]
