"""Sluice's metrics reach Ray's Prometheus endpoint with the values a real run produced.

One module-wide run on real PostgreSQL, Redis, S3 and Ray: two ingest runs (three documents indexed and an empty one
failed, then nothing to do), searches in each mode through Serve over HTTP (one answered from the cache, a storm
that overloads a searcher with tiny limits), an upload completed and one refused, an optimisation of the embedded
store. Then the metrics agent of the test's Ray node (``metrics_export_port`` of ``ray.init``) is scraped until
every series shows what the run did (Ray exports every few seconds).
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from core import metrics
from core.catalog import Catalog
from core.objects import ObjectStore
from core.vectorstore import VectorStore
from pipelines.ingest import run_ingest
from tests.auth import bearer
from tests.serve.search_helpers import storm
from tests.serve.upload_helpers import PART, Uploads, new_tenant, random_bytes, settings_overrides, sha256_hex

pytestmark = pytest.mark.integration

#: Its own tenant: the catalog is the session's, and another module's "acme" documents would read as unchanged.
TENANT = new_tenant()

DOCS = {
    "guide/rivers.md": "# Rivers\n\nThe Danube flows through ten countries before it reaches the Black Sea.\n",
    "guide/parts.md": "# Spare parts\n\nOrder the replacement gasket QX-7731B for the pump housing.\n",
    "notes/cooking.md": "# Bread\n\nKnead the dough for ten minutes, then let it rise for an hour.\n",
    "bad/empty.txt": "",
}
#: Searches made one after the other: (mode, query); the last repeats the one before it (a cache hit).
SEARCHES = [
    ("dense", "Which river reaches the Black Sea?"),
    ("sparse", "QX-7731B"),
    ("hybrid", "how long does bread dough rise"),
    ("hybrid", "how long does bread dough rise"),
]
STORM = 30
#: Seconds to wait for Ray's metrics agent to show every expected value.
SCRAPE_WAIT_S = 90.0


def exported(name: str, suffix: str = "") -> str:
    """The scraped name of a Sluice metric (``ray_`` prefix, ``_total`` of a counter), plus a sample suffix."""
    return metrics.METRICS[name].exported + suffix


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of the endpoint: (name, labels, value)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def total(samples: Iterable[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """The sum over every process (``WorkerId``) of the samples of ``name`` with these labels."""
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == want for k, want in labels.items()))


@pytest.fixture(scope="module")
def run(ray_local, make_settings, serve_http):
    """Do the whole run once; returns what the metrics must show and the metrics URL."""
    from serve.search.app import build_app as search_app
    from serve.uploads.app import build_app as uploads_app

    settings = make_settings(upload_part_size=PART)
    objects = ObjectStore(settings)
    objects.ensure_bucket()
    for path, text in DOCS.items():
        objects.put_bytes(f"{TENANT}/{path}", text.encode())
    first = run_ingest(settings, scan=True)
    assert (first.documents_indexed, first.documents_failed) == (3, 1), first
    assert first.failures == {"empty_file": 1}

    overrides = settings_overrides(settings)
    search_url = serve_http(search_app({"settings_overrides": overrides,
                                        "searcher": {"max_ongoing_requests": 1, "max_queued_requests": 1}}),
                            "search", route_prefix="/v1/search")
    uploads_url = serve_http(uploads_app({"settings_overrides": overrides}), "uploads", route_prefix="/v1/uploads")

    cached = []
    for mode, query in SEARCHES:
        r = httpx.post(f"{search_url}/v1/search", json={"query": query, "mode": mode, "top_k": 2},
                       headers=bearer(TENANT), timeout=60)
        assert r.status_code == 200, r.text
        cached.append(r.json()["cached"])
    assert cached == [False, False, False, True]
    stormed = asyncio.run(storm(f"{search_url}/v1/search", STORM, TENANT))
    codes = [r.json().get("error", "ok") if r.status_code == 503 else r.status_code for r in stormed]
    assert set(codes) <= {200, "overloaded", "timeout"}, codes
    assert "overloaded" in codes, "30 searches at once against 1 ongoing + 1 queued slot must turn some away"

    uploads = Uploads(uploads_url, new_tenant())
    data = random_bytes(PART + 1024)  # two parts
    assert uploads.upload("reports/q1.bin", data).status_code == 200
    wrong = random_bytes(1024)
    created = uploads.create("reports/wrong.bin", len(wrong), sha256=sha256_hex(b"other bytes"))
    assert created.status_code == 201, created.text
    uploads.send_all(created.json()["upload_id"], wrong, PART)
    refused = uploads.complete(created.json()["upload_id"])
    assert refused.status_code == 422 and refused.json()["error"] == "checksum_mismatch"

    second = run_ingest(settings, tenant=TENANT)  # the uploaded version (another tenant) stays pending
    assert second.documents_unchanged == 4 and second.documents_indexed == 0, second
    pending = Catalog(settings).pending_versions()  # the session's catalog: other modules' versions count too
    assert pending >= 1

    store = VectorStore(settings)
    store.optimize(wait=True)
    info = store.info()
    served = codes.count(200)
    expected = {
        (exported("sluice_ingest_documents"), ("outcome", "indexed")): 3,
        (exported("sluice_ingest_documents"), ("outcome", "failed")): 1,
        (exported("sluice_ingest_documents"), ("outcome", "unchanged")): 4,
        (exported("sluice_ingest_failures"), ("reason", "empty_file")): 1,
        (exported("sluice_ingest_chunks"), ("outcome", "indexed")): first.chunks_indexed,
        (exported("sluice_ingest_chunks"), ("outcome", "embedded")): first.chunks_embedded,
        (exported("sluice_ingest_stage_seconds", "_count"), ("stage", "claim")): 2,
        (exported("sluice_ingest_stage_seconds", "_count"), ("stage", "dataset")): 1,
        (exported("sluice_ingest_versions_pending"), ()): pending,
        (exported("sluice_search_latency_seconds", "_count"), ("mode", "dense")): 1,
        (exported("sluice_search_latency_seconds", "_count"), ("mode", "sparse")): 1,
        (exported("sluice_search_latency_seconds", "_count"), ("mode", "hybrid")): 2 + served,
        (exported("sluice_search_latency_seconds", "_count"), ("cached", "true")): 1,
        (exported("sluice_search_cache"), ("outcome", "hit")): 1,
        (exported("sluice_search_cache"), ("outcome", "miss")): 3 + served,
        (exported("sluice_search_overload"), ("reason", "overloaded")): codes.count("overloaded"),
        (exported("sluice_upload_parts"), ()): 3,
        (exported("sluice_upload_bytes"), ()): len(data) + len(wrong),
        (exported("sluice_upload_completions"), ()): 1,
        (exported("sluice_upload_failures"), ("reason", "checksum_mismatch")): 1,
        (exported("sluice_vectorstore_points"), ("collection", settings.qdrant_collection)): info.points,
        (exported("sluice_vectorstore_segments"), ("collection", settings.qdrant_collection)): info.segments,
    }
    if codes.count("timeout"):
        expected[(exported("sluice_search_overload"), ("reason", "timeout"))] = codes.count("timeout")
    return {"url": f"http://127.0.0.1:{ray_local['metrics_export_port']}/metrics", "expected": expected,
            "collection": settings.qdrant_collection}


def _seen(samples, expected) -> dict:
    return {key: total(samples, key[0], **dict([key[1]] if key[1] else [])) for key in expected}


def test_the_endpoint_shows_what_the_run_did(run):
    deadline = time.monotonic() + SCRAPE_WAIT_S
    while True:
        samples = scrape(run["url"])
        seen = _seen(samples, run["expected"])
        wrong = {f"{name}{dict([labels]) if labels else ''}": (seen[(name, labels)], want)
                 for (name, labels), want in run["expected"].items() if seen[(name, labels)] != want}
        if not wrong or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not wrong, f"metric: (scraped, expected): {wrong}"
    # Histograms of timings: every stage of the dataset timed its batches, the optimisation was timed.
    for stage in ("prepare", "image", "embed", "write"):
        assert total(samples, exported("sluice_ingest_batch_seconds", "_count"), stage=stage) >= 1, stage
    assert total(samples, exported("sluice_vectorstore_optimize_seconds", "_count"), collection=run["collection"]) >= 1
    buckets = [lab["le"] for n, lab, _ in samples
               if n == exported("sluice_search_latency_seconds", "_bucket") and lab.get("mode") == "dense"]
    assert "0.001" in buckets and "+Inf" in buckets


def test_every_metric_is_in_the_dashboard_and_the_readme():
    """The Grafana dashboard draws every metric under its scraped name, and the README lists every one."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    dashboard = json.loads((root / "cluster" / "grafana" / "sluice.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    readme = (root / "README.md").read_text()
    for spec in metrics.METRICS.values():
        assert spec.exported in exprs, spec.exported
        assert spec.name in readme, spec.name
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in dashboard["templating"]["list"])
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"] if p["type"] != "row")
