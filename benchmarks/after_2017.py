"""The Transformer after 2017, measured: each change alone and all together, at equal wall time (issue 27, item 4).

On the GPT demo's data and model (``glassformer demo gpt``: python-docs, a byte-level BPE of 2,048
pieces, 4 layers, 4 heads, d_model 128, context 128, batch 32, lr 3e-3 decaying to 3e-4; read from
``demos.gpt.config``), trains

* ``2017``: the demo's GPT as it is (learned positions added to the tokens, LayerNorm, a GELU
  feed-forward of 4 * d_model, every head its own keys and values);
* ``rotary``: rotary positions (RoFormer) instead of learned ones;
* ``rmsnorm``: RMSNorm instead of LayerNorm;
* ``swiglu``: the gated SwiGLU feed-forward at the same parameter count: three matrices of
  d_model x d_ff instead of two, so d_ff = round(2/3 * 4 * d_model) = 341 for d_model 128 (the
  feed-forward holds 131,584 parameters against 2017's 131,712);
* ``gqa``: grouped-query attention with n_kv_heads = n_heads / 2 (two query heads share each
  key/value head);
* ``all``: the four together;

each with ``glassformer train gpt ... --max-minutes M`` (``--minutes``): the trainer fits the
schedule to the time (warm-up and decay squeezed into the steps that fit, at the pace so far), so
every run gets the same training time and a faster model takes more steps. ``--max-steps`` is a cap
(``--cap``; by default the demo's, 900 steps per 2.25 minutes, which one thread does not reach; the
report flags a run that does), from which the warm-up (cap / 10, squeezed with the schedule: about
a tenth of the steps a run takes) and the evaluation interval (cap / 5) follow, as in the demo. No
samples during training (``--sample-tokens 0``) and no compilation, for every run alike. The
dtype is the demo's (``auto``: bf16 autocast on a CPU with AMX, fp32 elsewhere; the report says
which) unless ``--dtype`` sets it.

Each run's model (the best checkpoint, as a user loads it) is then scored on the whole validation
split in bits per character (``demos.gpt.bits_per_char``: the tokenizers are the same for every
run, so this is the demo's own figure).

Protocol: every run on one thread (``OMP_NUM_THREADS=1``), two runs at a time on the 2 cores. Per
seed, the configs are paired by a round-robin (the circle method), a different round for each
seed, so no config always meets the same partner, and every run has exactly one other run beside
it (with an odd number of configs the one left over runs beside a busy loop). Each pair starts
together and, with equal budgets, ends together. Run it on a quiet machine:

    python benchmarks/after_2017.py --minutes 2.25 --seeds 1337,1,2 --json after_2017.json
    python benchmarks/after_2017.py --smoke --json smoke.json      # seconds: the report's structure only

The report: per config, the validation bits/char (mean, sample standard deviation and range over
seeds), its difference from 2017's mean, the steps done, parameters, and each run's figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
BUSY = "while True: pass"
DEMO_CAP = 900  # the most steps `glassformer demo gpt` plans in its MINUTES (its fit_steps `high`)


def configs(n_heads: int, d_model: int) -> dict[str, dict]:
    """The runs' model flags: the 2017 GPT, each change alone, all together."""
    swiglu = {"ffn": "swiglu", "d_ff": round(2 / 3 * 4 * d_model)}  # equal parameters: 3 matrices, not 2
    changes = {"rotary": {"positions": "rotary"}, "rmsnorm": {"norm": "rmsnorm"}, "swiglu": swiglu,
               "gqa": {"n_kv_heads": n_heads // 2}}
    every = {k: v for change in changes.values() for k, v in change.items()}
    return {"2017": {}, **changes, "all": every}


def base_flags(cap: int, smoke: bool, dtype: str | None = None) -> list[str]:
    """``glassformer train gpt`` flags of the demo's data, model and optimiser, with a cap of ``cap`` steps."""
    from glassformer.demos import gpt

    cfg = gpt.config(cap)
    values = dict(data=cfg.data, tokenizer=cfg.tokenizer, vocab_size=cfg.vocab_size, context=cfg.context,
                  n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_model=cfg.d_model, batch_size=cfg.batch_size,
                  lr=cfg.lr, min_lr=cfg.min_lr, dropout=cfg.dropout, eval_batches=cfg.eval_batches,
                  max_steps=cfg.max_steps, warmup_steps=cfg.warmup_steps, eval_every=cfg.eval_every,
                  log_every=cfg.log_every, sample_tokens=0, dtype=dtype or cfg.dtype, progress="none")
    if smoke:
        values.update(eval_batches=2)
    return [*flag_list(values), "--no-compile"]


def flag_list(values: dict) -> list[str]:
    return [x for k, v in values.items() for x in ("--" + k.replace("_", "-"), str(v))]


def child_env(cache: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", GLASSFORMER_CACHE=str(cache))
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def pairings(names: list[str], round_index: int) -> list[tuple[str, str | None]]:
    """Round ``round_index`` of a round-robin over ``names`` (the circle method): pairs that together
    hold every name once; ``None`` is the partner of the name left over when their number is odd."""
    if not names:
        return []
    people: list[str | None] = list(names) + ([None] if len(names) % 2 else [])
    n = len(people)
    r = round_index % (n - 1)
    rest = people[1:]
    rest = rest[r:] + rest[:r]  # rotate all but the first
    circle = [people[0], *rest]
    pairs = [(circle[i], circle[n - 1 - i]) for i in range(n // 2)]
    return [(a, b) if a is not None else (b, a) for a, b in pairs]  # type: ignore[misc]


def run_pair(jobs: list[dict], env: dict, work: Path) -> None:
    """Start one or two training runs (and a busy loop beside a lone one) together; wait for both."""
    procs = []
    for job in jobs:
        log = open(work / f"{job['name']}-{job['seed']}.log", "wb")
        argv = [sys.executable, "-m", "glassformer", "train", "gpt", *job["argv"]]
        procs.append((job, subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT), log, time.time()))
    busy = subprocess.Popen([sys.executable, "-c", BUSY], env=env) if len(jobs) == 1 else None
    try:
        for job, proc, log, start in procs:
            job["rc"] = proc.wait()
            job["wall_s"] = round(time.time() - start, 2)
            log.close()
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


def score(run_dir: Path) -> dict:
    """Validation bits/char of a run's best model on the whole validation split, and its metrics."""
    from glassformer.data import encode_corpus, split_tokens
    from glassformer.demos.gpt import bits_per_char
    from glassformer.loading import load_model_and_tokenizer
    from glassformer.training.tasks import unigram_cross_entropy

    saved = json.loads((run_dir / "train_config.json").read_text()) if (run_dir / "train_config.json").is_file() else {}
    model, tokenizer = load_model_and_tokenizer(run_dir)
    tokens = encode_corpus(saved.get("data", "python-docs"), tokenizer, progress=False, is_text=False)
    train, val = split_tokens(tokens, saved.get("val_fraction", 0.1))
    context = model.config.max_len
    bpc, chars = bits_per_char(model, tokenizer, val, context)
    n = (len(val) - 1) // context * context
    unigram = unigram_cross_entropy(train, val, tokenizer.vocab_size) * n / (chars * math.log(2))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [r for r in rows if r.get("val_loss") is not None]
    trains = [r["train_loss"] for r in rows if r.get("train_loss") is not None]
    uniform = math.log2(tokenizer.vocab_size) * n / chars  # every token equally likely: the untrained model's guess
    return {"bits_per_char": round(bpc, 4), "unigram_bits_per_char": round(unigram, 4),
            "uniform_bits_per_char": round(uniform, 4),
            "steps": rows[-1]["step"], "train_s": rows[-1]["elapsed_s"], "first_train_loss": trains[0],
            "final_val_loss": evals[-1]["val_loss"], "best_val_loss": min(r["val_loss"] for r in evals),
            "params": sum(p.numel() for p in model.parameters()), "vocab": tokenizer.vocab_size}


def score_in_child(run_dir: Path, env: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--score", str(run_dir)], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"scoring {run_dir} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(name: str, runs: list[dict], base_mean: float | None) -> dict:
    bpc = [r["bits_per_char"] for r in runs]
    mean = statistics.fmean(bpc)
    return {"config": name, "runs": len(runs), "bits_per_char_mean": round(mean, 4),
            "bits_per_char_sd": round(statistics.stdev(bpc), 4) if len(bpc) > 1 else 0.0,
            "bits_per_char_min": min(bpc), "bits_per_char_max": max(bpc),
            "delta_vs_2017": None if base_mean is None else round(mean - base_mean, 4),
            "steps_mean": round(statistics.fmean(r["steps"] for r in runs), 1),
            "steps": [r["steps"] for r in runs], "params": runs[0]["params"]}


def print_report(result: dict) -> None:
    print(f"\n{result['minutes']:g} min per run, seeds {result['seeds']}, cap {result['cap']} steps, autocast "
          f"{result['autocast']}; "
          f"bits/char on the whole validation split (unigram: {result['unigram_bits_per_char']:.3f})")
    print("| config | flags | params | steps (mean) | val bits/char (mean ± sd) | range | vs 2017 |")
    print("| --- | --- | ---: | ---: | ---: | --- | ---: |")
    for row in result["summary"]:
        flags = " ".join(flag_list(result["configs"][row["config"]])) or "(the demo's GPT)"
        delta = "" if row["config"] == "2017" or row["delta_vs_2017"] is None else f"{row['delta_vs_2017']:+.3f}"
        print(f"| {row['config']} | `{flags}` | {row['params']:,} | {row['steps_mean']:.0f} | "
              f"{row['bits_per_char_mean']:.3f} ± {row['bits_per_char_sd']:.3f} | "
              f"{row['bits_per_char_min']:.3f}-{row['bits_per_char_max']:.3f} | {delta} |")
    capped = [f"{r['config']}/{r['seed']}" for r in result["runs"] if r["steps"] >= result["cap"]]
    if capped:
        print(f"warning: these runs reached the --cap of {result['cap']} steps before the time ran out "
              f"(not equal time; raise --cap): {', '.join(capped)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, help="training time per run (default: the demo's, 2.25)")
    parser.add_argument("--seeds", help="comma-separated, at least 3 for the chapter (default 1337,1,2; smoke: 1337)")
    parser.add_argument("--cap", type=int, help="--max-steps of every run (default: the demo's cap, 900 steps per 2.25 "
                                                "minutes, which one CPU thread does not reach)")
    parser.add_argument("--configs", help="comma-separated subset of 2017,rotary,rmsnorm,swiglu,gqa,all")
    parser.add_argument("--dtype", help="auto, float32 or bfloat16 (default: the demo's, auto: bf16 autocast on a CPU "
                                            "with AMX, else fp32)")
    parser.add_argument("--smoke", action="store_true", help="a few seconds per run, one seed: the structure only")
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--keep", help="keep the run directories here (default: a temporary folder)")
    parser.add_argument("--score", help=argparse.SUPPRESS)  # internal: score one run directory, print JSON
    args = parser.parse_args(argv)
    if args.score:
        print(json.dumps(score(Path(args.score))))
        return 0
    import torch

    from glassformer.demos import gpt
    from glassformer.training.runtime import resolve_dtype

    if args.smoke:
        args.minutes, args.cap = 0.1, args.cap or 30
    args.minutes = args.minutes or gpt.MINUTES
    cap = args.cap or max(10, round(DEMO_CAP * args.minutes / gpt.MINUTES))
    seeds = [int(s) for s in (args.seeds or ("1337" if args.smoke else "1337,1,2")).split(",")]
    demo = gpt.config(cap)
    table = configs(demo.n_heads, demo.d_model)
    if args.configs:
        unknown = set(args.configs.split(",")) - set(table)
        if unknown:
            print(f"--configs: unknown {sorted(unknown)}; choose from {list(table)}", file=sys.stderr)
            return 2
        table = {k: v for k, v in table.items() if k in args.configs.split(",")}
    flags = base_flags(cap, args.smoke, args.dtype) + ["--max-minutes", f"{args.minutes:g}"]
    autocast = str(resolve_dtype(args.dtype or demo.dtype, torch.device("cpu"), demo.d_model) or "none (float32)")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        env = child_env(Path(tmp) / "cache" if not os.environ.get("GLASSFORMER_CACHE") else
                        Path(os.environ["GLASSFORMER_CACHE"]))
        runs: list[dict] = []
        for i, seed in enumerate(seeds):
            for pair in pairings(list(table), i):
                jobs = [{"name": name, "seed": seed, "out": work / f"{name}-{seed}",
                         "argv": [*flags, *flag_list(table[name]), "--seed", str(seed), "--out",
                                  str(work / f"{name}-{seed}")]} for name in pair if name is not None]
                partner = {j["name"]: [o["name"] for o in jobs if o is not j] or ["busy loop"] for j in jobs}
                print(f"seed {seed}: {' + '.join(j['name'] for j in jobs)}", flush=True)
                run_pair(jobs, env, work)
                for job in jobs:
                    if job["rc"] != 0:
                        log = (work / f"{job['name']}-{seed}.log").read_text(errors="replace")[-2000:]
                        raise RuntimeError(f"{job['name']} seed {seed} failed (exit {job['rc']}):\n{log}")
                    row = {"config": job["name"], "seed": seed, "beside": partner[job["name"]][0],
                           "wall_s": job["wall_s"], **score_in_child(job["out"], env)}
                    runs.append(row)
                    print(f"  {row['config']}: {row['steps']} steps in {row['train_s']:.0f} s, "
                          f"{row['bits_per_char']:.3f} bits/char", flush=True)
    by_name = {name: [r for r in runs if r["config"] == name] for name in table}
    base = statistics.fmean(r["bits_per_char"] for r in by_name["2017"]) if by_name.get("2017") else None
    result = {"minutes": args.minutes, "seeds": seeds, "cap": cap, "smoke": args.smoke, "threads_per_run": 1,
              "autocast": autocast,
              "base_flags": flags, "configs": table, "unigram_bits_per_char": runs[0]["unigram_bits_per_char"],
              "summary": [summarise(name, rows, base) for name, rows in by_name.items()], "runs": runs}
    print_report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
