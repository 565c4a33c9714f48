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


# ------------------------------------------------------------------ tiny models for generation and the CLI

NO_EOS = []  # eos_token_id=[]: never stop early

TINY_TEXT = "hello world, the cat sat on the mat. a dog ran by."  # the tiny saved models' char vocabulary


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine extra threads wait
    for each other (measured 20x slower under load); restore the setting afterwards. A module
    asks for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def randomize(model, std=0.3):
    """Redraw every matrix of ``model`` from N(0, std²), so greedy choices are varied and clear-cut; eval mode."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, std)
    return model.eval()


def random_gpt(std=0.3, seed=0, **kw):
    """A tiny GPT (``gpt-tiny`` with ``kw`` changed) with large random weights, seeded."""
    import torch

    from glassformer.models import GPT, GPTConfig

    torch.manual_seed(seed)
    return randomize(GPT(GPTConfig.from_name("gpt-tiny", **kw)).eval(), std)


def random_transformer(seed=0, std=0.1, **kw):
    """A tiny untied Transformer with random weights that give varied, clear-cut choices."""
    import torch

    from glassformer.models import Transformer, TransformerConfig

    torch.manual_seed(seed)
    cfg = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0, dropout=0.0, tie_embeddings=False)
    return randomize(Transformer(TransformerConfig.from_name("transformer-tiny", **{**cfg, **kw})).eval(), std)


def random_prompt(n, seed, v=64):
    """``n`` token ids below ``v``, drawn from a generator seeded ``seed``."""
    import torch

    return torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def save_tiny_models(root: Path) -> dict:
    """A GPT, a BERT classifier and a Transformer, each saved under ``root`` with a char tokenizer
    over ``TINY_TEXT``: ``{"gpt": dir, "bert": dir, "seq2seq": dir, "tok": tokenizer}``."""
    import torch

    from glassformer.models import BERT, GPT, BERTConfig, GPTConfig, Transformer, TransformerConfig
    from glassformer.tokenizers import build_tokenizer

    tok = build_tokenizer("char", TINY_TEXT)
    torch.manual_seed(0)
    v, ids = tok.vocab_size, dict(bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    models = {
        "gpt": randomize(GPT(GPTConfig.from_name("gpt-tiny", vocab_size=v, **ids))),
        "bert": randomize(BERT(BERTConfig.from_name("bert-tiny", vocab_size=v, num_labels=3, mask_token_id=tok.mask_id,
                                                    label_names=["neg", "neutral", "pos"], **ids)), std=0.1),
        "seq2seq": randomize(Transformer(TransformerConfig.from_name("transformer-tiny", vocab_size=v, dropout=0.0,
                                                                    tie_embeddings=False, **ids)), std=0.1),
    }
    out = {}
    for name, model in models.items():
        d = root / name
        model.save_pretrained(d)
        tok.save(d)
        out[name] = d
    out["tok"] = tok
    return out


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict:
    """:func:`save_tiny_models` once per test module."""
    return save_tiny_models(tmp_path_factory.mktemp("models"))


# --------------------------------------------------------------------------- the CLI in this process


def run_main(capsys, *argv, stdin=None, monkeypatch=None) -> tuple[int, str, str]:
    """``glassformer ARGV`` in this process (arguments made str, ``stdin`` text fed through
    ``monkeypatch``): (exit code, stdout, stderr). argparse's SystemExit is not caught."""
    import io

    from glassformer.cli import main

    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(capsys, *argv, match):
    """``glassformer ARGV`` exits 2 with a one-line error holding ``match`` and no traceback."""
    code, out, err = run_main(capsys, *argv)
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and "Traceback" not in err and match in err, err
