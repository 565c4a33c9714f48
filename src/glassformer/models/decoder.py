"""The decoder stack: N identical DecoderLayers (§3.1, right half of Figure 1)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from glassformer.attention import scope, tap
from glassformer.layers import DecoderLayer, LayerCache, make_norm
from glassformer.models.config import ModelConfig

if TYPE_CHECKING:
    from glassformer.models.hooks import Hooks


class Decoder(nn.Module):
    """Masked self-attention (+ cross-attention to ``memory``) + feed-forward, N times.

    ``cross_attention=False`` gives the decoder-only stack of GPT.
    """

    def __init__(self, config: ModelConfig, n_layers: int | None = None, cross_attention: bool = True) -> None:
        super().__init__()
        n = n_layers or config.n_layers
        self.layers = nn.ModuleList(DecoderLayer(config, cross_attention) for _ in range(n))
        self.final_norm = make_norm(config) if config.norm_first else None

    def new_cache(self) -> list[LayerCache]:
        """An empty KV cache, one entry per layer, for incremental decoding."""
        return [LayerCache() for _ in self.layers]

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        self_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        cache: list[LayerCache] | None = None,
        return_attentions: bool = False,
        hooks: Hooks | None = None,
        position_ids: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """x (B, T, C) -> (B, T, C), self weights [(B, H, T, past+T)], cross weights [(B, H, T, S)].

        ``hooks`` (scoped ``decoder.`` by the model) names layer i's activations ``i.site``.
        ``position_ids`` (B or 1, T) reach the self-attentions (rotary positions).
        """
        if cache is not None and len(cache) != len(self.layers):
            raise ValueError(f"cache has {len(cache)} layers, the decoder has {len(self.layers)}")
        self_ws, cross_ws = [], []
        for i, layer in enumerate(self.layers):
            x, w_self, w_cross = layer(
                x, memory, self_mask, memory_mask,
                cache=cache[i] if cache is not None else None,
                return_weights=return_attentions,
                hooks=scope(hooks, str(i)),
                position_ids=position_ids,
            )
            if return_attentions:
                self_ws.append(w_self)
                if w_cross is not None:
                    cross_ws.append(w_cross)
        if self.final_norm is not None:
            x = tap(hooks, "final_norm", self.final_norm(x))
        return x, self_ws, cross_ws
