"""The Transformer of "Attention Is All You Need": an Encoder plus a Decoder.

    memory = Encoder(PE + √d_model · Embed(src))
    logits = Generator(Decoder(PE + √d_model · Embed(tgt), memory))

The encoder runs once per source; the decoder reads its output (``memory``) through
cross-attention at every layer, and masks its own future positions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from glassformer.attention import padding_mask, scope, tap
from glassformer.layers import LayerCache, TokenEmbedding, positional_encoding
from glassformer.linear import Linear
from glassformer.models.base import (
    PretrainedModel,
    check_attention_mask,
    check_input_ids,
    check_length,
    lm_loss,
)
from glassformer.models.config import TransformerConfig
from glassformer.models.decoder import Decoder
from glassformer.models.encoder import Encoder
from glassformer.models.gpt import cache_length
from glassformer.models.hooks import Hooks
from glassformer.models.outputs import AttentionMap, ModelOutput


class Transformer(PretrainedModel):
    """``Transformer(config)(src_ids, tgt_ids, src_mask=None, tgt_mask=None, labels=None, ...)``.

    ``tgt_ids`` are the decoder inputs (shifted right: they start with the decoder start token);
    ``labels[:, t]`` is the token the decoder should emit after reading ``tgt_ids[:, :t+1]``.
    ``src_mask``/``tgt_mask`` are (B, S)/(B, T) padding masks, 1 on real tokens.
    ``last_only=True`` computes logits for the last target position only ((B, 1, V)), as decoding
    needs; ``hooks`` reads or replaces named activations (``encoder.*`` and ``decoder.*``).
    """

    config_class = TransformerConfig
    # the family protocol (glassformer.models.family)
    attention_kinds = ("encoder-self", "decoder-self", "cross")
    main_kind = "decoder-self"
    readout_stack = "decoder"
    head_module = "generator"
    needs_target = True
    tied_weights = {"tgt_emb.weight": "src_emb.weight", "generator.weight": "src_emb.weight"}

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
        c = config
        self.src_emb = TokenEmbedding(c.vocab_size, c.d_model, scale=c.scale_embeddings)
        self.tgt_emb = self.src_emb if c.tie_embeddings else TokenEmbedding(c.vocab_size, c.d_model, scale=c.scale_embeddings)
        self.src_pos = positional_encoding(c)
        self.tgt_pos = positional_encoding(c)
        self.drop = nn.Dropout(c.dropout)
        self.encoder = Encoder(c)
        self.decoder = Decoder(c, n_layers=c.decoder_layers, cross_attention=True)
        self.generator = Linear(c.d_model, c.vocab_size, bias=c.output_bias)  # pre-softmax projection
        # Xavier/Glorot uniform for every matrix, as the Annotated Transformer does
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
            elif p is not None:
                nn.init.zeros_(p)
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
        if c.tie_embeddings:
            self.generator.weight = self.src_emb.weight

    def forward_inputs(
        self, input_ids: Tensor, tgt_ids: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(src_ids, tgt_ids), {"src_mask": attention_mask}``: the encoder-decoder reads two streams."""
        if tgt_ids is None:
            raise ValueError("the encoder-decoder needs tgt_ids (the decoder input, starting with the start token)")
        return (input_ids, tgt_ids), ({} if attention_mask is None else {"src_mask": attention_mask})

    @property
    def decoder_start_token_id(self) -> int | None:
        c = self.config
        return c.decoder_start_token_id if c.decoder_start_token_id is not None else c.bos_token_id

    def new_cache(self) -> list[LayerCache]:
        """An empty decoder cache: self-attention keys/values grow; cross ones are computed once."""
        return self.decoder.new_cache()

    def encode(
        self, src_ids: Tensor, src_mask: Tensor | None = None, return_attentions: bool = False,
        hooks: Hooks | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """src_ids (B, S) -> memory (B, S, C) and the encoder's self-attention weights."""
        check_input_ids(src_ids, self.config.vocab_size, "src_ids")
        b, s = src_ids.shape
        check_length(s, self.config.max_len, "src_ids")
        check_attention_mask(src_mask, b, s, "src_mask")
        positions = torch.arange(s, device=src_ids.device).unsqueeze(0)  # (1, S)
        hooks = scope(hooks, "encoder")
        x = tap(hooks, "embed", self.drop(self.src_emb(src_ids) + self.src_pos(positions)))  # (B, S, C)
        mask = padding_mask(src_mask) if src_mask is not None else None  # (B, 1, 1, S)
        return self.encoder(x, mask, return_attentions=return_attentions, hooks=hooks)

    def decode(
        self,
        tgt_ids: Tensor,
        memory: Tensor,
        src_mask: Tensor | None = None,
        tgt_mask: Tensor | None = None,
        cache: list[LayerCache] | None = None,
        return_attentions: bool = False,
        *,
        last_only: bool = False,
        hooks: Hooks | None = None,
    ) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
        """tgt_ids (B, T), memory (B, S, C) -> logits (B, T, V), hidden (B, T, C), self and cross weights.

        With a cache, pass only the new target tokens; ``tgt_mask`` then covers past + new.
        ``last_only=True``: logits (B, 1, V) for the last position only (the hidden states stay whole).
        """
        check_input_ids(tgt_ids, self.config.vocab_size, "tgt_ids")
        b, t = tgt_ids.shape
        past = cache_length(cache)
        check_length(past + t, self.config.max_len, "tgt_ids")
        check_attention_mask(tgt_mask, b, past + t, "tgt_mask")
        if memory.shape[0] != b:
            raise ValueError(f"memory has batch {memory.shape[0]}, tgt_ids has batch {b}")
        check_attention_mask(src_mask, b, memory.shape[1], "src_mask")
        positions = torch.arange(past, past + t, device=tgt_ids.device).unsqueeze(0)  # (1, T)
        hooks = scope(hooks, "decoder")
        y = tap(hooks, "embed", self.drop(self.tgt_emb(tgt_ids) + self.tgt_pos(positions)))  # (B, T, C)
        self_mask = padding_mask(tgt_mask) if tgt_mask is not None else None  # (B, 1, 1, past+T)
        memory_mask = padding_mask(src_mask) if src_mask is not None else None  # (B, 1, 1, S)
        h, self_ws, cross_ws = self.decoder(y, memory, self_mask, memory_mask, cache, return_attentions, hooks=hooks)
        return self.generator(h[:, -1:] if last_only else h), h, self_ws, cross_ws  # (B, T or 1, V), (B, T, C)

    def forward(
        self,
        src_ids: Tensor,
        tgt_ids: Tensor,
        src_mask: Tensor | None = None,
        tgt_mask: Tensor | None = None,
        labels: Tensor | None = None,
        return_attentions: bool = False,
        *,
        last_only: bool = False,
        hooks: Hooks | None = None,
    ) -> ModelOutput:
        if last_only and labels is not None:
            raise ValueError("labels need logits at every position; last_only=True gives the last one only")
        memory, enc_ws = self.encode(src_ids, src_mask, return_attentions, hooks=hooks)
        logits, h, self_ws, cross_ws = self.decode(
            tgt_ids, memory, src_mask, tgt_mask, None, return_attentions, last_only=last_only, hooks=hooks
        )
        loss = None
        if labels is not None:
            if labels.shape != tgt_ids.shape:
                raise ValueError(f"labels has shape {tuple(labels.shape)}, expected {tuple(tgt_ids.shape)}")
            loss = lm_loss(logits, labels)
        attentions = None
        if return_attentions:
            attentions = [AttentionMap("encoder-self", i, w) for i, w in enumerate(enc_ws)]
            for i, (ws, wc) in enumerate(zip(self_ws, cross_ws)):
                attentions += [AttentionMap("decoder-self", i, ws), AttentionMap("cross", i, wc)]
        return ModelOutput(
            logits=logits, loss=loss, attentions=attentions, last_hidden_state=h, encoder_last_hidden_state=memory
        )
