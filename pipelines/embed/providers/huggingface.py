"""The Hugging Face provider: a local transformers model, on CPU or GPU (fp16), wrapping
:class:`pipelines.embed.dense.TextEncoder` (whose vectors equal ``SentenceTransformer.encode``'s for the same model).

Batch size: on CPU the configured one (``SLUICE_EMBED_BATCH_SIZE``). On a GPU it is sized to the free memory once the
model is loaded (:func:`gpu_batch_size`), and halved whenever a batch still runs out of memory, down to 1.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from core.errors import EmbeddingError
from pipelines.embed.dense import TextEncoder, model_dimension
from pipelines.embed.providers import EmbeddingProvider

logger = logging.getLogger(__name__)

#: Share of the free GPU memory the activations of one batch may take.
GPU_MEMORY_SHARE = 0.5
#: Largest batch a GPU is given (beyond it a GPU is saturated and latency only grows).
MAX_GPU_BATCH = 1024


def gpu_batch_size(free_bytes: int, *, seq_len: int, hidden: int, heads: int, dtype_bytes: int = 2,
                   floor: int = 1, ceiling: int = MAX_GPU_BATCH) -> int:
    """The largest power-of-two batch whose inference activations fit in a share of the free GPU memory.

    Per sequence and layer, inference keeps about ``seq_len × hidden × 8`` activations (the residual stream, Q, K,
    V, the attention output and the 4× feed-forward expansion) and ``heads × seq_len²`` attention scores, twice (the
    scores and their softmax); layers run one after the other, so one layer's worth is the peak.

    Args:
        free_bytes: free device memory (``torch.cuda.mem_get_info()[0]``).
        seq_len: tokens per text (the encoder's ``max_length``). hidden: the model's hidden size. heads: attention
            heads. dtype_bytes: 2 for fp16.
        floor, ceiling: bounds of the result.

    Returns:
        A power of two in ``[floor, ceiling]`` (``floor`` when even one sequence would not fit).
    """
    per_sequence = dtype_bytes * (seq_len * hidden * 8 + 2 * heads * seq_len * seq_len)
    fit = int(free_bytes * GPU_MEMORY_SHARE // max(per_sequence, 1))
    size = 1
    while size * 2 <= min(fit, ceiling):
        size *= 2
    return max(floor, min(size, ceiling))


class HuggingFaceProvider(EmbeddingProvider):
    """Dense embeddings from a local transformers model.

    Args:
        model: a spec for :func:`pipelines.embed.models.resolve_model_path` (folder, packaged name, cached id).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``; ``None`` picks CUDA when available.
        batch_size: texts per forward pass on CPU, and the smallest one on GPU.
        num_threads: torch CPU threads (``None``: torch's default).
        max_length: tokens per text (``None``: the model's own limit).
    """

    kind = "huggingface"

    def __init__(self, model: str, *, device: str | None = None, batch_size: int = 64, num_threads: int | None = None,
                 max_length: int | None = None) -> None:
        self.spec = model
        self.encoder = TextEncoder(model, device=device, batch_size=batch_size, max_length=max_length,
                                   num_threads=num_threads)
        self._dimension: int | None = None
        self._tuned = False

    @property
    def dimension(self) -> int:
        """Read from the model's configuration (the weights are not loaded for it)."""
        if self._dimension is None:
            self._dimension = model_dimension(self.spec)
        return self._dimension

    @property
    def device(self) -> str | None:
        """The device the model runs on (``None`` until loaded when it was not given)."""
        return self.encoder.device

    @property
    def batch_size(self) -> int:
        """Texts per forward pass now."""
        return self.encoder.batch_size

    def warm_up(self) -> None:
        """Load the model; on a GPU, size the batch to the free memory."""
        self.encoder.warm_up()
        if self._tuned:
            return
        self._tuned = True
        if str(self.encoder.device).startswith("cuda"):
            import torch

            free, _ = torch.cuda.mem_get_info(torch.device(self.encoder.device))
            config = self.encoder._model.config
            size = gpu_batch_size(free, seq_len=int(self.encoder.max_length), hidden=int(config.hidden_size),
                                  heads=int(getattr(config, "num_attention_heads", 12)),
                                  floor=self.encoder.batch_size)
            logger.info("embedding batch size %d on %s (%.1f GiB free)", size, self.encoder.device, free / 2**30)
            self.encoder.batch_size = size

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts (see :meth:`EmbeddingProvider.embed`); halves the batch and retries on GPU out-of-memory.

        Raises:
            EmbeddingError: ``embed_out_of_memory`` when even a batch of one does not fit.
        """
        import torch

        self.warm_up()
        while True:
            try:
                return self.encoder.encode(texts)
            except torch.cuda.OutOfMemoryError as exc:
                torch.cuda.empty_cache()
                if self.encoder.batch_size <= 1:
                    raise EmbeddingError("embed_out_of_memory", f"{self.spec}: one text does not fit: {exc}") from exc
                self.encoder.batch_size //= 2
                logger.warning("GPU out of memory: embedding batch size lowered to %d", self.encoder.batch_size)
