"""Test-session settings that must be in place before torch is imported, and shared fixtures."""

import os

# Spinning OpenMP waiters make tiny-model ops 5-10x slower when other processes share the cores;
# passive waiting costs little on an idle machine (see glassformer/__init__.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# A small English + Python corpus for training tests (40 copies of four lines).
TRAIN_TEXT = textwrap.dedent("""\
    The quick brown fox jumps over the lazy dog. A list holds items in order; a dict maps keys to values.
    def add(a, b):
        return a + b
    Iteration visits each element once. Exceptions unwind the stack until a handler catches them.
""") * 40

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
def corpus(tmp_path, monkeypatch) -> Path:
    """``TRAIN_TEXT`` in a file, with the token cache in this test's own directory."""
    monkeypatch.setenv("GLASSFORMER_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "corpus.txt"
    path.write_text(TRAIN_TEXT)
    return path


def tiny_flags(corpus: Path) -> list[str]:
    """``glassformer train gpt`` flags for a run of a few seconds on one core."""
    return ["--data", str(corpus), "--n-layers", "1", "--n-heads", "2", "--d-model", "32", "--context", "32",
            "--batch-size", "4", "--eval-batches", "2", "--sample-tokens", "0", "--progress", "none",
            "--log-every", "1", "--dropout", "0.2", "--lr", "1e-2", "--warmup-steps", "2", "--seed", "7"]


def losses(run: Path) -> list[tuple]:
    """(step, train_loss, val_loss, lr) of every metrics.jsonl line."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train_loss"], r.get("val_loss"), r["lr"]) for r in rows]


def subprocess_env(tmp_path: Path) -> dict:
    """The environment for a ``python -m glassformer`` child: this tree's sources, this test's cache."""
    import torch  # the child uses the test process's thread count, so reductions (and losses) match bit for bit

    return {**os.environ, "GLASSFORMER_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": str(torch.get_num_threads()),
            "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def glassformer_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "glassformer", *map(str, args)]


def fingerprint(directory: Path) -> dict[str, bytes]:
    """Every file below ``directory`` and its bytes (the lock file, which names its holder, aside)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``glassformer ARGV`` in this process: (exit code, stderr)."""
    from glassformer.cli import main

    try:
        rc = main(argv)
    except SystemExit as e:  # argparse errors exit from inside the parser
        rc = e.code
    err = capsys.readouterr().err
    return rc, err
