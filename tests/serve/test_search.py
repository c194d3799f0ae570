"""POST /v1/search and /v1/search/batch through Ray Serve over real HTTP, on an index built by the real ingest job.

The engine's own behaviour (legs, fusion, filters, pagination) is pinned in ``test_search_engine.py``; overload in
``test_search_overload.py``.
"""

from __future__ import annotations

import httpx
import pytest

from core.cache import Cache
from core.objects import ObjectStore
from pipelines.ingest import run_ingest

from tests.auth import bearer

pytestmark = pytest.mark.integration

DOCS = {
    ("acme", "guide/rivers.md"): "# Rivers\n\nThe Danube flows through ten countries before it reaches the Black Sea.\n",
    ("acme", "guide/parts.md"): "# Spare parts\n\nOrder the replacement gasket QX-7731B for the pump housing.\n",
    ("acme", "notes/cooking.md"): "# Bread\n\nKnead the dough for ten minutes, then let it rise for an hour.\n",
    ("globex", "secret.md"): "# Ledger\n\nThe zyxquorbe ledger of globex lists every payment.\n",
}


@pytest.fixture(scope="module")
def indexed(ray_local, make_settings):
    settings = make_settings()
    objects = ObjectStore(settings)
    objects.ensure_bucket()
    for (tenant, path), text in DOCS.items():
        objects.put_bytes(f"{tenant}/{path}", text.encode())
    summary = run_ingest(settings, scan=True)
    assert summary.documents_indexed == len(DOCS)
    return settings


@pytest.fixture(scope="module")
def base_url(indexed, serve_http):
    from serve.search.app import build_app

    app = build_app({"settings_overrides": settings_overrides(indexed)})
    return serve_http(app, "search", route_prefix="/v1/search")


def settings_overrides(settings) -> dict:
    """The settings as ``build_app`` arguments (secrets in clear: the replicas rebuild ``Settings`` from them)."""
    return settings.model_dump(mode="python") | _secrets(settings)


def _secrets(settings) -> dict:
    overrides = {
        "s3_secret_key": settings.s3_secret_key.get_secret_value(),
        "qdrant_path": str(settings.qdrant_path),
    }
    overrides["qdrant_api_key"] = None
    return overrides


def post(base_url: str, body: dict, tenant: str | None = "acme", **headers) -> httpx.Response:
    if tenant is not None:
        headers.update(bearer(tenant))
    return httpx.post(f"{base_url}/v1/search", json=body, headers=headers, timeout=60)


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_each_mode_answers_the_contract(base_url, mode):
    response = post(base_url, {"query": "Which river reaches the Black Sea?", "top_k": 2, "mode": mode})
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-ID"]
    body = response.json()
    assert set(body) == {"results", "took_ms", "cached"}
    assert body["results"][0]["path"] == "guide/rivers.md"
    hit = body["results"][0]
    for field in ("point_id", "document_id", "version", "path", "modality", "chunk_index", "text", "score", "links"):
        assert field in hit
    assert hit["modality"] == "text" and hit["version"] == 1
    assert len(body["results"]) <= 2


def test_the_lexical_leg_finds_a_part_number(base_url):
    body = post(base_url, {"query": "QX-7731B", "mode": "sparse"}).json()
    assert body["results"][0]["path"] == "guide/parts.md"
    body = post(base_url, {"query": "QX-7731B", "mode": "hybrid"}).json()
    assert body["results"][0]["path"] == "guide/parts.md"


def test_the_client_request_id_is_returned(base_url):
    response = post(base_url, {"query": "bread"}, **{"X-Request-ID": "req-123"})
    assert response.headers["X-Request-ID"] == "req-123"


def test_errors_are_json_with_a_code(base_url):
    missing = post(base_url, {"query": "bread"}, tenant=None)
    assert missing.status_code == 401 and missing.json()["error"] == "unauthenticated"
    assert missing.headers["X-Request-ID"]
    bad_mode = post(base_url, {"query": "bread", "mode": "fuzzy"})
    assert bad_mode.status_code == 422 and bad_mode.json()["error"] == "invalid_request"
    assert "mode" in bad_mode.json()["detail"]
    blank = post(base_url, {"query": "   "})
    assert blank.status_code == 422
    not_json = httpx.post(f"{base_url}/v1/search", content=b"{nope", headers=bearer("acme"), timeout=30)
    assert not_json.status_code == 400 and not_json.json()["error"] == "invalid_json"
    # Nesting deeper than the decoder allows is bad JSON, not a server error; a huge body is refused unread.
    deep = httpx.post(f"{base_url}/v1/search", content=b"[" * 20000 + b"]" * 20000, headers=bearer("acme"), timeout=30)
    assert deep.status_code == 400 and deep.json()["error"] == "invalid_json"
    huge = httpx.post(f"{base_url}/v1/search", content=b" " * (2 * 1024 * 1024), headers=bearer("acme"), timeout=30)
    assert huge.status_code == 413 and huge.json()["error"] == "body_too_large"
    # Counts are integers: JSON true or "5" are not taken for 1 and 5.
    for wrong in (True, "5", 2.5):
        answer = post(base_url, {"query": "bread", "top_k": wrong})
        assert answer.status_code == 422 and "top_k" in answer.json()["detail"], wrong


def test_a_tenant_never_sees_another_tenants_document(base_url):
    for mode in ("dense", "sparse", "hybrid"):
        mine = post(base_url, {"query": "zyxquorbe ledger payments", "mode": mode, "top_k": 100}).json()["results"]
        assert all(r["path"] != "secret.md" for r in mine), mode
        theirs = post(base_url, {"query": "zyxquorbe ledger", "mode": mode, "top_k": 100}, tenant="globex").json()["results"]
        assert [r["path"] for r in theirs] == ["secret.md"], mode
    assert post(base_url, {"query": "rivers"}, tenant="nobody").json()["results"] == []


def test_filters_restrict_by_folder(base_url):
    body = post(base_url, {"query": "ten", "mode": "sparse", "filters": {"path_prefix": "notes"}, "top_k": 10}).json()
    assert [r["path"] for r in body["results"]] == ["notes/cooking.md"]


def test_answers_are_cached_until_the_next_ingest(indexed, base_url):
    query = {"query": "how long should dough rise", "top_k": 3}
    first = post(base_url, query).json()
    second = post(base_url, query).json()
    assert second["cached"] is True and second["results"] == first["results"]
    ObjectStore(indexed).put_bytes("acme/notes/more.md", b"# Dough\n\nLet the dough rise until it doubles.\n")
    assert run_ingest(indexed, tenant="acme", scan=True).documents_indexed == 1
    third = post(base_url, query).json()
    assert third["cached"] is False
    assert "notes/more.md" in [r["path"] for r in third["results"]]


def test_answers_are_cached_until_the_generation_moves(indexed, base_url):
    """A delete (or restore) advances the index generation, as ingest does: the next answer is computed afresh."""
    query = {"query": "Danube countries", "top_k": 2, "mode": "sparse"}
    post(base_url, query)
    assert post(base_url, query).json()["cached"] is True
    Cache(indexed).bump_generation()
    assert post(base_url, query).json()["cached"] is False


def test_the_route_answers_with_and_without_a_trailing_slash(base_url):
    for url in (f"{base_url}/v1/search", f"{base_url}/v1/search/"):
        response = httpx.post(url, json={"query": "Danube", "top_k": 1}, headers=bearer("acme"), timeout=60)
        assert response.status_code == 200, (url, response.text)
        assert response.json()["results"][0]["path"] == "guide/rivers.md"
    from ray import serve

    serve.delete("search-no-redis")


def test_batch_answers_each_query_in_order(base_url):
    queries = [
        {"query": "QX-7731B", "mode": "sparse", "top_k": 1},
        {"query": "Which river reaches the Black Sea?", "top_k": 1},
        {"query": "knead the dough", "mode": "sparse", "top_k": 1},
        {"query": "zyxquorbe", "mode": "sparse"},
    ]
    response = httpx.post(f"{base_url}/v1/search/batch", json={"queries": queries}, headers=bearer("acme"), timeout=60)
    assert response.status_code == 200, response.text
    answers = response.json()["answers"]
    assert [a["results"][0]["path"] if a["results"] else None for a in answers] == [
        "guide/parts.md", "guide/rivers.md", "notes/cooking.md", None,
    ]
    assert all(set(a) == {"results", "took_ms", "cached"} for a in answers)
    single = post(base_url, queries[1]).json()
    assert single["results"] == answers[1]["results"]


def test_batch_is_bounded_and_validated(base_url):
    from serve.search.query import MAX_BATCH_QUERIES

    def batch(body):
        return httpx.post(f"{base_url}/v1/search/batch", json=body, headers=bearer("acme"), timeout=60)

    too_many = batch({"queries": [{"query": f"q{i}"} for i in range(MAX_BATCH_QUERIES + 1)]})
    assert too_many.status_code == 422 and too_many.json()["error"] == "invalid_request"
    assert "queries" in too_many.json()["detail"]
    bad_item = batch({"queries": [{"query": "ok"}, {"query": "x", "top_k": 0}]})
    assert bad_item.status_code == 422 and "queries.1.top_k" in bad_item.json()["detail"]
    assert batch({"queries": []}).status_code == 422
    no_user = httpx.post(f"{base_url}/v1/search/batch", json={"queries": [{"query": "x"}]}, timeout=60)
    assert no_user.status_code == 401


def test_search_works_when_redis_is_down(indexed, serve_http, unused_port):
    overrides = settings_overrides(indexed) | {"redis_url": f"redis://127.0.0.1:{unused_port}/0"}
    from serve.search.app import build_app

    base = serve_http(build_app({"settings_overrides": overrides}), "search-no-redis", route_prefix="/no-redis")
    for _ in range(2):
        response = httpx.post(f"{base}/no-redis", json={"query": "Danube", "top_k": 1}, headers=bearer("acme"), timeout=60)
        assert response.status_code == 200, response.text
        assert response.json()["cached"] is False
        assert response.json()["results"][0]["path"] == "guide/rivers.md"
    from ray import serve

    serve.delete("search-no-redis")
