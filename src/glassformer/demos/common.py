"""What every demo shares: the run directory, fitting the step count to a time budget, the
training call, the summary file, the four-steps walk-through of one head, the next commands."""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from glassformer.io import atomic_write_json

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
MIN_STEPS = 20  # fewer steps than this teach nothing worth showing


def say(text: str = "") -> None:
    """Demo output goes to stdout (the demo is a command, not library code)."""
    print(text, flush=True)


@dataclass
class DemoRun:
    """Where a demo writes, how long it may train, and the clock it reports."""

    name: str
    out: Path
    overwrite: bool
    minutes: float  # the training-time budget
    max_steps: int | None  # fixed by the user: no fitting
    seed: int
    progress: str
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def from_args(cls, name: str, args: argparse.Namespace, default_minutes: float) -> DemoRun:
        default_out = args.out is None
        out = Path(args.out) if args.out is not None else Path("runs") / f"demo-{name}"
        # the default run directory belongs to the demo: each demo replaces its previous run there
        overwrite = bool(args.overwrite) or (default_out and (out / "train_config.json").is_file())
        given = getattr(args, "minutes", None)
        if given is not None and (not math.isfinite(given) or given <= 0):  # the user's; a default may be 0 (real)
            raise ValueError(f"--minutes {given}: must be a finite, positive number of minutes")
        minutes = given if given is not None else default_minutes
        return cls(name, out, overwrite, minutes, args.max_steps, args.seed, args.progress)

    @classmethod
    def begin(cls, name: str, args: argparse.Namespace, default_minutes: float, description: str,
              timer: Callable[[int], Callable[[], float]], make_config: Callable[[int], Any], low: int,
              high: int) -> tuple[DemoRun, Any]:
        """The run and its TrainConfig: says what the demo does, times a step (``timer(seed)``), fits
        the steps to the budget (see :meth:`fit_steps`), says how many, and returns
        ``make_config(steps)`` with this run's settings (:meth:`train_config`)."""
        demo = cls.from_args(name, args, default_minutes)
        say(f"glassformer demo {name}: {description}.")
        steps, per_step = demo.fit_steps(timer(demo.seed), low=low, high=high)
        report_steps(demo, steps, per_step, low)
        return demo, demo.train_config(make_config(steps))

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def fit_steps(self, time_step: Callable[[], float], low: int, high: int) -> tuple[int, float | None]:
        """``(steps, seconds per step)``: ``--max-steps``, or as many steps as fit ``minutes``.

        ``time_step()`` runs one training step of the demo's model shape and returns its
        seconds; the first call warms up, the median of the next ones (at least 3, and at least a
        second's worth) counts, plus 10% for
        evaluations and logging. ``high`` caps a fast machine (the demo's schedule is tuned up
        to it); ``low`` is the fewest steps at which the demo beats its baselines by the margins
        it claims (the step counts ``tests/test_demo.py`` checks): a slow or busy machine trains
        that many, taking longer than the budget (:func:`report_steps` says so and how long),
        rather than show a model that learned nothing.
        """
        if self.max_steps is not None:
            return self.max_steps, None
        time_step()  # warm-up: allocations, thread pools
        samples = [time_step() for _ in range(3)]
        while sum(samples) < 1.0 and len(samples) < 50:  # a fast step: time enough of them to see its spread
            samples.append(time_step())
        per_step = statistics.median(samples) * 1.10
        return max(low, min(high, int(self.minutes * 60 / per_step))), per_step

    def train_config(self, config):
        """The demo's TrainConfig with this run's directory, seed and progress. No time limit: the
        steps were fitted to the budget before training, and a machine that gets busier meanwhile
        takes longer rather than stop short of the steps the demo's claims need."""
        return config.replace(out=str(self.out), overwrite=self.overwrite, progress=self.progress, seed=self.seed)

    def finish(self, figures: dict[str, Any], files: str, commands: list[str]) -> int:
        """Write ``summary.json``, list the run's files (``files`` names those after the model and
        metrics; ``{summary}`` stands for the summary file) and the commands to try next."""
        path = self.write_summary(figures)
        say("")
        say(f"files in {self.out}/: " + files.format(summary=path.name))
        next_commands(commands)
        return 0

    def write_summary(self, figures: dict[str, Any]) -> Path:
        """``summary.json``: the figures the demo printed, plus ``elapsed_s`` (the whole demo)."""
        data = {"demo": self.name, **figures, "elapsed_s": round(self.elapsed(), 1)}
        return atomic_write_json(self.out / SUMMARY_FILE, data)


def schedule(steps: int, evals: int = 5) -> dict[str, int]:
    """Evaluation, logging and warm-up intervals for a run of ``steps`` steps."""
    evals = max(1, min(evals, steps // 20))
    return dict(max_steps=steps, eval_every=max(1, math.ceil(steps / evals)), log_every=max(1, min(10, steps // 10)),
                warmup_steps=min(100, max(1, steps // 10)))


def step_timer(model: torch.nn.Module, make_batch: Callable[[], dict[str, torch.Tensor]], lr: float = 1e-3
               ) -> Callable[[], float]:
    """A function that runs one training step of ``model`` as the trainer does (draw a batch,
    forward, backward, clip, AdamW, read the loss) and returns its seconds.

    With the trainer's settings: fused AdamW, and (on the CPU) malloc keeping freed blocks, without
    which a step re-faults its biggest tensors and the demo would plan too few steps."""
    from glassformer.training.runtime import keep_freed_memory

    cpu = next(model.parameters()).device.type == "cpu"
    if cpu:
        keep_freed_memory()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=cpu or None)

    def one() -> float:
        start = time.perf_counter()
        loss = model(**make_batch()).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        return time.perf_counter() - start

    return one


def train(run: DemoRun, config):
    """Train through the same path as ``glassformer train``; returns ``(result, setup, trainer)``."""
    from glassformer.training.run import run_training

    if run.overwrite and (run.out / "train_config.json").is_file():
        say(f"replacing the previous run in {run.out}")
    return run_training(config, echo=say)


def train_and_load(run: DemoRun, config):
    """Train (``config`` is already :meth:`DemoRun.train_config`'s), then load the best checkpoint as
    a user loads it: ``(result, setup, model, tokenizer)``, or None when the run was stopped early."""
    from glassformer.loading import load_model_and_tokenizer

    result, setup, _trainer = train(run, config)
    if stopped(result, run.out):
        return None
    model, tokenizer = load_model_and_tokenizer(run.out)
    return result, setup, model, tokenizer


def report_steps(run: DemoRun, steps: int, per_step: float | None, low: int = 0) -> None:
    if per_step is None:
        return
    fit = int(run.minutes * 60 / per_step)
    if fit < low:
        say(f"this machine runs a training step in about {per_step * 1000:.0f} ms (busy or slow): {fit} steps fit in "
            f"{run.minutes:g} minutes, fewer than the {low} this demo needs to beat its baselines; training {low} "
            f"steps, about {low * per_step / 60:.1f} minutes (--max-steps sets it)")
    else:
        say(f"this machine runs a training step in about {per_step * 1000:.0f} ms: training for {steps} steps "
            f"(about {steps * per_step / 60:.1f} minutes; --max-steps sets it)")


def stopped(result, out: Path) -> bool:
    if result.stopped_by:
        say(f"stopped by {result.stopped_by}; the run so far is in {out}")
        return True
    return False


def smoothing_note(config, metrics: list[dict[str, Any]]) -> str | None:
    """One line when label smoothing keeps the training loss above the validation loss."""
    smoothing = config.smoothing
    last_train = next((r["train_loss"] for r in reversed(metrics) if r.get("train_loss") is not None), None)
    last_val = next((r["val_loss"] for r in reversed(metrics) if r.get("val_loss") is not None), None)
    if smoothing > 0 and last_train is not None and last_val is not None and last_train > last_val:
        return (f"note: the training loss ({last_train:.3f}) sits above the validation loss ({last_val:.3f}) because "
                f"training uses label smoothing ε={smoothing:g} (and dropout); validation is plain cross-entropy")
    return None


def read_metrics(out: Path) -> list[dict[str, Any]]:
    import json

    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------- attention


def show_attention(model, tokenizer, text: str, kind: str, out: Path, target: list[int] | None = None,
                   layer: int | None = None, head: int = 0, token: int | None = None) -> None:
    """The four steps for one head with this model's numbers, and that head's heatmap."""
    from glassformer.explain.heatmaps import save_cross_alignment, save_head_heatmap
    from glassformer.explain.steps import format_four_steps, four_steps
    from glassformer.explain.tokens import prepare

    prepared = prepare(model, tokenizer, text, target)
    stack = model.encoder if kind == "encoder-self" else model.decoder
    layer = len(stack.layers) - 1 if layer is None else layer
    q_tokens = prepared.tokens.get("tokens") or prepared.tokens["target"]
    k_tokens = prepared.tokens.get("tokens") or prepared.tokens["source"]
    token = len(q_tokens) - 1 if token is None else token
    steps = four_steps(model, prepared.input_ids, layer, head, token, kind=kind, tgt_ids=prepared.tgt_ids)
    say(f"the four steps of attention, {kind} layer {layer} head {head}, for query token {token} "
        f"({q_tokens[token]!r}) of {text!r}:")
    say("  1: q·kⱼ scores each key against the query (QKᵀ)   2: ÷√d_k keeps the scores' scale steady\n"
        "  3: softmax turns scores into weights that sum to 1   4: z = Σ weightⱼ·vⱼ mixes the values (·V)")
    say(format_four_steps(steps, k_tokens, q_tokens[token], plain=not sys.stdout.isatty(), max_rows=16).rstrip())
    with torch.no_grad():
        if kind == "cross":
            res = model(torch.tensor([prepared.input_ids]), torch.tensor([prepared.tgt_ids]), return_attentions=True)
            cross = torch.stack([a.weights[0] for a in res.attentions if a.kind == "cross"])  # (L, H, T, S)
            path = save_cross_alignment(cross, k_tokens, q_tokens, out / "attention.png")
            say(f"cross-attention alignment (target rows, source columns; mean of all heads): {path}")
            return
        res = model(torch.tensor([prepared.input_ids]), return_attentions=True)
    weights = res.attention(kind, layer)[0, head]  # (Tq, Tk)
    path = save_head_heatmap(weights, q_tokens, k_tokens, out / "attention.png",
                             title=f"{kind} attention, layer {layer}, head {head}")
    say(f"attention heatmap of that head: {path}")


def next_commands(commands: list[str]) -> None:
    say("next, try:\n" + "\n".join(f"  {c}" for c in commands))
