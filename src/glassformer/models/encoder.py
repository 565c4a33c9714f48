"""The encoder stack: N identical EncoderLayers (§3.1, left half of Figure 1)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from glassformer.attention import scope, tap
from glassformer.layers import EncoderLayer, make_norm
from glassformer.models.config import ModelConfig

if TYPE_CHECKING:
    from glassformer.models.hooks import Hooks


class Encoder(nn.Module):
    """Maps embedded inputs (B, S, C) to contextual representations (B, S, C).

    Embeddings live in the family model (BERT, Transformer); the stack sees vectors only.
    Pre-LN stacks end with a final LayerNorm, since their last residual sum is un-normalised.
    """

    def __init__(self, config: ModelConfig, n_layers: int | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(n_layers or config.n_layers))
        self.final_norm = make_norm(config) if config.norm_first else None

    def forward(
        self, x: Tensor, mask: Tensor | None = None, return_attentions: bool = False, hooks: Hooks | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        """x (B, S, C), mask broadcastable to (B, H, S, S) -> (B, S, C), [(B, H, S, S)] per layer.

        ``hooks`` (scoped ``encoder.`` by the model) names layer i's activations ``i.site``.
        """
        attentions = []
        for i, layer in enumerate(self.layers):
            x, weights = layer(x, mask, return_weights=return_attentions, hooks=scope(hooks, str(i)))
            if return_attentions:
                attentions.append(weights)
        if self.final_norm is not None:
            x = tap(hooks, "final_norm", self.final_norm(x))
        return x, attentions
