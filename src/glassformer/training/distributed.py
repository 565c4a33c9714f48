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
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import random
import signal
import time
import zlib
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch import Tensor, nn

from glassformer.errors import CheckpointError, GlassformerError
from glassformer.models.outputs import ModelOutput
from glassformer.training import checkpoint as ckpt
from glassformer.training import sharded
from glassformer.training.config import TrainConfig
from glassformer.training.runtime import ProcessContext, resolve_device, unwrap_model
from glassformer.training.trainer import Trainer

log = logging.getLogger("glassformer.training")

Strategy = Literal["ddp", "fsdp"]
RANK_RNG_FILE = "rng_ranks.safetensors"  # every rank's RNG tensors, keys "rank<r>.<stream>"
RANK_RNG_KEY = "rank_rng"  # trainer_state.json: every rank's RNG scalars (numpy, python), by rank


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
    """The model, returning only its logits (what every training loss reads) to DDP.

    With ``find_unused_parameters``, DDP expects a gradient for every parameter it can reach
    from the outputs it sees; BERT's ``pooler_output`` would make it wait for the pooler's.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> ModelOutput:
        return ModelOutput(logits=self.model(*args, **kwargs).logits)


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

    @property
    def sharded(self) -> bool:
        """True under FSDP: the model's parameters are DTensor shards, not whole tensors."""
        return self.strategy == "fsdp"

    # ------------------------------------------------------------------------------ the model

    def wrap_model(self, model: nn.Module, device: torch.device) -> nn.Module:
        """DDP wrapper (summing gradients), or the model sharded in place by ``fully_shard``."""
        if self.sharded:
            return self._shard(model)
        # BERT's pooler gets no gradient from the masked-LM loss: DDP must look for parameters the
        # loss did not use (static_graph=True would too, but it ignores the summing hook below).
        unused = getattr(getattr(model, "config", None), "model_type", None) == "bert"
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
    """A :class:`Trainer` for one process, a :class:`DistributedTrainer` for a torchrun rank."""
    if isinstance(process, DistributedContext):
        return DistributedTrainer(*args, process=process, **kwargs)
    return Trainer(*args, process=process, **kwargs)


# ------------------------------------------------------------------------------- the trainer


class DistributedTrainer(Trainer):
    """The :class:`Trainer` on one rank of a torchrun job; the loop itself is unchanged.

    What it adds: the step's loss and token count over the *global* batch; checkpoints that
    carry every rank's random streams (and, under FSDP, weights and optimiser state gathered
    from their shards); and agreement on when to stop, since a rank that leaves the loop alone
    would leave the others waiting in a collective forever.
    """

    process: DistributedContext
    _agreed_stop: str | None = None  # the stop every rank agreed on (the loop reads this)
    _pending_stop: str | None = None  # a signal this rank caught, not yet agreed on

    def __init__(self, model: nn.Module, config: TrainConfig, *args: Any, process: DistributedContext,
                 **kwargs: Any) -> None:
        plain = unwrap_model(model)
        self._twin_recipe = (type(plain), plain.config)  # how to build a whole copy (FSDP)
        self._twin: nn.Module | None = None
        self._twin_step: int | None = None
        # --max-minutes is decided by all ranks together (train_step), not by each rank's own clock
        self._max_minutes = config.max_minutes
        super().__init__(model, config.replace(max_minutes=None), *args, process=process, **kwargs)
        if self.tokenizer is not None:
            process.check_same(self.tokenizer.to_json(), "tokenizer")

    # A caught signal only becomes the loop's stop once every rank agrees (see train_step):
    # Trainer's handler and __init__ assign ``self._stop_signal``; the loop reads it.
    @property
    def _stop_signal(self) -> str | None:
        return self._agreed_stop

    @_stop_signal.setter
    def _stop_signal(self, value: str | None) -> None:
        self._pending_stop = value

    # ----------------------------------------------------------------------------- one step

    def train_step(self, step: int) -> tuple[float | None, int, int]:
        # the trainer reads the loss on these steps (every CPU step, log steps elsewhere)
        self._read_loss = self.device.type == "cpu" or step % self.config.log_every == 0
        loss, count, n_tokens = super().train_step(step)
        self._agree_on_stopping()
        # tokens/s and tokens seen count the whole job (ranks draw equal-shaped LM batches)
        return loss, count, n_tokens * self.process.world_size

    def accumulate_gradients(self, batches: list) -> tuple[Tensor, int]:
        loss_sum, count = super().accumulate_gradients(batches)
        if not self._read_loss:
            return loss_sum, count  # not read this step: skip the collective and the sync
        # the loss of the global batch: Σ over ranks of loss sums / Σ of target counts
        totals = torch.stack([loss_sum.detach().double(), torch.tensor(float(count), dtype=torch.float64,
                                                                        device=loss_sum.device)])
        totals = self.process.all_reduce_sum(totals)
        return totals[0], int(totals[1].item())

    def _agree_on_stopping(self) -> None:
        pending = signal.Signals[self._pending_stop].value if self._pending_stop else 0
        elapsed = time.perf_counter() - self._t0 if hasattr(self, "_t0") else 0.0
        over = int(self._max_minutes is not None and elapsed > self._max_minutes * 60)
        signum, over = self.process.max_over_ranks([pending, over])
        if signum and self._agreed_stop is None:
            self._agreed_stop = signal.Signals(signum).name
        elif over and self._agreed_stop is None:
            self._agreed_stop = "max-minutes"

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["train_config"]["max_minutes"] = self._max_minutes
        return state

    # ------------------------------------------------------------------- evaluation (FSDP)

    def evaluate(self) -> dict[str, float]:
        with self._swapped(model=self._real_model, device=self._real_device):  # every rank, on the shards
            return super().evaluate()

    def _eval_step(self, step: int, reporter: Any) -> dict[str, Any]:
        if not self.process.sharded:
            return super()._eval_step(step, reporter)
        # rank 0 saves the best model and samples from a whole CPU copy; evaluate() uses the shards
        twin = self._gathered_twin()
        with self._swapped(model=twin, device=torch.device("cpu")) if twin is not None else contextlib.nullcontext():
            return super()._eval_step(step, reporter)

    @property
    def _real_model(self) -> nn.Module:
        return self.__dict__.get("_saved_model", self.model)

    @property
    def _real_device(self) -> torch.device:
        return self.__dict__.get("_saved_device", self.device)

    @contextlib.contextmanager
    def _swapped(self, model: nn.Module, device: torch.device) -> Iterator[None]:
        """Point ``self.model`` / ``self.device`` elsewhere for a block (the base class reads them)."""
        outer = "_saved_model" in self.__dict__
        if not outer:
            self._saved_model, self._saved_device = self.model, self.device
        previous = self.model, self.device
        self.model, self.device = model, device
        try:
            yield
        finally:
            self.model, self.device = previous
            if not outer:
                del self._saved_model, self._saved_device

    def _gathered_twin(self) -> nn.Module | None:
        """Rank 0: a whole CPU copy of the model at this step (collective); other ranks: None."""
        if self._twin_step != self.step:
            state = sharded.gather_model_state(self.model, self.process.is_main)
            if self.process.is_main:
                if self._twin is None:
                    self._twin = self._new_twin()
                self._twin.load_state_dict(state)
            self._twin_step = self.step
        return self._twin

    def _new_twin(self) -> nn.Module:
        cls, config = self._twin_recipe
        return cls(config)

    # --------------------------------------------------------------------------- save / load

    def save_checkpoint(self):
        """Every rank's random streams, and (FSDP) the gathered weights and moments; rank 0 writes."""
        streams = self.process.gather_objects(ckpt.capture_rng(self.generator))
        model, optimizer = self.model, self.optimizer
        if self.process.sharded:
            model = self._gathered_twin()
            optimizer = sharded.FullOptimizerState(sharded.gather_optimizer_state(self.optimizer, self.process.is_main))
        path = None
        if self.process.is_main and self.run_dir is not None:
            rank_tensors = {f"rank{r}.{k}": v for r, (tensors, _) in enumerate(streams) for k, v in tensors.items()}
            state = {**self.state_dict(), RANK_RNG_KEY: [scalars for _, scalars in streams]}
            path = ckpt.save_checkpoint(
                self.run_dir, self.step, model=model, optimizer=optimizer, data_generator=self.generator, state=state,
                tokenizer=self.tokenizer, keep=self.config.keep_checkpoints, extra_files={RANK_RNG_FILE: rank_tensors},
            )
        self.process.barrier()
        return path

    def resume(self, path=None):
        """Load a checkpoint saved with any world size and either strategy, then this rank's streams."""
        if not self.process.sharded:
            path = super().resume(path)
        else:  # load the whole state into a CPU copy, then hand each rank its shards
            twin, holder = self._new_twin(), sharded.FullOptimizerState()
            with self._swapped(model=twin, device=torch.device("cpu")):
                self.optimizer, optimizer = holder, self.optimizer
                try:
                    path = super().resume(path)
                finally:
                    self.optimizer = optimizer
            sharded.load_model_state(self.model, twin.state_dict())
            try:
                sharded.load_optimizer_state(self.optimizer, holder.state)
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"{path}: optimizer state does not match the model ({e})") from None
        self._restore_rank_streams(path)
        return path

    def _restore_rank_streams(self, path) -> None:
        state = json.loads((path / ckpt.STATE_NAME).read_text())
        saved = state.get(RANK_RNG_KEY) or []
        rank, file = self.process.rank, path / RANK_RNG_FILE
        if rank < len(saved) and file.is_file():
            prefix = f"rank{rank}."
            tensors = {k[len(prefix):]: v for k, v in load_file(file).items() if k.startswith(prefix)}
            ckpt.restore_rng(tensors, saved[rank], self.generator)
        elif rank > 0:  # a rank the saved run did not have: a fresh stream, still reproducible
            seed = zlib.crc32(f"{self.config.seed}:{rank}:{self.step}".encode())
            self.generator.manual_seed(seed)
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed)
        saved_world, world = state.get("world_size", 1), self.process.world_size
        if self.process.is_main and saved_world != world:
            per_rank = self.config.batch_size * self.config.grad_accum
            fresh = f"; ranks {max(len(saved), 1)} and up start fresh data streams" if world > len(saved) else ""
            log.warning("resuming a %d-rank checkpoint on %d ranks: the global batch is now %d sequences (was %d)%s",
                        saved_world, world, per_rank * world, per_rank * saved_world, fresh)
