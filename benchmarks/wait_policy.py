"""The OpenMP wait policy against the situation (issue 28, item 1): training, decoding and an explain
tool, each as users run them (a fresh ``glassformer`` process), with the policy glassformer chooses
(``auto``: nothing set, :mod:`glassformer.threads` decides), always ``PASSIVE``, and ``ACTIVE``; on a
quiet machine and with CPU-bound processes beside it (``--busy N``, default: one per core). The
condition ``late`` starts those processes ``--late-after`` seconds after the command, once its
threads have chosen to spin (a machine that gets busy during a run). ``spin300k``, ``spin30k`` and
``spin3k`` set libgomp's busy-wait (``GOMP_SPINCOUNT``; 300,000 is the runtime's own default, which
``auto`` used on free cores before it chose 3,000).

    python benchmarks/wait_policy.py                 # quiet, then busy; median of 3 of each
    python benchmarks/wait_policy.py --repeats 5 --json runs/wait_policy.json
    python benchmarks/wait_policy.py --conditions quiet,late --policies auto,spin30k --commands train

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
POLICIES = {"auto": {}, "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}, "ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
            "spin300k": {"GOMP_SPINCOUNT": "300000"}, "spin30k": {"GOMP_SPINCOUNT": "30000"},
            "spin3k": {"GOMP_SPINCOUNT": "3000"}}
DEFAULT_POLICIES = "auto,PASSIVE,ACTIVE"


def commands(work: Path, model: Path) -> dict[str, list[str]]:
    return {
        "train 200 steps": ["train", "gpt", "--data", str(work / "corpus.txt"), *TRAIN, "--max-steps", "200",
                            "--out", str(work / "timed"), "--overwrite"],
        "generate 128 tokens x 4": ["generate", str(model), "--prompt", "def", "--prompt", "The", "--prompt", "A",
                                    "--prompt", "x", "--max-new-tokens", "128"],
        "heads": ["heads", str(model), "--n", "16", "--batch", "64"],
    }


def run(argv: list[str], policy: dict[str, str], late: tuple[int, float] | None = None) -> float:
    """Seconds of one fresh ``glassformer`` command under ``policy`` (environment variables); with
    ``late`` = (n, s), n CPU-bound processes start s seconds after it and stop when it ends."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GLASSFORMER_WAIT_POLICY_SET",
                                                             "OMP_NUM_THREADS", "GOMP_SPINCOUNT")}
    env["PYTHONPATH"] = str(SRC)
    env["GLASSFORMER_CACHE"] = str(Path(tempfile.gettempdir()) / "glassformer-wait-policy-cache")
    env.update(policy)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "glassformer", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    neighbours: list[subprocess.Popen] = []
    try:
        if late is not None:
            try:
                proc.wait(timeout=late[1])
            except subprocess.TimeoutExpired:
                neighbours = burners(late[0])
        if proc.wait() != 0:
            raise SystemExit(f"glassformer {' '.join(argv[:2])} failed under {policy}")
        return time.perf_counter() - start
    finally:
        for n in neighbours:
            n.kill()
            n.wait()


def burners(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def measure(cmds: dict[str, list[str]], repeats: int, policies: list[str],
            late: tuple[int, float] | None = None) -> dict[str, dict[str, float]]:
    times: dict[str, dict[str, list[float]]] = {c: {p: [] for p in policies} for c in cmds}
    for r in range(repeats):
        for name, argv in cmds.items():
            order = list(policies) if r % 2 == 0 else list(reversed(policies))
            for policy in order:
                times[name][policy].append(run(argv, POLICIES[policy], late))
    return {c: {p: statistics.median(v) for p, v in per.items()} for c, per in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--busy", type=int, default=len(os.sched_getaffinity(0)), help="CPU-bound processes beside it")
    p.add_argument("--conditions", default="quiet,busy", help="of quiet, busy, late")
    p.add_argument("--policies", default=DEFAULT_POLICIES, help=f"of {', '.join(POLICIES)}")
    p.add_argument("--busy-policies", default=None,
                   help="the policies timed beside the CPU-bound processes (default: --policies; ACTIVE there can "
                   "take 10x as long)")
    p.add_argument("--late-after", type=float, default=4.0, help="seconds before the late neighbours start")
    p.add_argument("--commands", default=None, help="a comma-separated subset of: train, generate, heads")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "corpus.txt").write_text(TEXT)
        model = work / "model"
        run(["train", "gpt", "--data", str(work / "corpus.txt"), *TRAIN, "--max-steps", "100", "--out", str(model)],
            {})
        cmds = commands(work, model)
        if args.commands:
            cmds = {name: argv for name, argv in cmds.items() if name.split()[0] in args.commands.split(",")}
        report = {}
        for condition in args.conditions.split(","):
            procs = burners(args.busy) if condition == "busy" else []
            policies = (args.busy_policies or args.policies).split(",") if condition != "quiet" else args.policies.split(",")
            late = (args.busy, args.late_after) if condition == "late" else None
            try:
                report[condition] = measure(cmds, args.repeats, policies, late)
            finally:
                for proc in procs:
                    proc.kill()
                    proc.wait()
            beside = {"busy": f" ({args.busy} CPU-bound processes beside it)",
                      "late": f" ({args.busy} CPU-bound processes from {args.late_after:g} s after the start)"}
            print(f"\n{condition}" + beside.get(condition, ""))
            print(f"  {'command':<26}" + "".join(f"{pol:>10}" for pol in policies) + "   (median seconds, whole command)")
            for name, per in report[condition].items():
                print(f"  {name:<26}" + "".join(f"{per[pol]:>10.2f}" for pol in policies))
    if args.json:
        args.json.write_text(json.dumps({"repeats": args.repeats, "busy": args.busy, "report": report}, indent=2))


if __name__ == "__main__":
    main()
