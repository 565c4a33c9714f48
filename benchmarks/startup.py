"""Start-up of the commands as users run them (issue 30, item 7): wall time of
``glassformer heads | explain | generate`` on a small model, each a fresh process, median of N,
and where a command's first seconds go.

    python benchmarks/startup.py                      # a tiny GPT saved in a temporary directory
    python benchmarks/startup.py --model runs/demo-gpt --repeats 9
    python benchmarks/startup.py --importtime         # also the slowest imports (python -X importtime)

For each command it prints the median wall time of the whole command (what a user waits for),
then a breakdown measured in one more fresh process: ``import torch``, the rest of the imports
the command makes (its CLI module and the library modules it runs), loading the model and the
tokenizer, and the work itself. The floor is ``python -c pass`` and ``python -c "import torch"``.

Run it on a quiet machine: other processes on the cores change every figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# command -> (argv after MODEL, the modules the command imports before it loads the model)
COMMANDS = {
    "heads": (["--n", "8", "--batch", "2"], ["glassformer.cli.insight", "glassformer.explain.heads"]),
    "explain": (["the cat sat", "--plain"], ["glassformer.explain.render", "glassformer.explain.texts"]),
    "generate": (["--prompt", "the cat", "--max-new-tokens", "4"],
                 ["glassformer.cli.generate", "glassformer.generation.layout", "glassformer.generation.text"]),
}

# one fresh process: the phases of a command, timed in order (prints "phase seconds" lines)
BREAKDOWN = r"""
import sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import importlib
for name in sys.argv[2].split(","):
    importlib.import_module(name)
t2 = time.perf_counter()
from glassformer.loading import load_model_and_tokenizer
model, tokenizer = load_model_and_tokenizer(sys.argv[1])
t3 = time.perf_counter()
import io, contextlib
from glassformer.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    code = main(sys.argv[3:])
t4 = time.perf_counter()
print(f"import torch {t1 - t0:.4f}")
print(f"other imports {t2 - t1:.4f}")
print(f"load model + tokenizer {t3 - t2:.4f}")
print(f"run (loads again) {t4 - t3:.4f}")
print(f"exit {code}")
"""


def child_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def wall(argv: list[str], repeats: int) -> list[float]:
    """Wall seconds of ``argv`` run ``repeats`` times, each a fresh process (output discarded)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(argv, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    return times


def command_argv(command: str, model: str) -> list[str]:
    rest, _ = COMMANDS[command]
    return [command, model, *rest]


def breakdown(command: str, model: str) -> list[tuple[str, float]]:
    _, modules = COMMANDS[command]
    argv = [sys.executable, "-c", BREAKDOWN, model, ",".join(modules), *command_argv(command, model)]
    done = subprocess.run(argv, env=child_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"breakdown of {command} failed:\n{done.stderr[-2000:]}")
    rows = []
    for line in done.stdout.splitlines():
        name, _, value = line.rpartition(" ")
        if name != "exit":
            rows.append((name, float(value)))
    return rows


def slowest_imports(command: str, model: str, top: int = 12) -> list[tuple[int, str]]:
    """(cumulative microseconds, module) of the slowest imports of one run, from ``-X importtime``."""
    argv = [sys.executable, "-X", "importtime", "-m", "glassformer", *command_argv(command, model)]
    done = subprocess.run(argv, env=child_env(), capture_output=True, text=True)
    rows = []
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = (part.strip() for part in line[len("import time:"):].split("|"))
            if cumulative.isdigit():
                rows.append((int(cumulative), name))
    return sorted(rows, reverse=True)[:top]


def tiny_model(root: Path) -> Path:
    """A tiny GPT with a character tokenizer, saved under ``root``."""
    sys.path.insert(0, str(SRC))
    from glassformer.models import GPT, GPTConfig
    from glassformer.tokenizers import build_tokenizer

    tok = build_tokenizer("char", "the quick brown fox jumps over the lazy dog. the cat sat on the mat.")
    model = GPT(GPTConfig.from_name("gpt-tiny", vocab_size=tok.vocab_size, bos_token_id=tok.bos_id,
                                    eos_token_id=tok.eos_id, pad_token_id=tok.pad_id))
    model.save_pretrained(root / "gpt")
    tok.save(root / "gpt")
    return root / "gpt"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory (default: a tiny GPT in a temporary directory)")
    p.add_argument("--repeats", type=int, default=5, help="fresh processes per command (the median is shown)")
    p.add_argument("--commands", default=",".join(COMMANDS), help="comma-separated, from: " + ", ".join(COMMANDS))
    p.add_argument("--importtime", action="store_true", help="also list each command's slowest imports")
    args = p.parse_args(argv)
    commands = [c for c in args.commands.split(",") if c]
    unknown = [c for c in commands if c not in COMMANDS]
    if unknown or args.repeats < 1:
        p.error(f"unknown commands {unknown}" if unknown else "--repeats must be >= 1")
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(tiny_model(Path(tmp)))
        floor = {"python -c pass": wall([sys.executable, "-c", "pass"], args.repeats),
                 "import torch": wall([sys.executable, "-c", "import torch"], args.repeats)}
        for name, times in floor.items():
            print(f"{name:<28} {statistics.median(times):6.2f} s")
            results[name] = statistics.median(times)
        for command in commands:
            times = wall([sys.executable, "-m", "glassformer", *command_argv(command, model)], args.repeats)
            median = statistics.median(times)
            results[command] = {"median_s": median, "times_s": times, "breakdown_s": dict(breakdown(command, model))}
            print(f"\nglassformer {command:<16} {median:6.2f} s  (median of {len(times)}; "
                  f"min {min(times):.2f}, max {max(times):.2f})")
            for phase, seconds in results[command]["breakdown_s"].items():
                print(f"  {phase:<26} {seconds:6.2f} s")
            if args.importtime:
                print("  slowest imports (cumulative):")
                for micros, name in slowest_imports(command, model):
                    print(f"    {micros / 1e6:6.2f} s  {name}")
    return results


if __name__ == "__main__":
    main()
