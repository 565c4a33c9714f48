"""The boxes of the paper's Figure 1: embeddings, positional encodings, the position-wise
feed-forward network, and the encoder and decoder layers that stack them around attention.

Residual + LayerNorm come in two orders (``norm_first``):
    post-LN (the paper, BERT, Marian):  x = LayerNorm(x + Dropout(Sublayer(x)))
    pre-LN  (GPT-2 and most LLMs):      x = x + Dropout(Sublayer(LayerNorm(x)))

After 2017 (config fields, the same classes): ``norm="rmsnorm"`` swaps LayerNorm for RMSNorm,
``ffn="swiglu"`` the feed-forward network for its gated form, ``positions="rotary"`` moves the
positions from the embeddings into the attention's queries and keys (:class:`RotaryEmbedding`),
and ``n_kv_heads`` gives grouped-query attention.

Named activations of a layer (``hooks``, None by default; see :func:`glassformer.attention.tap`):
``resid_pre``, ``attn.*``, ``resid_mid``, ``cross.*``, ``ffn.pre``, ``ffn.post``, ``ffn.out``,
``resid_post``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glassformer.attention import KVCache, MultiHeadAttention, RotaryEmbedding, scope, tap
from glassformer.linear import Linear

if TYPE_CHECKING:  # configs and hooks live in models/, which imports this module
    from glassformer.models.config import ModelConfig
    from glassformer.models.hooks import Hooks


# ----------------------------------------------------------------------------- embeddings


class TokenEmbedding(nn.Module):
    """Token ids -> vectors. The paper multiplies by √d_model (§3.4); GPT and BERT do not."""

    def __init__(self, vocab_size: int, d_model: int, scale: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, d_model))
        self.scale = math.sqrt(d_model) if scale else 1.0

    def forward(self, ids: Tensor) -> Tensor:
        x = F.embedding(ids, self.weight)  # (B, T, C)
        return x * self.scale if self.scale != 1.0 else x


def sinusoidal_table(max_len: int, d_model: int, layout: str = "interleaved") -> Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(...) — §3.5.

    ``layout="interleaved"`` puts sin and cos in alternate columns as the paper writes it;
    ``"halves"`` puts all sines first, then all cosines (Marian's checkpoints).
    """
    pos = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)  # (max_len, 1)
    i2 = torch.arange(0, d_model, 2, dtype=torch.float64)  # the even indices 2i
    angle = pos / torch.pow(10000.0, i2 / d_model)  # (max_len, ceil(C / 2))
    table = torch.zeros(max_len, d_model, dtype=torch.float64)
    n_cos = d_model // 2
    if layout == "interleaved":
        table[:, 0::2] = torch.sin(angle)
        table[:, 1::2] = torch.cos(angle[:, :n_cos])
    elif layout == "halves":
        n_sin = d_model - n_cos
        table[:, :n_sin] = torch.sin(angle)
        table[:, n_sin:] = torch.cos(angle[:, :n_cos])
    else:
        raise ValueError(f"unknown sinusoidal layout {layout!r}")
    return table.float()  # (max_len, C)


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed positional encodings; a buffer, not a parameter, so nothing is learned or saved."""

    def __init__(self, max_len: int, d_model: int, layout: str = "interleaved") -> None:
        super().__init__()
        self.register_buffer("table", sinusoidal_table(max_len, d_model, layout), persistent=False)

    def forward(self, position_ids: Tensor) -> Tensor:
        return self.table[position_ids]  # (B, T, C)


class LearnedPositionalEmbedding(nn.Module):
    """One trained vector per position (GPT-2, BERT)."""

    def __init__(self, max_len: int, d_model: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(max_len, d_model))

    def forward(self, position_ids: Tensor) -> Tensor:
        return F.embedding(position_ids, self.weight)  # (B, T, C)


def positional_encoding(config: ModelConfig) -> nn.Module | None:
    """The position vectors added to the embeddings; None for rotary positions, which enter
    inside each attention instead (:func:`rotary_embedding`)."""
    if config.positions == "rotary":
        return None
    if config.positions == "sinusoidal":
        return SinusoidalPositionalEncoding(config.max_len, config.d_model, config.sinusoidal_layout)
    return LearnedPositionalEmbedding(config.max_len, config.d_model)


def rotary_embedding(config: ModelConfig) -> RotaryEmbedding | None:
    """The rotation of queries and keys a config asks for (None unless ``positions="rotary"``)."""
    if config.positions != "rotary":
        return None
    scaling = {}
    if config.rope_scaling == "llama3":
        scaling = dict(scaling="llama3", factor=config.rope_factor, low_freq_factor=config.rope_low_freq_factor,
                       high_freq_factor=config.rope_high_freq_factor, original_max_len=config.rope_original_max_len)
    return RotaryEmbedding(config.d_head, config.rotary_dim, config.rope_theta, **scaling)


def self_attention(config: ModelConfig) -> MultiHeadAttention:
    """The self-attention of a layer, as the config shapes it (GQA, rotary, biases)."""
    return MultiHeadAttention(config.d_model, config.n_heads, config.dropout, config.bias, n_kv_heads=config.n_kv_heads,
                              rotary=rotary_embedding(config), qkv_bias=config.qkv_bias)


# ---------------------------------------------------------------------------------- norms


class RMSNorm(nn.Module):
    """RMSNorm(x) = x / sqrt(mean(x²) + ε) ⊙ g (Zhang & Sennrich, 2019): LayerNorm without the
    mean subtraction and without the bias. Computed in fp32, as Llama does."""

    def __init__(self, d_model: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d_model))  # g
        self.register_parameter("bias", None)  # none, as nn.LayerNorm(bias=False) reports it
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        rms = torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)  # (B, T, 1)
        return (x32 / rms).to(x.dtype) * self.weight  # (B, T, C)


def frozen_norm(norm: nn.Module, x: Tensor) -> Callable[[Tensor], Tensor]:
    """``norm`` with its scale frozen at the input ``x`` (..., C): a linear map of any part of x.

    LayerNorm: p -> (p - mean(p)) / σ(x) ⊙ γ; RMSNorm: p -> p / rms(x) ⊙ g. The parts of x
    (heads, feed-forward outputs, embeddings) map to terms that add up to ``norm(x)`` minus
    LayerNorm's β: the direct-logit attribution of a pre-LN stack, for either norm.
    """
    x = x.float()
    if isinstance(norm, RMSNorm):
        scale = torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps)  # (..., 1)
        return lambda p: p.float() / scale * norm.weight.float()
    if isinstance(norm, nn.LayerNorm):
        scale = torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + norm.eps)  # (..., 1)
        gain = norm.weight.float() if norm.weight is not None else 1.0
        return lambda p: (p.float() - p.float().mean(-1, keepdim=True)) / scale * gain
    raise TypeError(f"frozen_norm knows LayerNorm and RMSNorm, not {type(norm).__name__}")


def make_norm(config: ModelConfig) -> nn.Module:
    """The norm a config asks for: LayerNorm (with a bias when ``bias``) or RMSNorm."""
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, config.layer_norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.layer_norm_eps, bias=config.bias)


# --------------------------------------------------------------------------- feed-forward

ACTIVATIONS = {
    "relu": F.relu,  # the paper
    "gelu": F.gelu,  # BERT (exact, erf)
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2
    "silu": F.silu,  # Marian ("swish")
}


class PositionwiseFeedForward(nn.Module):
    """FFN(x) = act(x W_1 + b_1) W_2 + b_2, applied to every position alike — §3.3."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "relu", bias: bool = True) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        self.w_1 = Linear(d_model, d_ff, bias=bias)
        self.w_2 = Linear(d_ff, d_model, bias=bias)
        self.activation = activation

    def forward(self, x: Tensor, hooks: Hooks | None = None) -> Tensor:
        h = tap(hooks, "pre", self.w_1(x))  # (B, T, d_ff) before the activation
        h = tap(hooks, "post", ACTIVATIONS[self.activation](h))  # (B, T, d_ff)
        return tap(hooks, "out", self.w_2(h))  # (B, T, C)


class GatedFeedForward(nn.Module):
    """SwiGLU (Shazeer, 2020): FFN(x) = (silu(x W_gate) ⊙ x W_up) W_2, no biases by default.

    The gate's SiLU decides, per hidden unit, how much of the linear "up" projection passes.
    Named activations: ``pre`` = x W_gate (before the SiLU), ``post`` = the product that W_2
    reads (as in the plain network, the input of W_2), ``out``.
    """

    def __init__(self, d_model: int, d_ff: int, bias: bool = False) -> None:
        super().__init__()
        self.w_gate = Linear(d_model, d_ff, bias=bias)
        self.w_up = Linear(d_model, d_ff, bias=bias)
        self.w_2 = Linear(d_ff, d_model, bias=bias)

    def forward(self, x: Tensor, hooks: Hooks | None = None) -> Tensor:
        gate = tap(hooks, "pre", self.w_gate(x))  # (B, T, d_ff) before the SiLU
        h = tap(hooks, "post", F.silu(gate) * self.w_up(x))  # (B, T, d_ff)
        return tap(hooks, "out", self.w_2(h))  # (B, T, C)


# --------------------------------------------------------------------------------- layers


class _Sublayer(nn.Module):
    """Residual connection around one sublayer, with LayerNorm before (pre-LN) or after (post-LN)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm = make_norm(config)
        self.dropout = nn.Dropout(config.dropout)
        self.norm_first = config.norm_first

    def normed_input(self, x: Tensor) -> Tensor:
        return self.norm(x) if self.norm_first else x

    def add(self, x: Tensor, sublayer_out: Tensor) -> Tensor:
        x = x + self.dropout(sublayer_out)  # (B, T, C)
        return x if self.norm_first else self.norm(x)


def _feed_forward(config: ModelConfig) -> tuple[nn.Module | None, _Sublayer | None]:
    """The feed-forward sublayer and its residual wrapper; none at all when ``d_ff`` is 0
    (attention-only layers, as in the induction-head papers)."""
    if config.d_ff == 0:
        return None, None
    if config.gated_ffn:
        return GatedFeedForward(config.d_model, config.d_ff, config.bias), _Sublayer(config)
    return PositionwiseFeedForward(config.d_model, config.d_ff, config.activation, config.bias), _Sublayer(config)


class EncoderLayer(nn.Module):
    """Self-attention over the whole sequence, then the feed-forward network (§3.1)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.self_attn = self_attention(config)
        self.attn_sub = _Sublayer(config)
        self.ffn, self.ffn_sub = _feed_forward(config)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, return_weights: bool = False, hooks: Hooks | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """x (B, S, C), mask broadcastable to (B, H, S, S) -> (B, S, C), weights (B, H, S, S)."""
        x = tap(hooks, "resid_pre", x)
        a, weights = self.self_attn(
            self.attn_sub.normed_input(x), mask=mask, return_weights=return_weights, hooks=scope(hooks, "attn")
        )
        x = tap(hooks, "resid_mid", self.attn_sub.add(x, a))
        if self.ffn is not None:  # d_ff = 0: an attention-only layer
            x = self.ffn_sub.add(x, self.ffn(self.ffn_sub.normed_input(x), hooks=scope(hooks, "ffn")))
        return tap(hooks, "resid_post", x), weights


@dataclass
class LayerCache:
    """What one decoder layer keeps between decoding steps."""

    self_attn: KVCache = field(default_factory=KVCache)
    cross_attn: KVCache = field(default_factory=KVCache)


class DecoderLayer(nn.Module):
    """Masked self-attention -> encoder-decoder (cross) attention -> feed-forward (§3.1).

    With ``cross_attention=False`` this is the block of a decoder-only model such as GPT.
    """

    def __init__(self, config: ModelConfig, cross_attention: bool = True) -> None:
        super().__init__()
        d, h = config.d_model, config.n_heads
        self.self_attn = self_attention(config)
        self.self_sub = _Sublayer(config)
        self.cross_attn = (
            MultiHeadAttention(d, h, config.dropout, config.bias, cross=True, n_kv_heads=config.n_kv_heads,
                               qkv_bias=config.qkv_bias)
            if cross_attention else None
        )
        self.cross_sub = _Sublayer(config) if cross_attention else None
        self.ffn, self.ffn_sub = _feed_forward(config)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        self_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        cache: LayerCache | None = None,
        return_weights: bool = False,
        hooks: Hooks | None = None,
        position_ids: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """x (B, T, C), memory (B, S, C) -> (B, T, C), self weights (B, H, T, past+T), cross (B, H, T, S).

        The self-attention is always causal; ``self_mask`` can add key padding on top.
        ``position_ids`` (B or 1, T) place the tokens for rotary positions.
        """
        x = tap(hooks, "resid_pre", x)
        a, w_self = self.self_attn(
            self.self_sub.normed_input(x),
            mask=self_mask,
            is_causal=True,
            cache=cache.self_attn if cache is not None else None,
            return_weights=return_weights,
            hooks=scope(hooks, "attn"),
            position_ids=position_ids,
        )
        x = tap(hooks, "resid_mid", self.self_sub.add(x, a))
        w_cross = None
        if self.cross_attn is not None:
            a, w_cross = self.cross_attn(
                self.cross_sub.normed_input(x),
                memory,
                mask=memory_mask,
                cache=cache.cross_attn if cache is not None else None,
                return_weights=return_weights,
                hooks=scope(hooks, "cross"),
            )
            x = self.cross_sub.add(x, a)
        if self.ffn is not None:  # d_ff = 0: an attention-only layer
            x = self.ffn_sub.add(x, self.ffn(self.ffn_sub.normed_input(x), hooks=scope(hooks, "ffn")))
        return tap(hooks, "resid_post", x), w_self, w_cross
