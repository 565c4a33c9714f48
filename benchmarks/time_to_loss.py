"""Time to loss, measured as users run it: ``glassformer train gpt`` against a minimal script (issue 28, item 2).

Each side runs as its own process, alternating, ``--pairs`` times per size:

* ours: ``python -m glassformer train gpt`` (this tree's ``src`` on PYTHONPATH), with the defaults a
  user gets (samples at each evaluation, the loss plot, checkpoints, metrics.jsonl, log lines);
* the baseline: ``benchmarks/minimal_train.py``, one file of plain PyTorch with its defaults.

Both train the same shape (a char GPT: pre-LN, learned positions, tied head, the same init) on the
same text file (the same characters, the same validation windows), with AdamW at the same
learning rate, warm-up + cosine to ``min_lr``, batch, context, steps and evaluations. Neither child
gets ``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` from this process: each runs with its own default.

The report gives, per side, the median over pairs of

* the wall time from the command's launch to the first evaluation at or below the target loss (the
  model that reaches it exists when that evaluation starts). The target is ``--target``, or by
  default the highest final validation loss of all runs, so that every run reaches it;
* the whole wall time and CPU seconds of the process;
* where the time goes: start-up (launch to the first step: metrics.jsonl's ``time - elapsed_s``),
  the steps, and for ours the evaluation, samples, best-model saves, checkpoints, plots and logging
  (metrics.jsonl's ``overhead_s``), and the tail after the last logged row (final checkpoint and
  plot, exit);

and the median of the per-pair ratios ours / minimal. ``--busy`` runs one more CPU-bound process
beside each run. Nothing here is a test: figures need a quiet machine.

    python benchmarks/time_to_loss.py --sizes 0.8M,10M --pairs 5 [--busy] [--json out.json]
    python benchmarks/time_to_loss.py --smoke --json smoke.json        # seconds: the structure only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"

# the shapes and schedules: ~0.8M (issue 28) and ~10M parameters; smoke: a few seconds
SIZES = {
    "0.8M": dict(n_layers=4, n_heads=4, d_model=128, context=64, batch_size=12, max_steps=500, eval_every=250),
    "10M": dict(n_layers=6, n_heads=6, d_model=384, context=128, batch_size=12, max_steps=300, eval_every=150),
    "smoke": dict(n_layers=1, n_heads=2, d_model=32, context=32, batch_size=4, max_steps=40, eval_every=20,
                  eval_batches=2, warmup_steps=5),
}
# the schedule both sides use: glassformer's defaults, passed to both explicitly
SCHEDULE = dict(lr=1e-3, min_lr=1e-4, warmup_steps=100, weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0,
                eval_batches=10, val_fraction=0.1, seed=1337)
OVERHEAD_KINDS = ("eval", "callbacks", "best_model", "checkpoint", "plot", "log")


def corpus_text(limit: int | None = None) -> str:
    """The built-in python-docs corpus (the help() topics, as glassformer reads them)."""
    from pydoc_data.topics import topics

    text = "".join(t if t.endswith("\n") else t + "\n" for _, t in sorted(topics.items()))
    return text[:limit] if limit else text


def flags(values: dict) -> list[str]:
    return [x for k, v in values.items() for x in ("--" + k.replace("_", "-"), str(v))]


def child_env(cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "GLASSFORMER_WAIT_POLICY_SET")}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [env.get("PYTHONPATH")])])
    env["GLASSFORMER_CACHE"] = str(cache)
    return env


def launch(argv: list[str], env: dict, log: Path, busy: bool) -> dict:
    """Run one child to the end: its launch and exit times (unix), CPU seconds; a busy neighbour if asked."""
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(log, "w") as out:
            launched = time.time()
            proc = subprocess.run(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
            ended = time.time()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # before the neighbour is reaped: this child only
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
    if proc.returncode:
        raise SystemExit(f"{argv[1:4]} failed ({proc.returncode}); its output:\n{log.read_text()[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"launched": launched, "ended": ended, "wall_s": ended - launched, "cpu_s": cpu}


def run_ours(cfg: dict, data: Path, work: Path, env: dict, busy: bool, tag: str) -> dict:
    out = work / f"ours-{tag}"
    argv = [sys.executable, "-m", "glassformer", "train", "gpt", "--data", str(data), "--out", str(out),
            "--overwrite", "--dropout", "0", *flags(cfg)]
    run = launch(argv, env, work / f"ours-{tag}.log", busy)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    vocab = json.loads((out / "config.json").read_text())["vocab_size"]
    first_step = rows[0]["time"] - rows[0]["elapsed_s"]
    tokens = cfg["batch_size"] * cfg["context"]
    steps_s, prev = 0.0, 0
    for r in rows:  # each row: the steps since the last one, at its tokens/s
        steps_s += (r["step"] - prev) * tokens / r["tokens_per_s"] if r.get("tokens_per_s") else 0.0
        prev = r["step"]
    last = rows[-1]
    parts = {"startup": first_step - run["launched"], "steps": steps_s,
             **{k: last["overhead_s"].get(k, 0.0) for k in OVERHEAD_KINDS},
             "tail": run["ended"] - last["time"]}
    parts["other"] = run["wall_s"] - sum(parts.values())
    evals = [{"step": r["step"], "val_loss": r["val_loss"], "at_s": first_step - run["launched"] + r["elapsed_s"]}
             for r in rows if r.get("val_loss") is not None]
    return {**run, "side": "ours", "evals": evals, "parts": parts, "initial_loss": math.log(vocab), "vocab": vocab}


def run_minimal(cfg: dict, data: Path, work: Path, env: dict, busy: bool, tag: str) -> dict:
    report = work / f"minimal-{tag}.json"
    argv = [sys.executable, str(HERE / "minimal_train.py"), "--data", str(data), "--report", str(report), *flags(cfg)]
    run = launch(argv, env, work / f"minimal-{tag}.log", busy)
    rep = json.loads(report.read_text())
    first_step = rep["first_step_unix"]
    eval_s = sum(e["eval_s"] for e in rep["evals"])
    parts = {"startup": first_step - run["launched"], "steps": rep["steps_s"], "eval": eval_s,
             "tail": run["ended"] - rep["end_unix"]}
    parts["other"] = run["wall_s"] - sum(parts.values())
    evals = [{"step": e["step"], "val_loss": e["val_loss"], "at_s": first_step - run["launched"] + e["elapsed_s"]}
             for e in rep["evals"]]
    return {**run, "side": "minimal", "evals": evals, "parts": parts, "initial_loss": math.log(rep["vocab_size"]),
            "vocab": rep["vocab_size"], "params": rep["params"]}


def time_to(run: dict, target: float) -> float | None:
    return next((e["at_s"] for e in run["evals"] if e["val_loss"] <= target), None)


def measure(size: str, pairs: int, busy: bool, data: Path, work: Path, target: float | None) -> dict:
    cfg = {**SCHEDULE, **SIZES[size]}
    env = child_env(work / "cache")
    warm = {**cfg, "max_steps": 2, "eval_every": 2}
    run_ours(warm, data, work, env, False, f"{size}-warm")  # untimed: the token cache, the page cache
    run_minimal(warm, data, work, env, False, f"{size}-warm")
    runs = []
    for i in range(pairs):
        order = (run_ours, run_minimal) if i % 2 == 0 else (run_minimal, run_ours)
        done = {}
        for side in order:
            r = side(cfg, data, work, env, busy, f"{size}-{i}")
            done[r["side"]] = r
        runs.append(done)
        print(f"  {size} pair {i + 1}: ours {done['ours']['wall_s']:.1f} s, minimal {done['minimal']['wall_s']:.1f} s "
              f"(final val loss {done['ours']['evals'][-1]['val_loss']:.3f} / "
              f"{done['minimal']['evals'][-1]['val_loss']:.3f})", flush=True)
    if target is None:  # the highest final loss of any run: every run reaches it
        target = math.ceil(max(r[s]["evals"][-1]["val_loss"] for r in runs for s in r) * 1000) / 1000
    return summarise(size, cfg, busy, runs, target)


def med(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(size: str, cfg: dict, busy: bool, runs: list[dict], target: float) -> dict:
    sides = {}
    for side in ("ours", "minimal"):
        rs = [r[side] for r in runs]
        kinds = list(rs[0]["parts"])
        sides[side] = {
            "time_to_target_s": med([time_to(r, target) for r in rs]), "wall_s": med([r["wall_s"] for r in rs]),
            "cpu_s": med([r["cpu_s"] for r in rs]), "parts_s": {k: med([r["parts"][k] for r in rs]) for k in kinds},
            "final_val_loss": med([r["evals"][-1]["val_loss"] for r in rs]),
            "initial_loss": rs[0]["initial_loss"], "reached": sum(time_to(r, target) is not None for r in rs),
        }

    def ratios(key):
        pairs = [(key(r["ours"]), key(r["minimal"])) for r in runs]
        return [o / m for o, m in pairs if o and m]

    ttl, wall, cpu = ratios(lambda r: time_to(r, target)), ratios(lambda r: r["wall_s"]), ratios(lambda r: r["cpu_s"])
    return {"size": size, "busy": busy, "config": cfg, "params": runs[0]["minimal"].get("params"),
            "pairs": len(runs), "target": target, "sides": sides,
            "ratio_time_to_target": med(ttl), "ratios_time_to_target": ttl, "ratio_wall": med(wall),
            "ratio_cpu": med(cpu), "runs": runs}


def print_report(result: dict) -> None:
    s, o, m = result["size"], result["sides"]["ours"], result["sides"]["minimal"]
    busy = ", one CPU-bound process beside" if result["busy"] else ", quiet"
    print(f"\n{s} ({result['params']:,} parameters{busy}), {result['pairs']} pairs, target val loss {result['target']}:")

    def f(x):
        return f"{x:.2f}" if x is not None else "-"
    print(f"  time to target: ours {f(o['time_to_target_s'])} s, minimal {f(m['time_to_target_s'])} s; "
          f"ratio {f(result['ratio_time_to_target'])}x (per pair: {', '.join(f(r) for r in result['ratios_time_to_target'])})")
    print(f"  whole run: ours {f(o['wall_s'])} s wall / {f(o['cpu_s'])} s CPU, minimal {f(m['wall_s'])} s / "
          f"{f(m['cpu_s'])} s; ratios {f(result['ratio_wall'])}x wall, {f(result['ratio_cpu'])}x CPU")
    print("  where the wall time goes (medians, s):")
    for side, d in (("ours", o), ("minimal", m)):
        print(f"    {side:8s}" + "  ".join(f"{k} {v:.2f}" for k, v in d["parts_s"].items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="0.8M,10M", help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--pairs", type=int, default=5, help="alternating runs of each side per size")
    parser.add_argument("--busy", action="store_true", help="one more CPU-bound process beside every run")
    parser.add_argument("--target", type=float, help="validation loss (nats/char); default: the worst final loss")
    parser.add_argument("--data", help="a UTF-8 text file (default: the built-in python-docs corpus)")
    parser.add_argument("--smoke", action="store_true", help="the tiny size, one pair, a 60k-character corpus")
    parser.add_argument("--json", help="write every figure (and every run) here")
    args = parser.parse_args(argv)
    sizes = ["smoke"] if args.smoke else args.sizes.split(",")
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"--sizes: unknown {unknown[0]!r}; choose from {', '.join(SIZES)}")
    pairs = 1 if args.smoke else args.pairs
    print(f"load average now: {Path('/proc/loadavg').read_text().split()[0] if Path('/proc/loadavg').exists() else '?'}"
          f" (figures mean something only on a quiet machine)", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = Path(args.data) if args.data else work / "corpus.txt"
        if not args.data:
            data.write_text(corpus_text(60_000 if args.smoke else None), encoding="utf-8")
        for size in sizes:
            result = measure(size, pairs, args.busy, data, work, args.target)
            print_report(result)
            results.append(result)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "command": " ".join(sys.argv)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
