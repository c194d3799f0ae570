"""POST /v1/search over real HTTP on a mixed index built by the real ingest: image results with their links and
previews, the CLIP leg for ``modalities: ["image"]``, audio results with their times (a tiny CLIP and a tiny Whisper
built from transformers configs; RapidOCR; the real text model)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from qdrant_client import models

from core.ids import document_id
from core.objects import ObjectStore
from core.vectorstore import VectorStore
from pipelines.ingest import run_ingest
from tests.auth import bearer
from tests.pipelines.media_helpers import media_settings, red_square_png
from tests.serve.test_search import settings_overrides

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TENANT = "media"
ADD_ONE = "images/rustdoc-add-one.png"
SPEECH = "audio/maintenance-notice.wav"
SQUARE = "images/red-square.png"


@pytest.fixture(scope="module")
def indexed(ray_local, make_settings, tmp_path_factory):
    settings = media_settings(make_settings, tmp_path_factory)
    objects = ObjectStore(settings)
    objects.ensure_bucket()
    files = {ADD_ONE: (EXAMPLES / ADD_ONE).read_bytes(), SPEECH: (EXAMPLES / SPEECH).read_bytes(),
             SQUARE: red_square_png(), "docs/httpx.md": (EXAMPLES / "docs" / "httpx.md").read_bytes()}
    for path, data in files.items():
        objects.put_bytes(f"{TENANT}/{path}", data)
    summary = run_ingest(settings, tenant=TENANT, scan=True)
    assert summary.documents_indexed == len(files), summary
    return settings


@pytest.fixture(scope="module")
def base_url(indexed, serve_http):
    from serve.search.app import build_app

    app = build_app({"settings_overrides": settings_overrides(indexed)})
    return serve_http(app, "search", route_prefix="/v1/search")


def post(base_url: str, body: dict) -> list[dict]:
    response = httpx.post(f"{base_url}/v1/search", json=body, headers=bearer(TENANT), timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_an_image_hit_comes_with_its_links_and_their_previews(base_url):
    results = post(base_url, {"query": "adds one to the number given", "top_k": 5})
    hit = next(r for r in results if r["path"] == ADD_ONE)
    assert hit["modality"] == "image" and "add_one" in hit["text"]
    assert hit["kind"] in ("image", "tile") and len(hit["box"]) == 4
    assert hit["links"], "a picture links its tiles, a tile its picture"
    for link in hit["links"]:
        assert set(link) >= {"id", "modality", "chunk_index", "relation"} and link["modality"] == "image"
    whole = post(base_url, {"query": "adds one to the number given", "top_k": 20, "mode": "sparse",
                            "filters": {"path_prefix": "images"}})
    picture = next(r for r in whole if r["path"] == ADD_ONE and r["chunk_index"] == 0)
    previews = [link.get("preview", "") for link in picture["links"] if link["relation"] == "tile"]
    assert any("add_one" in p for p in previews), previews  # filled in at search time from the tiles' OCR text


def test_modalities_image_adds_the_clip_leg(base_url):
    images = post(base_url, {"query": "a red square", "top_k": 50, "modalities": ["image"]})
    assert {r["modality"] for r in images} == {"image"}
    assert SQUARE in {r["path"] for r in images}  # no OCR text: only its CLIP vector can match
    plain = post(base_url, {"query": "a red square", "top_k": 50})
    assert SQUARE not in {r["path"] for r in plain}


def test_audio_results_carry_start_and_end(indexed, base_url):
    flt = models.Filter(must=[models.FieldCondition(key="document_id",
                                                    match=models.MatchValue(value=document_id(TENANT, SPEECH)))])
    segment = min(VectorStore(indexed).scroll(flt), key=lambda r: r.payload["chunk_index"])
    results = post(base_url, {"query": segment.payload["text"][:200], "top_k": 20, "mode": "sparse",
                              "modalities": ["audio"]})
    hit = next(r for r in results if r["point_id"] == str(segment.id))
    assert hit["modality"] == "audio" and 0 <= hit["start_s"] < hit["end_s"]
    assert (hit["start_s"], hit["end_s"]) == (segment.payload["start_s"], segment.payload["end_s"])
