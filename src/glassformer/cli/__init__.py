"""``glassformer ...``: the command line, apart from the library. A table from subcommand to the
module that implements it; every argparse module lives in this package (``train``, ``generate``,
``bert``, ``convert``, ``flags``, ``common``) and calls library functions that know nothing of
argparse (:mod:`glassformer.generation.text`, :mod:`glassformer.training.run`, ...).

Each module listed in :data:`COMMANDS` exposes ``register(subparsers)``, which adds its parser
and sets ``func`` to the function that runs it. Only the module of the command being run is
imported (``glassformer --help`` imports none, so it answers at once); the others appear in the
help with their one-line summary. Options may come anywhere on the line: each command's parser
reads its options and positionals intermixed (``explain RUN --layer 0 "text"`` and
``explain RUN "text" --layer 0`` are the same). This file only dispatches, turns input errors
into one line on stderr with exit code 2, and ends every command's output with a newline.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from glassformer import THREADS, __version__
from glassformer.errors import GlassformerError

# subcommand -> (module with register(subparsers), one-line help); several subcommands may share a module
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("glassformer.demos", "train a small model on built-in data and look inside it (a few minutes)"),
    "train": ("glassformer.cli.train", "train a GPT, BERT, seq2seq Transformer or classifier"),
    "generate": ("glassformer.cli.generate", "continue text with a GPT"),
    "translate": ("glassformer.cli.generate", "translate with an encoder-decoder"),
    "fill-mask": ("glassformer.cli.bert", "predict the masked tokens with a BERT"),
    "classify": ("glassformer.cli.bert", "label texts with a BERT classifier"),
    "embed": ("glassformer.cli.bert", "sentence vectors from a BERT"),
    "explain": ("glassformer.cli.explain", "the four steps of attention, checked against the model"),
    "attention": ("glassformer.cli.explain", "attention heatmaps and the interactive viewer"),
    "heads": ("glassformer.cli.explain", "what each attention head does"),
    "lens": ("glassformer.cli.explain", "the logit lens: each layer's guess"),
    "ablate": ("glassformer.cli.explain", "switch heads off and measure the change"),
    "patch": ("glassformer.cli.explain", "activation patching: copy one activation from a clean text into a corrupted one"),
    "attribute": ("glassformer.cli.explain", "which heads and feed-forward blocks wrote a token's logit (direct logit attribution)"),
    "evaluate": ("glassformer.cli.evaluate", "score a classifier on a labelled file: accuracy, macro-F1, confusion"),
    "convert": ("glassformer.cli.convert", "convert a Hugging Face checkpoint to a glassformer directory"),
    "serve": ("glassformer.cli.serve", "the live explorer in the browser: type, click a head, see inside"),
}

USER_ERRORS = (GlassformerError, ValueError, TypeError, KeyError, OSError)


class CommandParser(argparse.ArgumentParser):
    """One-line errors, and options anywhere among the positionals (``parse_intermixed_args``)
    for every command parser that allows it (one with sub-commands of its own does not)."""

    _intermixing = False

    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        sys.stderr.write(f"glassformer: error: {message}\n")
        raise SystemExit(2)

    def parse_known_args(self, args=None, namespace=None):
        self.raw_args = list(sys.argv[1:] if args is None else args)  # EffectiveHelp looks for MODEL_DIR here
        if self._intermixing or self.prog == "glassformer":
            return super().parse_known_args(args, namespace)
        if any(a.nargs in (argparse.PARSER, argparse.REMAINDER) for a in self._actions):
            return super().parse_known_args(args, namespace)  # argparse cannot intermix these
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


class LineEndingOut:
    """A stand-in for ``sys.stdout`` that remembers the last character written, so that
    :func:`main` can end a command's output with a newline when the command did not."""

    def __init__(self, out) -> None:
        self.out, self.last = out, ""

    def write(self, text: str) -> int:
        if text:
            self.last = text[-1]
        return self.out.write(text)

    def __getattr__(self, name: str):  # flush, isatty, encoding, fileno, ...: the real stream's
        return getattr(self.out, name)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (all of them when None)."""
    parser = CommandParser(prog="glassformer", description="A Transformer you can see through.")
    parser.add_argument("--version", action="version", version=f"glassformer {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)

    wanted = [COMMANDS[command][0]] if command in COMMANDS else [] if command is not None else \
        list(dict.fromkeys(m for m, _ in COMMANDS.values()))
    for module_name in wanted:
        try:
            importlib.import_module(module_name).register(sub)
        except ModuleNotFoundError as e:
            if e.name is None or not module_name.startswith(e.name):
                raise
            continue  # a command whose module has not been written yet
    for name, (_, text) in COMMANDS.items():  # the others: listed in the help, imported when run
        if name not in sub.choices:
            sub.add_parser(name, help=text, add_help=False)
    return parser


def one_line(text: str) -> str:
    """``text`` with each character that is not printable (a newline or control character in a
    path or prompt the message quotes, a lone surrogate from bytes that were not UTF-8) written
    as its escape, so that an error stays one line and can always be written."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named on the line: the first word that is not a top-level option."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_of(argv) or "")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    logging.getLogger(__name__).debug("threads: %s", THREADS)  # the wait policy chosen at import (threads.py)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    out = sys.stdout = LineEndingOut(sys.stdout)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("glassformer: interrupted\n")
        return 130
    except USER_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        sys.stderr.write(f"glassformer: error: {one_line(str(msg))}\n")
        return 2
    finally:
        if sys.stdout is out:
            sys.stdout = out.out
        if out.last not in ("", "\n"):
            out.out.write("\n")
            out.out.flush()


if __name__ == "__main__":
    raise SystemExit(main())
