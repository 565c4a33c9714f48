"""Checkpoints you can trust: atomic, complete, and pickle-free.

Layout of ``RUN/checkpoints/``::

    step_000200/            one complete checkpoint
        config.json, model.safetensors, tokenizer.json   (a loadable model directory)
        optimizer.safetensors   AdamW moments, flattened as ``state.<param>.<name>``
        rng.safetensors         torch CPU/CUDA RNG, the data generator, numpy's and Python's RNG
        trainer_state.json      step, schedule, optimiser groups, RNG scalars, best val loss, ...
    latest                  a text file naming the newest complete checkpoint

A save writes everything into ``.tmp-step_...`` in the same directory, fsyncs each file and the
directory, renames it into place, then replaces ``latest`` (write, fsync, rename). A crash at any
moment leaves ``latest`` pointing at a complete checkpoint; stale ``.tmp-*`` directories are
removed on the next start.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from glassformer.errors import CheckpointError
from glassformer.training.runtime import unwrap_model

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
STATE_NAME = "trainer_state.json"  # written last: its presence marks a complete checkpoint
CHECKPOINTS = "checkpoints"
LATEST = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")


# ------------------------------------------------------------------------------ file helpers


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers see the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


# ------------------------------------------------------------------------------ RNG states


def capture_rng(data_generator: torch.Generator | None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Every random stream a step draws from: (tensors, JSON scalars)."""
    tensors: dict[str, Tensor] = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = state
    mps = getattr(torch, "mps", None)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available() and mps is not None:
        tensors["torch_mps"] = mps.get_rng_state()
    if data_generator is not None:
        tensors["data_generator"] = data_generator.get_state()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    tensors["python_state"] = torch.tensor(internal, dtype=torch.int64)
    scalars = {"numpy": [kind, int(pos), int(has_gauss), float(cached)],
               "python": [version, gauss_next]}
    return tensors, scalars


def restore_rng(tensors: dict[str, Tensor], scalars: dict[str, Any], data_generator: torch.Generator | None) -> None:
    """Put every random stream back where :func:`capture_rng` found it."""
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = sorted(k for k in tensors if k.startswith("torch_cuda_"))
    if cuda and torch.cuda.is_available():
        states = [tensors[k] for k in cuda][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)
    if "torch_mps" in tensors and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.set_rng_state(tensors["torch_mps"])
    if data_generator is not None and "data_generator" in tensors:
        data_generator.set_state(tensors["data_generator"])
    kind, pos, has_gauss, cached = scalars["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, gauss_next = scalars["python"]
    random.setstate((version, tuple(int(x) for x in tensors["python_state"].tolist()), gauss_next))


# ------------------------------------------------------------------------- optimiser state


def flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An optimiser's state dict as (tensors for safetensors, JSON-able rest)."""
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"state.{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


# ----------------------------------------------------------------------------- save & load


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_generator: torch.Generator | None,
    state: dict[str, Any],
    tokenizer: Any = None,
    keep: int = 2,
    extra_files: dict[str, dict[str, Tensor]] | None = None,
) -> Path:
    """Atomically write the checkpoint of ``step`` and point ``latest`` at it; returns its path.

    ``state`` is the trainer's JSON-able state (schedule, best val loss, tokens seen, ...).
    ``extra_files`` are more safetensors files (name -> tensors) committed with the rest, e.g.
    every rank's RNG streams under torchrun. Only the ``keep`` newest step directories stay on disk.
    """
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        _write_checkpoint_files(tmp, step, model, optimizer, data_generator, state, tokenizer, extra_files)
        fsync_dir(tmp)
        final = root / name
        if final.exists():  # the same step saved again (e.g. an interrupt right after a save)
            old = root / f".old-{name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text_atomic(root / LATEST, name + "\n")
    prune_checkpoints(root, keep, protect=name)
    return final


def _write_checkpoint_files(directory: Path, step, model, optimizer, data_generator, state, tokenizer,
                            extra_files=None) -> None:
    plain = unwrap_model(model)
    plain.save_pretrained(directory)  # config.json + model.safetensors, keys free of wrapper prefixes
    if tokenizer is not None:
        tokenizer.save(directory)
    opt_tensors, opt_meta = flatten_optimizer(optimizer)
    save_file(opt_tensors, directory / "optimizer.safetensors")
    rng_tensors, rng_scalars = capture_rng(data_generator)
    save_file(rng_tensors, directory / "rng.safetensors")
    for name, tensors in (extra_files or {}).items():
        save_file(tensors, directory / name)
    for f in directory.iterdir():
        _fsync_file(f)
    payload = {"format_version": FORMAT_VERSION, "step": step, "optimizer": opt_meta, "rng": rng_scalars, **state}
    with open(directory / STATE_NAME, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def prune_checkpoints(root: Path, keep: int, protect: str) -> None:
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir())
    for _, path in steps[:-keep] if keep > 0 else []:
        if path.name != protect:
            shutil.rmtree(path, ignore_errors=True)


def clean_stale(run_dir: str | os.PathLike) -> None:
    """Remove temporary directories left by a save that was killed midway."""
    root = Path(run_dir) / CHECKPOINTS
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".old-", ".latest.tmp-")):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)


def is_complete(path: Path) -> bool:
    return all((path / n).is_file() for n in (STATE_NAME, "model.safetensors", "optimizer.safetensors", "rng.safetensors"))


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint ``latest`` names, or the newest complete one if ``latest`` is missing or broken."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return None
    pointer = root / LATEST
    if pointer.is_file():
        target = root / pointer.read_text().strip()
        if _STEP_DIR.match(target.name) and is_complete(target):
            return target
        log.warning("%s names %s, which is not a complete checkpoint; using the newest complete one", pointer, target.name)
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and is_complete(p))
    return steps[-1][1] if steps else None


def load_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    data_generator: torch.Generator | None,
    restore_rng_state: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint directory into ``model`` and ``optimizer``; restore RNGs; return the trainer state."""
    path = Path(path)
    if not is_complete(path):
        raise CheckpointError(f"{path}: not a complete checkpoint")
    try:
        state = json.loads((path / STATE_NAME).read_text())
        weights = load_file(path / "model.safetensors")
        opt_tensors = load_file(path / "optimizer.safetensors")
        rng_tensors = load_file(path / "rng.safetensors")
    except (OSError, json.JSONDecodeError, SafetensorError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({e})") from None
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {state.get('format_version')!r}, expected {FORMAT_VERSION}")
    plain = unwrap_model(model)
    device = next(plain.parameters()).device
    plain.load_weights({k: v.to(device) for k, v in weights.items()}, source=str(path / "model.safetensors"))
    if optimizer is not None:
        try:
            optimizer.load_state_dict(unflatten_optimizer(opt_tensors, state["optimizer"]))
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: optimizer state does not match the model ({e})") from None
    if restore_rng_state:
        restore_rng(rng_tensors, state["rng"], data_generator)
    return state
