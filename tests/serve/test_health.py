"""``GET /v1/healthz`` and ``GET /v1/readyz`` over real HTTP (README, "Health checks"): ready when every service
answers, 503 naming the one that does not, and liveness untouched by a dependency that is down."""

from __future__ import annotations

import time

import httpx
import pytest

from core.objects import ObjectStore
from serve.documents.app import build_app
from tests.serve.upload_helpers import settings_overrides

pytestmark = pytest.mark.integration

SERVICES = {"postgres", "redis", "s3", "vector_store"}


def _ready(url: str, expect: set[str]) -> httpx.Response:
    """``GET url`` until the services in ``expect`` are up (the embedded store's owner actor starts on first use,
    and a readiness probe is retried until then), at most 60 s."""
    deadline = time.monotonic() + 60
    while True:
        answer = httpx.get(url, timeout=30)
        up = {n for n, c in answer.json()["checks"].items() if c["status"] == "up"}
        if expect <= up or time.monotonic() > deadline:
            return answer
        time.sleep(1)


@pytest.fixture(scope="module")
def apps(serve_http, make_settings):
    """The documents application twice: on the session's services, and with Redis pointing at a closed port."""
    from cluster.local.stack import free_port

    settings = make_settings()
    ObjectStore(settings).ensure_bucket()
    good = settings_overrides(settings)
    base = serve_http(build_app({"settings_overrides": good}), "documents", "/v1")
    bad = good | {"redis_url": f"redis://127.0.0.1:{free_port()}/0"}
    serve_http(build_app({"settings_overrides": bad}), "documents-no-redis", "/no-redis/v1")
    return base


def test_ready_when_every_service_answers(apps):
    answer = _ready(f"{apps}/v1/readyz", SERVICES)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "ready" and set(body["checks"]) == SERVICES
    for name, check in body["checks"].items():
        assert check["status"] == "up" and check["latency_ms"] >= 0, (name, check)
    live = httpx.get(f"{apps}/v1/healthz", timeout=30)
    assert live.status_code == 200 and live.json() == {"status": "ok"}


def test_a_service_down_makes_it_not_ready_and_names_it(apps):
    answer = _ready(f"{apps}/no-redis/v1/readyz", SERVICES - {"redis"})
    assert answer.status_code == 503, answer.text
    body = answer.json()
    assert body["status"] == "not_ready"
    assert body["checks"]["redis"]["status"] == "down" and body["checks"]["redis"]["detail"]
    assert {n for n, c in body["checks"].items() if c["status"] == "up"} == SERVICES - {"redis"}
    # Liveness says the process is up: a probe must not restart a replica for a dependency's outage.
    assert httpx.get(f"{apps}/no-redis/v1/healthz", timeout=30).status_code == 200


def test_the_probes_need_no_caller(apps):
    assert _ready(f"{apps}/v1/readyz", SERVICES).status_code == 200  # no credential
    assert httpx.get(f"{apps}/v1/healthz", timeout=30).status_code == 200
