"""Where a run executes: device, precision, and which process of how many.

:class:`ProcessContext` is the seam for distributed training. A single process is rank 0 of 1;
``training/distributed.py`` (DDP/FSDP under torchrun) subclasses it, and the trainer asks it —
never ``torch.distributed`` directly — whether to log and save, how to seed this rank's data,
how to wrap the model, when to skip the gradient all-reduce, and how to sum counts across ranks.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import sys
import zlib
from collections.abc import Iterator
from typing import Any

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


# the narrowest model for which ``--dtype auto`` picks bf16 autocast on a CPU with native bf16:
# measured on a 2-core AMX Xeon (benchmarks/cpu_bf16.py, RESULTS.md), a training step under
# autocast takes 1.47x fp32's time at width 32, 1.02-1.15x at 128 and 0.53x at 256 and beyond
CPU_BF16_MIN_WIDTH = 256


def resolve_dtype(name: str, device: torch.device, d_model: int | None = None) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32.

    ``auto`` chooses bf16 autocast on CUDA cards that support it, and on CPUs with native bf16
    matrix units (AMX) for models at least :data:`CPU_BF16_MIN_WIDTH` wide (``d_model``; unknown
    counts as wide): below that, casting every operand costs more than AMX saves. Elsewhere bf16
    is emulated and slower than fp32, so ``auto`` stays fp32.
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
        if device.type == "cpu" and cpu_has_native_bf16() and (d_model is None or d_model >= CPU_BF16_MIN_WIDTH):
            return torch.bfloat16
        return None
    raise ValueError(f"--dtype: unknown dtype {name!r}; choose auto, float32 or bfloat16")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass; weights and optimiser state stay fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def has_cxx_compiler() -> bool:
    """True when a C++ compiler is on PATH (torch.compile's CPU backend builds C++ kernels)."""
    names = [os.environ.get("CXX", ""), "c++", "g++", "clang++"]
    return any(name and shutil.which(name) for name in names)


def should_compile(flag: bool | None, device: torch.device, max_steps: int, max_minutes: float | None = None) -> bool:
    """``--compile`` / ``--no-compile`` when given; otherwise compile on CUDA, or on a CPU with a C++
    compiler, when the run is long: at least ``COMPILE_MIN_STEPS`` steps and no ``--max-minutes``
    under ``COMPILE_MIN_MINUTES`` (compiling takes about a minute, which a short run never wins
    back). MPS stays eager."""
    from glassformer.training.config import COMPILE_MIN_MINUTES, COMPILE_MIN_STEPS

    if flag is not None:
        return flag
    if max_steps < COMPILE_MIN_STEPS or (max_minutes is not None and max_minutes < COMPILE_MIN_MINUTES):
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and has_cxx_compiler()


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_BYTES = 2**31 - 1  # mallopt takes an int: blocks up to 2 GiB come from the heap and stay there
KEEP_FREED_ENV = "GLASSFORMER_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed blocks for reuse instead of handing them back to the OS.

    By default glibc serves every block over 32 MiB with its own ``mmap`` and unmaps it on free.
    A training step frees and re-allocates the same big tensors every step (GPT-2-124M's logits
    are 205 MB at B=4, T=256), so each step faults all those pages in again, zeroed by the
    kernel: ~350,000 page faults and ~2 s of system time per 10 s step on a 2-core EPYC. Raising
    the mmap and trim thresholds makes the heap keep those blocks: the same step then takes 8.6
    s instead of 10.4 (``benchmarks/RESULTS.md``). The process keeps its peak memory between
    steps, which a training process reaches again at the next step anyway.

    Process-wide, Linux/glibc only, applied once by the trainer on the CPU;
    ``GLASSFORMER_KEEP_FREED_MEMORY=0`` turns it off. Returns whether the setting is in effect.
    """
    if os.environ.get(KEEP_FREED_ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, KEEP_FREED_BYTES) == 1
        ok = libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES) == 1 and ok
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
    log.debug("malloc keeps freed blocks up to %d bytes: %s", KEEP_FREED_BYTES, ok)
    return ok



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

    # --- what the trainer asks before stopping, saving, evaluating and resuming. One process
    # answers with its own objects; distributed.DistributedContext agrees across ranks and, under
    # FSDP, gathers whole tensors from the shards.

    def agree_on_stop(self, caught_signal: str | None, out_of_time: bool) -> str | None:
        """Why every rank stops after this step: a signal's name, ``"max-minutes"``, or None."""
        return caught_signal or ("max-minutes" if out_of_time else None)

    def gather_objects(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` in rank order on the main process (None elsewhere)."""
        return [obj]

    def full_model(self, model: nn.Module, device: torch.device, step: int) -> tuple[nn.Module, torch.device]:
        """The whole model to save and sample from, and its device."""
        return model, device

    def full_state(self, model: nn.Module, optimizer: Any, step: int) -> tuple[nn.Module | None, Any]:
        """The whole model and an optimiser(-like object with ``state_dict()``) to checkpoint."""
        return model, optimizer

    def resume_targets(self, model: nn.Module, optimizer: Any) -> tuple[nn.Module, Any]:
        """What a checkpoint is loaded into (then handed to :meth:`finish_resume`)."""
        return model, optimizer

    def finish_resume(self, model: nn.Module, optimizer: Any, loaded_model: nn.Module, loaded_optimizer: Any,
                      source: Any = None) -> None:
        """Move what :meth:`resume_targets` received into the training model and optimiser."""

    def restore_rank_streams(self, path: Any, state: dict[str, Any], generator: torch.Generator, seed: int,
                             step: int, per_rank_batch: int) -> None:
        """This rank's random streams from a checkpoint (one process: restored with the rest)."""

    def max_over_ranks(self, values: list[int]) -> list[int]:
        """The element-wise maximum over ranks of a few integers (flags agreed on by every rank)."""
        return list(values)

    def barrier(self) -> None:
        """Wait for every rank (after rank 0 saved a checkpoint)."""
