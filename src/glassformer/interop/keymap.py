"""The machinery shared by the family files: key maps, shape checks, config field readers.

A key map is a list of :class:`Rule`: one of our parameter names, the checkpoint tensor(s) it
is made from, and whether they are stored transposed. Several checkpoint tensors for one of ours
means a fused projection: our ``w_qkv`` is W^Q, W^K, W^V stacked along the output dimension, so
the three are concatenated on load and split on save. Every tensor's shape is checked against
the shape our model (built from the converted config) expects, and the error names the tensor.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from glassformer.errors import CheckpointError, GlassformerError
from glassformer.io import read_json
from glassformer.models.base import PretrainedModel


@dataclass(frozen=True)
class Rule:
    """``ours`` <- ``theirs`` (concatenated along dim 0 in this order), transposed if ``transpose``.

    The parts are equal slices of ours unless ``split`` gives their sizes along dim 0 (grouped-query
    attention stacks a C-row W^Q on two narrower W^K, W^V).
    """

    ours: str
    theirs: tuple[str, ...]
    transpose: bool = False  # the checkpoint stores (in, out), e.g. GPT-2's Conv1D
    split: tuple[int, ...] | None = None  # rows of each part, when they differ

    def part_shapes(self, target: tuple[int, ...]) -> list[tuple[int, ...]]:
        """The checkpoint shape of each part, for our tensor of shape ``target``."""
        n = len(self.theirs)
        sizes = self.split or (target[0] // n,) * n
        shapes = [(size, *target[1:]) for size in sizes]
        return [shape[::-1] if self.transpose else shape for shape in shapes]


def layer_rules(table: list[tuple], n_layers: int, ours: str, theirs: str) -> list[Rule]:
    """Instantiate a per-layer table of ``(ours, theirs, transpose[, split])`` for layers 0..n-1
    under the two prefixes (``{i}`` = index)."""
    rules = []
    for i in range(n_layers):
        o, t = ours.format(i=i), theirs.format(i=i)
        rules += [Rule(o + a, tuple(t + b for b in bs), tr, *rest) for a, bs, tr, *rest in table]
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
        parts = []
        for key, part_shape in zip(rule.theirs, rule.part_shapes(target)):
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


def assign_one_by_one(
    model: PretrainedModel,
    rules: list[Rule],
    tensors: Iterable[tuple[str, Tensor]],
    source: str,
    name: Callable[[str], str] = str,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Fill a model built on the meta device from checkpoint tensors that arrive one at a time.

    Each of our tensors is made (cast to ``dtype``, parts concatenated) and put into the model as
    soon as its last part has arrived, so the weights are never held twice: at any moment this
    holds the model filled so far plus the parts of fused projections still waiting for the
    rest. ``tensors`` yields (their name, tensor); names are checked as in :func:`to_ours`. Ties
    (:attr:`PretrainedModel.tied_weights`) are made again at the end.
    """
    tied = model.active_tied_weights()
    expected = expected_state(model)  # shapes only: the model holds no memory yet
    owner = {key: (rule, i) for rule in rules for i, key in enumerate(rule.theirs)}
    shapes = {rule.ours: rule.part_shapes(tuple(expected[rule.ours].shape)) for rule in rules}
    pending: dict[str, list[Tensor | None]] = {}
    for key, t in tensors:
        if key not in owner:
            raise CheckpointError(f"{source}: unexpected weight {name(key)!r}: glassformer's {type(model).__name__} has no such part")
        rule, i = owner.pop(key)
        if tuple(t.shape) != shapes[rule.ours][i]:
            raise CheckpointError(f"{source}: weight {name(key)!r} has shape {tuple(t.shape)}, the config implies {shapes[rule.ours][i]}")
        parts = pending.setdefault(rule.ours, [None] * len(rule.theirs))
        parts[i] = t.t() if rule.transpose else t
        if all(p is not None for p in parts):
            del pending[rule.ours]
            whole = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
            set_tensor(model, rule.ours, whole.to(dtype).contiguous())
    if owner:
        raise CheckpointError(f"{source}: missing weight {name(sorted(owner)[0])!r}" + (f" (and {len(owner) - 1} more)" if len(owner) > 1 else ""))
    for a, b in tied.items():
        set_tensor(model, a, model.get_parameter(b))
    left = [k for k, v in model.state_dict().items() if v.is_meta]
    if left:  # a bug in a key map, not in the checkpoint
        raise AssertionError(f"key map leaves {left} unset")


def set_tensor(model: nn.Module, name: str, tensor: Tensor) -> None:
    """Put ``tensor`` in place of the parameter ``name`` (``"decoder.layers.0.self_attn.w_o.weight"``)."""
    path, _, leaf = name.rpartition(".")
    module = model.get_submodule(path)
    old = getattr(module, leaf)
    setattr(module, leaf, tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor, requires_grad=old.requires_grad))


def to_theirs(rules: list[Rule], ours: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`to_ours`: split fused projections, transpose back, own the memory."""
    out: dict[str, Tensor] = {}
    for rule in rules:
        t = ours[rule.ours].detach()
        parts = t.split(list(rule.split), dim=0) if rule.split else t.chunk(len(rule.theirs), dim=0)
        for key, part in zip(rule.theirs, parts):
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


def field_spec(config_class: type, table: dict[str, tuple[str, Any]]) -> FieldSpec:
    """A :data:`FieldSpec` from ``{our field: (their key, default or REQUIRED)}``, each type taken from
    our config dataclass itself, so a converter's table cannot drift from the model's fields: a
    field the config lacks is an error at import time."""
    hints = typing.get_type_hints(config_class)
    spec: FieldSpec = {}
    for ours, (theirs, default) in table.items():
        if ours not in hints:
            raise TypeError(f"{config_class.__name__} has no field {ours!r}")
        hint = hints[ours]
        kinds = tuple(a for a in typing.get_args(hint) if a is not type(None)) or (hint,)
        spec[ours] = (theirs, kinds if len(kinds) > 1 else kinds[0], default)
    return spec


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
    if config.norm != "layernorm":
        problems.append(f"norm={config.norm!r} ({layout} uses LayerNorm)")
    if config.gated_ffn:
        problems.append(f"ffn={config.ffn!r} ({layout} has a plain feed-forward network)")
    if config.kv_heads != config.n_heads:
        problems.append(f"n_kv_heads={config.n_kv_heads} ({layout} gives every head its own keys and values)")
    if config.qkv_bias is not None and config.qkv_bias != config.bias:
        problems.append(f"qkv_bias={config.qkv_bias} ({layout} has the same biases on every projection)")
    if not learned_positions and config.positions == "rotary":
        problems.append(f"positions='rotary' ({layout} adds its positions to the embeddings)")
    return problems


def refuse_export(problems: list[str], what: str) -> None:
    """Raise ``ValueError("{what}: problem; problem")`` when there is any problem."""
    if problems:
        raise ValueError(f"{what}: {'; '.join(problems)}")
