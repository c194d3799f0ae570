"""Overload: a searcher with tiny limits turns the excess away at once with a JSON 503, and every request ends."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from qdrant_client import models

from core.ids import point_id
from core.vectorstore import SPARSE_VECTOR, TEXT_VECTOR, VectorStore
from pipelines.embed.dense import TextEncoder
from pipelines.sparse import Bm25Encoder
from tests.auth import bearer
from tests.serve.search_helpers import storm

pytestmark = pytest.mark.integration

TEXTS = [
    "The Danube flows through ten countries before it reaches the Black Sea.",
    "Knead the dough for ten minutes, then let it rise for an hour.",
    "Order the replacement gasket QX-7731B for the pump housing.",
]


@pytest.fixture(scope="module")
def base_url(ray_local, make_settings, serve_http):
    from serve.search.app import build_app

    settings = make_settings()
    store = VectorStore(settings)
    store.ensure_collection(384)
    vectors = TextEncoder(settings.text_model).encode(TEXTS)
    bm25 = Bm25Encoder()
    points = []
    for i, (text, vector) in enumerate(zip(TEXTS, vectors)):
        document_id = str(uuid.uuid4())
        indices, values = bm25.encode_document(text)
        points.append(models.PointStruct(
            id=point_id(document_id, 1, "text", 0),
            vector={TEXT_VECTOR: vector.tolist(), SPARSE_VECTOR: models.SparseVector(indices=indices, values=values)},
            payload={"tenant": "acme", "document_id": document_id, "version": 1, "is_latest": True,
                     "path": f"doc{i}.txt", "dirs": [], "modality": "text", "chunk_index": 0, "text": text, "links": []},
        ))
    store.upsert(points)
    overrides = settings.model_dump(mode="python") | {
        "s3_secret_key": settings.s3_secret_key.get_secret_value(), "qdrant_path": str(settings.qdrant_path),
        "qdrant_api_key": None,
    }
    app = build_app({
        "settings_overrides": overrides,
        "searcher": {"max_ongoing_requests": 1, "max_queued_requests": 1},
    })
    return serve_http(app, "search-tiny", route_prefix="/v1/search")


def test_overload_answers_503_json_quickly_and_nothing_hangs(base_url):
    responses = asyncio.run(storm(f"{base_url}/v1/search", 40))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, [r.text for r in responses if r.status_code not in (200, 503)][:3]
    rejected = [r for r in responses if r.status_code == 503]
    served = [r for r in responses if r.status_code == 200]
    assert rejected, "40 concurrent searches against 1 ongoing + 1 queued slot must turn some away"
    assert served, "the searcher must keep answering what it accepted"
    for r in rejected:
        assert r.json()["error"] == "overloaded"
        assert r.headers["Retry-After"] == "1"
    assert served[0].json()["results"][0]["path"] == "doc0.txt"
    # Once the storm has passed, the searcher answers again.
    after = httpx.post(f"{base_url}/v1/search", json={"query": "Danube"}, headers=bearer("acme"), timeout=60)
    assert after.status_code == 200


def test_a_batch_counts_as_one_request_and_runs_its_queries_together(base_url):
    queries = [{"query": f"dough rising time {i}", "top_k": 1} for i in range(20)]
    response = httpx.post(f"{base_url}/v1/search/batch", json={"queries": queries}, headers=bearer("acme"),
                          timeout=120)
    assert response.status_code == 200, response.text
    answers = response.json()["answers"]
    assert len(answers) == 20
    assert all(a["results"][0]["path"] == "doc1.txt" for a in answers)
