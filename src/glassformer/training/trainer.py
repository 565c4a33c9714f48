"""One training loop for every objective: GPT, BERT (masked LM), seq2seq, classification and
sentence embeddings (in-batch negatives).

The loop only knows that a dataset hands out batches (``dataset.batch(batch_size, generator)``,
a dict of the model's forward kwargs plus ``labels``) and that the model returns logits; the
objective is cross-entropy over the labels (see :mod:`glassformer.training.objectives`). Each
optimiser step:

    draw grad_accum micro-batches from the data generator
    count their targets (summed over ranks)      -> the step's loss is Σ loss / Σ targets
    forward under autocast, backward per micro-batch (no gradient all-reduce until the last)
    clip the global gradient norm, stop if the loss is not finite, AdamW step

Every ``eval_every`` steps: evaluate on fixed validation batches, run the eval callbacks
(samples, attention snapshots), keep the best model at the run directory's root, redraw the loss
curve and save a checkpoint; with ``patience``, stop once that many evaluations in a row brought
no lower validation loss. Ctrl-C or SIGTERM finishes the step, saves, and returns. With
``max_minutes`` the schedule is fitted to the time: early in the run and at each evaluation the
steps that fit in the budget (at the pace so far) become the run's length, and the learning rate
decays to its floor by then.

The trainer holds the run's state and the loop; evaluation is in :mod:`.evaluation`, the order
in which ranks gather and save checkpoints in :mod:`.saving`, catching signals in :mod:`.signals`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from glassformer.errors import GlassformerError
from glassformer.generation.config import GenerationConfig
from glassformer.io import make_dirs, unwrap_model
from glassformer.training import checkpoint as ckpt
from glassformer.training import evaluation, saving
from glassformer.training.config import TrainConfig
from glassformer.training.evaluation import Batch, Dataset, EvalCallback, EvalView
from glassformer.training.monitor import (
    METRICS_NAME,
    PLOT_EVERY_S,
    PLOT_NAME,
    MetricsLog,
    Reporter,
    loss_label,
    plot_losses,
)
from glassformer.training.objectives import compute_loss, count_input_tokens, count_targets
from glassformer.training.optim import Schedule, build_optimizer, steps_within
from glassformer.training.runtime import (
    ProcessContext,
    autocast,
    keep_freed_memory,
    resolve_device,
    resolve_dtype,
    should_compile,
)
from glassformer.training.signals import catch_stop_signals

log = logging.getLogger("glassformer.training")


class TrainingDiverged(GlassformerError):
    """The loss became NaN or infinite; the run stopped without saving the bad weights."""


@dataclass
class TrainResult:
    step: int  # the last completed step
    best_val_loss: float | None
    last_val_loss: float | None
    stopped_by: str | None  # "SIGINT"/"SIGTERM" when a signal ended the run early
    run_dir: Path | None
    early_stopped: bool = False  # --patience evaluations without a better validation loss


class Trainer:
    """Trains ``model`` on ``train_data``, evaluating on ``val_data``; see the module docstring.

    Args:
        model: a glassformer model (GPT, BERT, Transformer), on any device.
        config: the run's :class:`TrainConfig`.
        train_data, val_data: objects with ``batch(batch_size, generator) -> dict``.
        tokenizer: saved next to the model (root and checkpoints) when given.
        run_dir: where metrics, plots, checkpoints and the best model go; None keeps nothing.
        eval_callbacks: called after each evaluation on the main process.
        generation_config: written as ``generation_config.json`` beside the best model (a dict is
            read as that file's keys).
        baseline: a loss drawn as a dashed line on the plot (e.g. the unigram entropy).
        process: rank/world size and the DDP hooks (:class:`ProcessContext`).
    """

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        train_data: Dataset,
        val_data: Dataset | None = None,
        *,
        tokenizer: Any = None,
        run_dir: str | Path | None = None,
        eval_callbacks: list[EvalCallback] | None = None,
        generation_config: GenerationConfig | dict[str, Any] | None = None,
        baseline: float | None = None,
        process: ProcessContext | None = None,
    ) -> None:
        self.config = config
        self.process = process or ProcessContext()
        self.device = resolve_device(config.device)
        self.amp_dtype = resolve_dtype(config.dtype, self.device, getattr(unwrap_model(model).config, "d_model", None))
        if self.device.type == "cpu":  # big activations re-used from the heap, not re-faulted each step
            keep_freed_memory()
        if self.device.type == "cuda":  # TF32 tensor cores for the fp32 matmuls left outside autocast
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.model = unwrap_model(model).to(self.device)  # the plain model: saved, evaluated, sampled
        self.train_model = self.process.wrap_model(self.model, self.device)  # what the step calls
        self.compiled = should_compile(config.compile, self.device, config.max_steps, config.max_minutes)
        if self.compiled:
            self.train_model = torch.compile(self.train_model)
        self.train_data, self.val_data = train_data, val_data
        self.tokenizer = tokenizer
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.eval_callbacks = list(eval_callbacks or [])
        if isinstance(generation_config, dict):
            generation_config = GenerationConfig.from_json_dict(generation_config, "generation_config")
        self.generation_config = generation_config
        self.baseline = baseline
        self.optimizer = build_optimizer(self.model, config, self.device)
        # a model that can compute its loss without keeping the (B, T, V) logits does (a GPT: glassformer.linear)
        self.loss_in_model = getattr(self.model, "loss_without_logits", False) and not config.smoothing
        self.schedule = Schedule.from_config(config)
        self.max_steps = config.max_steps  # --max-minutes may shorten it (see _fit_to_time)
        self.evals_since_best = 0  # evaluations since the validation loss last improved (--patience)
        self.generator = torch.Generator().manual_seed(self.process.data_seed(config.seed))
        self.step = 0
        self.best_val_loss: float | None = None
        self.last_val_loss: float | None = None
        self.tokens_seen = 0
        self.elapsed_before = 0.0  # training seconds of earlier processes of this run
        self._val_batches: list[Batch] | None = None
        self._caught_signal: str | None = None  # set by the signal handler on this process
        self._stop_signal: str | None = None  # the signal every rank agreed to stop on
        self.metrics = MetricsLog(self.run_dir / METRICS_NAME) if self.run_dir is not None else None
        self.after_save: list[Callable[[Path], None]] = []  # called with each checkpoint saved (rank 0)
        # seconds this process spent outside the steps, by kind; each metrics.jsonl row has the totals so far
        self.overhead_s = {"eval": 0.0, "callbacks": 0.0, "best_model": 0.0, "checkpoint": 0.0, "plot": 0.0, "log": 0.0}

    @contextlib.contextmanager
    def spent(self, kind: str):
        """Add the seconds of the block to ``overhead_s[kind]``."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.overhead_s[kind] += time.perf_counter() - t

    # ----------------------------------------------------------------------------- one step

    def draw_batches(self) -> list[Batch]:
        """The micro-batches of the next optimiser step, drawn from the data generator."""
        return [self.train_data.batch(self.config.batch_size, self.generator) for _ in range(self.config.grad_accum)]

    def accumulate_gradients(self, batches: list[Batch], read_loss: bool = False) -> tuple[Tensor, int]:
        """Forward and backward over ``batches``; gradients hold d(Σ loss / Σ targets).

        Dividing every micro-batch's summed loss by the targets of the *whole* step makes the
        accumulated gradient equal to the gradient of one batch holding all micro-batches.
        Returns the summed loss (detached) and the target count; with several ranks and
        ``read_loss``, those of the global batch (summed over ranks).
        """
        counts = sum(count_targets(b) for b in batches)  # labels are still on the host: no device sync
        total = counts
        if self.process.world_size > 1:  # every rank divides by the global number of targets
            # a host tensor: the process group reduces it on the CPU, so the device never syncs here
            total = int(self.process.all_reduce_sum(torch.tensor(counts)).item())
        denom = float(max(total, 1))
        loss_sum = torch.zeros((), device=self.device)
        for i, batch in enumerate(batches):
            batch = evaluation.to_device(batch, self.device)
            with self.process.no_sync(self.train_model, last_micro_step=i == len(batches) - 1):
                with autocast(self.device, self.amp_dtype):
                    out = compute_loss(self.train_model, batch, self.config.smoothing, count_correct=False,
                                       loss_in_model=self.loss_in_model)
                (out.loss / denom).backward()
            loss_sum += out.loss.detach()
        if self.process.world_size > 1 and read_loss:  # the loss of the global batch: Σ loss sums / Σ counts
            totals = torch.stack([loss_sum.double(), torch.tensor(float(counts), dtype=torch.float64,
                                                                  device=loss_sum.device)])
            totals = self.process.all_reduce_sum(totals)
            return totals[0], int(totals[1].item())
        return loss_sum, counts

    def train_step(self, step: int) -> tuple[float | None, int, int]:
        """One optimiser step: (mean loss or None when not synced, targets, input tokens)."""
        lr = self.schedule.apply(self.optimizer, step)
        batches = self.draw_batches()
        # tokens/s and tokens seen count the whole job (ranks draw equal-shaped batches)
        n_tokens = sum(count_input_tokens(b) for b in batches) * self.process.world_size
        # Reading the loss forces a device sync: every step on the CPU (free), on log steps elsewhere.
        read_loss = self.device.type == "cpu" or step % self.config.log_every == 0
        loss_sum, count = self.accumulate_gradients(batches, read_loss)
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        loss = None
        if read_loss:
            loss = loss_sum.item() / max(count, 1)
            if not math.isfinite(loss):
                self.optimizer.zero_grad(set_to_none=True)
                raise TrainingDiverged(self._diverged_message(loss, step))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._lr = lr
        return loss, count, n_tokens

    def _diverged_message(self, loss: float, step: int) -> str:
        last = ckpt.latest_checkpoint(self.run_dir) if self.run_dir is not None else None
        keep = f"the last good checkpoint is {last}" if last else "no checkpoint was saved yet"
        return f"training loss is {loss} at step {step}; stopped without saving it ({keep}; try a lower --lr)"

    # ----------------------------------------------------------------------------- evaluation

    def validation_batches(self) -> list[Batch]:
        """The same ``eval_batches`` batches at every evaluation (see :func:`.evaluation.fixed_batches`)."""
        if self._val_batches is None:
            self._val_batches = evaluation.fixed_batches(self.val_data, self.config.batch_size,
                                                         self.config.eval_batches, self.config.seed + 1)
        return self._val_batches

    def evaluate(self, model: nn.Module | None = None, device: torch.device | None = None) -> dict[str, float]:
        """Validation loss (nats per target, no label smoothing) and accuracy over the fixed batches,
        of ``model`` on ``device`` (default: the trained model; every rank evaluates its shards)."""
        if self.val_data is None:
            return {}
        model = model if model is not None else self.model
        device = device if device is not None else self.device
        return evaluation.evaluate(model, self.validation_batches(), device, self.amp_dtype, self.process)

    # --------------------------------------------------------------------------- save / load

    def state_dict(self) -> dict[str, Any]:
        """The trainer's JSON-able state that goes into a checkpoint."""
        return {
            "schedule": self.schedule.state_dict(), "best_val_loss": self.best_val_loss,
            "last_val_loss": self.last_val_loss, "tokens_seen": self.tokens_seen,
            "elapsed_s": self._elapsed(), "train_config": self.config.to_dict(),
            "evals_since_best": self.evals_since_best,
            "world_size": self.process.world_size,
        }

    def save_checkpoint(self, model: nn.Module | None = None, optimizer: Any = None) -> Path | None:
        """Save the step's checkpoint (rank 0 writes; every rank must call this).

        ``model`` / ``optimizer`` default to whole copies from the process context: the model and
        optimiser themselves in one process or under DDP, tensors gathered from the shards under
        FSDP. Under torchrun every rank's random streams go in too.
        """
        return saving.save_step_checkpoint(
            self.process, self.run_dir, self.step, model=self.model, optimizer=self.optimizer,
            generator=self.generator, state=self.state_dict, tokenizer=self.tokenizer,
            keep=self.config.keep_checkpoints, after_save=self.after_save,
            whole_model=model, whole_optimizer=optimizer,
        )

    def save_model(self, directory: str | Path, model: nn.Module | None = None) -> None:
        """A loadable model directory: config, weights, tokenizer, generation config."""
        saving.save_model_dir(directory, model if model is not None else self.model, self.tokenizer,
                              self.generation_config)

    def resume(self, path: str | Path | None = None, model: nn.Module | None = None,
               optimizer: torch.optim.Optimizer | None = None) -> Path:
        """Load the latest checkpoint of the run (or ``path``) into ``model`` and ``optimizer``
        (default: the trainer's): weights, optimiser, RNGs, step. Under FSDP the whole tensors
        are read into a CPU copy, then each rank keeps its shards."""
        path = saving.checkpoint_to_resume(self.run_dir, path)
        model = model if model is not None else self.model
        optimizer = optimizer if optimizer is not None else self.optimizer
        state = saving.load_for_resume(self.process, path, model, optimizer, self.generator)
        self.step = int(state["step"])
        self.best_val_loss = state.get("best_val_loss")
        self.last_val_loss = state.get("last_val_loss")
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        self.evals_since_best = int(state.get("evals_since_best", 0))
        per_rank = self.config.batch_size * self.config.grad_accum
        self.process.restore_rank_streams(path, state, self.generator, self.config.seed, self.step, per_rank)
        if self.metrics is not None and self.process.is_main:
            self.metrics.truncate_after(self.step)
        return path

    # ------------------------------------------------------------------------------- the loop

    def _elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self._t0 if hasattr(self, "_t0") else 0.0)

    def _signal_caught(self, name: str) -> None:
        """Ctrl-C / SIGTERM set a flag; the loop saves after the current step (see :mod:`.signals`)."""
        self._caught_signal = name

    def fit(self) -> TrainResult:
        """Train from the current step (0, or where :meth:`resume` left it) to ``max_steps``."""
        cfg, main = self.config, self.process.is_main
        if self.run_dir is not None and main:
            make_dirs(self.run_dir)
            ckpt.clean_stale(self.run_dir)
        if self.step == 0:  # a fresh run: every random stream from the seed (dropout differs per rank)
            seed = cfg.seed + self.process.rank
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
        self.model.train()
        self._t0 = time.perf_counter()
        self._lr = self.schedule(self.step + 1)
        reporter = Reporter(cfg.progress, self.max_steps, self.step, enabled=main)
        start_step, early_stop, fit_at = self.step, False, None
        win_loss, win_count, win_tokens, win_time = 0.0, 0, 0, 0.0
        step_time_ema = None
        evaluated_at = None
        plotted_at, plot_due = self._t0, False  # the loss plot: last drawn, and evaluations since
        try:
            with catch_stop_signals(self._signal_caught):
                while self.step < self.max_steps:
                    if self.process.world_size == 1:  # alone: a signal caught anywhere (even mid-eval) stops now
                        self._stop_signal = self._stop_signal or self._caught_signal
                    if self._stop_signal is not None:
                        break
                    step = self.step + 1
                    t = time.perf_counter()
                    loss, count, n_tokens = self.train_step(step)
                    dt = time.perf_counter() - t
                    self.step = step
                    self.tokens_seen += n_tokens
                    # a signal or --max-minutes on any rank stops every rank after this same step
                    over = cfg.max_minutes is not None and time.perf_counter() - self._t0 > cfg.max_minutes * 60
                    stop = self.process.agree_on_stop(self._caught_signal, over)
                    out_of_time = stop == "max-minutes"
                    self._stop_signal = None if out_of_time else stop
                    step_time_ema = dt if step_time_ema is None else 0.9 * step_time_ema + 0.1 * dt
                    if loss is not None:
                        win_loss, win_count = win_loss + loss * count, win_count + count
                    win_tokens, win_time = win_tokens + n_tokens, win_time + dt
                    if cfg.max_minutes is not None and self.process.world_size == 1:
                        # first fit once 5% of the budget (at least 3 steps) has shown the pace
                        early = fit_at is None and step - start_step >= 3 and \
                            time.perf_counter() - self._t0 >= 0.05 * cfg.max_minutes * 60
                        if early or (fit_at is not None and step % cfg.eval_every == 0):
                            fit_at = step
                            self._fit_to_time(step - start_step, reporter)
                    eval_now = step % cfg.eval_every == 0 or step == self.max_steps or out_of_time
                    log_now = step % cfg.log_every == 0 or eval_now or self._stop_signal is not None
                    tps = win_tokens / win_time if win_time > 0 else 0.0
                    # the console shows the loss metrics.jsonl records: the mean over the window so far
                    window_loss = win_loss / win_count if win_count else None
                    reporter.step(step, window_loss, self._lr, tps, (self.max_steps - step) * step_time_ema, log_now)
                    if not log_now:
                        continue
                    record = {"step": step, "train_loss": window_loss,
                              "lr": self._lr, "tokens_per_s": round(tps, 1), "elapsed_s": round(self._elapsed(), 3)}
                    if eval_now:
                        record.update(self._eval_step(step, reporter))
                        evaluated_at = step
                        early_stop = cfg.patience is not None and self.evals_since_best >= cfg.patience and step < self.max_steps
                    if main and self.metrics is not None:
                        # wall clock, and this process's seconds outside the steps so far (by kind)
                        record.update(time=round(time.time(), 3),
                                      overhead_s={k: round(v, 4) for k, v in self.overhead_s.items()})
                        with self.spent("log"):
                            self.metrics.append(record)
                        plot_due = plot_due or eval_now
                        if plot_due and time.perf_counter() - plotted_at >= PLOT_EVERY_S:
                            with self.spent("plot"):
                                self._plot()
                            plotted_at, plot_due = time.perf_counter(), False
                    if eval_now:
                        with self.spent("checkpoint"):
                            self.save_checkpoint()
                    win_loss, win_count, win_tokens, win_time = 0.0, 0, 0, 0.0
                    if out_of_time:
                        reporter.message(f"--max-minutes {cfg.max_minutes:g} reached after step {step}; stopping")
                        break
                    if early_stop:
                        reporter.message(f"early stop after step {step} of {self.max_steps}: {self.evals_since_best} "
                                         f"evaluation(s) in a row without a lower validation loss (--patience {cfg.patience}); the best model "
                                         f"(val loss {self.best_val_loss:.4f}) is kept")
                        break
                if self._stop_signal is not None and evaluated_at != self.step:
                    if win_tokens and main and self.metrics is not None:  # steps the signal kept from being logged
                        self.metrics.append({"step": self.step, "train_loss": win_loss / win_count if win_count else None,
                                             "lr": self._lr, "tokens_per_s": round(win_tokens / max(win_time, 1e-9), 1),
                                             "elapsed_s": round(self._elapsed(), 3)})
                    path = self.save_checkpoint()
                    reporter.message(f"{self._stop_signal}: stopped after step {self.step}; saved {path}; "
                                     f"continue with --resume --out {self.run_dir}")
                if plot_due:  # the run's last evaluations, drawn once
                    with self.spent("plot"):
                        self._plot()
        finally:
            reporter.close()
        return TrainResult(self.step, self.best_val_loss, self.last_val_loss, self._stop_signal, self.run_dir,
                           early_stop)

    def _fit_to_time(self, steps_done: int, reporter: Reporter) -> None:
        """Shorten the run to the steps that fit in ``max_minutes`` at the pace so far, and squeeze
        the schedule into them so the learning rate has decayed when the time runs out."""
        budget = self.config.max_minutes * 60  # training time in this process, as the stop rule counts it
        elapsed = time.perf_counter() - self._t0
        fits = steps_within(budget, elapsed, steps_done, self.max_steps - self.step + steps_done)
        new_max = self.step - steps_done + fits
        if new_max >= self.max_steps:
            return
        # keep a little room for the last evaluation and save
        new_max = max(self.step + 1, int(self.step + (new_max - self.step) * 0.95))
        self.schedule = self.schedule.fitted(self.max_steps, new_max)
        reporter.message(f"--max-minutes {self.config.max_minutes:g}: {self.max_steps} steps do not fit; the run "
                         f"ends at step {new_max}, its learning rate decayed by then")
        self.max_steps = new_max
        reporter.set_total(new_max)

    def _plot(self) -> None:
        """Redraw the run's loss plot from metrics.jsonl (rank 0)."""
        plot_losses(self.metrics.read(), self.run_dir / PLOT_NAME, baseline=self.baseline,
                    title=f"{self.config.task}: validation and training loss", ylabel=loss_label(self.config.task))

    def _eval_step(self, step: int, reporter: Reporter) -> dict[str, Any]:
        """Evaluate, report, run callbacks, keep the best model. Returns fields for metrics.jsonl.

        Every rank evaluates its part; rank 0 saves and samples from the whole model (under FSDP
        a CPU copy gathered from the shards: a collective, so every rank asks for it)."""
        with self.spent("eval"):
            result = self.evaluate()
        whole, device = self.process.full_model(self.model, self.device, step)
        if not result:  # no validation data: the newest model stands in for the best
            if self.process.is_main and self.run_dir is not None:
                self.save_model(self.run_dir, whole)
            return {}
        val = result["val_loss"]
        if not math.isfinite(val):
            raise TrainingDiverged(self._diverged_message(val, step).replace("training loss", "validation loss"))
        self.last_val_loss = val
        improved = self.best_val_loss is None or val < self.best_val_loss
        self.evals_since_best = 0 if improved else self.evals_since_best + 1
        if improved:
            self.best_val_loss = val
            if self.process.is_main and self.run_dir is not None:
                with self.spent("best_model"):
                    self.save_model(self.run_dir, whole)
        reporter.message(f"step {step}: val loss {val:.4f} (accuracy {result['val_accuracy']:.1%})"
                         + (" - best so far, saved" if improved else ""))
        if self.process.is_main and self.eval_callbacks:
            view = EvalView(whole, device, self.tokenizer, self.run_dir, self.config)
            with self.spent("callbacks"):
                evaluation.run_eval_callbacks(self.eval_callbacks, view, step, reporter.message)
        return {"val_loss": val, "val_accuracy": result["val_accuracy"]}
