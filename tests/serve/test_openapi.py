"""The typed API (README, "HTTP API"): every application's OpenAPI document is complete, and schemathesis, run
against the three live applications, finds no 5xx, no answer off its schema and no undocumented status code.

The applications run side by side in Ray Serve at their route prefixes, as ``serve/config.yaml`` deploys them, over a
tenant with an indexed document (so that searches and document reads answer with real results).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from core.ids import document_id
from core.objects import ObjectStore
from pipelines.ingest import run_ingest
from tests.auth import bearer, make_key
from tests.pipelines.support import tiny_model
from tests.serve.upload_helpers import new_tenant, settings_overrides

pytestmark = pytest.mark.integration

#: The checks the issue names: no 5xx, answers that conform to their schema and content type, documented statuses.
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
#: Cases per operation: enough to reach every error path of a route, small enough for two CPUs.
MAX_EXAMPLES = 25


@pytest.fixture(scope="module")
def stack(make_settings, serve_http, tmp_path_factory):
    from serve.documents.app import build_app as documents_app
    from serve.search.app import build_app as search_app
    from serve.uploads.app import build_app as uploads_app

    settings = make_settings(text_model=tiny_model(tmp_path_factory.mktemp("tiny")))
    tenant = new_tenant()
    objects = ObjectStore(settings)
    objects.ensure_bucket()
    objects.put_bytes(f"{tenant}/guide/rivers.md", b"# Rivers\n\nThe Danube flows through ten countries.\n")
    run_ingest(settings, tenant=tenant, scan=True)
    args = {"settings_overrides": settings_overrides(settings)}
    serve_http(uploads_app(args), "uploads", "/v1/uploads")
    serve_http(documents_app(args), "documents", "/v1")
    base = serve_http(search_app(args), "search", "/v1/search")
    created = httpx.post(f"{base}/v1/uploads", json={"path": "notes/pending.txt", "size": 12},
                         headers=bearer(tenant), timeout=60)
    assert created.status_code == 201, created.text
    return base, tenant, {"document_id": document_id(tenant, "guide/rivers.md"), "upload_id": created.json()["upload_id"]}


def test_each_application_documents_its_bodies_answers_and_errors(stack):
    base, _, _ = stack
    for url in ("/v1/search/openapi.json", "/v1/uploads/openapi.json", "/v1/openapi.json"):
        answer = httpx.get(base + url, timeout=60)
        assert answer.status_code == 200, (url, answer.text[:300])
        doc = answer.json()
        assert doc["paths"], url
        for path, operations in doc["paths"].items():
            for method, operation in operations.items():
                responses = operation["responses"]
                ok = [s for s in responses if s.startswith("2")]
                assert ok, (method, path)
                if method in ("post", "put", "patch") and not path.endswith(("/complete", "/restore")):
                    assert "requestBody" in operation, (method, path)
                for status in ok:
                    if status != "204":
                        assert responses[status]["content"]["application/json"]["schema"], (method, path, status)
                if path not in ("/healthz", "/readyz", "/v1/healthz", "/v1/readyz"):
                    assert responses["401"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    merged = httpx.get(base + "/v1/openapi.json", timeout=60).json()
    assert {"/v1/search", "/v1/search/batch", "/v1/uploads", "/v1/uploads/{upload_id}/parts/{part_number}",
            "/v1/documents/{document_id}", "/v1/healthz", "/v1/readyz"} <= set(merged["paths"])
    assert merged["components"]["schemas"]["SearchRequest"]["properties"]["top_k"]["maximum"] == 100
    assert "HTTPValidationError" not in json.dumps(merged)  # every 422 is our ErrorBody
    docs = httpx.get(base + "/v1/docs", timeout=60)
    assert docs.status_code == 200 and "/v1/openapi.json" in docs.text


def test_schemathesis_finds_no_failure_in_the_whole_api(stack, tmp_path):
    """The path parameters are real ids, so that cases reach past the 404 into each route's logic."""
    base, tenant, ids = stack
    config = tmp_path / "schemathesis.toml"
    config.write_text("[parameters]\n" + "".join(f'"path.{name}" = "{value}"\n' for name, value in ids.items()))
    junit = tmp_path / "junit.xml"
    command = [
        str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(config), "run",
        f"{base}/v1/openapi.json", "--url", base,
        "--checks", CHECKS, "--max-examples", str(MAX_EXAMPLES), "--header", f"Authorization: Bearer {make_key(tenant, 'admin')}",
        "--seed", "1", "--workers", "2", "--no-color", "--phases", "examples,coverage,fuzzing",
        "--generation-database", "none", "--request-timeout", "60", "--suppress-health-check", "all",
        "--report", "junit", "--report-junit-path", str(junit),
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path,
                         env=dict(os.environ, NO_COLOR="1"))
    summary = run.stdout[-6000:]
    print(summary)  # the number of generated cases is in its last lines
    assert run.returncode == 0, summary + run.stderr[-2000:]
    cases = re.search(r"(\d+) generated", run.stdout)
    assert cases and int(cases.group(1)) >= 100, summary
    report = junit.read_text()
    assert 'failures="0"' in report and 'errors="0"' in report
