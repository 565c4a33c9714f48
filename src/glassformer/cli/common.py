"""What every inference command shares (``generate``, ``translate``, ``fill-mask``, ``classify``,
``embed``): the MODEL_DIR / ``--prompt`` / ``--batch-size`` arguments, reading inputs, loading a
model of the right family and printing.

This module is light to import (no torch at the top), so building the parsers for ``--help``
stays fast; the loaders are imported inside the functions that load. The work itself (encoding,
batching, decoding) is the library's: :mod:`glassformer.generation.text`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys


def add_input_args(p: argparse.ArgumentParser) -> None:
    """MODEL_DIR, ``--prompt`` (repeatable; else stdin) and ``--batch-size``."""
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a glassformer run/save directory or a Hugging Face checkpoint")
    p.add_argument("--prompt", "--text", dest="prompts", action="append", metavar="TEXT",
                   help="input text (repeatable); without it, one input per line of stdin")
    p.add_argument("--batch-size", type=int, default=32, help="inputs run together (default 32)")
    p.add_argument("--errors", choices=("strict", "replace"), default="strict",
                   help="input bytes that are not UTF-8: stop with an error (strict, the default) or replace them")


def read_inputs(args: argparse.Namespace) -> list[str]:
    """``--prompt`` values, else the lines of stdin (a trailing newline does not add an input);
    bytes that are not UTF-8 are refused naming the input and the offset (see ``--errors``)."""
    from glassformer.io import check_text, read_stdin_text

    errors = getattr(args, "errors", "strict")
    if args.prompts is not None:
        return [check_text(p, f"--prompt {i + 1}", errors) for i, p in enumerate(args.prompts)]
    if sys.stdin is None or sys.stdin.isatty():
        raise ValueError("no input: pass --prompt TEXT or pipe one input per line on stdin")
    lines = read_stdin_text(errors).splitlines()
    if not lines:
        raise ValueError("no input: stdin was empty")
    return lines


def suggest(command: str, model_dir: str | os.PathLike, *rest: str) -> str:
    """A command line to try next, every argument shell-quoted (paths with spaces stay one word)."""
    return " ".join(["glassformer", command, *(shlex.quote(str(a)) for a in (model_dir, *rest))])


def load(args: argparse.Namespace, command: str):
    """(model, tokenizer) from MODEL_DIR, refusing before any work a model that cannot do
    ``command`` (asked of the model itself: :func:`~glassformer.generation.text.require_task`),
    with the commands that fit it. The tokenizer knows how to wrap the model's input
    (:meth:`~glassformer.tokenizers.base.Tokenizer.wrap`)."""
    from glassformer.generation.text import require_task  # torch: only when running
    from glassformer.loading import load_model_and_tokenizer

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    model, tokenizer = load_model_and_tokenizer(args.model_dir)
    require_task(model, command, str(args.model_dir), lambda task: suggest(task, args.model_dir, "--prompt", "TEXT"))
    return model, tokenizer


def emit(text: str) -> None:
    """Write to stdout now (outputs appear as they are ready)."""
    sys.stdout.write(text)
    sys.stdout.flush()


def header(i: int, n: int, text: str) -> str:
    """The line that opens output ``i`` of ``n`` when several are printed."""
    return f"=== {i + 1}/{n}: {text if len(text) <= 60 else text[:57] + '...'}\n"
