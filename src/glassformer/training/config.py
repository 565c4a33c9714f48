"""``TrainConfig``: every knob of a training run, as typed data.

One dataclass serves the four objectives. Its field names are the command-line flags (with
dashes: ``--d-model 128``) and the keys of a YAML or TOML file given with ``--config``. The
resolved config is written into the run directory as ``train_config.json``.

Precedence, lowest first: the field defaults, the task's defaults (:data:`TASK_DEFAULTS`), the
config file, then flags on the command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from glassformer.errors import GlassformerError
from glassformer.io import read_json
from glassformer.models.config import ModelConfig, check_value

Task = Literal["gpt", "bert", "seq2seq", "classifier"]
TASKS: tuple[str, ...] = typing.get_args(Task)


COMPILE_MIN_STEPS = 2000  # compiling costs about a minute on a CPU; shorter runs do not win it back
COMPILE_MIN_MINUTES = 10.0  # nor do runs with a --max-minutes budget below this


class ConfigError(GlassformerError, ValueError):
    """A flag, config file or saved run config that cannot be used; names the flag or file."""


def opt(default: Any, help: str) -> Any:
    """A TrainConfig field with its flag help (``--help`` reads it from the field's metadata)."""
    return field(default=default, metadata={"help": help})


def model_field(default: Any, help: str) -> Any:
    """A field of the model's config, settable for a run: same name and type as in ModelConfig
    (checked below), passed on by :meth:`TrainConfig.model_kwargs`, the one place a model config
    is made from a run's settings."""
    return field(default=default, metadata={"help": help, "model": True})


@dataclass
class TrainConfig:
    """A training run. Defaults suit a small model on the built-in data on a laptop CPU."""

    task: Task = opt("gpt", "objective: causal LM, masked LM, seq2seq, or BERT classification")
    # --- data
    data: str | None = opt(None, "corpus file/dir/glob or built-in name (pairs or labelled file for seq2seq/classifier)")
    tokenizer: str = opt("char", "\"char\", \"bpe\", or a tokenizer.json / model directory to reuse")
    vocab_size: int = opt(512, "vocabulary size when training a BPE tokenizer")
    val_fraction: float = opt(0.1, "the tail of the corpus (or of the examples) held out for evaluation")
    errors: Literal["strict", "replace"] = opt("strict", "what to do with bytes that are not UTF-8")
    num_examples: int = opt(20000, "examples generated for a built-in seq2seq/classification task")
    mask_prob: float = opt(0.15, "masked-LM: fraction of tokens to predict (BERT §3.1)")
    # --- model (ignored with --init, which brings its own)
    context: int = opt(128, "tokens per training sequence (longest source/target for seq2seq)")
    max_len: int | None = model_field(None, "positions the model covers; defaults to context")
    n_layers: int = model_field(4, "layers per stack")
    n_heads: int = model_field(4, "attention heads per layer")
    d_model: int = model_field(128, "width of the residual stream")
    d_ff: int | None = model_field(None, "feed-forward inner width; defaults to 4 * d_model; 0: attention-only")
    dropout: float = model_field(0.1, "dropout on sublayer outputs, embeddings and attention weights")
    init: str | None = opt(None, "start from this model directory (a glassformer run or a Hugging Face checkpoint)")
    # --- optimisation
    batch_size: int = opt(32, "sequences per micro-batch")
    grad_accum: int = opt(1, "micro-batches per optimiser step")
    max_steps: int = opt(1000, "optimiser steps")
    max_minutes: float | None = opt(None, "also stop (evaluate, save) after this much training time in this process")
    lr: float = opt(1e-3, "peak learning rate")
    min_lr: float = opt(1e-4, "the cosine schedule decays to this")
    schedule: Literal["cosine", "noam", "constant"] = opt("cosine", "after warmup: cosine, inverse sqrt (paper §5.3), flat")
    warmup_steps: int = opt(100, "linear warmup from 0 to lr")
    lr_decay_steps: int | None = opt(None, "the step at which cosine reaches min_lr; defaults to max_steps")
    weight_decay: float = opt(0.1, "AdamW decay on matrices and embeddings; never on biases or LayerNorms")
    beta1: float = opt(0.9, "AdamW β1")
    beta2: float = opt(0.99, "AdamW β2")
    grad_clip: float = opt(1.0, "clip the global gradient norm to this; 0 turns clipping off")
    label_smoothing: float | None = opt(None, "ε_ls; None means 0.1 for seq2seq (paper §5.4), 0 otherwise")
    # --- evaluation and visibility
    eval_every: int = opt(100, "evaluate, sample, plot and checkpoint every this many steps")
    eval_batches: int = opt(10, "fixed validation batches per evaluation")
    log_every: int = opt(10, "a metrics.jsonl line (and a plain log line off a terminal) every this many steps")
    sample_tokens: int = opt(120, "length of the sample printed at each evaluation (GPT, seq2seq)")
    snapshot_attention: str | None = opt(None, "a probe sentence whose attention is saved at each evaluation")
    keep_checkpoints: int = opt(2, "step checkpoints kept on disk (the newest ones)")
    progress: Literal["auto", "bar", "plain", "none"] = opt("auto", "progress bar on a terminal, log lines otherwise")
    # --- run
    seed: int = opt(1337, "seeds the model init, dropout and the data order")
    out: str | None = opt(None, "run directory; defaults to runs/<task>")
    resume: bool = opt(False, "continue the run in --out from its latest checkpoint")
    overwrite: bool = opt(False, "replace a previous run in --out")
    device: Literal["auto", "cpu", "cuda", "mps"] = opt("auto", "auto: cuda, then mps, then cpu")
    dtype: Literal["auto", "float32", "bfloat16"] = opt("auto", "bfloat16 = autocast; auto picks it where it pays")
    compile: bool | None = opt(None, "torch.compile the training step; default: on a GPU, or on a CPU with a C++ "
                                      f"compiler, for runs of at least {COMPILE_MIN_STEPS} steps and no --max-minutes "
                                      f"under {COMPILE_MIN_MINUTES:g}")
    parallel: Literal["ddp", "fsdp"] = opt("ddp", "under torchrun: replicate the model (DDP) or shard it (FSDP2)")
    allow_data_change: bool = opt(False, "--resume even though the data files changed since the run started")

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            check_value(f.name, getattr(self, f.name), hints[f.name])
        positive = ("vocab_size", "num_examples", "context", "n_layers", "n_heads", "d_model", "batch_size",
                    "grad_accum", "max_steps", "eval_every", "eval_batches", "log_every", "keep_checkpoints")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("max_len", "lr_decay_steps"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_ff is not None and self.d_ff < 0:
            raise ValueError(f"d_ff must be positive, or 0 for attention-only layers, got {self.d_ff}")
        for name in ("warmup_steps", "sample_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.label_smoothing is not None and not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.beta1 < 1.0 or not 0.0 <= self.beta2 < 1.0:
            raise ValueError(f"beta1 and beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")
        if not -(2**63) <= self.seed < 2**63:  # torch seeds are 64-bit
            raise ValueError(f"seed must be below 2**63 (and above -2**63), got {self.seed}")
        for name in ("lr", "min_lr", "weight_decay", "grad_clip", "beta1", "beta2", "val_fraction", "mask_prob",
                     "dropout", "max_minutes", "label_smoothing"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("weight_decay and grad_clip must be >= 0")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.max_len is not None and self.context > self.max_len:
            raise ValueError(f"context {self.context} is above max_len {self.max_len}")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite contradict each other; choose one")

    # ------------------------------------------------------------------------ derived values

    @property
    def run_dir(self) -> Path:
        return Path(self.out if self.out is not None else f"runs/{self.task}")

    @property
    def ffn_width(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    @property
    def smoothing(self) -> float:
        if self.label_smoothing is not None:
            return self.label_smoothing
        return 0.1 if self.task == "seq2seq" else 0.0

    @property
    def decay_steps(self) -> int:
        return self.lr_decay_steps if self.lr_decay_steps is not None else self.max_steps

    def model_kwargs(self) -> dict[str, Any]:
        """The model-shape fields as ModelConfig keyword arguments (``d_ff`` and ``max_len`` resolved):
        ``GPTConfig(vocab_size=..., **config.model_kwargs())``."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("model")}
        values.update(d_ff=self.ffn_width, max_len=self.max_len or self.context)
        return values

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


# Fields a resumed run must keep: changing them would make the checkpoint mean something else.
LOCKED_ON_RESUME = (
    "task", "data", "tokenizer", "vocab_size", "val_fraction", "errors", "num_examples", "mask_prob",
    "context", "max_len", "n_layers", "n_heads", "d_model", "d_ff", "init", "seed",
)

# What each objective starts from when neither a file nor a flag says otherwise.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt": {},
    "bert": {"lr": 5e-4, "min_lr": 5e-5, "weight_decay": 0.01},
    # the paper's Adam β2 = 0.98 (§5.3); dates and copy tasks are short sequences
    "seq2seq": {"context": 48, "beta2": 0.98, "lr": 1e-3, "weight_decay": 0.01, "num_examples": 20000},
    "classifier": {"lr": 3e-4, "min_lr": 3e-5, "weight_decay": 0.01, "max_steps": 300, "warmup_steps": 30,
                   "eval_every": 50, "num_examples": 4000},
}


def _check_model_fields() -> None:
    """The model fields are ModelConfig's own: same names, and values ModelConfig accepts."""
    model_hints, hints = typing.get_type_hints(ModelConfig), typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if not f.metadata.get("model"):
            continue
        if f.name not in model_hints:
            raise TypeError(f"TrainConfig.{f.name} is marked as a model field but ModelConfig has no such field")
        # the same type, or the same type | None where None means "derived" (d_ff = 4 * d_model)
        if hints[f.name] not in (model_hints[f.name], model_hints[f.name] | None):
            raise TypeError(f"TrainConfig.{f.name} is {hints[f.name]}, ModelConfig.{f.name} is {model_hints[f.name]}")


_check_model_fields()


def field_help(name: str) -> str:
    """The help text of a field (its metadata), for ``--help``."""
    return next(f.metadata.get("help", "") for f in dataclasses.fields(TrainConfig) if f.name == name)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


# ------------------------------------------------------------------------------ parsing values


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


def resolve_config(task: str, file_values: dict[str, Any], flag_values: dict[str, Any], source: str = "") -> TrainConfig:
    """defaults < task defaults < file < flags -> a validated :class:`TrainConfig`."""
    values = {**TASK_DEFAULTS[task], **file_values, **flag_values, "task": task}
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
