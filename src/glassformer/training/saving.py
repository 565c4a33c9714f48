"""The trainer's side of checkpoints: who gathers what, who writes, and resuming.

:mod:`glassformer.training.checkpoint` writes and reads one checkpoint directory. Around it, a
run with several processes needs an order: every rank hands in its random streams and (under
FSDP) its shards, which are collectives every rank must join; then rank 0 alone writes. Resuming
reads the whole tensors into what :class:`~glassformer.training.runtime.ProcessContext` says
(under FSDP a CPU copy, from which each rank keeps its shards). The functions here take the
model, optimiser and process explicitly; the :class:`~glassformer.training.trainer.Trainer`
supplies its own.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glassformer.training import checkpoint as ckpt
from glassformer.training.lora import merged
from glassformer.training.runtime import ProcessContext


def save_step_checkpoint(
    process: ProcessContext,
    run_dir: Path | None,
    step: int,
    *,
    model: nn.Module,
    optimizer: Any,
    generator: torch.Generator,
    state: Callable[[], dict[str, Any]],
    tokenizer: Any = None,
    keep: int = 2,
    after_save: list[Callable[[Path], None]] | None = None,
    whole_model: nn.Module | None = None,
    whole_optimizer: Any = None,
) -> Path | None:
    """Save the checkpoint of ``step``: every rank must call this; rank 0 writes it, then calls each
    ``after_save`` hook with its path; every rank returns once all have arrived (a barrier).
    Returns the path on rank 0 (None elsewhere, or without a ``run_dir``).

    ``whole_model`` / ``whole_optimizer`` default to whole copies of ``model`` / ``optimizer``
    from ``process``: themselves in one process or under DDP, tensors gathered from the shards
    under FSDP. ``state()`` gives the trainer's JSON-able state. Under torchrun every rank's random
    streams go in too.
    """
    streams = process.gather_objects(ckpt.capture_rng(generator))  # collective
    if whole_model is None or whole_optimizer is None:
        full_model, full_optimizer = process.full_state(model, optimizer, step)  # collective under FSDP
        whole_model, whole_optimizer = whole_model or full_model, whole_optimizer or full_optimizer
    path = None
    if process.is_main and run_dir is not None:
        data, extra = state(), None
        if process.world_size > 1:
            extra = {ckpt.RANK_RNG_FILE: {f"rank{r}.{k}": v for r, (tensors, _) in enumerate(streams)
                                          for k, v in tensors.items()}}
            data[ckpt.RANK_RNG_KEY] = [scalars for _, scalars in streams]
        path = ckpt.save_checkpoint(run_dir, step, model=whole_model, optimizer=whole_optimizer,
                                    data_generator=generator, state=data, tokenizer=tokenizer, keep=keep,
                                    extra_files=extra)
        for hook in after_save or []:
            hook(path)
    process.barrier()
    return path


def save_model_dir(directory: str | os.PathLike, model: nn.Module, tokenizer: Any = None,
                   generation_config: Any = None) -> None:
    """A loadable model directory: config, weights, tokenizer, generation config (when given).
    LoRA layers are saved merged (W + ΔW under the plain keys; see :mod:`.lora`)."""
    directory = Path(directory)
    with merged(model) as plain:
        ckpt.save_model_files(plain, directory)
    if tokenizer is not None:
        tokenizer.save(directory)
    if generation_config is not None:
        generation_config.save(directory)


def checkpoint_to_resume(run_dir: Path | None, path: str | os.PathLike | None = None) -> Path:
    """``path``, else the latest checkpoint of ``run_dir``; a :class:`CheckpointError` when there is none."""
    found = Path(path) if path is not None else (ckpt.latest_checkpoint(run_dir) if run_dir else None)
    if found is None:
        raise ckpt.CheckpointError(f"{run_dir}: no checkpoint to resume from "
                                   f"(no {ckpt.CHECKPOINTS}/{ckpt.LATEST})")
    return found


def load_for_resume(process: ProcessContext, path: Path, model: nn.Module, optimizer: Any,
                    generator: torch.Generator) -> dict[str, Any]:
    """Load checkpoint ``path`` into ``model`` and ``optimizer`` (weights, optimiser, RNGs, the data
    ``generator``) as ``process`` places them; returns the trainer state saved with it."""
    load_model, load_optimizer = process.resume_targets(model, optimizer)
    state = ckpt.load_checkpoint(path, model=load_model, optimizer=load_optimizer, data_generator=generator)
    process.finish_resume(model, optimizer, load_model, load_optimizer, source=path)
    return state
