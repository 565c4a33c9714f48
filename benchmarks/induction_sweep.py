"""When does the induction head form? The demo's model, trained with overrides, counted in steps (issue 28, item 5).

Trains ``glassformer demo induction``'s config (``demos.induction.config``) through the same path as
the demo (``run_training``: the same data, initial weights and trainer), with any TrainConfig field
overridden, for ``--steps`` steps per seed, and reports per seed:

* the phase-change step, defined as the demo defines it (``demos.induction.phase_change``: the first
  evaluation at which the loss on the repeat has fallen past half-way from its first value to its
  last), here with an evaluation every ``--eval-every`` steps;
* the best head's induction score at the end, on fresh sequences (``demos.induction.final_scores``), and
  apart from it the best layer-1 score (an induction head needs the layer below, so only layer 1 can hold
  one; the demo's test asserts on it) and the highest layer-0 score (which the test wants below 0.1);
* the median milliseconds of a step (on one thread: a machine-dependent figure, for the budget only).

Steps, not seconds: a step count does not depend on how busy the machine is, so runs are
comparable on a shared machine. Run one process at a time, on one thread:

    OMP_NUM_THREADS=1 python benchmarks/induction_sweep.py --steps 2500 --seeds 1337 --set lr=5e-3
    OMP_NUM_THREADS=1 python benchmarks/induction_sweep.py --steps 2000 --seeds 1337,0,1,2,3 --set n_heads=4 --json out.json

``--set`` takes ``field=value`` pairs of TrainConfig fields (parsed as the ``glassformer train`` flags are).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path


def run_one(steps: int, seed: int, eval_every: int, overrides: dict) -> dict:
    """Train one seed; the phase-change step, the final best score and ms per step."""
    from glassformer.demos import induction
    from glassformer.training.callbacks import INDUCTION_LOG
    from glassformer.training.run import run_training

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cfg = induction.config(steps, probe="").replace(
            seed=seed, out=str(out), progress="none", eval_every=eval_every, log_every=min(eval_every, 100),
            snapshot_attention=None, **overrides)
        _result, _setup, trainer = run_training(cfg, echo=lambda s: None)
        records = [json.loads(line) for line in (out / INDUCTION_LOG).read_text().splitlines() if line.strip()]
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        induction.CONTEXT = cfg.context  # final_scores samples sequences of the demo's CONTEXT (an override moves it)
        scores = induction.final_scores(trainer.model, seed)  # fresh sequences, as the demo measures
    tokens = cfg.batch_size * cfg.context
    ms = statistics.median(1e3 * tokens / r["tokens_per_s"] for r in metrics if r.get("tokens_per_s"))
    layer, head = divmod(int(scores.argmax()), scores.shape[1])
    return {"seed": seed, "phase_change": induction.phase_change(records), "best_score": round(float(scores.max()), 4),
            "best_head": [layer, head], "layer1_best": round(float(scores[1].max()), 4),
            "layer0_max": round(float(scores[0].max()), 4), "ms_per_step": round(ms, 2),
            "repeated_loss": [[r["step"], r["repeated_loss"]] for r in records]}


def patch_periods(min_period: int, max_period: int) -> None:
    """Segments of ``min_period..max_period`` letters in this process's induction data (training, probe and
    fresh sequences alike): the data lever, which the demo's config does not reach."""
    from glassformer.data import induction as data

    base = data.RepeatedTokensDataset

    class Periods(base):
        def __init__(self, token_ids, context, min_period=min_period, max_period=max_period, **kwargs):
            super().__init__(token_ids, context, min_period, max_period, **kwargs)

    data.RepeatedTokensDataset = Periods


def parse_overrides(pairs: list[str]) -> dict:
    from glassformer.training.config import field_names
    from glassformer.training.config_io import parse_value

    out = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in field_names():
            raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE with a TrainConfig field")
        out[name] = parse_value(name, text.strip())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--seeds", default="1337", help="comma-separated (the demo's default seed is 1337)")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between evaluations (the phase-change grid)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a config field")
    parser.add_argument("--periods", help="MIN,MAX segment lengths (default: the dataset's own, 4 to T/3)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if os.environ.get("OMP_NUM_THREADS") != "1":
        print("note: OMP_NUM_THREADS is not 1; be considerate on a shared machine", file=sys.stderr)
    overrides = parse_overrides(args.set)
    if args.periods:
        patch_periods(*(int(x) for x in args.periods.split(",")))
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        row = run_one(args.steps, seed, args.eval_every, overrides)
        rows.append(row)
        print(f"seed {seed}: phase change at step {row['phase_change']} of {args.steps}; best head "
              f"{row['best_head'][0]}.{row['best_head'][1]} scores {row['best_score']:.2f} on fresh sequences "
              f"(layer 1 best {row['layer1_best']:.2f}, layer 0 max {row['layer0_max']:.2f}); "
              f"{row['ms_per_step']:.1f} ms/step", flush=True)
    changes = [r["phase_change"] for r in rows]
    print(f"overrides {overrides or 'none'}: phase change {changes}; layer-1 best {[r['layer1_best'] for r in rows]}; "
          f"layer-0 max {[r['layer0_max'] for r in rows]}; ms/step {[r['ms_per_step'] for r in rows]}")
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": args.steps, "eval_every": args.eval_every, "overrides": overrides,
                                               "periods": args.periods, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
