"""Command-line flags made from :class:`~glassformer.generation.config.GenerationConfig`, once.

* :func:`add_generation_flags` adds one flag per field marked ``flag`` in the config's metadata,
  with the field's own help text (``--num-beams`` is also spelled ``--beam``);
* :func:`config_from_args` builds the config: flags win over the model's
  ``generation_config.json``, which wins over the built-in defaults;
* :class:`EffectiveHelp` is a ``--help`` that shows the defaults that will really be used: the
  model's file ("from the model's generation_config.json (now: temperature 0.8, top-k 40)") or
  plainly greedy.

Light to import: the standard library and :mod:`glassformer.generation.config` only.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from pathlib import Path
from typing import Any

from glassformer.generation.config import (
    FILE,
    GenerationConfig,
    load_generation_config,
    read_generation_config,
    show_value,
)

ALIASES = {"num_beams": ["--beam"]}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape(text: str) -> str:
    r"""``\n``, ``\t``, ``\r`` and ``\\`` typed on a command line become the characters they name."""
    return re.sub(r"\\([ntr\\])", lambda m: _ESCAPES[m.group(1)], text)


def flag_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(GenerationConfig) if f.metadata.get("flag")]


def _flag_type(f: dataclasses.Field):
    kind = str(f.type)
    return int if kind.startswith("int") else float if kind.startswith("float") else str


def add_generation_flags(p: argparse.ArgumentParser) -> None:
    """One flag per decoding setting (default None = "not given"), and a ``--help`` showing the
    effective defaults. Call on a parser made with ``add_help=False``."""
    actions = {}
    for f in flag_fields():
        names = [f"--{f.name.replace('_', '-')}", *ALIASES.get(f.name, [])]
        if f.name == "stop":
            actions[f.name] = p.add_argument(*names, dest=f.name, action="append", default=None, metavar="TEXT",
                                             help=f.metadata["help"] + r" (repeatable; \n and \t are understood)")
        else:
            kind = _flag_type(f)
            actions[f.name] = p.add_argument(*names, dest=f.name, type=kind, default=None,
                                             metavar="N" if kind is int else "X", help=f.metadata["help"])
    p.add_argument("-h", "--help", action=EffectiveHelp, help="show this message, with this model's defaults, and exit")
    p.generation_actions = actions  # read by EffectiveHelp
    p.generation_base_help = {name: a.help for name, a in actions.items()}
    p.generation_base_description = p.description or ""
    _describe(p, None)


def config_from_args(args: argparse.Namespace, model_dir: str | os.PathLike | None = None) -> GenerationConfig:
    """Flags, else ``model_dir``'s generation_config.json, else the defaults.

    A flag for one strategy silences the file's other one: ``--temperature 0.8`` on a model whose
    file asks for 4 beams samples, and ``--beam 4`` on a model whose file samples searches.
    """
    base = load_generation_config(model_dir) if model_dir is not None else GenerationConfig()
    given = {f.name: getattr(args, f.name) for f in flag_fields() if getattr(args, f.name, None) is not None}
    if "stop" in given:
        given["stop"] = tuple(unescape(s) for s in given["stop"])
    return base.with_overrides(**given)


def given(args: argparse.Namespace, name: str) -> bool:
    """True when the setting ``name`` was typed on the command line."""
    return getattr(args, name, None) is not None


class EffectiveHelp(argparse.Action):
    """``-h/--help`` that first reads MODEL_DIR's generation_config.json (when MODEL_DIR is on
    the line and readable) so every flag's help says which default applies."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        _describe(parser, _model_dir(parser, namespace))
        parser.print_help()
        parser.exit()


def _model_dir(parser, namespace) -> Path | None:
    found = getattr(namespace, "model_dir", None)
    candidates = [found] if found else []
    candidates += [a for a in getattr(parser, "raw_args", []) if not a.startswith("-")]
    for c in candidates:
        if Path(c).is_dir():
            return Path(c)
    return None


def _describe(p: argparse.ArgumentParser, model_dir: Path | None) -> None:
    """Write the effective defaults into the flags' help and the description."""
    defaults = GenerationConfig()
    stored: dict[str, Any] = {}
    note = ""
    if model_dir is None:
        summary = f"the model's {FILE} when it has one, else {defaults.describe()}, {defaults.max_new_tokens} new tokens"
    else:
        try:
            stored = read_generation_config(model_dir)
        except (ValueError, OSError) as e:
            note = f" ({e})"
        if stored:
            summary = f"from the model's {FILE} (now: {GenerationConfig(**stored).describe()})"
        else:
            summary = f"{defaults.describe()}, {defaults.max_new_tokens} new tokens ({model_dir} has no usable {FILE}){note}"
    for name, action in p.generation_actions.items():
        base = p.generation_base_help[name]
        if name in stored:
            text = f"now {show_value(stored[name])}, from the model's {FILE}"
        elif model_dir is None:
            text = f"default: the model's {FILE}, else {_default(defaults, name)}"
        else:
            text = f"default: {_default(defaults, name)}"
        action.help = f"{base} ({text})".replace("%", "%%")
    p.description = (p.generation_base_description + f"\n\nDecoding defaults: {summary}.").strip().replace("%", "%%")


def _default(config: GenerationConfig, name: str) -> str:
    value = getattr(config, name)
    if name == "temperature" and value == 0:
        return "0 = greedy"
    if value is None or value == ():
        return "unset"
    return show_value(value)
