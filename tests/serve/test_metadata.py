"""Document metadata end to end (README, "Document metadata"): uploaded with a file, through ``sluice upload --meta``
or S3 user metadata, indexed by the real ingest job, filtered on by every search mode, replaced by ``PATCH``.

The uploads, documents and search applications run side by side in Ray Serve, as ``serve/config.yaml`` deploys them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pytest

from core.catalog import Catalog
from core.ids import document_id
from core.objects import ObjectStore
from core.vectorstore import VectorStore, version_filter
from pipelines.ingest import run_ingest
from serve.client.api import SluiceClient
from serve.client.cli import main
from serve.client.state import StateFile
from serve.client.uploader import Uploader
from tests.auth import bearer, make_key
from tests.serve.upload_helpers import new_tenant, settings_overrides

pytestmark = pytest.mark.integration

LEGAL = "# Supply contract\n\nThe supplier delivers the pumps within thirty days of each order.\n"
HR = "# Holiday policy\n\nEvery employee takes thirty days of paid holiday in each calendar year.\n"
PLAIN = "# Notes\n\nThirty days hath September, April, June and November.\n"


@pytest.fixture(scope="module")
def stack(make_settings, serve_http):
    from serve.documents.app import build_app as documents_app
    from serve.search.app import build_app as search_app
    from serve.uploads.app import build_app as uploads_app

    settings = make_settings()
    ObjectStore(settings).ensure_bucket()
    args = {"settings_overrides": settings_overrides(settings)}
    serve_http(uploads_app(args), "uploads", "/v1/uploads")
    serve_http(documents_app(args), "documents", "/v1")
    base = serve_http(search_app(args), "search", "/v1/search")
    return settings, base


@pytest.fixture(scope="module")
def corpus(stack, tmp_path_factory):
    """Three files of one tenant: one with metadata from the command line, one from the library, one without."""
    settings, base = stack
    tenant = new_tenant()
    folder = tmp_path_factory.mktemp("files")
    for name, text in (("legal.md", LEGAL), ("hr.md", HR), ("plain.md", PLAIN)):
        (folder / name).write_text(text)
    state = folder / "state.json"
    assert main(["--url", base, "--api-key", make_key(tenant, "writer"), "upload", str(folder / "legal.md"),
                 "--to", "kb", "--meta", "dept=legal", "--meta", "tags=q1", "--meta", "tags=audit",
                 "--state-file", str(state), "--no-progress"]) == 0
    with SluiceClient(base, tenant, api_key=make_key(tenant, "writer")) as client:
        hr = Uploader(client, StateFile(state), metadata={"dept": "hr", "year": 2024, "reviewed": True})
        assert hr.upload(folder / "hr.md", "kb/hr.md").ok
        assert Uploader(client, StateFile(state)).upload(folder / "plain.md", "kb/plain.md").ok
    summary = run_ingest(settings, tenant=tenant)
    assert summary.documents_indexed == 3
    return tenant, folder


def _search(base: str, tenant: str, **body) -> httpx.Response:
    return httpx.post(f"{base}/v1/search", json={"query": "thirty days", "top_k": 10, **body},
                      headers=bearer(tenant), timeout=60)


def _paths(answer: httpx.Response) -> set[str]:
    assert answer.status_code == 200, answer.text
    return {r["path"] for r in answer.json()["results"]}


@pytest.mark.parametrize("mode", ["hybrid", "dense", "sparse"])
@pytest.mark.parametrize(
    "filters, expected",
    [
        ({"metadata": {"dept": "legal"}}, {"kb/legal.md"}),
        ({"metadata": {"dept": ["legal", "hr"]}}, {"kb/legal.md", "kb/hr.md"}),
        ({"metadata": {"tags": "audit"}}, {"kb/legal.md"}),
        ({"metadata": {"year": 2024, "reviewed": True}}, {"kb/hr.md"}),
        ({"metadata": {"dept": "legal", "year": 2024}}, set()),
        ({"properties": {"title": "Holiday policy"}}, {"kb/hr.md"}),
        ({"properties": {"language": "en"}, "metadata": {"dept": "hr"}}, {"kb/hr.md"}),
        ({}, {"kb/legal.md", "kb/hr.md", "kb/plain.md"}),
    ],
)
def test_metadata_and_properties_filter_every_mode(stack, corpus, mode, filters, expected):
    _, base = stack
    tenant, _ = corpus
    assert _paths(_search(base, tenant, mode=mode, filters=filters)) == expected


def test_results_and_documents_carry_metadata_and_properties(stack, corpus):
    _, base = stack
    tenant, _ = corpus
    results = _search(base, tenant, filters={"metadata": {"dept": "legal"}}).json()["results"]
    assert results and all(r["metadata"] == {"dept": "legal", "tags": ["q1", "audit"]} for r in results)
    assert all(r["properties"] == {"title": "Supply contract", "language": "en"} for r in results)
    doc = httpx.get(f"{base}/v1/documents/{document_id(tenant, 'kb/hr.md')}", headers=bearer(tenant)).json()
    assert doc["metadata"] == {"dept": "hr", "year": 2024, "reviewed": True}
    assert doc["properties"] == {"title": "Holiday policy", "language": "en"}
    plain = httpx.get(f"{base}/v1/documents/{document_id(tenant, 'kb/plain.md')}", headers=bearer(tenant))
    assert plain.json()["metadata"] == {}


def test_patch_replaces_metadata_at_once_without_re_embedding(stack, corpus):
    settings, base = stack
    tenant, _ = corpus
    doc = document_id(tenant, "kb/legal.md")
    headers = bearer(tenant)
    before = {str(p.id): p.vector for p in VectorStore(settings).scroll(version_filter(doc, 1), with_vectors=True)}
    assert _paths(_search(base, tenant, filters={"metadata": {"dept": "legal"}})) == {"kb/legal.md"}  # now cached

    answer = httpx.patch(f"{base}/v1/documents/{doc}", json={"metadata": {"dept": "finance", "tags": ["q2"]}},
                         headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"document_id": doc, "metadata": {"dept": "finance", "tags": ["q2"]}, "versions": [1]}
    assert _paths(_search(base, tenant, filters={"metadata": {"dept": "legal"}})) == set()
    for mode in ("hybrid", "dense", "sparse"):
        assert _paths(_search(base, tenant, mode=mode, filters={"metadata": {"dept": "finance"}})) == {"kb/legal.md"}
    after = {str(p.id): p.vector for p in VectorStore(settings).scroll(version_filter(doc, 1), with_vectors=True)}
    assert after == before  # the same points and vectors: nothing was embedded again
    versions = httpx.get(f"{base}/v1/documents/{doc}/versions", headers=headers).json()
    assert [(v["version"], v["metadata"]) for v in versions] == [(1, {"dept": "finance", "tags": ["q2"]})]
    history = Catalog(settings).metadata_history(doc)
    assert [(h["version"], h["source"], h["metadata"]["dept"]) for h in history] == [(1, "upload", "legal"),
                                                                                   (1, "patch", "finance")]


def test_a_new_version_keeps_its_predecessors_metadata_unless_it_brings_its_own(stack, corpus):
    settings, base = stack
    tenant, folder = corpus
    path, doc = "kb/hr.md", document_id(tenant, "kb/hr.md")
    state = StateFile(folder / "state-2.json")
    (folder / "hr.md").write_text(HR + "\nAmended: holidays may be carried over.\n")
    with SluiceClient(base, tenant, api_key=make_key(tenant, "writer")) as client:
        assert Uploader(client, state).upload(folder / "hr.md", path).version == 2
        run_ingest(settings, tenant=tenant)
        doc_json = httpx.get(f"{base}/v1/documents/{doc}", headers=bearer(tenant)).json()
        assert doc_json["latest_version"] == 2 and doc_json["metadata"] == {"dept": "hr", "year": 2024, "reviewed": True}

        (folder / "hr.md").write_text(HR + "\nAmended twice.\n")
        assert Uploader(client, state, metadata={"dept": "people"}).upload(folder / "hr.md", path).version == 3
        run_ingest(settings, tenant=tenant)
    assert _paths(_search(base, tenant, filters={"metadata": {"dept": "people"}})) == {path}
    assert _paths(_search(base, tenant, filters={"metadata": {"year": 2024}})) == set()
    versions = {v.version: v.metadata for v in Catalog(settings).list_versions(doc)}
    assert versions[1] == versions[2] == {"dept": "hr", "year": 2024, "reviewed": True}
    assert versions[3] == {"dept": "people"}


def test_s3_user_metadata_comes_in_through_scan(stack, corpus):
    settings, base = stack
    tenant, _ = corpus
    objects = ObjectStore(settings)
    data = b"# Runbook\n\nRestart the pump controller within thirty days of an alarm.\n"
    objects.client.put_object(objects.bucket, f"{tenant}/ops/runbook.md", io.BytesIO(data), len(data),
                              metadata={"x-amz-meta-dept": "ops", "x-amz-meta-retention-class": "gold",
                                        "x-amz-meta-bad.key": "left out"})
    run_ingest(settings, tenant=tenant, scan=True)
    assert _paths(_search(base, tenant, filters={"metadata": {"retention_class": "gold"}})) == {"ops/runbook.md"}
    (version,) = Catalog(settings).list_versions(document_id(tenant, "ops/runbook.md"))
    assert version.metadata == {"dept": "ops", "retention_class": "gold"}


@pytest.mark.parametrize(
    "metadata, key",
    [({"bad-key": "x"}, "bad-key"), ({"n": [1, 2]}, "n"), ({"o": {"a": 1}}, "o"), ({"s": "x" * 1025}, "s"),
     ({f"k{i}": "v" for i in range(65)}, ""), ("not an object", "")],
)
def test_invalid_metadata_is_refused_naming_the_key_and_nothing_is_stored(stack, corpus, metadata, key):
    settings, base = stack
    tenant, _ = corpus
    headers = bearer(tenant)
    created = httpx.post(f"{base}/v1/uploads", json={"path": "kb/new.md", "size": 3, "metadata": metadata},
                         headers=headers)
    assert created.status_code == 422 and created.json()["error"] == "invalid_metadata"
    assert created.json()["key"] == key
    assert all(u["path"] != "kb/new.md" for u in httpx.get(f"{base}/v1/uploads", headers=headers).json()["uploads"])

    doc = document_id(tenant, "kb/plain.md")
    patched = httpx.patch(f"{base}/v1/documents/{doc}", json={"metadata": metadata}, headers=headers)
    assert patched.status_code == 422 and patched.json()["key"] == key
    assert Catalog(settings).list_versions(doc)[-1].metadata == {}


def test_bad_filters_and_bodies_are_refused_with_what_was_wrong(stack, corpus):
    _, base = stack
    tenant, _ = corpus
    for filters, named in (({"metadata": {"bad-key": 1}}, "bad-key"), ({"properties": {"colour": "red"}}, "colour"),
                           ({"properties": {"title": {"gte": 1}}}, "title"), ({"metadata": {}}, "metadata")):
        answer = _search(base, tenant, filters=filters)
        assert answer.status_code == 422 and named in answer.json()["detail"], filters
    doc = document_id(tenant, "kb/plain.md")
    for body in ({"meta": {}}, {"metadata": {}, "other": 1}, []):
        assert httpx.patch(f"{base}/v1/documents/{doc}", json=body, headers=bearer(tenant)).status_code == 422
    assert httpx.patch(f"{base}/v1/documents/{doc}", json={"metadata": {"a": "b"}},
                       headers=bearer("someone-else")).status_code == 404
    assert main(["--url", base, "--tenant", tenant, "upload", str(Path(__file__)), "--meta", "novalue"]) == 2


def test_the_search_command_filters_on_metadata(stack, corpus, capsys):
    _, base = stack
    tenant, _ = corpus
    assert main(["--url", base, "--api-key", make_key(tenant, "reader"), "search", "thirty days", "--meta", "dept=hr", "--meta",
                 "dept=people", "--json"]) == 0
    paths = {r["path"] for r in json.loads(capsys.readouterr().out)["results"]}
    assert paths == {"kb/hr.md"}
