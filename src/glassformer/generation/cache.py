"""A KV cache that writes into preallocated buffers instead of concatenating.

:class:`glassformer.attention.KVCache` grows with ``torch.cat`` at every step, which copies the
whole cache each time (quadratic in the generated length). For decoding we know how long the
sequence can get, so we reserve the room once and write each step's keys and values in place.
The attention layers see the same interface: ``append`` returns the (B, H, S, D) keys and
values so far (views of the buffers), ``len()`` is S, ``reorder`` selects batch rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from glassformer.attention import KVCache
from glassformer.layers import LayerCache


@dataclass
class PreallocatedKVCache(KVCache):
    """Self-attention keys/values in buffers of ``capacity`` positions (grown if ever exceeded)."""

    capacity: int = 0
    k_buf: Tensor | None = field(default=None, repr=False)  # (B, H, capacity, D)
    v_buf: Tensor | None = field(default=None, repr=False)  # (B, H, capacity, D)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write (B, H, T, D) keys/values after the cached ones; return views of all S = past + T."""
        past, t = len(self), k.shape[-2]
        if self.k_buf is None or past + t > self.k_buf.shape[-2]:
            self._grow(k, v, past + t)
        self.k_buf[:, :, past : past + t] = k  # (B, H, T, D) written in place
        self.v_buf[:, :, past : past + t] = v
        self.k = self.k_buf[:, :, : past + t]  # (B, H, S, D) view, no copy
        self.v = self.v_buf[:, :, : past + t]
        return self.k, self.v

    def _grow(self, k: Tensor, v: Tensor, needed: int) -> None:
        b, h, _, d = k.shape
        size = max(needed, self.capacity, 2 * (0 if self.k_buf is None else self.k_buf.shape[-2]))
        k_buf = k.new_empty(b, h, size, d)  # (B, H, capacity, D)
        v_buf = v.new_empty(b, h, size, d)
        past = len(self)
        if past:
            k_buf[:, :, :past] = self.k
            v_buf[:, :, :past] = self.v
        self.k_buf, self.v_buf = k_buf, v_buf

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (in that order): beams that survive, sequences still running."""
        if self.k_buf is None:
            return
        past = len(self)
        self.k_buf = self.k_buf.index_select(0, index)
        self.v_buf = self.v_buf.index_select(0, index)
        self.k = self.k_buf[:, :, :past]
        self.v = self.v_buf[:, :, :past]


def new_decoding_cache(n_layers: int, capacity: int) -> list[LayerCache]:
    """One :class:`LayerCache` per layer whose self-attention part is preallocated."""
    return [LayerCache(self_attn=PreallocatedKVCache(capacity=capacity)) for _ in range(n_layers)]


def select_rows(cache: list[LayerCache], index: Tensor, cross: bool = True) -> None:
    """Keep batch rows ``index`` of every layer's cache (self-attention, and cross when asked)."""
    for layer in cache:
        layer.self_attn.reorder(index)
        if cross:
            layer.cross_attn.reorder(index)
