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
from glassformer.io import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    fsync_dir,
    make_dirs,
    read_json,
    unwrap_model,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
STATE_NAME = "trainer_state.json"  # written last: its presence marks a complete checkpoint
CHECKPOINTS = "checkpoints"
LATEST = "latest"
RANK_RNG_FILE = "rng_ranks.safetensors"  # under torchrun: every rank's RNG tensors, keys "rank<r>.<stream>"
RANK_RNG_KEY = "rank_rng"  # trainer_state.json: every rank's RNG scalars (numpy, python), by rank
_STEP_DIR = re.compile(r"^step_(\d+)$")
_LEGACY_PLOT_TMP = re.compile(r"^\.loss\.tmp-(\d+)\.png$")  # left by kill -9 in older versions


# ------------------------------------------------------------------------------ file helpers


def save_model_files(model: nn.Module, directory: str | os.PathLike) -> None:
    """``config.json`` + ``model.safetensors`` (tied copies left out, keys free of wrapper
    prefixes), each written atomically with umask permissions: what ``save_pretrained`` writes."""
    plain = unwrap_model(model)
    directory = make_dirs(directory)
    tied = plain.active_tied_weights()
    state = {k: v.detach().contiguous() for k, v in plain.state_dict().items() if k not in tied}
    save_tensors(state, directory / "model.safetensors")
    atomic_write_json(directory / "config.json", plain.config.to_dict())


def save_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    """A safetensors file written atomically with umask permissions (``save_file`` alone makes it 0600)."""
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})


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


RNG_TENSORS = ("torch_cpu", "numpy_keys", "python_state")


def restore_rng(tensors: dict[str, Tensor], scalars: dict[str, Any], data_generator: torch.Generator | None,
                source: str = "rng.safetensors") -> None:
    """Put every random stream back where :func:`capture_rng` found it.

    A stream missing from ``tensors`` or ``scalars`` is a :class:`CheckpointError` naming ``source``."""
    missing = [k for k in RNG_TENSORS if k not in tensors]
    if data_generator is not None and "data_generator" not in tensors:
        missing.append("data_generator")
    missing += [f"trainer_state.json rng.{k}" for k in ("numpy", "python") if k not in (scalars or {})]
    if missing:
        raise CheckpointError(f"{source}: no random state {missing[0]!r}, so the run cannot continue exactly; "
                              f"resume from an earlier checkpoint (write its name into checkpoints/latest)")
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = sorted(k for k in tensors if k.startswith("torch_cuda_"))
    if cuda and torch.cuda.is_available():
        states = [tensors[k] for k in cuda][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)
    if "torch_mps" in tensors and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.set_rng_state(tensors["torch_mps"])
    if data_generator is not None:
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


def check_optimizer_state(state: dict[str, Any], params: list[Tensor], names: list[str], source: str) -> None:
    """Every saved moment has its parameter's shape (``load_state_dict`` checks only the counts).

    ``params``/``names``: the optimiser's parameters in its own order and their names."""
    for idx, entry in state["state"].items():
        if not 0 <= int(idx) < len(params):
            raise CheckpointError(f"{source}: state for parameter {idx}, but the optimiser has {len(params)}")
        want = tuple(params[int(idx)].shape)
        for key, value in entry.items():
            if isinstance(value, Tensor) and value.dim() > 0 and tuple(value.shape) != want:
                raise CheckpointError(f"{source}: state.{idx}.{key} has shape {tuple(value.shape)} but parameter "
                                      f"{names[int(idx)]!r} has {want}; the optimiser state does not belong to this "
                                      f"model (resume from another checkpoint)")


def optimizer_parameters(optimizer: torch.optim.Optimizer, model: nn.Module) -> tuple[list[Tensor], list[str]]:
    """The optimiser's parameters in its index order, and their names in ``model``."""
    by_id = {id(p): n for n, p in unwrap_model(model).named_parameters()}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    return params, [by_id.get(id(p), f"#{i}") for i, p in enumerate(params)]


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
    root = make_dirs(Path(run_dir) / CHECKPOINTS)
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
    atomic_write_text(root / LATEST, name + "\n")
    prune_checkpoints(root, keep, protect=name)
    return final


def _write_checkpoint_files(directory: Path, step, model, optimizer, data_generator, state, tokenizer,
                            extra_files=None) -> None:
    save_model_files(model, directory)  # config.json + model.safetensors, keys free of wrapper prefixes
    if tokenizer is not None:
        tokenizer.save(directory)
    opt_tensors, opt_meta = flatten_optimizer(optimizer)
    save_tensors(opt_tensors, directory / "optimizer.safetensors")
    rng_tensors, rng_scalars = capture_rng(data_generator)
    save_tensors(rng_tensors, directory / "rng.safetensors")
    for name, tensors in (extra_files or {}).items():
        save_tensors(tensors, directory / name)
    for f in directory.iterdir():
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())
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
    """Remove temporary files and directories left by a process killed midway (kill -9): a
    half-written checkpoint, ``latest``'s temporary, a half-drawn loss curve. Called under the
    run's lock, so no other writer can own them."""
    from glassformer.io import remove_stale_temps

    run_dir = Path(run_dir)
    removed = remove_stale_temps(run_dir)
    for p in run_dir.iterdir() if run_dir.is_dir() else ():
        m = _LEGACY_PLOT_TMP.match(p.name)
        if m and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run in %s", len(removed), run_dir)
    root = run_dir / CHECKPOINTS
    if root.is_dir() and not root.is_symlink():
        remove_stale_temps(root)
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".old-", ".latest.tmp-")):
                if p.is_dir() and not p.is_symlink():
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
    if root.is_symlink():
        raise CheckpointError(f"{root}: is a symbolic link; a run's checkpoints must live inside the run directory")
    real_root = root.resolve()
    pointer = root / LATEST
    if pointer.is_symlink() or pointer.exists():
        if pointer.is_symlink() or not pointer.is_file():
            raise CheckpointError(f"{pointer}: not a plain file; delete it to resume from the newest checkpoint")
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{pointer}: cannot be read ({e}); delete it to resume from the newest checkpoint") from None
        target = root / name
        if not _STEP_DIR.match(name) or target.resolve().parent != real_root:
            raise CheckpointError(f"{pointer}: names {name!r}, which is outside {root}; refusing to follow it "
                                  f"(write a step_NNNNNN name into it, or delete it)")
        if is_complete(target):
            return target
        log.warning("%s names %s, which is not a complete checkpoint; using the newest complete one", pointer, name)
    steps = sorted((int(m.group(1)), p) for p in root.iterdir()
                   if (m := _STEP_DIR.match(p.name)) and not p.is_symlink() and is_complete(p))
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
    state = read_json(path / STATE_NAME, error=CheckpointError)
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path / STATE_NAME}: checkpoint format {state.get('format_version')!r}, "
                              f"expected {FORMAT_VERSION}")
    missing = [k for k in ("step", "optimizer", "rng") if k not in state]
    if missing:
        raise CheckpointError(f"{path / STATE_NAME}: no {missing[0]!r} entry; the checkpoint is damaged "
                              f"(resume from an earlier one by writing its name into checkpoints/latest)")
    files = {}
    for name in ("model", "optimizer", "rng"):
        file = path / f"{name}.safetensors"
        try:
            files[name] = load_file(file)
        except (OSError, SafetensorError) as e:
            raise CheckpointError(f"{file}: unreadable ({e})") from None
    plain = unwrap_model(model)
    device = next(plain.parameters()).device
    try:
        plain.load_weights({k: v.to(device) for k, v in files["model"].items()}, source=str(path / "model.safetensors"))
    except (KeyError, ValueError) as e:
        raise CheckpointError(str(e).strip("'\"")) from None
    if optimizer is not None:
        source = str(path / "optimizer.safetensors")
        try:
            full = unflatten_optimizer(files["optimizer"], state["optimizer"])
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{source}: unreadable optimiser state ({e})") from None
        if isinstance(optimizer, torch.optim.Optimizer):
            check_optimizer_state(full, *optimizer_parameters(optimizer, plain), source=source)
        try:
            optimizer.load_state_dict(full)
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{source}: optimizer state does not match the model ({e})") from None
    if restore_rng_state:
        restore_rng(files["rng"], state.get("rng"), data_generator, source=str(path / "rng.safetensors"))
    return state
