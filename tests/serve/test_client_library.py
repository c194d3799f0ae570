"""``serve.client.Client``, the library: against the uploads, search and documents applications in Ray Serve (as
``serve/config.yaml`` deploys them) with the real ingest job in between; its headers and errors against a mock."""

from __future__ import annotations

import json
import os

import httpx
import pytest

from core.objects import ObjectStore
from pipelines.ingest import run_ingest
from serve.client import ApiAnswerError, Client
from serve.client.cli import main
from tests.auth import make_key
from tests.serve.upload_helpers import PART, new_tenant, settings_overrides

RIVERS = "# Rivers\n\nThe Danube flows through ten countries before it reaches the Black Sea.\n"
PARTS = "# Spare parts\n\nOrder the replacement gasket QX-7731B for the pump housing.\n"


@pytest.fixture(scope="module")
def stack(make_settings, serve_http):
    from serve.documents.app import build_app as documents_app
    from serve.search.app import build_app as search_app
    from serve.uploads.app import build_app as uploads_app

    settings = make_settings(upload_part_size=PART)
    ObjectStore(settings).ensure_bucket()
    args = {"settings_overrides": settings_overrides(settings)}
    serve_http(uploads_app(args), "uploads", "/v1/uploads")
    serve_http(documents_app(args), "documents", "/v1")
    return settings, serve_http(search_app(args), "search", "/v1/search")


@pytest.mark.integration
def test_upload_search_and_manage_documents(stack, tmp_path):
    settings, base = stack
    tenant = new_tenant()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "rivers.md").write_text(RIVERS)
    (tmp_path / "docs" / "parts.md").write_text(PARTS)
    (tmp_path / "empty.txt").write_bytes(b"")
    with Client(base, tenant, api_key=make_key(tenant), state_file=tmp_path / "state.json") as client:
        results = client.upload([tmp_path / "docs"], prefix="kb", metadata={"dept": "ops"})
        assert [(r.remote, r.ok, r.version) for r in results] == [("kb/docs/parts.md", True, 1),
                                                                     ("kb/docs/rivers.md", True, 1)]
        assert client.upload([tmp_path / "docs" / "parts.md"], prefix="kb/docs")[0].deduplicated
        assert client.upload([tmp_path / "empty.txt"])[0].ok
        summary = run_ingest(settings, tenant=tenant)
        assert (summary.documents_indexed, summary.documents_failed) == (2, 1)

        hits = client.search("gasket QX-7731B", mode="sparse", top_k=3, metadata={"dept": "ops"})["results"]
        assert hits[0]["path"] == "kb/docs/parts.md"
        first, second = client.search_batch(["Danube Black Sea", {"query": "pump housing", "mode": "sparse"}])
        assert first["results"][0]["path"] == "kb/docs/rivers.md"
        assert second["results"][0]["path"] == "kb/docs/parts.md"

        parts = results[0].document_id
        assert client.document(parts) | {} == {**client.document(parts), "path": "kb/docs/parts.md",
                                                "status": "indexed", "latest_version": 1, "metadata": {"dept": "ops"}}
        assert [(v["version"], v["status"]) for v in client.versions(parts)] == [(1, "indexed")]
        assert [(d["path"], d["reason"]) for d in client.dead_letters()] == [("empty.txt", "empty_file")]

        client.delete(parts)
        assert client.document(parts)["status"] == "deleted"
        assert "kb/docs/parts.md" not in {h["path"] for h in client.search("replacement gasket", mode="sparse")["results"]}
        with pytest.raises(ApiAnswerError) as missing:
            client.document("not-a-document")
        assert (missing.value.status_code, missing.value.code) == (404, "not_found")


@pytest.mark.integration
def test_an_interrupted_upload_is_resumed_by_the_next_call(stack, tmp_path):
    settings, base = stack
    tenant = new_tenant()
    data = os.urandom(2 * PART + 1)
    (tmp_path / "large.bin").write_bytes(data)

    class Flaky(Client):
        sent = 0

        def put_presigned(self, signed, data):  # the default transfer sends the parts to S3 directly
            if Flaky.sent >= 1:
                raise httpx.ConnectError("the network went away")
            Flaky.sent += 1
            return super().put_presigned(signed, data)

    with Flaky(base, tenant, api_key=make_key(tenant), attempts=1, state_file=tmp_path / "state.json") as flaky, pytest.raises(httpx.ConnectError):
        flaky.upload([tmp_path / "large.bin"], parallel=1)
    assert len(json.loads((tmp_path / "state.json").read_text())) == 1

    with Client(base, tenant, api_key=make_key(tenant), state_file=tmp_path / "state.json") as client:
        (result,) = client.upload([tmp_path / "large.bin"])
    assert result.ok and result.resumed and result.version == 1
    assert ObjectStore(settings).get_bytes(f"{tenant}/large.bin") == data
    assert json.loads((tmp_path / "state.json").read_text()) == {}


def _recorder(seen: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.startswith("/v1/documents/"):
            return httpx.Response(404, json={"error": "not_found", "detail": "no document x"})
        return httpx.Response(200, json={"results": [], "took_ms": 1.0, "cached": False})

    return httpx.MockTransport(handler)


def test_the_api_key_is_sent_as_a_bearer_token_and_errors_raise(monkeypatch):
    seen: list[httpx.Request] = []
    with Client("http://sluice.test", "acme", api_key="s3cret", transport=_recorder(seen)) as client:
        client.search("q", offset=10, path_prefix="kb/")
        with pytest.raises(ApiAnswerError, match="not_found"):
            client.document("x")
    assert seen[0].headers["Authorization"] == "Bearer s3cret" and "X-User-ID" not in seen[0].headers
    assert json.loads(seen[0].content) == {"query": "q", "top_k": 10, "mode": "hybrid", "offset": 10,
                                           "filters": {"path_prefix": "kb/"}}
    with Client("http://sluice.test", "acme", transport=_recorder(seen)) as client:
        client.search("q")
    assert "Authorization" not in seen[-1].headers

    monkeypatch.setenv("SLUICE_API_KEY", "from-env")  # the command reads it; the library never does
    assert main(["--url", "http://sluice.test", "--tenant", "acme", "search", "q"], transport=_recorder(seen)) == 0
    assert seen[-1].headers["Authorization"] == "Bearer from-env"
