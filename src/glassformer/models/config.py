"""Typed configurations for the three families, with named presets.

Field names follow the paper: ``d_model``, ``n_heads``, ``n_layers``, ``d_ff``, ``max_len``,
``dropout``. Configs are pure data: they round-trip through JSON, unknown keys are refused, and
every validation error names the field at fault.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from glassformer.errors import CheckpointError
from glassformer.io import atomic_write_json, read_json

C = TypeVar("C", bound="ModelConfig")

Activation = Literal["relu", "gelu", "gelu_tanh", "silu"]
Positions = Literal["sinusoidal", "learned", "rotary"]
PosEncoding = Positions  # the field's former name, kept for imports
SinusoidalLayout = Literal["interleaved", "halves"]
Norm = Literal["layernorm", "rmsnorm"]
FFN = Literal["relu", "gelu", "gelu_tanh", "silu", "swiglu"]
RopeScaling = Literal["none", "llama3"]


@dataclass
class ModelConfig:
    """Fields every family shares."""

    vocab_size: int = 256  # number of token ids
    d_model: int = 512  # width of the residual stream (C)
    n_heads: int = 8  # attention heads per layer (H); d_head = d_model / n_heads
    n_layers: int = 6  # layers in each stack
    d_ff: int = 2048  # inner width of the position-wise feed-forward network; 0: attention-only layers
    max_len: int = 512  # longest sequence the positional encoding covers
    dropout: float = 0.1  # P_drop on sublayer outputs, embeddings and attention weights
    activation: Activation = "relu"  # feed-forward non-linearity
    norm_first: bool = False  # pre-LN (GPT-2) instead of post-LN (the paper)
    layer_norm_eps: float = 1e-5  # epsilon of the norm (LayerNorm or RMSNorm)
    bias: bool = True  # biases in linear layers and LayerNorms
    positions: Positions = "learned"  # added sinusoidal (§3.5) or learned vectors, or rotary q/k (RoFormer)
    sinusoidal_layout: SinusoidalLayout = "interleaved"  # sin/cos column order, when sinusoidal
    pad_token_id: int | None = None  # id of <pad>, if the vocabulary has one
    bos_token_id: int | None = None  # id of <bos>
    eos_token_id: int | None = None  # id of <eos>
    # --- after 2017 (Llama and its kind); the defaults give the models above unchanged
    norm: Norm = "layernorm"  # LayerNorm, or RMSNorm (no centring, no bias: x / rms(x) * g)
    ffn: FFN | None = None  # None: act(x W_1) W_2 with `activation`; "swiglu": (silu(x W_g) * x W_u) W_2
    n_kv_heads: int | None = None  # key/value heads (GQA; 1 = MQA); None: n_heads (every head its own)
    qkv_bias: bool | None = None  # biases on W^Q, W^K, W^V (Qwen2 has them, nothing else); None: `bias`
    rope_theta: float = 10000.0  # rotary: the base of the frequencies theta_i = base^(-2i/d)
    rotary_fraction: float = 1.0  # rotary: the share of each head's dims that rotate (partial rotary)
    rope_scaling: RopeScaling = "none"  # rotary: "llama3" stretches the low frequencies (Llama 3.1+)
    rope_factor: float = 8.0  # llama3 scaling: how much the lowest frequencies are slowed
    rope_low_freq_factor: float = 1.0  # llama3 scaling: wavelengths above original/low are divided by factor
    rope_high_freq_factor: float = 4.0  # llama3 scaling: wavelengths below original/high are kept
    rope_original_max_len: int = 8192  # llama3 scaling: the context the model was first trained on

    model_type: ClassVar[str] = "base"
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    @property
    def d_head(self) -> int:
        """Width of one attention head (D)."""
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads per layer: ``n_kv_heads``, or ``n_heads`` when unset."""
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def gated_ffn(self) -> bool:
        """The feed-forward network is gated (SwiGLU)."""
        return self.ffn == "swiglu"

    @property
    def rotary_dim(self) -> int:
        """How many dims of each head rotate (even; 0 unless positions is rotary)."""
        if self.positions != "rotary":
            return 0
        return int(self.d_head * self.rotary_fraction) // 2 * 2

    @property
    def pos_encoding(self) -> str:
        """The former name of ``positions`` (still accepted by the constructor and in config.json)."""
        return self.positions

    def __post_init__(self) -> None:
        if self.ffn is not None and self.ffn != "swiglu":
            self.activation = self.ffn  # ffn names the activation of a plain feed-forward network
        self._check_types()
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "max_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_ff < 0:
            raise ValueError(f"d_ff must be positive, or 0 for attention-only layers, got {self.d_ff}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be positive, got {self.layer_norm_eps}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(f"{name}={value} is outside the vocabulary [0, {self.vocab_size})")
        if self.n_kv_heads is not None and not (0 < self.n_kv_heads <= self.n_heads and self.n_heads % self.n_kv_heads == 0):
            raise ValueError(f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads})")
        if self.rope_theta <= 0:
            raise ValueError(f"rope_theta must be positive, got {self.rope_theta}")
        if not 0.0 < self.rotary_fraction <= 1.0:
            raise ValueError(f"rotary_fraction must be in (0, 1], got {self.rotary_fraction}")
        if self.positions == "rotary" and self.rotary_dim == 0:
            raise ValueError(f"rotary_fraction={self.rotary_fraction} rotates no dims of a {self.d_head}-wide head")
        if self.rope_scaling == "llama3":
            if self.rope_factor < 1 or self.rope_original_max_len <= 0:
                raise ValueError("llama3 rope scaling needs rope_factor >= 1 and rope_original_max_len > 0")
            if not 0 < self.rope_low_freq_factor < self.rope_high_freq_factor:
                raise ValueError("llama3 rope scaling needs 0 < rope_low_freq_factor < rope_high_freq_factor")

    def _check_types(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            check_value(f.name, getattr(self, f.name), hints[f.name])

    # ------------------------------------------------------------------------ presets & JSON

    @classmethod
    def from_name(cls: type[C], name: str, **overrides: Any) -> C:
        """A named preset, e.g. ``GPTConfig.from_name("gpt2", dropout=0.0)``."""
        if name not in cls.presets:
            raise ValueError(f"unknown {cls.__name__} preset {name!r}; choose one of {sorted(cls.presets)}")
        return cls.from_dict({**cls.presets[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": self.model_type, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        """The config a dict describes; the former key ``pos_encoding`` (config.json files written
        before ``positions``) is read as ``positions``."""
        data = dict(data)
        model_type = data.pop("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ValueError(f"config is for model_type {model_type!r}, not {cls.model_type!r}")
        known = {f.name for f in dataclasses.fields(cls)} | {"pos_encoding"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
        return cls(**data)

    def to_json_file(self, path: str | os.PathLike) -> None:
        """Write the config as JSON, atomically (see :func:`glassformer.io.atomic_write`)."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def from_json_file(cls: type[C], path: str | os.PathLike) -> C:
        return cls.from_dict(read_json(path, error=CheckpointError))


def accepts_former_names(cls: type[C]) -> type[C]:
    """Let the constructor take ``pos_encoding=``, the former name of ``positions``."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args: Any, pos_encoding: str | None = None, **kwargs: Any) -> None:
        if pos_encoding is not None:
            if kwargs.get("positions", pos_encoding) != pos_encoding:
                raise ValueError(f"positions={kwargs['positions']!r} and pos_encoding={pos_encoding!r} disagree; give positions only")
            kwargs["positions"] = pos_encoding
        init(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[method-assign]
    return cls


def check_value(name: str, value: Any, hint: Any) -> None:
    """Refuse a value whose type does not match the field's annotation (configs are data)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{name} must be one of {list(args)}, got {value!r}")
        return
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        errors = []
        for arg in args:
            try:
                check_value(name, value, arg)
                return
            except (TypeError, ValueError) as e:
                errors.append(e)
        raise TypeError(f"{name} has the wrong type: {value!r}")
    if hint is type(None):
        if value is not None:
            raise TypeError(f"{name} must be None")
        return
    if origin is list:
        if not isinstance(value, list):
            raise TypeError(f"{name} must be a list, got {type(value).__name__}")
        for v in value:
            check_value(name, v, args[0])
        return
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise TypeError(f"{name} must be {getattr(hint, '__name__', hint)}, got {type(value).__name__} {value!r}")


# -------------------------------------------------------------------------------- families

# the Llama recipe on top of GPT: rotary positions, RMSNorm, SwiGLU, no biases, no dropout
_LLAMA: dict[str, Any] = dict(positions="rotary", norm="rmsnorm", ffn="swiglu", bias=False, dropout=0.0,
                              layer_norm_eps=1e-5)


@accepts_former_names
@dataclass
class GPTConfig(ModelConfig):
    """Decoder-only, causal, pre-LN, learned positions, LM head tied to the token embedding."""

    activation: Activation = "gelu_tanh"
    norm_first: bool = True
    dropout: float = 0.0
    max_len: int = 1024
    tie_embeddings: bool = True  # LM head shares the token embedding matrix (GPT-2)

    model_type: ClassVar[str] = "gpt"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "gpt2": dict(vocab_size=50257, d_model=768, n_heads=12, n_layers=12, d_ff=3072, max_len=1024,
                     dropout=0.1, eos_token_id=50256, bos_token_id=50256),
        "gpt2-medium": dict(vocab_size=50257, d_model=1024, n_heads=16, n_layers=24, d_ff=4096,
                            max_len=1024, dropout=0.1, eos_token_id=50256, bos_token_id=50256),
        "gpt-mini": dict(vocab_size=65, d_model=384, n_heads=6, n_layers=6, d_ff=1536, max_len=256),
        "gpt-small-demo": dict(vocab_size=256, d_model=128, n_heads=4, n_layers=4, d_ff=512, max_len=256),
        "gpt-tiny": dict(vocab_size=64, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_len=64),
        # after 2017: the Llama recipe, then the shapes of three published checkpoints
        "llama-tiny": dict(vocab_size=64, d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=128, max_len=128,
                           **_LLAMA, tie_embeddings=False),
        "smollm2-135m": dict(vocab_size=49152, d_model=576, n_heads=9, n_kv_heads=3, n_layers=30, d_ff=1536,
                             max_len=8192, rope_theta=100000.0, **_LLAMA),
        "llama-3.2-1b": dict(vocab_size=128256, d_model=2048, n_heads=32, n_kv_heads=8, n_layers=16, d_ff=8192,
                             max_len=131072, rope_theta=500000.0, rope_scaling="llama3", rope_factor=32.0,
                             rope_low_freq_factor=1.0, rope_high_freq_factor=4.0, rope_original_max_len=8192, **_LLAMA),
        "qwen2.5-0.5b": dict(vocab_size=151936, d_model=896, n_heads=14, n_kv_heads=2, n_layers=24, d_ff=4864,
                             max_len=32768, rope_theta=1000000.0, qkv_bias=True, **{**_LLAMA, "layer_norm_eps": 1e-6}),
    }


@accepts_former_names
@dataclass
class BERTConfig(ModelConfig):
    """Encoder-only, bidirectional, post-LN, learned positions plus token-type embeddings."""

    activation: Activation = "gelu"
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 2  # segment (sentence A / B) embeddings
    pooler: bool = True  # tanh dense layer over [CLS] (next-sentence / classification input)
    mlm_head: bool = True  # masked-language-model head, tied to the token embedding
    num_labels: int = 0  # > 0 adds a sequence-classification head on the pooled output
    label_names: list[str] = field(default_factory=list)  # optional names of the num_labels classes
    pad_token_id: int | None = 0
    mask_token_id: int | None = None  # id of [MASK] / <mask>, if known

    model_type: ClassVar[str] = "bert"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "bert-base": dict(vocab_size=30522, d_model=768, n_heads=12, n_layers=12, d_ff=3072, max_len=512),
        "bert-large": dict(vocab_size=30522, d_model=1024, n_heads=16, n_layers=24, d_ff=4096, max_len=512),
        "minilm-l6": dict(vocab_size=30522, d_model=384, n_heads=12, n_layers=6, d_ff=1536, max_len=512),
        "bert-tiny": dict(vocab_size=64, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_len=64),
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.positions == "rotary":
            raise ValueError("positions='rotary' is for the GPT family; BERT adds position vectors (learned or sinusoidal)")
        if self.type_vocab_size <= 0:
            raise ValueError(f"type_vocab_size must be positive, got {self.type_vocab_size}")
        if self.num_labels < 0:
            raise ValueError(f"num_labels must be >= 0, got {self.num_labels}")
        if self.label_names and len(self.label_names) != self.num_labels:
            raise ValueError(
                f"label_names has {len(self.label_names)} names but num_labels is {self.num_labels}"
            )
        if self.num_labels > 0 and not self.pooler:
            raise ValueError("num_labels > 0 needs pooler=True: the classifier reads the pooled [CLS]")


@accepts_former_names
@dataclass
class TransformerConfig(ModelConfig):
    """The paper's encoder-decoder: sinusoidal positions, post-LN, embeddings scaled by √d_model,
    one vocabulary shared by source and target."""

    positions: Positions = "sinusoidal"
    n_decoder_layers: int | None = None  # decoder depth when it differs from n_layers (the encoder's)
    scale_embeddings: bool = True  # multiply embeddings by √d_model (§3.4)
    tie_embeddings: bool = True  # source, target embeddings and pre-softmax projection share weights (§3.4)
    output_bias: bool = False  # a bias on the pre-softmax projection (Marian has one)
    decoder_start_token_id: int | None = None  # first decoder input; defaults to bos_token_id

    model_type: ClassVar[str] = "transformer"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "transformer-base": dict(vocab_size=37000, d_model=512, n_heads=8, n_layers=6, d_ff=2048,
                                 max_len=512, dropout=0.1),
        "transformer-big": dict(vocab_size=37000, d_model=1024, n_heads=16, n_layers=6, d_ff=4096,
                                max_len=512, dropout=0.3),
        "transformer-small": dict(vocab_size=128, d_model=128, n_heads=4, n_layers=3, d_ff=512,
                                  max_len=128, dropout=0.1),
        "transformer-tiny": dict(vocab_size=64, d_model=32, n_heads=4, n_layers=2, d_ff=64, max_len=64),
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.positions == "rotary":
            raise ValueError("positions='rotary' is for the GPT family; the Transformer adds position vectors")
        if self.n_decoder_layers is not None and self.n_decoder_layers <= 0:
            raise ValueError(f"n_decoder_layers must be positive, got {self.n_decoder_layers}")
        if self.decoder_start_token_id is not None and not 0 <= self.decoder_start_token_id < self.vocab_size:
            raise ValueError(f"decoder_start_token_id={self.decoder_start_token_id} is outside the vocabulary")

    @property
    def decoder_layers(self) -> int:
        return self.n_decoder_layers or self.n_layers


CONFIG_CLASSES: dict[str, type[ModelConfig]] = {
    c.model_type: c for c in (GPTConfig, BERTConfig, TransformerConfig)
}


def load_config(path: str | os.PathLike) -> ModelConfig:
    """Read a glassformer ``config.json`` of any family."""
    data = read_json(path, error=CheckpointError)
    if data.get("model_type") not in CONFIG_CLASSES:
        found = data.get("model_type")
        raise CheckpointError(
            f"{path}: model_type {found!r} is not a glassformer family ({', '.join(CONFIG_CLASSES)})"
        )
    return CONFIG_CLASSES[data["model_type"]].from_dict(data)
