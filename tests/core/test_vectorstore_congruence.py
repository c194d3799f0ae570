"""One suite, every backend: the embedded Qdrant Edge store and qdrant-client's (README, "Vector store").

As qdrant-client tests its local mode against the server, every assertion here runs on each backend, and the
answers of the backends are compared with one another: Edge (in-process, as the owner actor holds it), qdrant-client
``QdrantClient(":memory:")`` (the client API a server speaks), and a real server when ``SLUICE_TEST_QDRANT_URL`` is
set. Scores are compared to 4 decimals; points of equal score may come in either order.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
import warnings

import pytest
from qdrant_client import QdrantClient, models

from core.errors import CollectionNotFoundError, ConfigurationError
from core.ids import point_id
from core.settings import Settings
from core.vectorstore import VectorStore, tenant_filter, tenant_only, version_filter
from core.vectorstore.edge import EdgeBackend
from core.vectorstore.schema import search_conditions
from serve.search.query import SearchRequest, build_query

pytestmark = pytest.mark.unit

BACKENDS = ["edge", "client"] + (["server"] if os.environ.get("SLUICE_TEST_QDRANT_URL") else [])
DIM = 4


def _make(kind: str, tmp_path) -> VectorStore:
    collection = f"cong_{uuid.uuid4().hex[:8]}"
    settings = Settings(qdrant_collection=collection)
    if kind == "edge":
        return VectorStore(settings, backend=EdgeBackend(tmp_path / "edge"))
    if kind == "client":
        return VectorStore(settings, client=QdrantClient(":memory:"))
    return VectorStore(settings, client=QdrantClient(url=os.environ["SLUICE_TEST_QDRANT_URL"]))


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Payload indexes have no effect")
        yield


def _point(tenant: str, doc: str, version: int, i: int, *, latest: bool, terms: list[int], path: str = "a/b.md",
           content_type: str = "text/markdown", modality: str = "text", created: str = "2026-03-01T00:00:00+00:00"):
    return models.PointStruct(
        id=point_id(doc, version, modality, i),
        vector={"text": [1.0, float(i), float(version), float(len(terms))],
                "bm25": models.SparseVector(indices=terms, values=[1.0 + 0.1 * k for k in range(len(terms))])},
        payload={"tenant": tenant, "document_id": doc, "version": version, "is_latest": latest, "chunk_index": i,
                 "path": path, "dirs": ["/".join(path.split("/")[: k + 1]) for k in range(path.count("/"))],
                 "content_type": content_type, "modality": modality, "created_at": created, "text": f"{doc} {i}"},
    )


def _corpus() -> list[models.PointStruct]:
    pts = []
    for i in range(5):
        pts.append(_point("acme", "d1", 1, i, latest=False, terms=[1, 10 + i]))
        pts.append(_point("acme", "d1", 2, i, latest=True, terms=[1, 2, 10 + i]))
        pts.append(_point("acme", "d2", 1, i, latest=True, terms=[2, 20 + i], path="z/c.pdf",
                          content_type="application/pdf", created="2025-06-01T00:00:00+00:00"))
        pts.append(_point("globex", "g1", 1, i, latest=True, terms=[1, 2, 3, 30 + i], path="a/b.md"))
    pts.append(_point("acme", "d3", 1, 0, latest=True, terms=[3], modality="audio", path="a/s.wav"))
    return pts


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path) -> VectorStore:
    s = _make(request.param, tmp_path)
    assert s.ensure_collection(DIM) is True
    s.upsert(_corpus())
    yield s
    s.drop()


@pytest.fixture
def pair(tmp_path) -> dict[str, VectorStore]:
    """The same corpus in every backend, for answers compared across them."""
    stores = {}
    for kind in BACKENDS:
        s = _make(kind, tmp_path / kind)
        s.ensure_collection(DIM)
        s.upsert(_corpus())
        stores[kind] = s
    yield stores
    for s in stores.values():
        s.drop()


def _ids(points) -> set[str]:
    return {str(p.id) for p in points}


def _scored(points) -> list[tuple[float, str]]:
    return sorted((round(float(p.score), 4), str(p.id)) for p in points)


def test_create_is_idempotent_and_checks_the_dimension(store):
    assert store.ensure_collection(DIM) is False
    assert store.info().dense == {"text": DIM} and "bm25" in store.info().sparse
    with pytest.raises(ConfigurationError, match="dimension"):
        store.ensure_collection(DIM + 1)


def test_upsert_is_idempotent_and_counts_are_exact(store):
    assert store.count() == 21
    store.upsert(_corpus())  # the same ids: replaced, never duplicated
    assert store.count() == 21
    assert store.count(tenant_only("acme")) == 16
    assert store.count(tenant_filter("acme")) == 11  # d1 v2, d2, d3
    assert store.count(version_filter("d1", 1)) == 5


def test_the_version_switch_moves_only_that_document(store):
    store.set_latest("d1", 1)
    census = store.version_census(tenant_only("acme"))
    assert census[("d1", 1)]["latest"] == 5 and census[("d1", 2)]["latest"] == 0
    assert census[("d2", 1)]["latest"] == 5
    store.switch_latest([("d1", 2, 1)])
    census = store.version_census(tenant_only("acme"))
    assert census[("d1", 2)] == {"points": 5, "latest": 5, "max_chunk": 4}
    assert census[("d1", 1)]["latest"] == 0


def test_deletes_by_filter(store):
    store.delete_chunks_from("d1", 2, 3)
    assert store.count(version_filter("d1", 2)) == 3
    store.delete_versions("d1", [1])
    assert store.count(version_filter("d1", 1)) == 0
    store.delete_stale("d2", 1, 2)
    assert store.count(models.Filter(must=[models.FieldCondition(key="document_id", match=models.MatchValue(value="d2"))])) == 2
    store.delete_versions_except("d1", [])
    store.delete_document("g1")
    assert store.count() == 3  # d2's two chunks and d3
    assert store.count(tenant_only("globex")) == 0


@pytest.mark.parametrize("conditions, expected", [
    (dict(path_prefix="a"), {"d1", "d3"}),
    (dict(path_prefix="z/c.pdf"), {"d2"}),
    (dict(content_types=["application/pdf"]), {"d2"}),
    (dict(document_ids=["d3", "nope"]), {"d3"}),
    (dict(created_after=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)), {"d1", "d3"}),
    (dict(created_before=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)), {"d2"}),
    (dict(modalities=["audio"]), {"d3"}),
])
def test_every_search_filter(store, conditions, expected):
    flt = tenant_filter("acme", extra=search_conditions(**conditions))
    assert {r.payload["document_id"] for r in store.scroll(flt)} == expected


def test_a_version_filter_reaches_retained_versions(store):
    flt = tenant_filter("acme", extra=search_conditions(version_number=1), latest_only=False)
    assert {(r.payload["document_id"], r.payload["version"]) for r in store.scroll(flt)} == {("d1", 1), ("d2", 1), ("d3", 1)}


@pytest.mark.parametrize("mode, fusion", [("dense", None), ("sparse", None), ("hybrid", "rrf"), ("hybrid", "dbsf")])
def test_queries_agree_across_backends(pair, mode, fusion):
    req = SearchRequest(query="q", mode=mode, fusion=fusion, top_k=20)  # every candidate: no cut among ties
    request = build_query("acme", req, dense=[1.0, 2.0, 2.0, 3.0] if mode != "sparse" else None,
                          sparse=([1, 2, 12], [1.0, 1.0, 1.0]) if mode != "dense" else None)
    answers = {kind: s.query(request) for kind, s in pair.items()}
    reference = answers.pop("client")
    assert reference and all((p.payload or {})["tenant"] == "acme" for p in reference)
    assert all((p.payload or {})["is_latest"] for p in reference)
    # RRF scores depend on ranks, and points of equal leg score may take either rank: a looser tolerance there.
    tolerance = 1e-3 if fusion == "rrf" else 1e-4
    want = {str(p.id): float(p.score) for p in reference}
    for kind, answer in answers.items():
        got = {str(p.id): float(p.score) for p in answer}
        assert set(got) == set(want), kind
        assert all(abs(got[i] - want[i]) <= tolerance for i in want), kind


def test_batch_queries_answer_in_order(store):
    reqs = [build_query("acme", SearchRequest(query="q", mode="dense"), dense=[1.0, float(i), 2.0, 3.0], sparse=None)
            for i in range(3)] + [build_query("globex", SearchRequest(query="q", mode="sparse"), dense=None, sparse=([3], [1.0]))]
    batch = store.query_batch(reqs)
    assert [_scored(a) for a in batch] == [_scored(store.query(r)) for r in reqs]
    assert {p.payload["tenant"] for p in batch[-1]} == {"globex"}


def test_one_tenant_never_changes_another_tenants_bm25_scores(store):
    """IDF is scoped to the caller's tenant: globex's documents use terms 1-3, and acme's scores stay the same."""
    request = build_query("acme", SearchRequest(query="q", mode="sparse"), dense=None, sparse=([1, 2, 3], [1.0, 1.0, 1.0]))
    before = _scored(store.query(request))
    store.upsert([_point("globex", f"g{n}", 1, 0, latest=True, terms=[1, 2, 3]) for n in range(2, 40)])
    assert _scored(store.query(request)) == before
    store.delete(tenant_only("globex"))
    assert _scored(store.query(request)) == before


def test_retrieve_and_scroll_with_vectors(store):
    wanted = [point_id("d1", 2, "text", 0), point_id("g1", 1, "text", 4), str(uuid.uuid4())]
    got = {str(r.id): r for r in store.retrieve(wanted, with_payload=["tenant"])}
    assert set(got) == set(wanted[:2]) and set(got[wanted[0]].payload) == {"tenant"}
    record = next(iter(store.scroll(version_filter("d3", 1), with_vectors=True)))
    assert record.vector["text"] and list(record.vector["bm25"].indices) == [3]


def test_a_missing_collection_answers_empty(tmp_path):
    for kind in BACKENDS:
        s = _make(kind, tmp_path / kind)
        assert s.info() is None and s.count() == 0 and s.version_census() == {} and s.retrieve(["x"]) == []
        request = build_query("acme", SearchRequest(query="q", mode="dense"), dense=[1.0, 0, 0, 0], sparse=None)
        assert s.query(request) == []
        with pytest.raises(CollectionNotFoundError):
            s.backend.upsert(s.collection, _corpus()[:1])


def _with_fields(store: VectorStore) -> None:
    """Give the corpus user metadata and properties: d1 (both versions) legal, d2 hr, g1 (another tenant) legal."""
    from core.metadata import validate_metadata

    fields = {
        "d1": ({"dept": "legal", "tags": ["q1", "audit"], "year": 2024, "reviewed": True, "score": 0.5},
               {"page_count": 3, "created": "2024-02-01T00:00:00+00:00", "language": "en", "title": "Plan"}),
        "d2": ({"dept": "hr", "year": "2024", "reviewed": False, "score": 2},
               {"page_count": 12, "created": "2023-05-01T00:00:00+00:00", "language": "de"}),
        "g1": ({"dept": "legal"}, {"page_count": 3, "language": "en"}),
    }
    for doc, (metadata, properties) in fields.items():
        store.set_payload(models.Filter(must=[models.FieldCondition(key="document_id", match=models.MatchValue(value=doc))]),
                          {"metadata": validate_metadata(metadata), "properties": properties})


@pytest.mark.parametrize(
    "metadata, properties, expected",
    [
        ({"dept": "legal"}, None, {"d1"}),
        ({"dept": ["legal", "hr"]}, None, {"d1", "d2"}),
        ({"tags": "audit"}, None, {"d1"}),
        ({"tags": ["nope", "q1"]}, None, {"d1"}),
        ({"year": 2024}, None, {"d1"}),
        ({"year": "2024"}, None, {"d2"}),
        ({"year": [2024, "2024"]}, None, {"d1", "d2"}),
        ({"reviewed": False}, None, {"d2"}),
        ({"score": 0.5}, None, {"d1"}),
        ({"score": 2.0}, None, {"d2"}),
        ({"dept": "legal", "reviewed": False}, None, set()),
        ({"missing": "x"}, None, set()),
        (None, {"page_count": {"gte": 5}}, {"d2"}),
        (None, {"page_count": {"gt": 2, "lte": 3}}, {"d1"}),
        (None, {"page_count": 12}, {"d2"}),
        (None, {"created": {"gte": "2024-01-01", "lt": "2025-01-01"}}, {"d1"}),
        (None, {"language": ["de", "fr"]}, {"d2"}),
        (None, {"title": "Plan"}, {"d1"}),
        ({"dept": "legal"}, {"language": "en"}, {"d1"}),
    ],
)
def test_metadata_and_property_filters_match_alike_on_every_backend(pair, metadata, properties, expected):
    from core.metadata import validate_metadata_filter, validate_property_filter

    extra = search_conditions(metadata=validate_metadata_filter(metadata) if metadata else None,
                              properties=validate_property_filter(properties) if properties else None)
    for kind, s in pair.items():
        _with_fields(s)
        s.ensure_indexes({"metadata.dept": models.PayloadSchemaType.KEYWORD, "metadata.tags": models.PayloadSchemaType.KEYWORD})
        found = {p.payload["document_id"] for p in s.scroll(tenant_filter("acme", extra=extra))}
        assert found == expected, kind
        hits = s.query(build_query("acme", SearchRequest(query="x", mode="dense"), dense=[1.0, 0.0, 1.0, 1.0],
                                   sparse=None).model_copy(update={"filter": tenant_filter("acme", extra=extra)}))
        assert {p.payload["document_id"] for p in hits} == expected, kind


def test_set_metadata_replaces_the_whole_object_of_the_versions_named_only(store):
    _with_fields(store)
    store.set_metadata("d1", [2], {"dept": "finance"})
    by_version = {p.payload["version"]: p.payload["metadata"] for p in store.scroll(version_filter("d1", 1))}
    by_version |= {p.payload["version"]: p.payload["metadata"] for p in store.scroll(version_filter("d1", 2))}
    assert by_version[2] == {"dept": "finance"}  # replaced whole: the old keys are gone
    assert by_version[1]["dept"] == "legal"  # an older version keeps its own


def _keeps_indexes(store: VectorStore) -> bool:
    """qdrant-client's local mode keeps no payload index (it scans); Edge and a server do."""
    return not isinstance(getattr(store.backend, "client", None), QdrantClient) or bool(
        store.backend.client.get_collection(store.collection).payload_schema)


def test_payload_indexes_cover_properties_and_the_metadata_keys_written(store):
    if not _keeps_indexes(store):
        pytest.skip("qdrant-client's local mode keeps no payload index")
    assert {"tenant", "properties.page_count", "properties.language"} <= store.backend.indexes(store.collection)
    store.set_metadata("d1", [2], {"dept": "finance", "year": 2024})
    fields = store.backend.indexes(store.collection)
    assert "metadata.dept" in fields and "metadata.year" not in fields  # numbers match without an index
    fresh = VectorStore(store.settings, backend=store.backend)  # a new instance learns what exists
    assert fresh.ensure_indexes({"properties.page_count": models.PayloadSchemaType.INTEGER,
                                 "metadata.dept": models.PayloadSchemaType.KEYWORD}) == []


def test_pages_are_slices_of_one_ranking_with_full_payloads(pair):
    from core.vectorstore.schema import ranked_page

    request = build_query("acme", SearchRequest(query="x", mode="hybrid", top_k=3), dense=[1.0, 0.0, 1.0, 1.0],
                          sparse=([1, 2], [1.0, 1.0]))
    orders = {}
    for kind, s in pair.items():
        full = ranked_page(s.query(request), 0, 100)
        pages = s.query_pages([request] * 3, [(0, 4), (4, 4), (8, 4)])
        assert [str(p.id) for page in pages for p in page] == [str(p.id) for p in full[:12]], kind
        by_id = {str(p.id): p for p in full}
        for p in (p for page in pages for p in page):
            assert p.payload == by_id[str(p.id)].payload and "text" in p.payload, kind
            assert round(p.score, 4) == round(by_id[str(p.id)].score, 4)
        orders[kind] = _scored(p for page in pages for p in page)
    assert len({tuple(o) for o in orders.values()}) == 1  # every backend pages the same ranking
    assert pair["edge"].query_pages([], []) == []
