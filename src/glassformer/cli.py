"""``glassformer ...``: a table from subcommand to the module that implements it.

Each module listed in :data:`COMMANDS` exposes ``register(subparsers)``, which adds its parser
and sets ``func`` to the function that runs it. This file only dispatches and turns input
errors into one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from glassformer.errors import GlassformerError

# subcommand -> module with register(subparsers); several subcommands may share a module
COMMANDS: dict[str, str] = {
    "demo": "glassformer.demo",
    "train": "glassformer.training.command",
    "generate": "glassformer.generation.command",
    "translate": "glassformer.generation.command",
    "fill-mask": "glassformer.generation.command",
    "classify": "glassformer.generation.command",
    "embed": "glassformer.generation.command",
    "explain": "glassformer.explain.command",
    "attention": "glassformer.explain.command",
    "convert": "glassformer.interop.command",
    "heads": "glassformer.explain.insight",
    "lens": "glassformer.explain.insight",
    "ablate": "glassformer.explain.insight",
    "attribute": "glassformer.explain.insight",
}

USER_ERRORS = (GlassformerError, ValueError, TypeError, KeyError, OSError)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, no usage dump
        sys.stderr.write(f"glassformer: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="glassformer", description="A Transformer you can see through.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    registered: set[str] = set()
    for module_name in dict.fromkeys(COMMANDS.values()):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is None or not module_name.startswith(e.name):
                raise
            continue  # a command whose module has not been written yet
        module.register(sub)
        registered.update(sub.choices)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("glassformer: interrupted\n")
        return 130
    except USER_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        sys.stderr.write(f"glassformer: error: {msg}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
