"""Deletes that never show a deleted document, whatever fails: real S3, PostgreSQL, Redis, Ray, embedded Qdrant.

The vector store is made to fail while a document is deleted (its points stay); the document must then be absent
from every search mode, from a batch, and from cached answers, and ``jobs.reconcile`` must remove the points.
"""

from __future__ import annotations

import uuid

import pytest
from qdrant_client import models

from core import lifecycle
from core.cache import Cache
from core.catalog import Catalog
from core.errors import ServiceUnavailableError
from core.ids import document_id
from core.objects import ObjectStore
from core.tombstones import Tombstones
from core.vectorstore import VectorStore
from jobs.reconcile import reconcile
from pipelines.ingest import run_ingest
from serve.search.engine import SearchEngine, SearchRequest
from tests.pipelines.support import tiny_model

pytestmark = pytest.mark.integration

QUERY = "vexillomancy flags manual gardening"
MODES = ("dense", "sparse", "hybrid")


@pytest.fixture(scope="module")
def settings(ray_local, make_settings, tmp_path_factory):
    return make_settings(text_model=tiny_model(tmp_path_factory.mktemp("tiny")), search_cache_ttl_s=300)


@pytest.fixture
def corpus(settings):
    """A fresh tenant with two indexed documents; yields ``(tenant, kept id, doomed id)``."""
    tenant = f"del-{uuid.uuid4().hex[:8]}"
    objects = ObjectStore(settings)
    objects.put_bytes(f"{tenant}/keep.md", b"# Keep\n\nThis one stays, about ordinary gardening.\n")
    objects.put_bytes(f"{tenant}/gone.md", b"# Gone\n\nThe vexillomancy manual explains vexillomancy flags.\n")
    assert run_ingest(settings, tenant=tenant, scan=True).documents_indexed == 2
    return tenant, document_id(tenant, "keep.md"), document_id(tenant, "gone.md")


def _asks() -> list[SearchRequest]:
    return [SearchRequest(query=QUERY, mode=mode, top_k=50) for mode in MODES]


def _batch(engine: SearchEngine, tenant: str, reqs: list[SearchRequest]) -> list[dict]:
    """A batch as the Serve app runs it (``POST /v1/search/batch``): cache lookups, then one store call."""
    looked = [engine.lookup(tenant, r) for r in reqs]
    todo = [i for i, (_, hit) in enumerate(looked) if hit is None]
    dense = engine.embed_queries([reqs[i].query for i in todo if engine.needs_dense(reqs[i])])
    vectors = iter(dense)
    answers = engine.run_many(tenant, [reqs[i] for i in todo],
                              dense=[next(vectors) if engine.needs_dense(reqs[i]) else None for i in todo],
                              keys=[looked[i][0] for i in todo])
    out = [hit for _, hit in looked]
    for i, answer in zip(todo, answers):
        out[i] = answer
    return out


def _ids(answer: dict) -> set[str]:
    return {r["document_id"] for r in answer["results"]}


def _points(settings, doc: str) -> int:
    return VectorStore(settings).count(models.Filter(must=[
        models.FieldCondition(key="document_id", match=models.MatchValue(value=doc))]))


@pytest.fixture
def failing_store(monkeypatch):
    """The vector store refuses every point removal by document; returns the list of attempts."""
    calls: list[str] = []

    def refuse(self, doc):
        calls.append(doc)
        raise ServiceUnavailableError("qdrant", "embedded store call delete failed: injected")

    monkeypatch.setattr(VectorStore, "delete_document", refuse)
    monkeypatch.setattr(lifecycle, "DELETE_POINTS_MAX_WAIT_S", 0.05)
    return calls


def test_a_delete_the_vector_store_fails_hides_the_document_everywhere_and_reconcile_removes_it(
        settings, corpus, failing_store, monkeypatch):
    tenant, keep, gone = corpus
    engine = SearchEngine(settings)
    for ask in _asks():  # fill the cache
        assert gone in _ids(engine.search(tenant, ask)), ask.mode
        assert engine.search(tenant, ask)["cached"], ask.mode

    before = lifecycle.delete_document(settings, gone)  # the HTTP call answers 204: the document is deleted
    assert before is not None and before.latest_version == 1
    assert len(failing_store) == lifecycle.DELETE_POINTS_ATTEMPTS  # retried, then left to reconcile
    assert _points(settings, gone) > 0  # the points are still there ...

    for ask in _asks():  # ... and no search shows them
        answer = engine.search(tenant, ask)
        assert gone not in _ids(answer) and keep in _ids(answer), ask.mode
        again = engine.search(tenant, ask)
        assert again["cached"] and gone not in _ids(again), ask.mode
    for answer in _batch(SearchEngine(settings), tenant, _asks() + [SearchRequest(query="vexillomancy", mode="sparse")]):
        assert gone not in _ids(answer)

    monkeypatch.undo()  # the vector store is back
    found = reconcile(settings, tenant=tenant, check=True)
    assert not found["clean"] and found["differences"] == {"orphan_points": 1}
    repaired = reconcile(settings, tenant=tenant)
    assert repaired["clean"] and repaired["repaired"]["orphans_deleted"] > 0
    assert _points(settings, gone) == 0
    assert reconcile(settings, tenant=tenant, check=True)["clean"]
    catalog = Catalog(settings)
    try:
        assert catalog.get_document(gone).deleted
    finally:
        catalog.close()


def test_a_cached_answer_from_before_a_delete_whose_generation_bump_failed_hides_the_document(
        settings, corpus, failing_store, monkeypatch):
    tenant, keep, gone = corpus
    engine = SearchEngine(settings)
    for ask in _asks():
        assert gone in _ids(engine.search(tenant, ask)), ask.mode
    monkeypatch.setattr(Cache, "bump_generation", lambda self, tenant=None: None)  # Redis refuses the bump
    monkeypatch.setattr(lifecycle, "GENERATION_BACKOFF_S", 0.0)
    with pytest.raises(ServiceUnavailableError) as refused:  # the HTTP call answers 503: repeat it
        lifecycle.delete_document(settings, gone)
    assert refused.value.service == "redis"
    for ask in _asks():  # the answers cached before the delete are still reachable: they are checked again
        answer = engine.search(tenant, ask)
        assert answer["cached"], ask.mode
        assert gone not in _ids(answer) and keep in _ids(answer), ask.mode
    for answer in _batch(engine, tenant, _asks()):
        assert answer["cached"] and gone not in _ids(answer)
    monkeypatch.undo()
    assert lifecycle.delete_document(settings, gone) is not None  # the repeat finishes the delete
    assert _points(settings, gone) == 0
    assert reconcile(settings, tenant=tenant, check=True)["clean"]


def test_with_the_catalog_unreachable_redis_tombstones_still_hide_the_document(
        settings, corpus, failing_store, unused_port):
    tenant, keep, gone = corpus
    lifecycle.delete_document(settings, gone)
    down = settings.model_copy(update={"postgres_dsn": f"postgresql://postgres@127.0.0.1:{unused_port}/x"})
    fence = Tombstones(down, cache=Cache(settings))
    engine = SearchEngine(settings, tombstones=fence)
    for ask in _asks():
        answer = engine.search(tenant, ask)
        assert gone not in _ids(answer) and keep in _ids(answer), ask.mode

    nothing = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{unused_port}/0"})
    blind = SearchEngine(settings, tombstones=Tombstones(down, cache=Cache(nothing, timeout_s=0.2)),
                         cache=Cache(nothing, timeout_s=0.2))
    with pytest.raises(ServiceUnavailableError):  # neither can say what is deleted: no answer rather than a wrong one
        blind.search(tenant, SearchRequest(query=QUERY, mode="sparse"))
    fence.close()
