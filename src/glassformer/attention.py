"""Scaled dot-product attention and multi-head attention ("Attention Is All You Need", §3.2).

Notation used in every shape comment of this package:

    B  batch size
    T  target length: the positions that ask (queries); for self-attention also the keys
    S  source length: the positions being looked at (keys and values) when they differ from T,
       e.g. the encoder's output in cross-attention, or past + new tokens with a KV cache
    C  d_model, the width of the residual stream
    H  n_heads
    K  n_kv_heads: key/value heads (K = H, except with grouped-query attention, where each
       group of H / K query heads shares one key/value head; K = 1 is multi-query attention)
    D  d_head = d_model / n_heads, the width of one head's queries, keys and values
    R  rotary_dim: the dims of a head that rotary positions rotate (R <= D, even)

Masks are boolean and follow PyTorch's convention: True means "may attend". They are applied
with ``masked_fill``/``where``; no large negative numbers are ever added to scores.

Named activations: every ``forward`` here takes an optional ``hooks`` object, None by default.
Each place a reader may want to see (or change) is one line ``x = tap(hooks, "site", x)``,
which returns ``x`` untouched when ``hooks`` is None: nothing is installed and nothing is kept
unless someone asks (``model.run_with_cache``, ``model.run_with_hooks``; the names and the
``Hooks`` object are in :mod:`glassformer.models.hooks`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glassformer.linear import Linear

if TYPE_CHECKING:  # the concrete Hooks lives with the models, which import this module
    from glassformer.models.hooks import Hooks

Backend = Literal["auto", "math", "fused"]


# ----------------------------------------------------------------------- named activations


def tap(hooks: Hooks | None, site: str, x: Tensor) -> Tensor:
    """The activation ``x`` at ``site``: ``x`` itself when no hooks are installed (the default),
    otherwise whatever the hooks make of it (kept in a cache, read, or replaced)."""
    return x if hooks is None else hooks(site, x)


def scope(hooks: Hooks | None, name: str) -> Hooks | None:
    """The hooks of a part (``"attn"``, ``"ffn"``, a layer index): names get ``name.`` in front."""
    return None if hooks is None else hooks.scope(name)


# --------------------------------------------------------------------------------------- masks


def causal_mask(t_q: int, t_k: int, device: torch.device | str | None = None) -> Tensor:
    """(Tq, Tk) bool mask where query i may attend key j iff j <= i + (Tk - Tq).

    The diagonal is aligned bottom-right, so when the queries are the last Tq of Tk positions
    (cached decoding: Tk = past + Tq) each new token still sees every earlier one and itself.
    """
    if t_q > t_k:
        raise ValueError(f"causal mask needs Tq <= Tk, got Tq={t_q}, Tk={t_k}")
    i = torch.arange(t_q, device=device).unsqueeze(1)  # (Tq, 1)
    j = torch.arange(t_k, device=device).unsqueeze(0)  # (1, Tk)
    return j <= i + (t_k - t_q)  # (Tq, Tk)


def padding_mask(attention_mask: Tensor) -> Tensor:
    """Key padding mask: (B, S) with 1/True for real tokens -> (B, 1, 1, S) bool."""
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must have shape (B, S), got {tuple(attention_mask.shape)}")
    return attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)


def combine_masks(*masks: Tensor | None) -> Tensor | None:
    """Logical AND of broadcastable boolean masks; ``None`` entries mean "no restriction"."""
    out: Tensor | None = None
    for m in masks:
        if m is None:
            continue
        out = m if out is None else out & m
    return out


def _check_mask(mask: Tensor, q: Tensor, k: Tensor) -> None:
    if mask.dtype != torch.bool:
        raise TypeError(f"attention mask must be a bool tensor (True = may attend), got {mask.dtype}")
    target = (*q.shape[:-2], q.shape[-2], k.shape[-2])
    try:
        shape = torch.broadcast_shapes(mask.shape, target)
    except RuntimeError:
        shape = None
    if shape != torch.Size(target):
        raise ValueError(
            f"attention mask of shape {tuple(mask.shape)} does not broadcast to (B, H, Tq, Tk) = {target}"
        )


# ---------------------------------------------------------------------------------- attention


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
    return_weights: bool = False,
    *,
    is_causal: bool = False,
    backend: Backend = "auto",
    hooks: Hooks | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Attention(Q, K, V) = softmax(QKᵀ / √d_k) V  — equation (1) of the paper.

    Args:
        q: queries (B, H, Tq, D); k: keys (B, H, Tk, D); v: values (B, H, Tk, D).
        mask: bool, broadcastable to (B, H, Tq, Tk); True = may attend.
        dropout_p: dropout on the attention weights (pass 0.0 in eval mode).
        return_weights: also return the (B, H, Tq, Tk) softmax weights.
        is_causal: add a causal mask, aligned bottom-right (see :func:`causal_mask`).
        backend: ``"math"`` runs the four explicit steps, ``"fused"`` calls
            ``torch.nn.functional.scaled_dot_product_attention``; ``"auto"`` picks math when the
            weights are requested and fused otherwise.
        hooks: named activations ``scores`` and ``pattern`` of the math path (see :func:`tap`).

    Returns:
        ``(z, weights)``: z is (B, H, Tq, D); weights is None unless requested.
        A query whose keys are all masked gets z = 0 and weights = 0 (never NaN).
    """
    t_q, t_k = q.shape[-2], k.shape[-2]
    if backend == "fused" and return_weights:
        raise ValueError("the fused backend cannot return attention weights; use backend='math'")
    if backend not in ("auto", "math", "fused"):
        raise ValueError(f"unknown attention backend {backend!r}; choose 'auto', 'math' or 'fused'")
    use_math = backend == "math" or (backend == "auto" and return_weights)

    if mask is not None:
        _check_mask(mask, q, k)
    if is_causal:
        # Tq == Tk and no other mask: the fused kernel applies the causal mask itself (fastest).
        if not use_math and mask is None and t_q == t_k:
            z = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
            return z, None
        if t_q > 1:  # a single query at the end of the sequence may see every key
            mask = combine_masks(mask, causal_mask(t_q, t_k, q.device))

    # Rows with no visible key would softmax over nothing (0/0). Let them see every key so the
    # softmax stays finite, then zero their result: zeros and finite gradients, never NaN.
    has_key = None
    if mask is not None:
        has_key = mask.any(dim=-1, keepdim=True)  # (.., Tq, 1)
        mask = mask | ~has_key

    if use_math:
        z, weights = _attention_math(q, k, v, mask, dropout_p, hooks)
    else:
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        weights = None
    if has_key is not None:
        z = z.masked_fill(~has_key, 0.0)  # (B, H, Tq, D)
        if weights is not None:
            weights = weights.masked_fill(~has_key, 0.0)
    return z, (weights if return_weights else None)


def _attention_math(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, dropout_p: float, hooks: Hooks | None = None
) -> tuple[Tensor, Tensor]:
    """The four steps, one line each, so a reader can follow the formula."""
    d_k = q.shape[-1]
    scores = q @ k.transpose(-2, -1)  # step 1: QKᵀ             (B, H, Tq, Tk)
    scores = scores / math.sqrt(d_k)  # step 2: ÷ √d_k           (B, H, Tq, Tk)
    scores = tap(hooks, "scores", scores)  # named activation: before the mask and the softmax
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    # step 3: softmax over the keys, in fp32 so bf16 inputs keep their precision
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)  # (B, H, Tq, Tk)
    weights = tap(hooks, "pattern", weights)  # named activation: the attention pattern
    attended = F.dropout(weights, p=dropout_p) if dropout_p > 0 else weights
    z = attended @ v  # step 4: weights · V         (B, H, Tq, D)
    return z, weights


# ---------------------------------------------------------------------------- the KV cache


@dataclass
class KVCache:
    """Keys and values of one attention layer, kept between decoding steps.

    Self-attention appends the new positions at each step; cross-attention computes the
    encoder's keys and values once and reuses them.
    """

    k: Tensor | None = None  # (B, K, S, D): K = n_kv_heads, so GQA shrinks the cache by H / K
    v: Tensor | None = None  # (B, K, S, D)

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add (B, K, T, D) keys/values after the cached ones; return the full (B, K, S, D) pair."""
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k = torch.cat([self.k, k], dim=-2)  # (B, H, S + T, D)
            self.v = torch.cat([self.v, v], dim=-2)
        return self.k, self.v

    def reorder(self, index: Tensor) -> None:
        """Select batch rows (beam search keeps the surviving beams)."""
        if self.k is not None:
            self.k = self.k.index_select(0, index)
            self.v = self.v.index_select(0, index)


# ------------------------------------------------------------------ rotary position embedding


def rotary_frequencies(
    rotary_dim: int,
    theta: float = 10000.0,
    scaling: str = "none",
    factor: float = 8.0,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
    original_max_len: int = 8192,
) -> Tensor:
    """The R/2 angular frequencies θ_i = theta^(-2i/R) of rotary positions (RoFormer §3.2.2).

    ``scaling="llama3"`` (Llama 3.1 and later) divides the low frequencies by ``factor``, so
    positions far beyond the original context still turn slowly; wavelengths shorter than
    ``original_max_len / high_freq_factor`` keep their frequency, and those in between blend
    the two smoothly.
    """
    # float64 on the CPU: a frequency table, not a weight, so it stays real even when the model
    # is built on the meta device (as the checkpoint loader does)
    i2 = torch.arange(0, rotary_dim, 2, dtype=torch.float64, device="cpu")  # the even indices 2i
    inv_freq = 1.0 / theta ** (i2 / rotary_dim)  # (R/2,)
    if scaling == "llama3":
        wavelen = 2 * math.pi / inv_freq  # (R/2,) positions per full turn
        slow = inv_freq / factor
        # 0 at wavelength original/low (fully slowed), 1 at original/high (kept)
        smooth = ((original_max_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)).clamp(0, 1)
        inv_freq = (1 - smooth) * slow + smooth * inv_freq  # (R/2,)
    elif scaling != "none":
        raise ValueError(f"unknown rope scaling {scaling!r}; choose 'none' or 'llama3'")
    return inv_freq.float()


class RotaryEmbedding(nn.Module):
    """Rotary positions (Su et al., 2021): rotate each pair of dims (j, j + R/2) of q and k by
    the angle position × θ_j, so that q_m · k_n depends on the positions only through m - n.

    Pairs are the two halves of the first R dims (the "rotate half" layout of GPT-NeoX and
    Llama's Hugging Face checkpoints); dims R..D of each head pass unrotated (partial rotary).
    """

    def __init__(self, d_head: int, rotary_dim: int, theta: float = 10000.0, **scaling) -> None:
        super().__init__()
        if not 0 < rotary_dim <= d_head or rotary_dim % 2:
            raise ValueError(f"rotary_dim must be even and in (0, d_head={d_head}], got {rotary_dim}")
        self.d_head, self.rotary_dim = d_head, rotary_dim
        self.register_buffer("inv_freq", rotary_frequencies(rotary_dim, theta, **scaling), persistent=False)

    def angles(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """position_ids (B or 1, T) -> cos, sin (B or 1, 1, T, R), in fp32."""
        angle = position_ids.float().unsqueeze(-1) * self.inv_freq.to(position_ids.device)  # (B, T, R/2)
        angle = torch.cat([angle, angle], dim=-1).unsqueeze(1)  # (B, 1, T, R): pair j with j + R/2
        return angle.cos(), angle.sin()

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """x (B, H, T, D) -> x with its first R dims rotated: x·cos + rotate_half(x)·sin."""
        r = self.rotary_dim
        x_rot, x_pass = x[..., :r], x[..., r:]  # (B, H, T, R), (B, H, T, D - R)
        x1, x2 = x_rot.float().chunk(2, dim=-1)  # the two halves, (B, H, T, R/2) each
        rotated = torch.cat([-x2, x1], dim=-1)  # rotate_half: (x1, x2) -> (-x2, x1)
        out = (x_rot.float() * cos + rotated * sin).to(x.dtype)  # (B, H, T, R)
        return torch.cat([out, x_pass], dim=-1) if x_pass.shape[-1] else out  # (B, H, T, D)


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, K, S, D) -> (B, K·n_rep, S, D): each key/value head serves n_rep query heads in a row
    (query head h reads key/value head h // n_rep)."""
    if n_rep == 1:
        return x
    b, k, s, d = x.shape
    return x[:, :, None].expand(b, k, n_rep, s, d).reshape(b, k * n_rep, s, d)  # (B, H, S, D)


# ----------------------------------------------------------------------- multi-head attention


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1..head_H) W^O, head_i = Attention(Q W^Q_i, K W^K_i, V W^V_i).

    Self-attention projects one input into queries, keys and values with a single stacked
    matrix (W^Q, W^K, W^V side by side: one matmul instead of three). Cross-attention
    (``cross=True``) projects queries from the decoder and keys/values from the encoder output.

    After 2017: ``n_kv_heads`` < ``n_heads`` gives grouped-query attention (fewer key/value heads,
    each shared by a group of query heads; the KV cache shrinks with them), ``rotary`` rotates
    queries and keys by their positions before the scores, and ``qkv_bias`` sets the biases of
    W^Q, W^K, W^V apart from W^O's (Qwen2).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        cross: bool = False,
        *,
        n_kv_heads: int | None = None,
        rotary: RotaryEmbedding | None = None,
        qkv_bias: bool | None = None,
    ) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_kv_heads <= 0 or n_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads ({n_kv_heads}) must divide n_heads ({n_heads})")
        if rotary is not None and cross:
            raise ValueError("rotary positions are for self-attention: cross-attention keys have other positions")
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.n_kv_heads, self.d_kv = n_kv_heads, n_kv_heads * (d_model // n_heads)
        self.dropout, self.cross, self.rotary = dropout, cross, rotary
        qkv_bias = bias if qkv_bias is None else qkv_bias
        if cross:
            self.w_q = Linear(d_model, d_model, bias=qkv_bias)  # W^Q for all heads
            self.w_kv = Linear(d_model, 2 * self.d_kv, bias=qkv_bias)  # W^K, W^V stacked
        else:
            self.w_qkv = Linear(d_model, d_model + 2 * self.d_kv, bias=qkv_bias)  # W^Q, W^K, W^V stacked
        self.w_o = Linear(d_model, d_model, bias=bias)  # W^O

    def _split_heads(self, x: Tensor, n_heads: int | None = None) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, n_heads or self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, D)

    def project(self, x: Tensor, memory: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Queries from x (B, T, C); keys and values from memory (cross) or x (self).

        Returns q (B, H, T, D), k and v (B, K, S, D), before any rotation (K = n_kv_heads).
        """
        if self.cross:
            if memory is None:
                raise ValueError("cross-attention needs the encoder output (memory)")
            q = self.w_q(x)  # (B, T, C)
            k, v = self.w_kv(memory).split(self.d_kv, dim=-1)  # 2 × (B, S, K·D)
        else:
            q, k, v = self.w_qkv(x).split([self.d_model, self.d_kv, self.d_kv], dim=-1)  # (B, T, C), 2 × (B, T, K·D)
        return self._split_heads(q), self._split_heads(k, self.n_kv_heads), self._split_heads(v, self.n_kv_heads)

    def rotary_angles(self, x: Tensor, position_ids: Tensor | None, past: int = 0) -> tuple[Tensor, Tensor]:
        """cos, sin (B or 1, 1, T, R) for x's positions: ``position_ids`` (B or 1, T), or past..past+T-1."""
        if position_ids is None:
            position_ids = torch.arange(past, past + x.shape[1], device=x.device).unsqueeze(0)  # (1, T)
        return self.rotary.angles(position_ids)

    def head_inputs(
        self, x: Tensor, memory: Tensor | None = None, position_ids: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """What each query head attends with, without a cache: q (B, H, T, D) and k, v (B, H, S, D),
        rotated (rotary) and with each key/value head repeated for its group of query heads (GQA).
        Equal to ``project`` for the 2017 attention."""
        q, k, v = self.project(x, memory)
        if self.rotary is not None:
            cos, sin = self.rotary_angles(x, position_ids)
            q, k = self.rotary(q, cos, sin), self.rotary(k, cos, sin)
        n_rep = self.n_heads // self.n_kv_heads
        return q, repeat_kv(k, n_rep), repeat_kv(v, n_rep)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        mask: Tensor | None = None,
        *,
        is_causal: bool = False,
        cache: KVCache | None = None,
        return_weights: bool = False,
        hooks: Hooks | None = None,
        position_ids: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """x (B, T, C) -> (out (B, T, C), weights (B, H, T, S) or None).

        With a ``cache``, self-attention appends this step's keys/values to it and attends over
        all of them; cross-attention computes the memory's keys/values on the first call only.
        ``position_ids`` (B or 1, T) place the new tokens for rotary positions (default: right
        after what the cache holds). ``hooks`` sees ``q`` (B, H, T, D), ``k``, ``v`` (B, K, T, D)
        (this call's new positions), with rotary also ``q_rot`` and ``k_rot`` (after the
        rotation), ``scores``, ``pattern``, ``z`` (B, H, T, D) and ``out``; asking for scores or
        pattern selects the explicit path.
        """
        b, t, c = x.shape
        if self.cross and cache is not None and cache.k is not None:
            q = tap(hooks, "q", self._split_heads(self.w_q(x)))  # (B, H, T, D); K, V come from the cache
            k, v = cache.k, cache.v
        else:
            q, k, v = self.project(x, memory)
            q, k, v = tap(hooks, "q", q), tap(hooks, "k", k), tap(hooks, "v", v)
            if self.rotary is not None:  # rotate by position: q_m · k_n then depends on m - n only
                cos, sin = self.rotary_angles(x, position_ids, len(cache) if cache is not None else 0)
                q = tap(hooks, "q_rot", self.rotary(q, cos, sin))  # (B, H, T, D)
                k = tap(hooks, "k_rot", self.rotary(k, cos, sin))  # (B, K, T, D); the cache keeps them rotated
            if cache is not None:
                if self.cross:
                    cache.k, cache.v = k, v
                else:
                    k, v = cache.append(k, v)  # (B, K, S, D) with S = past + T
        n_rep = self.n_heads // self.n_kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, H, S, D): each group shares its key/value head
        explicit = hooks is not None and (hooks.wants("scores") or hooks.wants("pattern"))
        z, weights = scaled_dot_product_attention(
            q,
            k,
            v,
            mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            return_weights=return_weights,
            is_causal=is_causal,
            backend="math" if explicit else "auto",
            hooks=hooks,
        )  # z: (B, H, T, D)
        z = tap(hooks, "z", z)  # each head's output, before W^O
        z = z.transpose(1, 2).reshape(b, t, c)  # Concat(head_1..head_H)  (B, T, C)
        return tap(hooks, "out", self.w_o(z)), weights  # (B, T, C)
