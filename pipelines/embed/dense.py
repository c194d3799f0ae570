"""Dense text embeddings with a local transformers model (CPU, or GPU in fp16).

Pooling and normalisation follow the model's sentence-transformers configuration when it has one
(``1_Pooling/config.json``, ``modules.json`` with a ``Normalize`` module, ``sentence_bert_config.json`` for the
maximum sequence length; sentence-transformers documentation, "Modules"), so the vectors equal what
``SentenceTransformer.encode`` gives for the same model. Without one: mean pooling, L2-normalised.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.errors import ConfigurationError
from pipelines.embed.models import resolve_model_path
from pipelines.embed.runtime import check_runtime_args, torch_runtime

logger = logging.getLogger(__name__)


def _read_json(path: Path) -> dict | list | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def model_dimension(spec: str) -> int:
    """The embedding dimension of a model, read from its configuration without loading the weights.

    Raises:
        ConfigurationError: the model cannot be found offline or has no ``hidden_size``.
    """
    from transformers import AutoConfig

    path = resolve_model_path(spec)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except OSError as exc:
        raise ConfigurationError(f"text model {spec!r} is not available offline at {path!r}: {exc}") from exc
    pooling = _read_json(Path(path) / "1_Pooling" / "config.json") if Path(path).is_dir() else None
    if isinstance(pooling, dict) and "word_embedding_dimension" in pooling:
        return int(pooling["word_embedding_dimension"])
    dim = getattr(config, "hidden_size", None)
    if not dim:
        raise ConfigurationError(f"text model {spec!r} has no hidden_size in its configuration")
    return int(dim)


class TextEncoder:
    """Encodes texts into L2-normalised dense vectors.

    Construction is light; :meth:`warm_up` (idempotent, called by :meth:`encode`) loads the tokenizer and weights.

    Args:
        model: a model spec for :func:`pipelines.embed.models.resolve_model_path`.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``; ``None`` picks CUDA when available.
        batch_size: texts per forward pass.
        max_length: tokens per text (longer texts are truncated); ``None``: the model's own limit.
        num_threads: torch intra-op threads on CPU; ``None`` leaves torch's setting.
    """

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        batch_size: int = 64,
        max_length: int | None = None,
        num_threads: int | None = None,
    ) -> None:
        check_runtime_args(batch_size, num_threads)
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length={max_length} must be at least 2")
        self.model_spec = model
        self.path = resolve_model_path(model)
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.num_threads = num_threads
        self._model = None
        self._tokenizer = None
        self._pooling = "mean"
        self._normalize = True

    def warm_up(self) -> None:
        """Load the tokenizer and the model once (idempotent).

        Raises:
            ConfigurationError: the model is not available offline.
        """
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        self.device, dtype = torch_runtime(self.device, self.num_threads)
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            model = AutoModel.from_pretrained(self.path, local_files_only=True, dtype=dtype)
        except OSError as exc:
            raise ConfigurationError(f"text model {self.model_spec!r} is not available offline: {exc}") from exc
        self._model = model.to(self.device).eval()
        root = Path(self.path)
        pooling = _read_json(root / "1_Pooling" / "config.json") if root.is_dir() else None
        if isinstance(pooling, dict) and pooling.get("pooling_mode_cls_token"):
            self._pooling = "cls"
        modules = _read_json(root / "modules.json") if root.is_dir() else None
        if isinstance(modules, list):
            self._normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
        sbert = _read_json(root / "sentence_bert_config.json") if root.is_dir() else None
        if self.max_length is None:
            limit = (sbert or {}).get("max_seq_length") if isinstance(sbert, dict) else None
            self.max_length = int(limit or min(getattr(self._tokenizer, "model_max_length", 512), 512))
        logger.info(
            "loaded text model %s on %s (pooling %s, max_length %d)", self.model_spec, self.device, self._pooling, self.max_length
        )

    @property
    def tokenizer(self):
        """The model's tokenizer (loads the model on first use)."""
        self.warm_up()
        return self._tokenizer

    @property
    def dimension(self) -> int:
        """The embedding dimension."""
        return model_dimension(self.model_spec)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts.

        Args:
            texts: ``n`` strings (an empty string gives the embedding of the empty text).

        Returns:
            ``float32`` array of shape ``(n, dim)``; rows are unit length when the model normalises.
        """
        import torch

        self.warm_up()
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        # Sort by length so each batch pads little; restore the order at the end.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                enc = self._tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self._model(**enc).last_hidden_state
                if self._pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = pooled.float()
                if self._normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                vectors = pooled.cpu().numpy()
                for row, i in enumerate(idx):
                    out[i] = vectors[row]
        return np.stack(out).astype(np.float32, copy=False)
