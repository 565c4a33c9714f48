"""AdamW with decay / no-decay parameter groups, and the learning-rate schedules.

Weight decay shrinks matrices (and embeddings) towards zero; applying it to biases and LayerNorm
gains only fights the normalisation, so those go in a group without decay (as in GPT-2/BERT
training code). Parameters shared between modules (tied embeddings) are listed once.

Schedules are plain functions of the step, so the scheduler state is one integer and resuming
gives exactly the same learning rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from glassformer.training.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: tensors with >= 2 dims decay, vectors (biases, norms) do not."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # named_parameters yields a tied tensor once
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`.

    The fused kernel (one pass over each tensor) on CUDA and the CPU: on a 10M-parameter GPT it
    steps in 12 ms on 2 CPU cores against 66 ms for the multi-tensor (foreach) version. Other
    devices get the multi-tensor version.
    """
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(
        param_groups(model, config.weight_decay),
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        eps=1e-8,
        fused=True if fused else None,
        foreach=None if fused else True,
    )


@dataclass
class Schedule:
    """The learning rate at each step (steps count from 1).

    - ``cosine``: linear warmup to ``lr``, then half a cosine down to ``min_lr`` at ``decay_steps``,
      flat after that.
    - ``noam``: the paper's ``d_model^-0.5 · min(step^-0.5, step · warmup^-1.5)`` (§5.3), rescaled so
      its peak (at the end of warmup) equals ``lr``; floored at ``min_lr``.
    - ``linear``: linear warmup to ``lr``, then a straight line down to ``min_lr`` at
      ``decay_steps`` (BERT's fine-tuning schedule), flat after that.
    - ``constant``: linear warmup, then ``lr``.
    """

    kind: str
    lr: float
    min_lr: float
    warmup_steps: int
    decay_steps: int

    @classmethod
    def from_config(cls, config: TrainConfig) -> Schedule:
        return cls(config.schedule, config.lr, config.min_lr, config.warmup_steps, config.decay_steps)

    def __call__(self, step: int) -> float:
        step = max(step, 1)
        warm = self.warmup_steps
        if self.kind == "noam":
            w = max(warm, 1)
            # paper: d^-0.5 · min(s^-0.5, s · w^-1.5); its peak is d^-0.5 · w^-0.5, so scale by lr · w^0.5
            return max(self.lr * math.sqrt(w) * min(step ** -0.5, step * w ** -1.5), self.min_lr)
        if step <= warm:
            return self.lr * step / warm
        if self.kind == "constant":
            return self.lr
        if step >= self.decay_steps:
            return self.min_lr
        progress = (step - warm) / max(self.decay_steps - warm, 1)
        if self.kind == "linear":
            return self.lr - progress * (self.lr - self.min_lr)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (self.lr - self.min_lr)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's learning rate for ``step``; returns it."""
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def fitted(self, max_steps: int, new_max_steps: int) -> Schedule:
        """The same schedule squeezed from ``max_steps`` into ``new_max_steps``: the decay ends
        where the run now ends (warmup and a decay point set apart from the end keep their share)."""
        scale = new_max_steps / max(max_steps, 1)
        decay = new_max_steps if self.decay_steps >= max_steps else max(1, round(self.decay_steps * scale))
        warm = min(self.warmup_steps, max(0, round(self.warmup_steps * scale)))
        return Schedule(self.kind, self.lr, self.min_lr, warm, decay)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "lr": self.lr, "min_lr": self.min_lr,
                "warmup_steps": self.warmup_steps, "decay_steps": self.decay_steps}


def steps_within(budget_s: float, elapsed_s: float, steps_done: int, max_steps: int) -> int:
    """How many steps a run can take in ``budget_s`` seconds, at the pace of its ``steps_done``
    steps so far (``elapsed_s``, evaluations included), never more than ``max_steps``; at least
    one more than done. What ``--max-minutes`` fits the schedule to."""
    if steps_done <= 0 or elapsed_s <= 0:
        return max_steps
    per_step = elapsed_s / steps_done
    affordable = steps_done + int((budget_s - elapsed_s) / per_step)
    return max(steps_done + 1, min(max_steps, affordable))
