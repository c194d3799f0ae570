"""CLIP-family image and text embeddings (transformers ``CLIPModel``), for the ``image`` named vector.

The image side embeds pictures and tiles at ingest; the text side embeds a search query into the same space, so a
text query reaches pictures whose OCR found no words ("a bar chart", "a cat on a sofa"). Both give
L2-normalised ``float32`` vectors of the model's ``projection_dim`` (512 for openai/clip-vit-base-patch32), so a
dot product is the cosine similarity CLIP was trained with (Radford et al. 2021, "Learning Transferable Visual
Models From Natural Language Supervision").

The model comes from ``SLUICE_IMAGE_MODEL`` (``Settings.image_model``): a local folder holding a ``CLIPModel``
(``config.json``, weights) and its processor (``preprocessor_config.json`` or ``processor_config.json``, and
the tokenizer files), or a Hugging Face id already in the local cache. Nothing is downloaded
(``local_files_only=True``). Any checkpoint that ``CLIPModel`` loads works (OpenAI CLIP, OpenCLIP exports in
transformers format, fine-tunes); SigLIP, which has another class, does not.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from core.errors import ConfigurationError
from pipelines.embed.models import resolve_model_path
from pipelines.embed.runtime import check_runtime_args, torch_runtime

logger = logging.getLogger(__name__)


def image_model_dimension(spec: str) -> int:
    """The dimension of a CLIP model's vectors (``projection_dim``), read from its ``config.json`` alone.

    Raises:
        ConfigurationError: no model configured, or its configuration cannot be read offline.
    """
    path = _resolve(spec)
    config_file = Path(path) / "config.json"
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"image model {spec!r}: unreadable {config_file}: {exc}") from exc
        dim = config.get("projection_dim")
        if isinstance(dim, int) and dim > 0:
            return dim
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except OSError as exc:
        raise ConfigurationError(f"image model {spec!r} is not available offline at {path!r}: {exc}") from exc
    dim = getattr(config, "projection_dim", None)
    if not dim:
        raise ConfigurationError(f"image model {spec!r} has no projection_dim: it is not a CLIP-family model")
    return int(dim)


def _resolve(spec: str) -> str:
    if not spec:
        raise ConfigurationError(
            "no image model configured: set SLUICE_IMAGE_MODEL to a local folder holding a transformers CLIPModel "
            "and its processor (see README, 'Models')"
        )
    return resolve_model_path(spec)


class ClipEncoder:
    """Encodes pictures and texts with one CLIP model.

    Construction is light; :meth:`warm_up` (idempotent, called by the encode methods) loads the processor and the
    weights, ``float16`` on CUDA, ``float32`` on CPU.

    Args:
        model: the model spec (``Settings.image_model``): a folder, or a Hugging Face id in the local cache.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``; ``None`` picks CUDA when available.
        batch_size: pictures or texts per forward pass.
        num_threads: torch intra-op threads on CPU; ``None`` leaves torch's setting.

    Raises:
        ConfigurationError: (at construction) no model configured; (at :meth:`warm_up`) the model or its processor
            is not available offline, or is not a ``CLIPModel``.
        ValueError: ``batch_size`` or ``num_threads`` below 1.
    """

    def __init__(self, model: str, *, device: str | None = None, batch_size: int = 32, num_threads: int | None = None) -> None:
        check_runtime_args(batch_size, num_threads)
        self.model_spec = model
        self.path = _resolve(model)
        self.device = device
        self.batch_size = batch_size
        self.num_threads = num_threads
        self._model = None
        self._processor = None
        self._max_text_tokens = 77

    def warm_up(self) -> None:
        """Load the processor and the model once (idempotent).

        Raises:
            ConfigurationError: the model is not available offline, or is not a ``CLIPModel``.
        """
        if self._model is not None:
            return
        from transformers import CLIPModel, CLIPProcessor

        self.device, dtype = torch_runtime(self.device, self.num_threads)
        try:
            self._processor = CLIPProcessor.from_pretrained(self.path, local_files_only=True)
            model = CLIPModel.from_pretrained(self.path, local_files_only=True, dtype=dtype)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigurationError(f"image model {self.model_spec!r} is not a CLIP model available offline: {exc}") from exc
        self._model = model.to(self.device).eval()
        self._max_text_tokens = int(model.config.text_config.max_position_embeddings)
        logger.info("loaded image model %s on %s (dim %d)", self.model_spec, self.device, self.dimension)

    @property
    def dimension(self) -> int:
        """The vectors' dimension (``projection_dim``)."""
        if self._model is not None:
            return int(self._model.config.projection_dim)
        return image_model_dimension(self.model_spec)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed pictures.

        Args:
            images: ``n`` Pillow images (any mode; converted to ``RGB``). The processor resizes each (shortest
                side to the model's input, then a centre crop: a wide picture loses its sides, which is why large
                pictures are also embedded as tiles).

        Returns:
            ``float32`` array of shape ``(n, dim)``, rows of unit length.
        """
        import torch

        self.warm_up()
        if not images:
            return np.zeros((0, self.dimension), dtype=np.float32)
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = [image.convert("RGB") for image in images[start : start + self.batch_size]]
                pixels = self._processor(images=batch, return_tensors="pt")["pixel_values"]
                features = self._model.get_image_features(pixel_values=pixels.to(self.device, self._model.dtype))
                out.append(_normalised(features))
        return np.concatenate(out).astype(np.float32, copy=False)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts (search queries) into the pictures' space.

        Args:
            texts: ``n`` strings; each is cut to the model's text length (77 tokens for CLIP).

        Returns:
            ``float32`` array of shape ``(n, dim)``, rows of unit length.
        """
        import torch

        self.warm_up()
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = [str(text) for text in texts[start : start + self.batch_size]]
                # max_length is given: a tokenizer saved without model_max_length would not truncate at all.
                encoded = self._processor.tokenizer(batch, padding=True, truncation=True,
                                                    max_length=self._max_text_tokens, return_tensors="pt")
                features = self._model.get_text_features(input_ids=encoded["input_ids"].to(self.device),
                                                         attention_mask=encoded["attention_mask"].to(self.device))
                out.append(_normalised(features))
        return np.concatenate(out).astype(np.float32, copy=False)


def _normalised(features) -> np.ndarray:
    """Unit-length ``float32`` rows from ``get_*_features`` (a tensor in transformers 4, an output whose
    ``pooler_output`` holds the projected features in transformers 5)."""
    import torch

    tensor = features if isinstance(features, torch.Tensor) else features.pooler_output
    tensor = torch.nn.functional.normalize(tensor.float(), p=2, dim=1)
    return tensor.cpu().numpy()
