"""Where a run executes: device, precision, and which process of how many.

:class:`ProcessContext` is the seam for distributed training. A single process is rank 0 of 1;
``training/distributed.py`` (DDP/FSDP under torchrun) subclasses it, and the trainer asks it —
never ``torch.distributed`` directly — whether to log and save, how to seed this rank's data,
how to wrap the model, when to skip the gradient all-reduce, and how to sum counts across ranks.
"""

from __future__ import annotations

import contextlib
import logging
import zlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- device & precision


def resolve_device(name: str) -> torch.device:
    """``auto`` prefers CUDA, then Apple's MPS, then the CPU; an unavailable device is an error."""
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        built = "with" if torch.backends.cuda.is_built() else "without"
        raise ValueError(f"--device cuda: no CUDA device is available (this torch {torch.__version__} is built {built} CUDA)")
    if name == "mps" and not mps_ok:
        raise ValueError("--device mps: Apple's MPS backend is not available on this machine")
    if name not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device: unknown device {name!r}; choose auto, cpu, cuda or mps")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bf16 in hardware (AMX tiles or AVX512-BF16)."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, c, lambda: False)()) for c in checks)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32.

    ``auto`` chooses bf16 autocast on CUDA cards that support it and on CPUs with native bf16
    matrix units (AMX); elsewhere bf16 is emulated and slower than fp32, so ``auto`` stays fp32.
    """
    if name == "float32":
        return None
    if name == "bfloat16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("--dtype bfloat16: this CUDA device does not support bfloat16")
        if device.type == "cpu" and not cpu_has_native_bf16():
            log.warning("this CPU has no native bf16 units; bf16 autocast will run slower than float32")
        return torch.bfloat16
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return None
    raise ValueError(f"--dtype: unknown dtype {name!r}; choose auto, float32 or bfloat16")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass; weights and optimiser state stay fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside ``torch.compile`` (``_orig_mod``) and DDP/DataParallel (``module``) wrappers.

    Saving the unwrapped model is what keeps ``_orig_mod.`` and ``module.`` out of checkpoint keys.
    """
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def clean_key(key: str) -> str:
    """Strip wrapper prefixes from a state-dict key (for dicts taken from a wrapped model)."""
    for prefix in ("_orig_mod.", "module."):
        while key.startswith(prefix):
            key = key[len(prefix):]
        key = key.replace("." + prefix, ".")
    return key


@contextlib.contextmanager
def preserve_rng(device: torch.device) -> Iterator[None]:
    """Run a block (evaluation, sampling) without moving the global RNG streams training uses.

    Without this, sampling at an eval step would shift every later dropout mask, and a run
    resumed from that step would diverge from one that never stopped.
    """
    cpu_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, device)


# --------------------------------------------------------------------------------- processes


class ProcessContext:
    """One process training alone: rank 0 of 1. Subclassed for DDP/FSDP in training/distributed.py."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Only the main process logs, writes metrics and saves checkpoints."""
        return self.rank == 0

    def data_seed(self, seed: int) -> int:
        """Seed of this rank's data generator: distinct per rank, reproducible from the run's seed."""
        return seed if self.rank == 0 else zlib.crc32(f"{seed}:{self.rank}".encode())

    def wrap_model(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model the training step calls (DDP wraps it; one process uses it as is)."""
        return model

    def no_sync(self, model: nn.Module, last_micro_step: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce on every micro-step but the last of an accumulation."""
        if not last_micro_step and hasattr(model, "no_sync"):
            return model.no_sync()
        return contextlib.nullcontext()

    def all_reduce_sum(self, value: Tensor) -> Tensor:
        """Sum a tensor over ranks (target counts, so every rank divides by the global number)."""
        return value

    def barrier(self) -> None:
        """Wait for every rank (after rank 0 saved a checkpoint)."""
