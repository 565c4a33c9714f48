"""The OpenMP wait policy against the situation (issue 28, item 1): training, decoding and an explain
tool, each as users run them (a fresh ``glassformer`` process), with the policy glassformer chooses
(``auto``: nothing set, :mod:`glassformer.threads` decides), always ``PASSIVE``, and ``ACTIVE``; on a
quiet machine and with CPU-bound processes beside it (``--busy N``, default: one per core).

    python benchmarks/wait_policy.py                 # quiet, then busy; median of 3 of each
    python benchmarks/wait_policy.py --repeats 5 --json runs/wait_policy.json

The policies alternate within each round, so a drift in the machine's load reaches them all alike.
A model is trained once first (untimed) for the decoding and explain commands. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
TEXT = ("The quick brown fox jumps over the lazy dog. A list holds items in order; a dict maps keys to values.\n"
        "def add(a, b):\n    return a + b\n") * 200
TRAIN = ["--n-layers", "4", "--n-heads", "4", "--d-model", "128", "--context", "64", "--batch-size", "12",
         "--eval-every", "100", "--eval-batches", "4", "--sample-tokens", "0", "--progress", "none", "--seed", "0"]
POLICIES = {"auto": None, "PASSIVE": "PASSIVE", "ACTIVE": "ACTIVE"}


def commands(work: Path, model: Path) -> dict[str, list[str]]:
    return {
        "train 200 steps": ["train", "gpt", "--data", str(work / "corpus.txt"), *TRAIN, "--max-steps", "200",
                            "--out", str(work / "timed"), "--overwrite"],
        "generate 128 tokens x 4": ["generate", str(model), "--prompt", "def", "--prompt", "The", "--prompt", "A",
                                    "--prompt", "x", "--max-new-tokens", "128"],
        "heads": ["heads", str(model), "--n", "16", "--batch", "64"],
    }


def run(argv: list[str], policy: str | None) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GLASSFORMER_WAIT_POLICY_SET",
                                                             "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = str(SRC)
    env["GLASSFORMER_CACHE"] = str(Path(tempfile.gettempdir()) / "glassformer-wait-policy-cache")
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "glassformer", *argv], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def burners(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def measure(cmds: dict[str, list[str]], repeats: int, policies: list[str]) -> dict[str, dict[str, float]]:
    times: dict[str, dict[str, list[float]]] = {c: {p: [] for p in policies} for c in cmds}
    for r in range(repeats):
        for name, argv in cmds.items():
            order = list(policies) if r % 2 == 0 else list(reversed(policies))
            for policy in order:
                times[name][policy].append(run(argv, POLICIES[policy]))
    return {c: {p: statistics.median(v) for p, v in per.items()} for c, per in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--busy", type=int, default=len(os.sched_getaffinity(0)), help="CPU-bound processes beside it")
    p.add_argument("--conditions", default="quiet,busy")
    p.add_argument("--busy-policies", default=",".join(POLICIES),
                   help="the policies timed beside the CPU-bound processes (ACTIVE there can take 10x as long)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "corpus.txt").write_text(TEXT)
        model = work / "model"
        run(["train", "gpt", "--data", str(work / "corpus.txt"), *TRAIN, "--max-steps", "100", "--out", str(model)],
            None)
        cmds = commands(work, model)
        report = {}
        for condition in args.conditions.split(","):
            procs = burners(args.busy) if condition == "busy" else []
            policies = args.busy_policies.split(",") if procs else list(POLICIES)
            try:
                report[condition] = measure(cmds, args.repeats, policies)
            finally:
                for proc in procs:
                    proc.kill()
                    proc.wait()
            print(f"\n{condition}" + (f" ({args.busy} CPU-bound processes beside it)" if procs else ""))
            print(f"  {'command':<26}" + "".join(f"{pol:>10}" for pol in policies) + "   (median seconds, whole command)")
            for name, per in report[condition].items():
                print(f"  {name:<26}" + "".join(f"{per[pol]:>10.2f}" for pol in policies))
    if args.json:
        args.json.write_text(json.dumps({"repeats": args.repeats, "busy": args.busy, "report": report}, indent=2))


if __name__ == "__main__":
    main()
