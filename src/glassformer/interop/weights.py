"""Reading checkpoint weights without trusting them.

Hugging Face directories hold weights in one of four layouts, tried in this order:

    model.safetensors                 one file
    model.safetensors.index.json      shards listed in a ``weight_map``
    pytorch_model.bin                 a pickle, read with ``torch.load(weights_only=True)`` only
    pytorch_model.bin.index.json      pickled shards, same rule

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON describing
every tensor (dtype, shape, byte offsets into the data that follows), then the data. Before the
bytes reach ``safetensors`` we check that header ourselves, so a truncated or forged file fails
with a message that says what is wrong with it instead of a crash or a silent misread.

Pickles can run code while they are read. ``weights_only=True`` restricts unpickling to tensors
and plain containers; anything else (a function call, an arbitrary class) is refused before it
runs, and we report the refusal as a checkpoint error.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from glassformer.errors import CheckpointError
from glassformer.io import read_json

log = logging.getLogger(__name__)

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PICKLE_NAME = "pytorch_model.bin"
PICKLE_INDEX_NAME = "pytorch_model.bin.index.json"

# bytes per element of every dtype the safetensors format names
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit; a larger "header" is corruption
TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "F16": torch.float16,
    "BF16": torch.bfloat16, "I32": torch.int32, "F32": torch.float32, "I64": torch.int64, "F64": torch.float64,
}


def validate_safetensors(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Check a safetensors file's header against its size; return ``{name: {dtype, shape, data_offsets}}``.

    Raises :class:`CheckpointError` naming the file and the fault: a header length that runs
    past the end of the file, a header that is not a JSON object, an unknown dtype, a bad shape,
    byte offsets outside the data or overlapping another tensor, or offsets whose span does not
    equal dtype size × number of elements.
    """
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        raise CheckpointError(f"{path}: {size} bytes is too short for a safetensors file (truncated?)")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            raise CheckpointError(
                f"{path}: header length {n} runs past the end of the file ({size} bytes); the file is truncated or not safetensors"
            )
        if n > MAX_HEADER_BYTES:
            raise CheckpointError(f"{path}: header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: the safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header must be a JSON object")
    data_len = size - 8 - n
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise CheckpointError(f"{path}: __metadata__ must map strings to strings")
    spans = []
    for name, info in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict):
            raise CheckpointError(f"{where}: its header entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            raise CheckpointError(f"{where}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise CheckpointError(f"{where}: shape {shape!r} is not a list of non-negative integers")
        if not (
            isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise CheckpointError(f"{where}: data_offsets {offsets!r} is not a pair of integers")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise CheckpointError(
                f"{where}: data_offsets [{begin}, {end}] fall outside the {data_len} data bytes of the file"
            )
        need = math.prod(shape) * DTYPE_SIZES[dtype]
        if end - begin != need:
            raise CheckpointError(
                f"{where}: dtype {dtype} and shape {shape} need {need} bytes, but its offsets span {end - begin}"
            )
        spans.append((begin, end, name))
    spans.sort()
    for (_, prev_end, prev), (begin, _, name) in zip(spans, spans[1:]):
        if begin < prev_end:
            raise CheckpointError(f"{path}: tensors {prev!r} and {name!r} overlap in the data section")
    return header


def load_safetensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """Validate, then read a safetensors file onto the CPU."""
    validate_safetensors(path)
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def load_pickle(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a ``pytorch_model.bin`` with ``torch.load(weights_only=True)``: tensors only, no code.

    A pickle that names anything but tensors and plain containers is refused by the restricted
    unpickler before that object is built, so nothing it carries ever runs.
    """
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": noise next to a one-line error
            warnings.simplefilter("ignore")
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to unpickle: it asks for more than tensors ({_unpickler_reason(e)}); nothing in it was run"
        ) from None
    except Exception as e:  # torch raises RuntimeError/EOFError/ValueError… for corrupt archives
        raise CheckpointError(f"{path}: not a readable PyTorch weights file ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(state).__name__}")
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, Tensor):
            raise CheckpointError(f"{path}: entry {k!r} is a {type(v).__name__}, not a named tensor")
    return state


def _unpickler_reason(e: Exception) -> str:
    """The restricted unpickler's own reason, without torch's advice on how to bypass it."""
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\s+Please use|\n|$)", str(e))
    return match.group(1).strip() if match else "not a plain dict of tensors"


def _read_index(path: Path, suffix: str) -> dict[str, str]:
    """The ``weight_map`` of a shard index: tensor name -> shard file name in the same folder."""
    index = read_json(path, expect=None, error=CheckpointError)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{path}: no 'weight_map' object naming the shard of each tensor")
    for name, shard in weight_map.items():
        # shards must sit next to the index: refuse paths that would reach elsewhere on disk
        if not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", "..") or not shard.endswith(suffix):
            raise CheckpointError(f"{path}: tensor {name!r} points at {shard!r}, not a {suffix} file in this folder")
    return weight_map


def _load_sharded(index_path: Path, suffix: str, load_one) -> dict[str, Tensor]:
    weight_map = _read_index(index_path, suffix)
    state: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise CheckpointError(f"{index_path}: shard {shard} is missing")
        tensors = load_one(shard_path)
        wanted = {k for k, v in weight_map.items() if v == shard}
        absent = sorted(wanted - set(tensors))
        if absent:
            raise CheckpointError(f"{shard_path}: missing weight {absent[0]!r}, which {index_path.name} places there")
        for k in wanted:
            state[k] = tensors[k]
    return state


def weights_file(directory: str | os.PathLike) -> Path:
    """The weights file (or shard index) a Hugging Face directory will be read from."""
    directory = Path(directory)
    for name in (SAFETENSORS_NAME, SAFETENSORS_INDEX_NAME, PICKLE_NAME, PICKLE_INDEX_NAME):
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(
        f"{directory}: no weights found (looked for {SAFETENSORS_NAME}, {SAFETENSORS_INDEX_NAME}, {PICKLE_NAME}, {PICKLE_INDEX_NAME})"
    )


def read_weights(directory: str | os.PathLike) -> tuple[dict[str, Tensor], str]:
    """All tensors of a Hugging Face directory and the name of the file they came from."""
    path = weights_file(directory)
    if path.name == SAFETENSORS_NAME:
        return load_safetensors(path), str(path)
    if path.name == SAFETENSORS_INDEX_NAME:
        return _load_sharded(path, ".safetensors", load_safetensors), str(path)
    log.debug("%s: reading a pickled checkpoint with torch.load(weights_only=True)", path)
    if path.name == PICKLE_NAME:
        return load_pickle(path), str(path)
    return _load_sharded(path, ".bin", load_pickle), str(path)


# ------------------------------------------------------------------- one tensor at a time


def read_safetensors_one_by_one(path: str | os.PathLike) -> Iterator[tuple[str, Tensor]]:
    """Each tensor of a safetensors file in turn, read with plain file reads into a tensor of its own.

    Nothing is memory-mapped and nothing but the tensor being read is held here, so a loader that
    moves each tensor into the model as it comes holds one copy of the weights, not two.
    The header is validated first (:func:`validate_safetensors`).
    """
    header = validate_safetensors(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        data_start = 8 + n
        for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            if info["dtype"] not in TORCH_DTYPES:
                raise CheckpointError(f"{path}: tensor {name!r} has dtype {info['dtype']}, which torch cannot hold")
            tensor = torch.empty(info["shape"], dtype=TORCH_DTYPES[info["dtype"]])
            begin, end = info["data_offsets"]
            if end > begin:
                f.seek(data_start + begin)
                buffer = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())  # the tensor's own bytes
                if f.readinto(buffer) != end - begin:
                    raise CheckpointError(f"{path}: tensor {name!r} ends before its declared size (truncated?)")
            yield name, tensor


def iter_weights(directory: str | os.PathLike) -> tuple[Iterator[tuple[str, Tensor]], str]:
    """``(tensors, source)``: every tensor of a Hugging Face directory, one at a time and shard by
    shard for safetensors (see :func:`read_safetensors_one_by_one`); pickles are read whole."""
    path = weights_file(directory)
    if path.name == SAFETENSORS_NAME:
        return read_safetensors_one_by_one(path), str(path)
    if path.name == SAFETENSORS_INDEX_NAME:
        return _iter_shards(path), str(path)
    state, source = read_weights(directory)
    return iter(list(state.items())), source


def _iter_shards(index_path: Path) -> Iterator[tuple[str, Tensor]]:
    weight_map = _read_index(index_path, ".safetensors")
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise CheckpointError(f"{index_path}: shard {shard} is missing")
        wanted = {k for k, v in weight_map.items() if v == shard}
        for name, tensor in read_safetensors_one_by_one(shard_path):
            if name in wanted:
                wanted.discard(name)
                yield name, tensor
        if wanted:
            raise CheckpointError(f"{shard_path}: missing weight {sorted(wanted)[0]!r}, which {index_path.name} places there")
