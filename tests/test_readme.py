"""README snippets run as written (issue 30, item 5): every fenced ``python`` block and every
fenced shell block of README.md runs, in a fresh directory, and must not fail.

The Python snippets open ``runs/demo-gpt`` and friends, which a user has after ``make demo``;
training the demos takes minutes, so here those directories hold tiny untrained models of the
same families with a character tokenizer over printable ASCII (what the snippets call is the
same: ``glassformer.load``, ``generate``, ``translate``, ``fill_mask``, hooks ...). Shell
blocks run under ``bash -e`` with ``glassformer``, ``python`` and ``.venv/bin/python`` pointing
at this interpreter and this source tree; ``make`` lines are left out (they build the
environment this test runs in). A block that cannot run here is skipped only when listed in
:data:`SKIP`, with the reason; a listed block that is no longer in the README fails the test.
"""

from __future__ import annotations

import os
import re
import stat
import string
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SRC

README = Path(__file__).resolve().parents[1] / "README.md"
SHELL, PYTHON = ("bash", "sh", "shell", "console"), ("python", "py")

# first line of a block -> why it cannot run here
SKIP = {
    "make demo                                   # or: glassformer demo gpt":
        "starts the live explorer, which serves until Ctrl-C (tests/test_serve_*.py drive it)",
    "curl -s localhost:8000/api/steps -H 'Content-Type: application/json' \\":
        "talks to the server the block above starts (tests/test_serve_api.py checks /api/steps)",
    "glassformer train gpt --data corpus.txt --out runs/llama-style \\":
        "the user's corpus and minutes of training (tests/test_train_post2017.py runs these flags for 30 steps)",
    "# reviews.csv: a header row, then one text and one label per row; the columns are yours to name":
        "the user's own reviews.csv (tests/test_finetune.py and test_finetune_minilm.py run the recipe on files they make)",
    "python benchmarks/fine_tune.py --threads 2 --json runs/fine_tune.json":
        "the measured benchmark, minutes (tests/test_finetune_minilm.py runs its smoke mode)",
    'glassformer generate path/to/SmolLM2-135M --prompt "The capital of France is" --max-new-tokens 20':
        "a checkpoint the user downloaded (tests/test_llama_tools.py runs these commands on a synthetic Llama directory)",
    'glassformer ablate runs/reviews "a good film" --head 1.0          # class probabilities before/after, KL':
        "runs/reviews, the fine-tuned model of the user's CSV (tests/test_why_classifier.py runs ablate, patch and "
        "attribute on a fine-tuned classifier)",
}


def blocks() -> list[tuple[int, str, str]]:
    """(line, language, code) of every fenced block of README.md."""
    text = README.read_text(encoding="utf-8")
    return [(text[: m.start()].count("\n") + 1, m.group(1), m.group(2))
            for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def runnable(lang: str) -> bool:
    return lang in SHELL or lang in PYTHON


def block_id(block: tuple[int, str, str]) -> str:
    return f"{block[1]}-line{block[0]}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A directory with stand-ins for the demo runs and the commands a shell block calls."""
    import torch

    from conftest import randomize
    from glassformer.models import BERT, GPT, BERTConfig, GPTConfig, Transformer, TransformerConfig
    from glassformer.tokenizers import build_tokenizer

    root = tmp_path_factory.mktemp("readme")
    tok = build_tokenizer("char", string.printable)
    ids = dict(vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    torch.manual_seed(0)
    models = {
        "demo-gpt": GPT(GPTConfig.from_name("gpt-tiny", **ids)),
        "demo-induction": GPT(GPTConfig.from_name("gpt-tiny", **ids)),
        "demo-seq2seq": Transformer(TransformerConfig.from_name("transformer-tiny", dropout=0.0, **ids)),
        "demo-bert": BERT(BERTConfig.from_name("bert-tiny", mask_token_id=tok.mask_id, **ids)),
        "demo-classifier": BERT(BERTConfig.from_name("bert-tiny", mlm_head=False, num_labels=2, **ids)),
    }
    for name, model in models.items():
        randomize(model, std=0.1).save_pretrained(root / "runs" / name)
        tok.save(root / "runs" / name)
    bin_ = root / "bin"
    venv = root / ".venv" / "bin"
    for directory, name, body in [(bin_, "glassformer", f'exec "{sys.executable}" -m glassformer "$@"'),
                                  (bin_, "python", f'exec "{sys.executable}" "$@"'),
                                  (venv, "python", f'exec "{sys.executable}" "$@"')]:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(f"#!/bin/sh\n{body}\n")
        (directory / name).chmod((directory / name).stat().st_mode | stat.S_IXUSR)
    return root


def env(workdir: Path) -> dict:
    return {**os.environ, "PATH": f"{workdir / 'bin'}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
            "GLASSFORMER_CACHE": str(workdir / "cache"), "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_every_runnable_block_is_run_or_skipped_with_a_reason():
    firsts = {code.splitlines()[0] for _, lang, code in blocks() if runnable(lang) and code.strip()}
    stale = set(SKIP) - firsts
    assert not stale, f"SKIP lists blocks no longer in README.md: {stale}"
    assert sum(runnable(lang) for _, lang, _ in blocks()) >= 6


def params() -> list:
    """Every runnable block; shell blocks start real processes of the command line: slow."""
    return [pytest.param(*b, id=block_id(b), marks=[pytest.mark.slow] if b[1] in SHELL else [])
            for b in blocks() if runnable(b[1])]


@pytest.mark.parametrize("line,lang,code", params())
def test_readme_block_runs(line, lang, code, workdir):
    first = code.splitlines()[0] if code.strip() else ""
    if first in SKIP:
        pytest.skip(f"README.md:{line}: {SKIP[first]}")
    if lang in PYTHON:
        cmd = [sys.executable, "-c", code]
    else:
        kept = "\n".join(ln for ln in code.splitlines() if not ln.lstrip().startswith("make "))
        if not kept.strip():
            pytest.skip(f"README.md:{line}: only make commands (they build the environment this test runs in)")
        cmd = ["bash", "-e", "-o", "pipefail", "-c", kept]
    result = subprocess.run(cmd, cwd=workdir, env=env(workdir), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"README.md:{line} ({lang}) failed:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
