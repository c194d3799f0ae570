"""The embed stage: dense embeddings of chunk rows, on an actor pool (GPU when the cluster has one).

Reads ``text`` and ``error_reason``; writes ``embedding`` (``float32``, shape ``(rows, dim)``). Error rows and rows
without text (a picture whose OCR found none, an audio file without speech) get a zero vector, and the sink writes
no ``text`` vector for them (a zero vector has no cosine). The vectors come from the provider that
:class:`pipelines.embed.manager.EmbeddingManager` picks for ``settings.text_model`` (a local Hugging Face model, or
``ollama:<model>``).
"""

from __future__ import annotations

import numpy as np

from core import metrics
from core.settings import Settings
from pipelines import columns as C
from pipelines.embed.manager import EmbeddingManager


class EmbedStage:
    """A Ray Data callable class: the model loads once per actor, ``__call__`` embeds one batch.

    Args:
        settings: ``text_model``, ``embed_batch_size`` and ``ollama_url`` are used.
        device: ``None`` picks CUDA when the actor was given a GPU.
        num_threads: torch CPU threads of this actor (``None``: torch's default).

    Attributes:
        encoder: the :class:`pipelines.embed.providers.EmbeddingProvider` (it has ``encode``, like ``TextEncoder``).
        dim: the vector size.
    """

    def __init__(self, settings: Settings, device: str | None = None, num_threads: int | None = None) -> None:
        self.manager = EmbeddingManager(settings, device=device, num_threads=num_threads)
        self.encoder = self.manager.provider()
        self.encoder.warm_up()
        self.dim = self.encoder.dimension

    @metrics.timed("embed")
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Add the ``embedding`` column to a batch of chunk rows."""
        n = len(batch[C.TEXT])
        vectors = np.zeros((n, self.dim), dtype=np.float32)
        ok = [i for i in range(n) if not batch[C.ERROR_REASON][i] and str(batch[C.TEXT][i]).strip()]
        if ok:
            vectors[ok] = self.encoder.embed([str(batch[C.TEXT][i]) for i in ok])
        batch[C.EMBEDDING] = vectors
        return batch
