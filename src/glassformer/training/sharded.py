"""Whole tensors from FSDP2 shards and back: how a sharded run reads and writes ordinary checkpoints.

Under ``fully_shard`` every parameter (and every AdamW moment) is a ``DTensor``: rank r holds
rows r/N.. of it. A checkpoint stores the *whole* tensors, in the same layout a single process
writes, so it loads back with any number of ranks and either strategy:

- saving: every rank calls ``full_tensor()`` on every shard in the same order (an all-gather);
  only rank 0 keeps the result, on the CPU;
- loading: every rank reads the whole tensor and keeps its own rows (``distribute_tensor`` with
  ``src_data_rank=None`` cuts locally, without communication).

Plain (unsharded) tensors pass through both ways unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, distribute_tensor


def _whole(t: Tensor) -> Tensor:
    """The full tensor behind a shard (collective for a DTensor)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def _shard_like(whole: Tensor, like: Tensor) -> Tensor:
    """This rank's part of ``whole``, laid out like ``like`` (a DTensor), or ``whole`` itself."""
    if not isinstance(like, DTensor):
        return whole.to(like.device)
    return distribute_tensor(whole.to(like.device), like.device_mesh, like.placements, src_data_rank=None)


def gather_model_state(model: nn.Module, keep: bool) -> dict[str, Tensor]:
    """The model's whole state dict (all ranks must call this); CPU tensors where ``keep``, else {}."""
    out: dict[str, Tensor] = {}
    for name, t in model.state_dict().items():
        whole = _whole(t.detach())
        if keep:
            out[name] = whole.cpu()
    return out


@torch.no_grad()
def load_model_state(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy whole tensors into a (sharded) model: each rank keeps its own rows."""
    for name, t in model.state_dict().items():
        if name not in state:
            raise KeyError(f"missing weight {name!r}")
        part = _shard_like(state[name], t)
        if isinstance(t, DTensor):
            t.to_local().copy_(part.to_local())  # the state dict's tensors share the parameters' storage
        else:
            t.copy_(part)


def gather_optimizer_state(optimizer: torch.optim.Optimizer, keep: bool) -> dict[str, Any]:
    """The optimiser's state dict with whole moments (all ranks must call this); {} where not ``keep``.

    Indices and parameter groups are the optimiser's own, which are the single-process ones:
    ``fully_shard`` keeps every parameter's name and order.
    """
    sd = optimizer.state_dict()
    state: dict[int, dict[str, Any]] = {}
    for idx in sorted(sd["state"]):  # the same order on every rank: the collectives pair up
        entry = {}
        for name in sorted(sd["state"][idx]):
            value = sd["state"][idx][name]
            if isinstance(value, Tensor):
                value = _whole(value.detach())
                value = value.cpu() if keep else value
            entry[name] = value
        state[idx] = entry
    return {"state": state, "param_groups": sd["param_groups"]} if keep else {}


def load_optimizer_state(optimizer: torch.optim.Optimizer, full: dict[str, Any]) -> None:
    """Load whole moments into an optimiser over (sharded) parameters; each rank keeps its rows."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    for idx, entry in full["state"].items():
        if not 0 <= int(idx) < len(params):
            raise ValueError(f"state for parameter {idx}, but the optimiser has {len(params)} parameters")
        p = params[int(idx)]
        state[int(idx)] = {
            name: _shard_like(v, p) if isinstance(v, Tensor) and tuple(v.shape) == tuple(p.shape) else v
            for name, v in entry.items()
        }
    optimizer.load_state_dict({"state": state, "param_groups": full["param_groups"]})


class FullOptimizerState:
    """Stands in for an optimiser where the checkpoint code wants one: holds a whole state dict.

    ``checkpoint.save_checkpoint`` reads it with ``state_dict()``; ``checkpoint.load_checkpoint``
    fills it with ``load_state_dict()``, and :func:`load_optimizer_state` then shards it.
    """

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.state = state or {}

    def state_dict(self) -> dict[str, Any]:
        return self.state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = state
