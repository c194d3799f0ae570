"""The Ollama provider: embeddings from an Ollama server over HTTP (``POST /api/embed``).

API (Ollama's ``docs/api.md``, "Generate Embeddings"): the request ``{"model": NAME, "input": [TEXT, ...],
"truncate": true}`` answers ``{"model": NAME, "embeddings": [[float, ...], ...]}``, one vector per input, in order;
errors answer ``{"error": MESSAGE}`` with a 4xx or 5xx status (404 when the model was never pulled).

Texts go in batches of ``batch_size`` per request. Transient failures only are retried, a bounded number of times
with exponential backoff and jitter (tenacity, through :func:`core.retry.call_with_retry`): connection errors and
timeouts, and the statuses 408, 429, 500, 502, 503 and 504 (a server that is loading the model or overloaded).
Anything else fails at once: a 404 as :class:`core.errors.ConfigurationError` (the model must be pulled), another
4xx or a malformed answer as :class:`core.errors.EmbeddingError`. Retries that run out raise
:class:`core.errors.ServiceUnavailableError` (``service="ollama"``), which stops the job. Vectors are L2-normalised
here (Ollama already normalises them; this keeps the contract whatever the server version).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import httpx
import numpy as np

from core.errors import ConfigurationError, EmbeddingError
from core.retry import call_with_retry
from pipelines.embed.providers import EmbeddingProvider, l2_normalise

logger = logging.getLogger(__name__)

#: HTTP statuses worth another try.
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: The text embedded once to learn the dimension.
PROBE_TEXT = "dimension probe"


class TransientHTTPError(Exception):
    """A response with a status in :data:`TRANSIENT_STATUSES` (retried)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class OllamaProvider(EmbeddingProvider):
    """Dense embeddings from an Ollama server.

    Args:
        model: the Ollama model name (``nomic-embed-text``, ``all-minilm:33m``), without the ``ollama:`` prefix.
        base_url: the server (``settings.ollama_url``, e.g. ``http://127.0.0.1:11434``).
        batch_size: texts per request.
        timeout_s: seconds for one request (connect, read and write each).
        attempts: tries per request, the first included. max_wait_s: the longest backoff sleep.
        keep_alive: how long the server keeps the model loaded after a request (Ollama's ``keep_alive``), or ``None``
            for the server's default.
        transport: an ``httpx`` transport (tests); ``None`` for the network.
    """

    kind = "ollama"

    def __init__(self, model: str, base_url: str, *, batch_size: int = 64, timeout_s: float = 120.0, attempts: int = 4,
                 max_wait_s: float = 4.0, keep_alive: str | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        if not model:
            raise ConfigurationError("an Ollama spec needs a model name: ollama:<model>")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1")
        self.spec = f"ollama:{model}"
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.batch_size = batch_size
        self.attempts = attempts
        self.max_wait_s = max_wait_s
        self.keep_alive = keep_alive
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout_s, transport=transport)
        self._dimension: int | None = None

    @property
    def dimension(self) -> int:
        """Learned by embedding one probe text (once; cached)."""
        if self._dimension is None:
            self._dimension = int(self._request([PROBE_TEXT]).shape[1])
        return self._dimension

    def warm_up(self) -> None:
        """Check that the server answers and has the model (learns the dimension)."""
        _ = self.dimension

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts in batches (see :meth:`EmbeddingProvider.embed`).

        Raises:
            ConfigurationError: the server does not have the model.
            EmbeddingError: ``embed_rejected`` (a 4xx other than 404), ``embed_bad_response`` (not one vector per
                text, or vectors of another length than before).
            ServiceUnavailableError: the server cannot be reached, or keeps failing, after the retries.
        """
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        parts = [self._request(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        vectors = np.concatenate(parts, axis=0)
        if self._dimension is None:
            self._dimension = int(vectors.shape[1])
        elif vectors.shape[1] != self._dimension:
            raise EmbeddingError("embed_bad_response",
                                 f"{self.spec} returned {vectors.shape[1]}-d vectors, {self._dimension}-d before")
        return vectors

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def _request(self, texts: list[str]) -> np.ndarray:
        """One ``/api/embed`` call, retried on transient errors; ``float32`` ``(len(texts), dim)``, unit rows."""
        body: dict = {"model": self.model, "input": texts, "truncate": True}
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        payload = call_with_retry("ollama", self._post, body,
                                  transient=(httpx.TransportError, TransientHTTPError),
                                  attempts=self.attempts, max_wait_s=self.max_wait_s)
        embeddings = payload.get("embeddings") if isinstance(payload, dict) else None
        if not isinstance(embeddings, list) or len(embeddings) != len(texts):
            count = len(embeddings) if isinstance(embeddings, list) else "no"
            raise EmbeddingError("embed_bad_response", f"{self.spec}: {count} embeddings for {len(texts)} texts")
        try:
            vectors = np.asarray(embeddings, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise EmbeddingError("embed_bad_response", f"{self.spec}: embeddings are not a matrix: {exc}") from exc
        if vectors.ndim != 2 or vectors.shape[1] == 0 or not np.isfinite(vectors).all():
            raise EmbeddingError("embed_bad_response", f"{self.spec}: embeddings of shape {vectors.shape}, or not finite")
        return l2_normalise(vectors)

    def _post(self, body: dict) -> dict:
        response = self._client.post("/api/embed", json=body)
        if response.status_code == 200:
            try:
                return response.json()
            except ValueError as exc:
                raise EmbeddingError("embed_bad_response", f"{self.spec}: the answer is not JSON") from exc
        message = _error_message(response)
        if response.status_code in TRANSIENT_STATUSES:
            raise TransientHTTPError(response.status_code, message)
        if response.status_code == 404:
            raise ConfigurationError(
                f"the Ollama server at {self.base_url} has no model {self.model!r} ({message}): "
                f"run `ollama pull {self.model}` there, or change the model spec"
            )
        raise EmbeddingError("embed_rejected", f"{self.spec}: HTTP {response.status_code}: {message}")


def _error_message(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(payload, dict) and "error" in payload:
        return str(payload["error"])[:200]
    return response.text[:200]
