"""Evaluation: the fixed validation batches, the validation loss, and the eval callbacks.

Every ``eval_every`` steps the :class:`~glassformer.training.trainer.Trainer` measures the
validation loss on the *same* batches (so two evaluations differ only by the model), without
moving the random streams training draws from (so a resumed run matches an uninterrupted one),
then hands the whole model to the eval callbacks (samples, attention snapshots). The functions
here take the model, device and process explicitly; the trainer supplies its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from glassformer.io import eval_mode
from glassformer.training.config import TrainConfig
from glassformer.training.objectives import compute_loss
from glassformer.training.runtime import ProcessContext, autocast, preserve_rng

Batch = dict[str, Tensor]


class Dataset(Protocol):
    def batch(self, batch_size: int, generator: torch.Generator) -> Batch: ...


def to_device(batch: Batch, device: torch.device) -> Batch:
    """``batch`` on ``device``; on CUDA through page-locked memory, so the copy overlaps with compute."""
    if device.type == "cuda":
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
    return {k: v.to(device) for k, v in batch.items()}


def fixed_batches(val_data: Any, batch_size: int, n_batches: int, seed: int) -> list[Batch]:
    """The validation batches every evaluation uses.

    A dataset's own ``eval_batches`` (consecutive windows, every pair once, a fixed masking
    seed) when it has one; otherwise batches from a generator seeded ``seed``. Either way the
    training data generator is not touched.
    """
    if hasattr(val_data, "eval_batches"):
        return list(val_data.eval_batches(batch_size, n_batches))
    g = torch.Generator().manual_seed(seed)
    return [val_data.batch(batch_size, g) for _ in range(n_batches)]


@torch.no_grad()
def evaluate(model: nn.Module, batches: list[Batch], device: torch.device, amp_dtype: torch.dtype | None,
             process: ProcessContext) -> dict[str, float]:
    """Validation loss (nats per target, no label smoothing) and accuracy of ``model`` on ``device``
    over ``batches``, summed over every rank of ``process`` (each evaluates its own shards)."""
    loss, count, correct = 0.0, 0, 0
    with eval_mode(model), preserve_rng(device):
        for batch in batches:
            with autocast(device, amp_dtype):
                out = compute_loss(model, to_device(batch, device), 0.0)
            loss += out.loss.item()
            count += int(out.count)
            correct += int(out.correct)
    sums = process.all_reduce_sum(torch.tensor([loss, count, correct], dtype=torch.float64, device=device))
    loss, count, correct = sums.tolist()
    return {"val_loss": loss / max(count, 1), "val_accuracy": correct / max(count, 1)}


@dataclass
class EvalView:
    """What an eval callback sees: the whole model to sample from or snapshot (under FSDP, a CPU
    copy gathered from the shards), its device, and the run's tokenizer, directory and config."""

    model: nn.Module
    device: torch.device
    tokenizer: Any
    run_dir: Path | None
    config: TrainConfig


# an eval callback gets (view, step) and may return text to show (a sample, a file written)
EvalCallback = Callable[[EvalView, int], "str | None"]


def run_eval_callbacks(callbacks: list[EvalCallback], view: EvalView, step: int,
                       show: Callable[[str], None]) -> None:
    """Call each callback on ``view`` in eval mode, without gradients and without moving the
    training RNG streams; ``show`` the text each returns."""
    with eval_mode(view.model), preserve_rng(view.device), torch.no_grad():
        for callback in callbacks:
            text = callback(view, step)
            if text:
                show(text)
