"""The machinery shared by the family files: key maps, shape checks, config field readers.

A key map is a list of :class:`Rule`: one of our parameter names, the checkpoint tensor(s) it
is made from, and whether they are stored transposed. Several checkpoint tensors for one of ours
means a fused projection: our ``w_qkv`` is W^Q, W^K, W^V stacked along the output dimension, so
the three are concatenated on load and split on save. Every tensor's shape is checked against
the shape our model (built from the converted config) expects, and the error names the tensor.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from glassformer.errors import CheckpointError, GlassformerError
from glassformer.io import read_json
from glassformer.models.base import PretrainedModel


@dataclass(frozen=True)
class Rule:
    """``ours`` <- ``theirs`` (concatenated along dim 0 in this order), transposed if ``transpose``."""

    ours: str
    theirs: tuple[str, ...]
    transpose: bool = False  # the checkpoint stores (in, out), e.g. GPT-2's Conv1D


def layer_rules(
    table: list[tuple[str, tuple[str, ...], bool]], n_layers: int, ours: str, theirs: str
) -> list[Rule]:
    """Instantiate a per-layer table for layers 0..n-1 under the two prefixes (``{i}`` = index)."""
    rules = []
    for i in range(n_layers):
        o, t = ours.format(i=i), theirs.format(i=i)
        rules += [Rule(o + a, tuple(t + b for b in bs), tr) for a, bs, tr in table]
    return rules


def expected_state(model: PretrainedModel) -> dict[str, Tensor]:
    """Our parameters that are stored (tied copies excluded)."""
    tied = model.active_tied_weights()
    return {k: v for k, v in model.state_dict().items() if k not in tied}


def to_ours(
    rules: list[Rule], theirs: dict[str, Tensor], model: PretrainedModel, source: str, name: Callable[[str], str] = str
) -> dict[str, Tensor]:
    """Build our state dict from checkpoint tensors; the keys used are then removed from ``theirs``.

    A checkpoint tensor may feed several of ours (a shared embedding). Raises a
    :class:`CheckpointError` naming the tensor (as ``name(key)`` spells it in the file) when one is
    missing or has a shape other than the one our converted config implies.
    """
    expected = expected_state(model)
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for rule in rules:
        target = tuple(expected[rule.ours].shape)
        n = len(rule.theirs)
        part_shape = (target[0] // n, *target[1:])
        if rule.transpose:
            part_shape = part_shape[::-1]
        parts = []
        for key in rule.theirs:
            if key not in theirs:
                raise CheckpointError(f"{source}: missing weight {name(key)!r}")
            t = theirs[key]
            if tuple(t.shape) != part_shape:
                raise CheckpointError(
                    f"{source}: weight {name(key)!r} has shape {tuple(t.shape)}, the config implies {part_shape}"
                )
            parts.append(t.t() if rule.transpose else t)
            used.add(key)
        out[rule.ours] = torch.cat(parts, dim=0) if n > 1 else parts[0]
    unmapped = sorted(set(expected) - set(out))
    if unmapped:  # a bug in a key map, not in the checkpoint
        raise AssertionError(f"key map leaves {unmapped} unset")
    for key in used:
        del theirs[key]
    return out


def to_theirs(rules: list[Rule], ours: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`to_ours`: split fused projections, transpose back, own the memory."""
    out: dict[str, Tensor] = {}
    for rule in rules:
        t = ours[rule.ours].detach()
        for key, part in zip(rule.theirs, t.chunk(len(rule.theirs), dim=0)):
            out[key] = (part.t() if rule.transpose else part).contiguous().clone()
    return out


def strip_prefix(
    state: dict[str, Tensor], prefix: str, top_level: tuple[str, ...]
) -> tuple[dict[str, Tensor], Callable[[str], str]]:
    """Drop the base-model ``prefix`` (present when a head wraps the model, absent otherwise).

    Returns the stripped state and a function giving a stripped key its name in the file (for
    a key the file lacks, the name it would have: prefixed unless it starts with ``top_level``).
    """
    had = any(k.startswith(prefix) for k in state)
    original = {k.removeprefix(prefix): k for k in state}
    stripped = {k.removeprefix(prefix): v for k, v in state.items()}

    def name(key: str) -> str:
        if key in original:
            return original[key]
        return prefix + key if had and not key.startswith(top_level) else key

    return stripped, name


def refuse_leftovers(theirs: dict[str, Tensor], source: str, family: str, name: Callable[[str], str] = str) -> None:
    """Every checkpoint tensor must be used: an unknown one means a part our model lacks."""
    if theirs:
        keys = sorted(name(k) for k in theirs)
        more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
        raise CheckpointError(
            f"{source}: unexpected weight {keys[0]!r}{more}: glassformer's {family} has no such part"
        )


# ------------------------------------------------------------------------- config fields


class HFConfig:
    """Typed reads from a Hugging Face ``config.json``; each error names the file and field."""

    def __init__(self, data: dict[str, Any], path: str | os.PathLike) -> None:
        self.data, self.path = data, str(path)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False) -> Any:
        if key not in self.data or self.data[key] is None:
            if required:
                raise CheckpointError(f"{self.path}: field {key!r} is missing")
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise CheckpointError(f"{self.path}: field {key!r} must be {names}, got {value!r}")
        return value

    def token_id(self, key: str) -> int | None:
        """A special-token id; a list (several eos ids) keeps its first entry."""
        value = self.data.get(key)
        if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            return value[0]
        return self.get(key, int)

    def refuse(self, key: str, bad: Any, feature: str, default: Any = None) -> None:
        """Error out when ``key`` holds ``bad`` (a feature our models cannot express)."""
        if self.data.get(key, default) == bad:
            raise CheckpointError(f"{self.path}: {key}={bad!r} ({feature}) is not supported by glassformer")

    def error(self, message: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {message}")


REQUIRED = object()  # a FieldSpec default meaning "the checkpoint must have this field"
FieldSpec = dict[str, tuple[str, type | tuple[type, ...], Any]]  # our field -> (their key, type, default)


def read_fields(cfg: HFConfig, spec: FieldSpec) -> dict[str, Any]:
    """Our config fields from a family's table of ``ours: (their key, type, default or REQUIRED)``;
    the one place where every family reads its plain config.json fields."""
    return {
        ours: cfg.get(key, kind, None if default is REQUIRED else default, required=default is REQUIRED)
        for ours, (key, kind, default) in spec.items()
    }


# HF activation names -> ours. gelu_new, gelu_fast and gelu_pytorch_tanh are the same tanh formula.
HF_ACTIVATIONS = {
    "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu", "silu": "silu", "swish": "silu",
}


def activation_from_hf(cfg: HFConfig, key: str, default: str) -> str:
    name = cfg.get(key, str, default)
    if name not in HF_ACTIVATIONS:
        raise cfg.error(f"activation {key}={name!r} is not supported; glassformer has {sorted(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[name]


def make_config(config_class: type, fields: dict[str, Any], path: str) -> Any:
    """Our config from converted fields; our validation errors are reported against the HF file."""
    try:
        return config_class(**fields)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot convert to {config_class.__name__}: {e}") from None


def special_token_id(directory: str | os.PathLike, contents: tuple[str, ...]) -> int | None:
    """The id of the first of ``contents`` found among tokenizer.json's added tokens, else None."""
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except GlassformerError:
        return None  # the tokenizer loader reports a broken tokenizer.json properly
    added = {t.get("content"): t.get("id") for t in data.get("added_tokens") or [] if isinstance(t, dict)}
    for c in contents:
        if isinstance(added.get(c), int):
            return added[c]
    return None


def layout_problems(config: Any, layout: str, *, pre_ln: bool, learned_positions: bool = True) -> list[str]:
    """What a foreign ``layout`` cannot hold of our ``config``: the other LayerNorm placement,
    positions it does not learn (when it learns them), missing biases. One entry per mismatch."""
    problems = []
    if config.norm_first != pre_ln:
        problems.append(f"norm_first={config.norm_first} ({layout} is {'pre' if pre_ln else 'post'}-LN)")
    if learned_positions and config.pos_encoding != "learned":
        problems.append(f"pos_encoding={config.pos_encoding!r} ({layout} learns its positions)")
    if not config.bias:
        problems.append(f"bias=False ({layout} has biases everywhere)")
    if config.d_ff == 0:
        problems.append(f"d_ff=0, attention-only layers ({layout} has a feed-forward block in every layer)")
    return problems


def refuse_export(problems: list[str], what: str) -> None:
    """Raise ``ValueError("{what}: problem; problem")`` when there is any problem."""
    if problems:
        raise ValueError(f"{what}: {'; '.join(problems)}")
