"""Bounded allocations: how much memory a model, a training step or a decode needs, checked
*before* anything is allocated.

A ``config.json`` saying ``vocab_size: 10**12`` or ``n_layers: 10**6``, or a flag such as
``--batch-size 10**9``, must end in one line that says what would be needed, not in a
traceback after minutes of swapping. Everything here works from numbers alone:

* :func:`parameter_count`: exact, from the model classes built on the ``meta`` device (no
  storage) with one and two layers, extrapolated linearly in depth, so a config with a million
  layers costs no more to count than one with two;
* :func:`safetensors_header`: names, dtypes and shapes from a weights file's header, read with
  safetensors' own reader (the tensor data is never touched);
* :func:`check_weights_file`: a glassformer model directory whose ``config.json`` and
  ``model.safetensors`` disagree (shapes, counts) is refused before the model is built;
* :func:`training_bytes` / :func:`generation_bytes` and :func:`check_fits`: estimates against
  :func:`available_bytes` on the target device.

The estimates are deliberately rough (within a factor of ~2); they exist to refuse what cannot
possibly fit, not to predict peak memory.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import torch

from glassformer.errors import CheckpointError, GlassformerError

log = logging.getLogger(__name__)

FP32 = 4  # bytes per float32
# weights + gradient + AdamW's two moments, fp32
TRAIN_BYTES_PER_PARAM = 4 * FP32


class MemoryLimitError(GlassformerError, ValueError):
    """A model or a flag would need more memory than the device has."""


def format_bytes(n: float) -> str:
    """``1.5 GB`` style, decimal units."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB", "EB"):
        if abs(n) < 1000 or unit == "EB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} EB"  # pragma: no cover


# ------------------------------------------------------------------------------- available


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Memory free for new allocations on ``device`` (None when unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            free, _total = torch.cuda.mem_get_info(device)
            return int(free)
        except (RuntimeError, AssertionError):
            return None
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None  # mps and others: unknown


def check_fits(needed: int, device: torch.device | str, what: str, fix: str) -> None:
    """Refuse ``needed`` bytes on ``device`` when more than what is available.

    ``what`` says who needs it (``"--batch-size 4096 --context 512"``), ``fix`` what to change.
    """
    free = available_bytes(device)
    if free is not None and needed > free:
        raise MemoryLimitError(f"{what}: needs about {format_bytes(needed)} but {torch.device(device).type} has "
                               f"{format_bytes(free)} available; {fix}")


# --------------------------------------------------------------------------- model configs


def _model_classes():
    from glassformer.models import MODEL_CLASSES
    from glassformer.models.config import CONFIG_CLASSES

    return MODEL_CLASSES, CONFIG_CLASSES


def _meta_count(config: Any) -> int:
    from glassformer.models.base import skip_init

    model_classes, _ = _model_classes()
    # shapes only: skip the random init, whose first call on the meta device costs ~2 s of imports
    with torch.device("meta"), skip_init():
        model = model_classes[config.model_type](config)
    return sum(p.numel() for p in model.parameters())


def parameter_count(config: Any) -> int:
    """Parameters of the model ``config`` describes (a ModelConfig or a glassformer config dict),
    counted without allocating: the model is built on the meta device with 1 and 2 layers per
    stack and the per-layer counts extrapolated to the configured depth."""
    if isinstance(config, dict):
        _, config_classes = _model_classes()
        kind = config.get("model_type")
        if kind not in config_classes:
            raise CheckpointError(f"model_type {kind!r} is not a glassformer family ({', '.join(config_classes)})")
        config = config_classes[kind].from_dict(config)
    layers = config.n_layers
    dec = getattr(config, "decoder_layers", None)
    one = dataclasses.replace(config, n_layers=1, **({"n_decoder_layers": 1} if dec is not None else {}))
    base = _meta_count(one)
    per_layer = _meta_count(dataclasses.replace(one, n_layers=2)) - base
    total = base + (layers - 1) * per_layer
    if dec is not None:
        per_dec = _meta_count(dataclasses.replace(one, n_decoder_layers=2)) - base
        total += (dec - 1) * per_dec
    return total


def check_model_fits(config: Any, device: torch.device | str = "cpu", source: str = "config.json",
                     training: bool = False) -> int:
    """Refuse a config whose weights (and, when ``training``, gradients and AdamW moments) cannot fit
    on ``device``; returns the parameter count."""
    n = parameter_count(config)
    per = TRAIN_BYTES_PER_PARAM if training else FP32
    check_fits(n * per, device, f"{source}: a model of {n:,} parameters",
               "check vocab_size, d_model, n_layers and d_ff")
    return n


# ------------------------------------------------------------------------------ weight files


def safetensors_header(path: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` from a safetensors file's header; the data is not read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            out = {}
            for name in f.keys():
                piece = f.get_slice(name)
                out[name] = (str(piece.get_dtype()), tuple(int(d) for d in piece.get_shape()))
            return out
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def header_parameter_count(path: str | os.PathLike) -> int:
    """Elements stored in a safetensors file (by its header)."""
    total = 0
    for _dtype, shape in safetensors_header(path).values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def check_weights_file(directory: str | os.PathLike, device: torch.device | str = "cpu",
                       training: bool = False) -> None:
    """A glassformer model directory whose ``config.json`` matches its ``model.safetensors``, and
    fits in memory: checked from the header and meta-device shapes before anything is allocated.

    Raises :class:`CheckpointError` naming the file and the first mismatch, or
    :class:`MemoryLimitError`.
    """
    from glassformer.io import read_json

    directory = Path(directory)
    config_path, weights_path = directory / "config.json", directory / "model.safetensors"
    data = read_json(config_path, error=CheckpointError)
    model_classes, config_classes = _model_classes()
    kind = data.get("model_type")
    if kind not in config_classes:
        raise CheckpointError(f"{config_path}: model_type {kind!r} is not a glassformer family")
    try:
        config = config_classes[kind].from_dict(data)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{config_path}: {e}") from None
    header = safetensors_header(weights_path)
    stored = sum(_numel(shape) for _dtype, shape in header.values())
    wanted = parameter_count(config)
    if wanted > stored:  # counted before building anything: a huge config stops here
        raise CheckpointError(f"{config_path}: describes a model of {wanted:,} parameters but {weights_path.name} "
                              f"holds {stored:,}; the config does not belong to these weights")
    check_model_fits(config, device, str(config_path), training=training)
    with torch.device("meta"):  # now bounded by the file's own size
        model = model_classes[kind](config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tied = set(getattr(model, "active_tied_weights", dict)())
    for name, shape in expected.items():
        if name not in header:
            if name in tied:
                continue
            raise CheckpointError(f"{weights_path}: no weight {name!r} (the config expects shape {shape})")
        if header[name][1] != shape:
            raise CheckpointError(f"{weights_path}: weight {name!r} has shape {header[name][1]}, but {config_path.name} "
                                  f"expects {shape}")


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# --------------------------------------------------------------------- Hugging Face configs

# config.json keys of the Hugging Face families glassformer reads, mapped to the plain quantities
_HF_KEYS = {
    "vocab": ("vocab_size",),
    "width": ("n_embd", "hidden_size", "d_model"),
    "layers": ("n_layer", "num_hidden_layers", "encoder_layers"),
    "extra_layers": ("decoder_layers",),
    "ffn": ("n_inner", "intermediate_size", "encoder_ffn_dim"),
    "positions": ("n_positions", "max_position_embeddings"),
}


def _hf_value(config: dict, role: str) -> int | None:
    for key in _HF_KEYS[role]:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def hf_parameter_estimate(config: dict) -> int | None:
    """A rough parameter count of a Hugging Face ``config.json`` (embeddings + layers), or None."""
    vocab, width, layers = _hf_value(config, "vocab"), _hf_value(config, "width"), _hf_value(config, "layers")
    if not (vocab and width and layers):
        return None
    ffn = _hf_value(config, "ffn") or 4 * width
    positions = _hf_value(config, "positions") or 0
    layers += _hf_value(config, "extra_layers") or 0
    return vocab * width + positions * width + layers * (4 * width * width + 2 * width * ffn)


def check_hf_weights(directory: str | os.PathLike, device: torch.device | str = "cpu") -> None:
    """Refuse a Hugging Face directory whose ``config.json`` describes a model far larger than its
    ``model.safetensors`` holds, or larger than memory; checked before the model is built."""
    from glassformer.io import read_json

    directory = Path(directory)
    config_path = directory / "config.json"
    config = read_json(config_path, error=CheckpointError)
    estimate = hf_parameter_estimate(config)
    if estimate is None:
        return
    weights = directory / "model.safetensors"
    if weights.is_file():
        try:
            stored = header_parameter_count(weights)
        except CheckpointError:
            return  # an unreadable file: the loader refuses it with its own message
        if estimate > 2 * stored + 1_000_000:  # the estimate is rough, a real mismatch is not
            raise CheckpointError(f"{config_path}: describes about {estimate:,} parameters but {weights.name} holds "
                                  f"{stored:,}; the config does not belong to these weights")
    check_fits(estimate * FP32, device, f"{config_path}: a model of about {estimate:,} parameters",
               "check vocab_size, hidden size and layer count")


# ----------------------------------------------------------------------- steps and decodes


def training_bytes(n_params: int, *, batch_size: int, seq_len: int, d_model: int, n_layers: int, n_heads: int,
                   vocab_size: int, amp: bool = False) -> int:
    """A rough upper estimate of one training step's memory: weights, gradients, AdamW moments,
    and the activations autograd keeps (per layer: ~16 residual-width tensors and the attention
    maps; plus the logits, their fp32 softmax and gradient)."""
    tokens = batch_size * seq_len
    act = FP32 // 2 if amp else FP32
    per_layer = tokens * d_model * 16 * act + batch_size * n_heads * seq_len * seq_len * 3 * act
    logits = tokens * vocab_size * (act + 2 * FP32)
    return n_params * TRAIN_BYTES_PER_PARAM + n_layers * per_layer + logits + tokens * 8 * 4


def generation_bytes(n_params: int, *, sequences: int, total_len: int, d_model: int, n_layers: int,
                     vocab_size: int, cross_len: int = 0) -> int:
    """A rough estimate of a decode's memory: weights, the KV cache of ``sequences`` rows
    (batch × beams) up to ``total_len`` positions (plus cross-attention keys over ``cross_len``
    source positions), and a row of logits per sequence (twice, for sampling or beam scores)."""
    kv = 2 * n_layers * sequences * (total_len + cross_len) * d_model * FP32
    return n_params * FP32 + kv + 2 * sequences * vocab_size * FP32 + sequences * total_len * 8


# ------------------------------------------------------------- a model directory, before it is built

_LAYER_KEY = r"^(encoder|decoder)\.layers\.(\d+)\."  # a stack's layer index in a weight's name
# the config fields a mismatched dimension is most likely to come from, most likely first
_WIDTH_FIELDS = ("vocab_size", "d_model", "d_ff", "max_len", "n_heads", "n_kv_heads", "num_labels", "type_vocab_size")


def check_model_dir(directory: str | os.PathLike, device: torch.device | str = "cpu") -> None:
    """Everything a model directory's ``config.json`` promises, checked before the model is built:
    a glassformer config against its ``model.safetensors`` header (:func:`check_config_matches_weights`)
    and the memory available; a Hugging Face config by :func:`check_hf_weights`. A config with no
    weights file beside it is left to the loader, which names the missing file."""
    from glassformer.io import read_json

    directory = Path(directory)
    data = read_json(directory / "config.json", error=CheckpointError)
    _, config_classes = _model_classes()
    if data.get("model_type") in config_classes and ("d_model" in data or "hidden_size" not in data):
        if (directory / "model.safetensors").is_file():
            check_config_matches_weights(directory, device)
    else:
        check_hf_weights(directory, device)


def _depth(config: Any, stack: str) -> tuple[str, int]:
    """(the config field giving ``stack``'s depth, the depth)."""
    if stack == "decoder" and hasattr(config, "n_decoder_layers"):
        return ("n_decoder_layers" if config.n_decoder_layers is not None else "n_layers"), config.decoder_layers
    return "n_layers", config.n_layers


def _field_for(config: Any, expected: tuple[int, ...], stored: tuple[int, ...]) -> tuple[str, int] | None:
    """The config field whose value is the dimension where ``expected`` and ``stored`` differ."""
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    ints = {k: v for k, v in values.items() if isinstance(v, int) and not isinstance(v, bool)}
    order = [f for f in _WIDTH_FIELDS if f in ints] + [f for f in ints if f not in _WIDTH_FIELDS]
    for want, have in zip(expected, stored):
        if want != have:
            for name in order:
                if ints[name] == want:
                    return name, want
    return None


def check_config_matches_weights(directory: str | os.PathLike, device: torch.device | str = "cpu") -> int:
    """A glassformer ``config.json`` that describes the weights in ``model.safetensors``, and a model
    that fits on ``device``; returns its parameter count. Nothing of the model is allocated: the
    depth is read from the header's layer names, the widths from a one-layer copy of the model on
    the meta device, so ``n_layers: 10**6`` or ``d_ff: 10**12`` costs no more than a small model.
    A mismatch is a :class:`CheckpointError` naming the config field and both files."""
    import re
    from unittest import mock

    from glassformer.io import read_json

    directory = Path(directory)
    config_path, weights_path = directory / "config.json", directory / "model.safetensors"
    data = read_json(config_path, error=CheckpointError)
    model_classes, config_classes = _model_classes()
    kind = data.get("model_type")
    try:
        config = config_classes[kind].from_dict(data)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{config_path}: {e}") from None
    header = safetensors_header(weights_path)
    layers: dict[str, set[int]] = {}
    for name in header:
        m = re.match(_LAYER_KEY, name)
        if m:
            layers.setdefault(m.group(1), set()).add(int(m.group(2)))
    for stack, indices in sorted(layers.items()):
        field, want = _depth(config, stack)
        if want != max(indices) + 1:
            raise CheckpointError(f"{config_path}: {field} is {want}, but {weights_path.name} holds "
                                  f"{max(indices) + 1} {stack} layers; the config does not belong to these weights")
    one = dataclasses.replace(config, n_layers=1, **({"n_decoder_layers": 1} if hasattr(config, "n_decoder_layers")
                                                      else {}))
    with torch.device("meta"), mock.patch.object(torch.nn.init, "normal_", lambda tensor, *a, **k: tensor):
        shallow = model_classes[kind](one)
    for name, tensor in shallow.state_dict().items():
        if name not in header or tuple(tensor.shape) == header[name][1]:
            continue
        expected, stored = tuple(tensor.shape), header[name][1]
        found = _field_for(config, expected, stored)
        what = f"{found[0]} is {found[1]}, but" if found else "it does not match:"
        raise CheckpointError(f"{config_path}: {what} {weights_path.name} holds {name!r} with shape {stored} (the "
                              f"config implies {expected}); the config does not belong to these weights")
    return check_model_fits(config, device, str(config_path))
