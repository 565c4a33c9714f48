"""``glassformer demo [NAME]``: train a small model on built-in data in minutes, measure it, look inside.

Each demo is one module of this package (a table, :data:`DEMOS`, maps its name to it). A demo
module exposes ``DESCRIPTION`` (one line) and ``run(args) -> int``; ``args`` carries ``out``,
``seed``, ``progress``, ``minutes``, ``max_steps`` and ``overwrite``. Every demo writes its run to
``runs/demo-NAME/`` and the figures it prints to ``runs/demo-NAME/summary.json``.
"""

from __future__ import annotations

import argparse
import importlib

# demo name -> module with DESCRIPTION and run(args); imported only when that demo runs
DEMOS: dict[str, str] = {
    "gpt": "glassformer.demos.gpt",
    "bert": "glassformer.demos.bert",
    "seq2seq": "glassformer.demos.seq2seq",
    "classifier": "glassformer.demos.classifier",
    "induction": "glassformer.demos.induction",
    "real": "glassformer.demos.real",
}

# one line each for --help, without importing the demo modules (and torch) to build the parser
SUMMARY: dict[str, str] = {
    "gpt": "a GPT learns to write like the Python docs (BPE, under 3 min); the default",
    "bert": "a BERT learns masked subwords of the Python docs and uses context to fill them",
    "seq2seq": "the paper's encoder-decoder learns to rewrite dates as ISO 8601",
    "classifier": "a BERT tells whether two dates are in order: the words alone cannot",
    "induction": "watch induction heads form in a 2-layer GPT on repeated random tokens",
    "real": "a real pretrained model (all-MiniLM-L6-v2), installed offline",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    names = "\n".join(f"  {name:11} {text}" for name, text in SUMMARY.items())
    p = subparsers.add_parser(
        "demo", help="train a small model on built-in data and look inside it (a few minutes)",
        description="Train a small model on built-in data in minutes, measure it, look inside. Each demo writes "
                    "runs/demo-NAME/ with summary.json.\n\ndemos:\n" + names,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("demo", nargs="?", choices=list(DEMOS), default="gpt", metavar="NAME",
                   help=f"which demo: {', '.join(DEMOS)} (default: gpt)")
    p.add_argument("--max-steps", type=positive_int, default=None, help="training steps (default: fit --minutes)")
    p.add_argument("--minutes", type=positive_float, default=None,
                   help="training time to aim for when --max-steps is not given (default: each demo's own)")
    p.add_argument("--out", default=None, help="run directory (default: runs/demo-NAME, replaced on each demo)")
    p.add_argument("--overwrite", action="store_true", help="replace a previous run in an --out you chose")
    p.add_argument("--progress", choices=("auto", "bar", "plain", "none"), default="auto", help="progress display")
    p.add_argument("--seed", type=int, default=1337, help="random seed")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Import the chosen demo's module and run it."""
    module = importlib.import_module(DEMOS[args.demo])
    return int(module.run(args) or 0)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value
