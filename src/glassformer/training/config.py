"""``TrainConfig``: every knob of a training run, as typed data.

One dataclass serves the four objectives. Its field names are the command-line flags (with
dashes: ``--d-model 128``) and the keys of a YAML or TOML file given with ``--config``. The
resolved config is written into the run directory as ``train_config.json``.

Precedence, lowest first: the field defaults, the task's defaults (:data:`TASK_DEFAULTS`), the
fine-tuning recipe when ``init`` names a pretrained model (:data:`FINETUNE_DEFAULTS`), the config
file, then flags on the command line (:func:`glassformer.training.config_io.resolve_config` applies it;
that module also reads flags' text, config files and a run's saved config).

A field's ``tasks`` metadata names the objectives it applies to (``--help`` of ``train bert``
lists ``--mask-prob``; ``train gpt`` does not); a field without it applies to every task.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from glassformer.errors import GlassformerError
from glassformer.models.config import FFN, ModelConfig, Norm, Positions, check_value

Task = Literal["gpt", "bert", "seq2seq", "classifier", "embed"]
TASKS: tuple[str, ...] = typing.get_args(Task)


COMPILE_MIN_STEPS = 2000  # compiling costs about a minute on a CPU; shorter runs do not win it back
COMPILE_MIN_MINUTES = 10.0  # nor do runs with a --max-minutes budget below this


class ConfigError(GlassformerError, ValueError):
    """A flag, config file or saved run config that cannot be used; names the flag or file."""


def opt(default: Any, help: str, tasks: tuple[str, ...] | None = None) -> Any:
    """A TrainConfig field with its flag help (``--help`` reads it from the field's metadata) and,
    when it applies to some objectives only, their names."""
    return field(default=default, metadata={"help": help, **({"tasks": tasks} if tasks else {})})


def model_field(default: Any, help: str, tasks: tuple[str, ...] | None = None) -> Any:
    """A field of the model's config, settable for a run: same name and type as in ModelConfig
    (checked below), passed on by :meth:`TrainConfig.model_kwargs`, the one place a model config
    is made from a run's settings. A None default leaves the family's own default."""
    return field(default=default, metadata={"help": help, "model": True, **({"tasks": tasks} if tasks else {})})


@dataclass
class TrainConfig:
    """A training run. Defaults suit a small model on the built-in data on a laptop CPU."""

    task: Task = opt("gpt", "objective: causal LM, masked LM, seq2seq, or BERT classification")
    # --- data
    data: str | None = opt(None, "corpus file/dir/glob or built-in name (pairs or labelled file for seq2seq/classifier, "
                                 "(anchor, positive) rows for embed)")
    val_data: str | None = opt(None, "a labelled file to validate on, instead of a split of --data",
                               ("classifier", "embed"))
    text_column: str = opt("text", "the column (CSV/TSV header) or JSON field holding the text",
                           ("classifier", "embed"))
    label_column: str = opt("label", "the column or field holding the label", ("classifier",))
    text_pair_column: str | None = opt(None, "a second text per row: read as BERT's sentence pair, [CLS] a [SEP] b "
                                             "[SEP] (classifier); the positive of each anchor (embed)",
                                       ("classifier", "embed"))
    tokenizer: str = opt("char", "\"char\", \"bpe\", or a tokenizer.json / model directory to reuse")
    vocab_size: int = opt(512, "vocabulary size when training a BPE tokenizer")
    val_fraction: float = opt(0.1, "held out for evaluation: the tail of a corpus, or a shuffled (for classes: "
                                   "stratified) sample of the examples drawn with --seed")
    errors: Literal["strict", "replace"] = opt("strict", "what to do with bytes that are not UTF-8")
    num_examples: int = opt(20000, "examples generated for a built-in seq2seq/classification task",
                            ("seq2seq", "classifier"))
    mask_prob: float = opt(0.15, "masked-LM: fraction of tokens to predict (BERT §3.1)", ("bert",))
    # --- model (ignored with --init, which brings its own)
    context: int = opt(128, "tokens per training sequence (longest source/target for seq2seq)")
    max_len: int | None = model_field(None, "positions the model covers; defaults to context")
    n_layers: int = model_field(4, "layers per stack")
    n_heads: int = model_field(4, "attention heads per layer")
    d_model: int = model_field(128, "width of the residual stream")
    d_ff: int | None = model_field(None, "feed-forward inner width; defaults to 4 * d_model; 0: attention-only")
    dropout: float = model_field(0.1, "dropout on sublayer outputs, embeddings and attention weights")
    # --- after 2017 (the family's own default when unset)
    positions: Positions | None = model_field(None, "position information: learned or sinusoidal vectors added to the "
                                                    "embeddings, or rotary (q and k turned by position; GPT only)")
    norm: Norm | None = model_field(None, "layernorm, or rmsnorm (no centring, no bias)")
    ffn: FFN | None = model_field(None, "feed-forward: an activation (relu, gelu, ...) or swiglu (gated)")
    n_kv_heads: int | None = model_field(None, "key/value heads (grouped-query attention; 1 = multi-query)")
    rope_theta: float | None = model_field(None, "rotary: the base of the frequencies", ("gpt",))
    init: str | None = opt(None, "start from this model directory (a glassformer run or a Hugging Face checkpoint)")
    lora_rank: int = opt(0, "with --init: train rank-r updates B·A of the attention projections (LoRA) and the task's "
                            "new head instead of every weight; merged into the weights on save. 0: off")
    lora_alpha: float | None = opt(None, "LoRA's α: the updates are scaled by α / rank (default: 2 · rank)")
    # --- optimisation
    batch_size: int = opt(32, "sequences per micro-batch")
    grad_accum: int = opt(1, "micro-batches per optimiser step")
    max_steps: int = opt(1000, "optimiser steps (unless --epochs is set)")
    epochs: float | None = opt(None, "passes over the training examples; sets the number of steps (with --init: 3)")
    max_minutes: float | None = opt(None, "fit the schedule to this much training time in this process (the learning "
                                          "rate has decayed when it runs out), then stop, evaluate and save")
    lr: float = opt(1e-3, "peak learning rate")
    min_lr: float = opt(1e-4, "the cosine schedule decays to this")
    schedule: Literal["cosine", "linear", "noam", "constant"] = opt(
        "cosine", "after warmup: cosine, linear decay (BERT fine-tuning), inverse sqrt (paper §5.3), flat")
    warmup_steps: int = opt(100, "linear warmup from 0 to lr")
    warmup_fraction: float | None = opt(None, "warmup as a fraction of the run's steps, instead of --warmup-steps "
                                              "(with --init: 0.1)")
    lr_decay_steps: int | None = opt(None, "the step at which cosine reaches min_lr; defaults to max_steps")
    weight_decay: float = opt(0.1, "AdamW decay on matrices and embeddings; never on biases or LayerNorms")
    beta1: float = opt(0.9, "AdamW β1")
    beta2: float = opt(0.99, "AdamW β2")
    grad_clip: float = opt(1.0, "clip the global gradient norm to this; 0 turns clipping off")
    label_smoothing: float | None = opt(None, "ε_ls; None means 0.1 for seq2seq (paper §5.4), 0 otherwise")
    # --- evaluation and visibility
    eval_every: int = opt(100, "evaluate, sample, plot and checkpoint every this many steps")
    eval_batches: int = opt(10, "fixed validation batches per evaluation")
    patience: int | None = opt(None, "stop after this many evaluations without a lower validation loss; the best "
                                     "model is kept (with --init: 2)")
    log_every: int = opt(10, "a metrics.jsonl line (and a plain log line off a terminal) every this many steps")
    sample_tokens: int = opt(120, "length of the sample printed at each evaluation", ("gpt", "seq2seq"))
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
        for name in ("max_len", "lr_decay_steps", "patience"):
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
        if self.epochs is not None and not (math.isfinite(self.epochs) and self.epochs > 0):
            raise ValueError(f"epochs must be a positive number, got {self.epochs}")
        if self.warmup_fraction is not None and not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not self.text_column.strip() or not self.label_column.strip():
            raise ValueError("text_column and label_column must name a column")
        if self.task == "embed" and not self.text_pair_column:
            raise ValueError("train embed needs --text-pair-column: the column holding each anchor's positive")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("weight_decay and grad_clip must be >= 0")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.max_len is not None and self.context > self.max_len:
            raise ValueError(f"context {self.context} is above max_len {self.max_len}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0: no LoRA), got {self.lora_rank}")
        if self.lora_alpha is not None and not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise ValueError(f"lora_alpha must be a positive number, got {self.lora_alpha}")
        if self.lora_alpha is not None and not self.lora_rank:
            raise ValueError("lora_alpha is set but lora_rank is 0; give --lora-rank R to use LoRA")
        if self.lora_rank and not self.init:
            raise ValueError("lora_rank needs --init: LoRA adapts a pretrained model, and a model trained from "
                             "scratch must train every weight")
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

    def applies(self, name: str) -> bool:
        """Whether the field ``name`` means something for this run's task."""
        return applies_to(name, self.task)

    def model_kwargs(self) -> dict[str, Any]:
        """The model-shape fields as ModelConfig keyword arguments (``d_ff`` and ``max_len`` resolved):
        ``GPTConfig(vocab_size=..., **config.model_kwargs())``."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("model")}
        values.update(d_ff=self.ffn_width, max_len=self.max_len or self.context)
        return {k: v for k, v in values.items() if v is not None}  # None: the family's default

    def steps_per_epoch(self, n_examples: int, world_size: int = 1) -> int:
        """Optimiser steps in one pass over ``n_examples`` (every rank draws its own batches)."""
        return max(1, math.ceil(n_examples / (self.batch_size * self.grad_accum * world_size)))

    def planned(self, n_examples: int, world_size: int = 1) -> TrainConfig:
        """The config with its step counts resolved from the data: ``epochs`` -> ``max_steps`` (and
        an evaluation at least once an epoch), ``warmup_fraction`` -> ``warmup_steps``."""
        changes: dict[str, Any] = {}
        max_steps = self.max_steps
        if self.epochs is not None:
            per_epoch = self.steps_per_epoch(n_examples, world_size)
            max_steps = max(1, math.ceil(self.epochs * per_epoch))
            changes.update(max_steps=max_steps, eval_every=min(self.eval_every, per_epoch))
        if self.warmup_fraction is not None:
            changes["warmup_steps"] = int(round(self.warmup_fraction * max_steps))
        return self.replace(**changes) if changes else self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


# Fields a resumed run must keep: changing them would make the checkpoint mean something else.
LOCKED_ON_RESUME = (
    "task", "data", "tokenizer", "vocab_size", "val_fraction", "errors", "num_examples", "mask_prob",
    "context", "max_len", "n_layers", "n_heads", "d_model", "d_ff", "init", "seed",
    "val_data", "text_column", "label_column", "text_pair_column", "lora_rank", "lora_alpha",
)

# What each objective starts from when neither a file nor a flag says otherwise.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt": {},
    "bert": {"lr": 5e-4, "min_lr": 5e-5, "weight_decay": 0.01},
    # the paper's Adam β2 = 0.98 (§5.3); dates and copy tasks are short sequences
    "seq2seq": {"context": 48, "beta2": 0.98, "lr": 1e-3, "weight_decay": 0.01, "num_examples": 20000},
    "classifier": {"lr": 3e-4, "min_lr": 3e-5, "weight_decay": 0.01, "max_steps": 300, "warmup_steps": 30,
                   "eval_every": 50, "num_examples": 4000},
    # (anchor, positive) pairs, in-batch negatives; sentence-transformers' column names
    "embed": {"lr": 3e-4, "min_lr": 3e-5, "weight_decay": 0.01, "max_steps": 300, "warmup_steps": 30,
              "eval_every": 50, "text_column": "anchor", "text_pair_column": "positive"},
}

# The fine-tuning recipe, on top of the task's defaults whenever ``init`` names a pretrained model:
# a learning rate chosen from the model's width (:func:`finetune_lr`), warmed up over the first 10%
# of the steps and decayed linearly to zero, a few epochs, the whole validation split at each
# evaluation, and early stopping on its loss (BERT §A.3: 2-4 epochs; Mosbach et al., 2021, on
# warm-up and longer runs).
FINETUNE_DEFAULTS: dict[str, Any] = {
    "lr": 3e-4, "min_lr": 0.0, "schedule": "linear", "warmup_fraction": 0.1, "epochs": 4.0, "patience": 2,
    "batch_size": 16, "weight_decay": 0.01, "eval_batches": 64, "eval_every": 1000,
}


# With --lora-rank: only the adapters (B starts at zero) and the head train, and they take a larger
# step: the best validation loss of 3e-4, 1e-3 and 3e-3 for MiniLM at rank 8 (α/r = 2) on
# benchmarks/fine_tune.py's training split (one seed each); LoRA papers use 2e-4 .. 5e-4 for
# RoBERTa, several times their full fine-tuning rates.
LORA_LR = 1e-3


def finetune_lr(width: int | None) -> float:
    """The fine-tuning learning rate for a model ``width`` (d_model) wide: 3e-4 at MiniLM's 384
    (the best of 1e-4, 2e-4 and 3e-4 on benchmarks/fine_tune.py's task), falling with the square
    of the width: 7.5e-5 for BERT-base's 768, 4.2e-5 for BERT-large's 1024 (BERT §A.3 tunes
    those in 2e-5 .. 5e-5); never above 3e-4."""
    if not width:
        return FINETUNE_DEFAULTS["lr"]
    return min(3e-4, max(1e-5, 3e-4 * (384 / width) ** 2))


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


def applies_to(name: str, task: str) -> bool:
    """Whether the field ``name`` applies to ``task`` (its ``tasks`` metadata; every task when absent)."""
    tasks = next(f.metadata.get("tasks") for f in dataclasses.fields(TrainConfig) if f.name == name)
    return tasks is None or task in tasks


def field_help(name: str) -> str:
    """The help text of a field (its metadata), for ``--help``."""
    return next(f.metadata.get("help", "") for f in dataclasses.fields(TrainConfig) if f.name == name)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)
