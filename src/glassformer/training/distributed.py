"""Training on many processes under ``torchrun``: DDP or FSDP2 behind the :class:`ProcessContext` seam.

    torchrun --nproc-per-node 4 -m glassformer train gpt --data notes.txt --out runs/notes
    torchrun --nproc-per-node 4 -m glassformer train gpt --data notes.txt --out runs/notes --parallel fsdp

What N processes change, and what they keep (see docs/distributed.md):

- **Data.** Rank r draws its micro-batches from its own generator, seeded from the run's seed
  and r (:meth:`ProcessContext.data_seed`): a deterministic per-rank stream. The global batch
  is N × batch_size × grad_accum sequences.
- **Gradients.** Every rank divides its summed loss by the *global* number of targets (the
  trainer all-reduces the counts), so the gradients are *summed* over ranks, not averaged: the
  step equals one process holding every rank's batches.
- **DDP** replicates the model and all-reduces gradients after the last micro-batch of an
  accumulation (``no_sync`` before). **FSDP2** (``fully_shard`` per encoder/decoder layer, then
  the root) keeps 1/N of the weights, gradients and AdamW moments on each rank.
- **One checkpoint format for every world size.** Weights and optimiser state are saved whole
  (FSDP gathers its shards first) in the single-process layout, plus ``rng_ranks.safetensors``
  with every rank's random streams. A run saved with N ranks resumes with M: rank r < N
  continues its own stream, a new rank starts one seeded from (seed, rank, step).
- **Only rank 0** logs, writes metrics and saves; every rank stops after the same step (a
  signal or ``--max-minutes`` on one rank is agreed on by all).

The :class:`~glassformer.training.trainer.Trainer` is the same class in one process and under
torchrun: it asks its :class:`DistributedContext` (composition, not a subclass) to agree on
stopping, to gather whole tensors for saving and sampling, and to shard a loaded checkpoint.
FSDP's whole-state gathering and loading are ``torch.distributed.checkpoint.state_dict``'s.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random
import signal
import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import Tensor, nn

from glassformer.errors import CheckpointError, GlassformerError
from glassformer.io import unwrap_model
from glassformer.models.outputs import ModelOutput
from glassformer.training import checkpoint as ckpt
from glassformer.training.config import TrainConfig
from glassformer.training.runtime import ProcessContext, resolve_device
from glassformer.training.trainer import Trainer

log = logging.getLogger("glassformer.training")

Strategy = Literal["ddp", "fsdp"]


def torchrun_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def _sum_gradients_hook(group, bucket):  # no annotations: DDP compares them with the real classes
    """DDP communication hook: all-reduce a gradient bucket (``dist.GradBucket``) as a sum, where
    DDP's default divides by N; returns a future of the reduced buffer."""
    work = dist.all_reduce(bucket.buffer(), group=group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


class _LogitsOnly(nn.Module):
    """The model, returning only its logits and loss (what every training loss reads) to DDP.

    With ``find_unused_parameters``, DDP expects a gradient for every parameter it can reach
    from the outputs it sees; BERT's ``pooler_output`` would make it wait for the pooler's.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> ModelOutput:
        out = self.model(*args, **kwargs)
        return ModelOutput(logits=out.logits, loss=out.loss)


class DistributedContext(ProcessContext):
    """This process's place in a ``torchrun`` job, and the DDP/FSDP2 hooks the trainer calls.

    Reads RANK, WORLD_SIZE and LOCAL_RANK from the environment and joins the process group
    (gloo for CPU training, NCCL for CUDA; on CUDA, rank r uses GPU LOCAL_RANK). Host-side
    collectives (flags, barriers, RNG states) go through a gloo group, so they never wait for
    the GPU.

    Args:
        device: the training device (``cpu`` or ``cuda``).
        strategy: ``"ddp"`` replicates the model, ``"fsdp"`` shards it with ``fully_shard``.
    """

    def __init__(self, device: torch.device, strategy: Strategy = "ddp") -> None:
        if strategy not in ("ddp", "fsdp"):
            raise ValueError(f"--parallel: unknown strategy {strategy!r}; choose ddp or fsdp")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"torchrun: distributed training runs on cpu or cuda, not {device.type}")
        env = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        missing = [k for k, v in env.items() if v is None]
        if missing:
            raise ValueError(f"distributed training needs {', '.join(missing)} in the environment; launch with torchrun")
        self.rank, self.world_size, self.local_rank = (int(env[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        self.strategy: Strategy = strategy
        self.device = device
        if device.type == "cuda":
            if self.local_rank >= torch.cuda.device_count():
                raise ValueError(f"LOCAL_RANK {self.local_rank} but only {torch.cuda.device_count()} CUDA devices on "
                                 f"this node; use --nproc-per-node <= {torch.cuda.device_count()}")
            torch.cuda.set_device(self.local_rank)  # plain "cuda" now means this rank's GPU
            self.device = torch.device("cuda", self.local_rank)
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(self.backend, device_id=self.device if device.type == "cuda" else None)
        self._host_group = dist.new_group(backend="gloo") if self.backend != "gloo" else None
        self._twin: nn.Module | None = None  # FSDP: rank 0's whole CPU copy, for saving and sampling
        self._twin_step: int | None = None  # the step it was gathered at

    @property
    def sharded(self) -> bool:
        """True under FSDP: the model's parameters are DTensor shards, not whole tensors."""
        return self.strategy == "fsdp"

    # ------------------------------------------------------------------------------ the model

    def wrap_model(self, model: nn.Module, device: torch.device) -> nn.Module:
        """DDP wrapper (summing gradients), or the model sharded in place by ``fully_shard``."""
        if self.sharded:
            return self._shard(model)
        # A masked-LM (BERT) has a pooler that gets no gradient from its loss: DDP must look for parameters
        # the loss did not use (static_graph=True would too, but it ignores the summing hook below).
        unused = getattr(model, "predicts", None) == "masked"
        ddp = nn.parallel.DistributedDataParallel(
            _LogitsOnly(model), device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=unused,
        )
        ddp.register_comm_hook(None, _sum_gradients_hook)
        return ddp

    def _shard(self, model: nn.Module) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, fully_shard

        from glassformer.layers import DecoderLayer, EncoderLayer

        with torch.no_grad():  # every rank starts from rank 0's weights (DDP does this itself)
            for t in model.state_dict().values():
                dist.broadcast(t, src=0)
        mesh = init_device_mesh(self.device.type, (self.world_size,))
        # one FSDP unit per layer: only one layer's full weights exist at a time in forward/backward
        for module in model.modules():
            if isinstance(module, (EncoderLayer, DecoderLayer)):
                fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)  # the rest: embeddings, final norm, heads (tied weights stay together)
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.set_gradient_divide_factor(1.0)  # a sum, as with DDP above
                module.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no PREMUL_SUM
        return model

    def no_sync(self, model: nn.Module, last_micro_step: bool) -> contextlib.AbstractContextManager:
        """DDP: ``model.no_sync()``; FSDP: skip the reduce-scatter until the last micro-batch."""
        inner = getattr(model, "_orig_mod", model)  # under torch.compile
        if hasattr(inner, "set_requires_gradient_sync"):
            inner.set_requires_gradient_sync(last_micro_step)
            return contextlib.nullcontext()
        return super().no_sync(model, last_micro_step)

    # ------------------------------------------------------------------------- collectives

    def all_reduce_sum(self, value: Tensor) -> Tensor:
        """Sum over ranks, in place; a CPU tensor goes through the gloo group (no GPU sync)."""
        dist.all_reduce(value, op=dist.ReduceOp.SUM, group=self._group_for(value))
        return value

    def max_over_ranks(self, values: list[int]) -> list[int]:
        """The element-wise maximum over ranks of a few integers (flags), on the host."""
        t = torch.tensor(values, dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._host_group)
        return t.tolist()

    def gather_objects(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` (tensors on the CPU), in rank order on rank 0; None elsewhere."""
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0, group=self._host_group)
        return out

    def check_same(self, text: str, what: str) -> None:
        """Refuse to train when ranks built different ``what`` (e.g. a tokenizer trained per rank)."""
        digests = [None] * self.world_size
        dist.all_gather_object(digests, zlib.crc32(text.encode()), group=self._host_group)
        odd = [r for r, d in enumerate(digests) if d != digests[0]]
        if odd:
            raise GlassformerError(f"rank {odd[0]} built a different {what} than rank 0; give every rank the same "
                                   f"one (e.g. --tokenizer DIR from an earlier run)")

    def barrier(self) -> None:
        dist.barrier(group=self._host_group)

    def close(self) -> None:
        """Leave the process group (idempotent)."""
        if dist.is_initialized():
            dist.destroy_process_group()

    def _group_for(self, value: Tensor) -> dist.ProcessGroup | None:
        return self._host_group if value.device.type == "cpu" else None

    # ------------------------------------------------------------- what the trainer asks

    def agree_on_stop(self, caught_signal: str | None, out_of_time: bool) -> str | None:
        """A signal caught on any rank, or --max-minutes on any rank's clock, stops every rank after
        the same step (a rank leaving the loop alone would leave the others waiting forever)."""
        signum = signal.Signals[caught_signal].value if caught_signal else 0
        signum, over = self.max_over_ranks([signum, int(out_of_time)])
        if signum:
            return signal.Signals(signum).name
        return "max-minutes" if over else None

    def full_model(self, model: nn.Module, device: torch.device, step: int) -> tuple[nn.Module, torch.device]:
        """DDP: the model itself. FSDP: a whole CPU copy on rank 0 (every rank must call this)."""
        if not self.sharded:
            return model, device
        return self._gathered_twin(model, step), torch.device("cpu")

    def full_state(self, model: nn.Module, optimizer: Any, step: int) -> tuple[nn.Module | None, Any]:
        """DDP: the model and optimiser. FSDP: whole weights and AdamW moments gathered on rank 0."""
        if not self.sharded:
            return model, optimizer
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        twin = self._gathered_twin(model, step)
        full = get_optimizer_state_dict(model, optimizer, options=self._full_options())  # collective
        return twin, FullOptimizerState(fqn_to_index(full) if self.is_main else {})

    def resume_targets(self, model: nn.Module, optimizer: Any) -> tuple[nn.Module, Any]:
        """FSDP: a whole CPU copy and a holder for the whole optimiser state; DDP: the real ones."""
        if not self.sharded:
            return model, optimizer
        return _new_twin(model), FullOptimizerState()

    def finish_resume(self, model: nn.Module, optimizer: Any, loaded_model: nn.Module, loaded_optimizer: Any,
                      source: Any = None) -> None:
        """FSDP: hand each rank its shards of the whole tensors every rank read from the checkpoint."""
        if not self.sharded:
            return
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        options = self._full_options(cpu_offload=False)
        set_model_state_dict(model, loaded_model.state_dict(), options=options)
        params, names = ckpt.optimizer_parameters(optimizer, model)
        full = loaded_optimizer.state_dict()
        ckpt.check_optimizer_state(full, params, names, source=f"{source}/optimizer.safetensors")
        try:
            set_optimizer_state_dict(model, optimizer, index_to_fqn(full, names), options=options)
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"{source}: optimizer state does not match the model ({e})") from None
        self._twin_step = None

    def restore_rank_streams(self, path: Path, state: dict[str, Any], generator: torch.Generator, seed: int,
                             step: int, per_rank_batch: int) -> None:
        """Rank r continues its own saved streams; a rank the saved run did not have starts a fresh
        one, still reproducible from (seed, rank, step)."""
        saved = state.get(ckpt.RANK_RNG_KEY) or []
        file = Path(path) / ckpt.RANK_RNG_FILE
        if self.rank < len(saved) and file.is_file():
            prefix = f"rank{self.rank}."
            tensors = {k[len(prefix):]: v for k, v in load_file(file).items() if k.startswith(prefix)}
            ckpt.restore_rng(tensors, saved[self.rank], generator, source=str(file))
        elif self.rank > 0:
            fresh = zlib.crc32(f"{seed}:{self.rank}:{step}".encode())
            generator.manual_seed(fresh)
            torch.manual_seed(fresh)
            random.seed(fresh)
            np.random.seed(fresh)
        saved_world = state.get("world_size", 1)
        if self.is_main and saved_world != self.world_size:
            note = (f"; ranks {max(len(saved), 1)} and up start fresh data streams"
                    if self.world_size > len(saved) else "")
            log.warning("resuming a %d-rank checkpoint on %d ranks: the global batch is now %d sequences (was %d)%s",
                        saved_world, self.world_size, per_rank_batch * self.world_size, per_rank_batch * saved_world,
                        note)

    # ---------------------------------------------------------------------------- FSDP

    def _full_options(self, cpu_offload: bool = True):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload)

    def _gathered_twin(self, model: nn.Module, step: int) -> nn.Module | None:
        """Rank 0: a whole CPU copy of the sharded model at ``step`` (collective); other ranks: None."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        if self._twin_step != step:
            state = get_model_state_dict(model, options=self._full_options())  # whole tensors on rank 0 only
            if self.is_main:
                if self._twin is None:
                    self._twin = _new_twin(model)
                self._twin.load_state_dict(state)
            self._twin_step = step
        return self._twin if self.is_main else None


def _new_twin(model: nn.Module) -> nn.Module:
    """A whole, unsharded CPU model of the same class and config."""
    plain = unwrap_model(model)
    return type(plain)(plain.config)


def fqn_to_index(full: dict[str, Any]) -> dict[str, Any]:
    """``get_optimizer_state_dict``'s state (keyed by parameter names) in ``torch.optim``'s own
    layout (keyed by index, in param-group order): the layout every checkpoint stores."""
    names = [name for group in full["param_groups"] for name in group["params"]]
    index = {name: i for i, name in enumerate(names)}
    state = {index[name]: dict(entry) for name, entry in full["state"].items()}
    groups, start = [], 0
    for group in full["param_groups"]:
        n = len(group["params"])
        groups.append({**group, "params": list(range(start, start + n))})
        start += n
    return {"state": state, "param_groups": groups}


def index_to_fqn(full: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The inverse of :func:`fqn_to_index`, with ``names`` the optimiser's parameters in order."""
    state = {names[int(i)]: entry for i, entry in full["state"].items()}
    groups = [{**g, "params": [names[int(i)] for i in g["params"]]} for g in full["param_groups"]]
    return {"state": state, "param_groups": groups}


class FullOptimizerState:
    """Stands in for an optimiser where the checkpoint code wants one: holds a whole state dict
    (``state_dict()`` to save it, ``load_state_dict()`` to receive it)."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.state = state or {}

    def state_dict(self) -> dict[str, Any]:
        return self.state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = state


def process_context(config: TrainConfig) -> ProcessContext:
    """The CLI's context: one process alone, or this rank of a torchrun job (WORLD_SIZE > 1).

    On ranks other than 0 the ``glassformer`` loggers only report errors; the process group
    is left at exit.
    """
    if torchrun_world_size() <= 1:
        return ProcessContext()
    context = DistributedContext(resolve_device(config.device), config.parallel)
    if not context.is_main:
        logging.getLogger("glassformer").setLevel(logging.ERROR)
    atexit.register(context.close)
    return context


def make_trainer(process: ProcessContext, *args: Any, **kwargs: Any) -> Trainer:
    """The :class:`Trainer`, for one process or for this torchrun rank (the same class: what
    differs is the process context it is given)."""
    tokenizer = kwargs.get("tokenizer")
    if isinstance(process, DistributedContext) and tokenizer is not None:
        process.check_same(tokenizer.to_json(), "tokenizer")
    return Trainer(*args, process=process, **kwargs)
