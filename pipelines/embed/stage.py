"""The embed stage: dense embeddings of chunk rows, on an actor pool (GPU when the cluster has one).

Reads ``text`` and ``error_reason``; writes ``embedding`` (``float32``, shape ``(rows, dim)``). Error rows get a
zero vector and are never written to the index.
"""

from __future__ import annotations

import numpy as np

from core.settings import Settings
from pipelines import columns as C
from pipelines.embed.dense import TextEncoder


class EmbedStage:
    """A Ray Data callable class: the model loads once per actor, ``__call__`` embeds one batch.

    Args:
        settings: ``text_model`` and ``embed_batch_size`` are used.
        device: ``None`` picks CUDA when the actor was given a GPU.
        num_threads: torch CPU threads of this actor (``None``: torch's default).
    """

    def __init__(self, settings: Settings, device: str | None = None, num_threads: int | None = None) -> None:
        self.encoder = TextEncoder(
            settings.text_model, device=device, batch_size=settings.embed_batch_size, num_threads=num_threads
        )
        self.encoder.warm_up()
        self.dim = self.encoder.dimension

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Add the ``embedding`` column to a batch of chunk rows."""
        n = len(batch[C.TEXT])
        vectors = np.zeros((n, self.dim), dtype=np.float32)
        ok = [i for i in range(n) if not batch[C.ERROR_REASON][i]]
        if ok:
            vectors[ok] = self.encoder.encode([str(batch[C.TEXT][i]) for i in ok])
        batch[C.EMBEDDING] = vectors
        return batch
