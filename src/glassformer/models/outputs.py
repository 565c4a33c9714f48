"""What every model returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor

AttentionKind = Literal["encoder-self", "decoder-self", "cross"]


@dataclass
class AttentionMap:
    """The softmax weights of one attention layer: (B, H, Tq, Tk)."""

    kind: AttentionKind  # which attention of the architecture produced it
    layer: int  # index of the layer within its stack
    weights: Tensor  # (B, H, Tq, Tk)


@dataclass
class ModelOutput:
    """``logits`` (but see below); ``loss`` when labels were given; ``attentions`` when asked for.

    ``attentions`` lists one :class:`AttentionMap` per attention layer, in the order the model
    ran them (encoder self, then for each decoder layer its masked self and its cross attention).
    """

    logits: Tensor | None  # None only for a headless BERT, or a GPT asked for its loss alone (return_logits=False)
    loss: Tensor | None = None
    attentions: list[AttentionMap] | None = None
    last_hidden_state: Tensor | None = None  # (B, T, C), the final hidden states
    pooler_output: Tensor | None = None  # (B, C), BERT's pooled [CLS] vector
    encoder_last_hidden_state: Tensor | None = field(default=None, repr=False)  # (B, S, C), seq2seq only

    def attention(self, kind: AttentionKind, layer: int) -> Tensor:
        """The (B, H, Tq, Tk) weights of one layer, e.g. ``out.attention("cross", 0)``."""
        if self.attentions is None:
            raise ValueError("no attentions were returned; call the model with return_attentions=True")
        for a in self.attentions:
            if a.kind == kind and a.layer == layer:
                return a.weights
        kinds = sorted({(a.kind, a.layer) for a in self.attentions})
        raise KeyError(f"no {kind} attention at layer {layer}; have {kinds}")
