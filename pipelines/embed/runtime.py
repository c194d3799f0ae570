"""Where a local torch model runs: the device, torch's CPU threads and the weights' dtype, chosen one way for all.

Used by the models' ``warm_up`` methods (:class:`pipelines.embed.dense.TextEncoder`,
:class:`pipelines.embed.image.ClipEncoder`, :class:`pipelines.asr.Transcriber`), so that every model picks CUDA the
same way and loads in half precision there, and the encoders check ``batch_size``/``num_threads`` alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def torch_runtime(device: str | None, num_threads: int | None) -> tuple[str, torch.dtype]:
    """Set torch's intra-op threads and choose the device and dtype of a model.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``; ``None`` picks ``"cuda"`` when ``torch.cuda.is_available()``,
            else ``"cpu"``.
        num_threads: torch intra-op threads (``torch.set_num_threads``, process-wide); ``None`` or ``0`` leaves
            torch's setting.

    Returns:
        ``(device, dtype)``: the device given or picked, and ``torch.float16`` on a CUDA device, ``torch.float32``
        otherwise.
    """
    import torch

    if num_threads:
        torch.set_num_threads(num_threads)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, torch.float16 if device.startswith("cuda") else torch.float32


def check_runtime_args(batch_size: int, num_threads: int | None) -> None:
    """Check a model's ``batch_size`` and ``num_threads`` constructor arguments.

    Raises:
        ValueError: ``batch_size`` below 1, or ``num_threads`` given and below 1 (the message names the value).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"num_threads={num_threads} must be at least 1")
