"""The ``documents`` Serve application over real HTTP, at its route prefix ``/v1``, as ``serve/config.yaml`` deploys it."""

from __future__ import annotations

import httpx
import pytest
from qdrant_client import models

from core.catalog import Catalog
from core.ids import document_id
from core.objects import ObjectStore
from core.vectorstore import VectorStore
from pipelines.ingest import run_ingest
from serve.documents.app import build_app
from tests.auth import bearer
from tests.pipelines.support import tiny_model

pytestmark = pytest.mark.integration

TENANT, OTHER = "docs-api", "intruder"


@pytest.fixture(scope="module")
def api(serve_http, make_settings, tmp_path_factory):
    settings = make_settings(text_model=tiny_model(tmp_path_factory.mktemp("tiny")), delete_objects=True)
    objects = ObjectStore(settings)
    objects.ensure_bucket()
    objects.put_bytes(f"{TENANT}/a.md", b"# A\n\nFirst words.\n")
    run_ingest(settings, tenant=TENANT, scan=True)
    objects.put_bytes(f"{TENANT}/a.md", b"# A\n\nSecond words, other ones.\n")
    objects.put_bytes(f"{TENANT}/bad.txt", b"")
    run_ingest(settings, tenant=TENANT, scan=True)
    overrides = {k: (v.get_secret_value() if hasattr(v, "get_secret_value") else str(v) if k == "qdrant_path" else v)
                 for k, v in settings.model_dump().items() if k != "ray_address"}
    base = serve_http(build_app({"settings_overrides": overrides}), "documents", "/v1")
    with httpx.Client(base_url=base, timeout=60) as client:
        yield settings, client


def _get(client, path, tenant=TENANT):
    return client.get(path, headers=bearer(tenant))


def test_a_document_and_its_versions(api):
    settings, client = api
    doc = document_id(TENANT, "a.md")
    answer = _get(client, f"/v1/documents/{doc}")
    assert answer.status_code == 200 and "x-request-id" in answer.headers, answer.text
    assert answer.json() | {} == {**answer.json(), "document_id": doc, "path": "a.md", "latest_version": 2, "status": "indexed"}
    versions = _get(client, f"/v1/documents/{doc}/versions").json()
    assert [(v["version"], v["status"], v["is_latest"], v["restorable"]) for v in versions] == [
        (1, "superseded", False, True), (2, "indexed", True, False)]


def test_another_tenant_gets_404_everywhere(api):
    _, client = api
    doc = document_id(TENANT, "a.md")
    headers = bearer(OTHER)
    for method, path in (("GET", f"/v1/documents/{doc}"), ("GET", f"/v1/documents/{doc}/versions"),
                         ("POST", f"/v1/documents/{doc}/versions/1/restore"), ("DELETE", f"/v1/documents/{doc}"),
                         ("GET", "/v1/documents/not-a-uuid")):
        answer = client.request(method, path, headers=headers)
        assert answer.status_code == 404, (method, path)
        assert answer.json()["error"] == "not_found"
    assert client.get(f"/v1/documents/{doc}").status_code == 401  # no credential


def test_restore_over_http(api):
    settings, client = api
    doc = document_id(TENANT, "a.md")
    answer = client.post(f"/v1/documents/{doc}/versions/1/restore", headers=bearer(TENANT))
    assert answer.status_code == 200 and answer.json()["latest_version"] == 1
    latest = list(VectorStore(settings).scroll(models.Filter(must=[
        models.FieldCondition(key="document_id", match=models.MatchValue(value=doc)),
        models.FieldCondition(key="is_latest", match=models.MatchValue(value=True))])))
    assert {p.payload["version"] for p in latest} == {1} and "First words" in latest[0].payload["text"]
    missing = client.post(f"/v1/documents/{doc}/versions/9/restore", headers=bearer(TENANT))
    assert missing.status_code == 404


def test_dead_letters_are_listed_per_tenant(api):
    _, client = api
    letters = _get(client, "/v1/dead-letters").json()
    assert [(l["path"], l["reason"]) for l in letters] == [("bad.txt", "empty_file")]
    assert _get(client, "/v1/dead-letters", tenant=OTHER).json() == []


def test_delete_over_http_removes_points_rows_stay_and_object_goes(api):
    settings, client = api
    doc = document_id(TENANT, "a.md")
    answer = client.delete(f"/v1/documents/{doc}", headers=bearer(TENANT))
    assert answer.status_code == 204
    assert VectorStore(settings).count(models.Filter(must=[
        models.FieldCondition(key="document_id", match=models.MatchValue(value=doc))])) == 0
    shown = _get(client, f"/v1/documents/{doc}").json()
    assert shown["status"] == "deleted" and shown["latest_version"] == 0
    assert len(_get(client, f"/v1/documents/{doc}/versions").json()) == 2
    assert f"{TENANT}/a.md" not in {o.key for o in ObjectStore(settings).list_objects(TENANT)}  # delete_objects
    catalog = Catalog(settings)
    try:
        assert catalog.get_document(doc).deleted
    finally:
        catalog.close()
    restore = client.post(f"/v1/documents/{doc}/versions/1/restore", headers=bearer(TENANT))
    assert restore.status_code == 409 and restore.json()["error"] == "deleted"
