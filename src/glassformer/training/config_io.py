"""Where a run's :class:`~glassformer.training.config.TrainConfig` values come from, and how they combine.

* :func:`parse_value`: a flag's text as the field's type (``--lr 3e-4`` -> 0.0003), the error naming the flag;
* :func:`read_config_file`: a YAML, TOML or JSON file given with ``--config`` (unknown keys refused);
* :func:`resolve_config`: the precedence, lowest first: field defaults, the task's defaults, the
  fine-tuning recipe with ``--init``, the config file, the flags;
* :func:`load_run_config`: what a run directory was started with (``train_config.json``).

Configs are data: read with ``yaml.safe_load``, ``tomllib`` or ``json``, never executed.
"""

from __future__ import annotations

import json
import os
import typing
from pathlib import Path
from typing import Any, Literal

from glassformer.io import read_json
from glassformer.training.config import (
    FINETUNE_DEFAULTS,
    LORA_LR,
    TASK_DEFAULTS,
    ConfigError,
    TrainConfig,
    field_names,
    field_types,
    finetune_lr,
)


def parse_value(name: str, text: str, hint: Any | None = None) -> Any:
    """Turn a flag's text into the field's type; the error names the flag."""
    hint = hint if hint is not None else field_types()[name]
    flag = "--" + name.replace("_", "-")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        if text not in args:
            raise ValueError(f"{flag}: {text!r} is not one of {', '.join(map(str, args))}")
        return text
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if text.lower() in ("none", "null", ""):
            return None
        inner = [a for a in args if a is not type(None)]
        return parse_value(name, text, inner[0])
    try:
        if hint is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            return int(text)
        if hint is float:
            return float(text)
    except ValueError:
        kind = {bool: "true or false", int: "an integer", float: "a number"}[hint]
        raise ValueError(f"{flag}: expected {kind}, got {text!r}") from None
    return text


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Keys and values from a YAML (.yaml/.yml), TOML (.toml) or JSON file; unknown keys refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ValueError(f"{path}: unknown config format {suffix!r}; use .yaml, .yml, .toml or .json")
    try:
        if suffix == ".toml":
            data = _toml_loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as e:  # yaml.YAMLError, TOMLDecodeError, JSONDecodeError: each names the line
        message = " ".join(str(e).split()) or type(e).__name__
        raise ValueError(f"{path}: cannot parse: {message}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping of field names to values")
    known, hints = set(field_names()), field_types()
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise ValueError(f"{path}: unknown field {key!r}")
        # YAML 1.1 reads "1e-3" as a string; give such values the same parsing as a flag
        if isinstance(value, str) and hints[name] is not str:
            try:
                value = parse_value(name, value)
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None
        out[name] = value
    return out


def _toml_loads(text: str) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads(text)


def resolve_config(task: str, file_values: dict[str, Any], flag_values: dict[str, Any], source: str = "",
                   init_width: int | None = None) -> TrainConfig:
    """defaults < task defaults < fine-tuning recipe (with ``init``) < file < flags -> a validated
    :class:`TrainConfig`. A step count or warmup given without its fraction/epoch counterpart wins
    over the recipe's (``--init X --max-steps 200`` trains 200 steps)."""
    given = {**file_values, **flag_values}
    lr = LORA_LR if given.get("lora_rank") else finetune_lr(init_width)
    recipe = {**FINETUNE_DEFAULTS, "lr": lr} if given.get("init") else {}
    if "max_steps" in given and "epochs" not in given:
        recipe.pop("epochs", None)
    if "warmup_steps" in given and "warmup_fraction" not in given:
        recipe.pop("warmup_fraction", None)
    values = {**TASK_DEFAULTS[task], **recipe, **given, "task": task}
    if file_values.get("task", task) != task:
        raise ValueError(f"{source or 'config file'}: task {file_values['task']!r} does not match `train {task}`")
    try:
        return TrainConfig(**values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {e}" if source else str(e)) from None


def load_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The resolved config a run directory was started with."""
    path = Path(run_dir) / "train_config.json"
    data = read_json(path, error=ConfigError)
    unknown = sorted(set(data) - set(field_names()))
    if unknown:
        raise ConfigError(f"{path}: unknown field {unknown[0]!r}")
    return data
