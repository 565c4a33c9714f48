"""Time to a good model: wall time for ``glassformer train gpt`` to reach a validation loss,
against a plain PyTorch loop written the obvious way (issue 16, item 4).

Both sides train the same model (same initial weights), on the same batches (the same dataset
and data generator seed), with AdamW at the same learning-rate schedule, and evaluate the same
fixed validation batches every ``--eval-every`` steps. Ours is the whole ``glassformer train``
path: metrics, checkpoints, the loss plot, samples off. The report gives, for each side, the wall
time at the first evaluation whose loss is at or below ``--target`` (taken as that evaluation
starts, on both sides: the model that reaches the target exists then; our metrics row records
``elapsed_s`` before evaluating), and for ours the share of the wall time spent outside the
optimiser steps (evaluation, checkpoints, plots, logging).

    python benchmarks/time_to_loss.py --target 2.0 --max-steps 600 --repeats 5

With ``--repeats`` N the two sides run N times each, alternating which goes first; the report
gives the median of each figure and the median of the per-repeat ratios.

Speed is a ratio measured in one process on a quiet machine; nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from glassformer.training.config import TrainConfig
from glassformer.training.objectives import compute_loss
from glassformer.training.optim import Schedule
from glassformer.training.run import run_training
from glassformer.training.tasks import prepare
from glassformer.training.trainer import Trainer


def config(args: argparse.Namespace, out: str) -> TrainConfig:
    return TrainConfig(task="gpt", data=args.data, n_layers=4, n_heads=4, d_model=128, context=128, batch_size=32,
                       max_steps=args.max_steps, eval_every=args.eval_every, eval_batches=10, warmup_steps=50,
                       lr=3e-3, min_lr=3e-4, dropout=0.0, sample_tokens=0, progress="none", device="cpu",
                       dtype="float32", seed=0, out=out, log_every=10, compile=args.compile)


def ours(args: argparse.Namespace) -> tuple[float | None, float, float, list[float], float]:
    """(seconds to the target or None, total wall seconds, share outside train_step, val losses,
    median seconds of a step)."""
    spent = {"step": 0.0, "fit": 0.0}  # seconds inside train_step, and inside fit (the training loop)
    steps: list[float] = []
    real_step, real_fit = Trainer.train_step, Trainer.fit

    def timed(real, key):
        def wrapper(self, *args):
            t = time.perf_counter()
            try:
                return real(self, *args)
            finally:
                spent[key] += time.perf_counter() - t
                if key == "step":
                    steps.append(time.perf_counter() - t)
        return wrapper

    Trainer.train_step, Trainer.fit = timed(real_step, "step"), timed(real_fit, "fit")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            run_training(config(args, tmp + "/run"), echo=lambda s: None)
            wall = time.perf_counter() - t0
            rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    finally:
        Trainer.train_step, Trainer.fit = real_step, real_fit
    hit = next((r["elapsed_s"] for r in rows if r.get("val_loss") is not None and r["val_loss"] <= args.target), None)
    vals = [r["val_loss"] for r in rows if r.get("val_loss") is not None]
    return hit, wall, 1.0 - spent["step"] / spent["fit"], vals, statistics.median(steps)


def plain(args: argparse.Namespace) -> tuple[float | None, float, list[float], float]:
    """(seconds to the target or None, total wall seconds, val losses, median seconds of a step).

    The obvious loop: AdamW (PyTorch's defaults), ``F.cross_entropy`` (its mean over the targets,
    -100 ignored), the same data, model and evaluation."""
    cfg = config(args, "unused")
    setup = prepare(cfg)
    model = setup.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                  weight_decay=cfg.weight_decay)
    schedule = Schedule.from_config(cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    val_batches = list(setup.val_data.eval_batches(cfg.batch_size, cfg.eval_batches)) \
        if hasattr(setup.val_data, "eval_batches") else None
    t0, hit, vals, steps = time.perf_counter(), None, [], []
    for step in range(1, cfg.max_steps + 1):
        t = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = schedule(step)
        batch = setup.train_data.batch(cfg.batch_size, generator)
        logits = model(batch["input_ids"]).logits  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten())  # the mean over targets
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad()
        steps.append(time.perf_counter() - t)
        if step % cfg.eval_every == 0 and val_batches is not None:
            at = time.perf_counter() - t0  # as our metrics row's elapsed_s: the time before evaluating
            model.eval()
            with torch.no_grad():
                sums = [compute_loss(model, b) for b in val_batches]
            model.train()
            val = sum(float(s.loss) for s in sums) / sum(int(s.count) for s in sums)
            vals.append(val)
            if hit is None and val <= args.target:
                hit = at
    return hit, time.perf_counter() - t0, vals, statistics.median(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="python-docs", help="corpus (default: the built-in python-docs)")
    parser.add_argument("--target", type=float, default=2.0, help="validation loss to reach, nats per character")
    parser.add_argument("--max-steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=TrainConfig.eval_every, help="default: the trainer's")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side, alternating; medians")
    parser.add_argument("--warmup-steps", type=int, default=20, help="an untimed short run of each side first")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="ours: --compile/--no-compile (default: the trainer's rule)")
    args = parser.parse_args()
    if args.warmup_steps:  # the first run in a process pays one-off costs (allocator, kernels, caches): not timed
        warm = argparse.Namespace(**{**vars(args), "max_steps": args.warmup_steps})
        ours(warm), plain(warm)
    runs = []  # (ours_hit, ours_wall, overhead, plain_hit, plain_wall) per repeat
    for r in range(args.repeats):
        torch.manual_seed(0)
        if r % 2 == 0:
            o, p = ours(args), plain(args)
        else:
            p, o = plain(args), ours(args)
        runs.append((*o[:3], *p[:2]))
        print(f"repeat {r + 1}: ours {fmt(o[0])} to the target ({o[2]:.1%} outside steps), plain {fmt(p[0])}; "
              f"median step: ours {1e3 * o[4]:.1f} ms, plain {1e3 * p[3]:.1f} ms; "
              f"val losses every {args.eval_every} steps: ours {' '.join(f'{v:.3f}' for v in o[3])}, "
              f"plain {' '.join(f'{v:.3f}' for v in p[2])}", flush=True)
    ours_hit, ours_wall, overhead, plain_hit, plain_wall = (median([run[i] for run in runs]) for i in range(5))
    print(f"target val loss {args.target}, median of {args.repeats}: ours {fmt(ours_hit)}, plain loop {fmt(plain_hit)}")
    ratios = [run[3] / run[0] for run in runs if run[0] and run[3]]
    if ratios:
        print(f"ratio (plain / ours): {statistics.median(ratios):.2f}x")
    print(f"ours: {ours_wall:.1f} s wall for {args.max_steps} steps (data and model set-up included); "
          f"{overhead:.1%} of the training loop outside the optimiser steps")
    print(f"plain: {plain_wall:.1f} s wall")
    if not math.isfinite(overhead):
        raise SystemExit(1)


def fmt(t: float | None) -> str:
    return f"{t:.1f} s" if t is not None else "not reached"


def median(values: list[float | None]) -> float | None:
    """The median, or None when any value is None (a side that missed the target once)."""
    return None if any(v is None for v in values) else statistics.median(values)


if __name__ == "__main__":
    main()
