"""GPT: a decoder-only Transformer trained to predict the next token (Radford et al., 2018/2019).

The paper's decoder without the cross-attention: token + learned position embeddings, N pre-LN
blocks of masked self-attention and feed-forward, a final LayerNorm, and an LM head that shares
its matrix with the token embedding.

The same class holds the Llama family (Llama, Mistral, Qwen2, SmolLM): config fields swap in
rotary positions, RMSNorm, the SwiGLU feed-forward, grouped-query attention, no biases and an
untied head (``GPTConfig.from_name("llama-tiny")``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from glassformer.attention import padding_mask, scope, tap
from glassformer.io import IGNORE_INDEX
from glassformer.layers import LayerCache, TokenEmbedding, positional_encoding
from glassformer.linear import Linear, linear_cross_entropy
from glassformer.models.base import (
    PretrainedModel,
    check_attention_mask,
    check_input_ids,
    check_length,
    lm_loss,
)
from glassformer.models.config import GPTConfig
from glassformer.models.decoder import Decoder
from glassformer.models.hooks import Hooks
from glassformer.models.outputs import AttentionMap, ModelOutput


def cache_length(cache: list[LayerCache] | None) -> int:
    """How many positions a decoder cache already holds."""
    return 0 if cache is None else len(cache[0].self_attn)


class GPT(PretrainedModel):
    """``GPT(config)(input_ids, attention_mask=None, labels=None, return_attentions=False)``.

    ``labels`` are aligned with ``input_ids`` positions: ``labels[:, t]`` is the token that should
    follow ``input_ids[:, :t+1]`` (-100 = ignore). With a ``cache`` (see :meth:`new_cache`) only the
    new tokens are passed; ``attention_mask`` then covers past + new positions.

    ``last_only=True`` computes logits for the last position only ((B, 1, V)): decoding needs
    nothing else, and the vocabulary projection is the largest matmul of a small model.
    ``return_logits=False`` (with ``labels``) returns the loss and no logits: the LM head and its
    cross-entropy then run as one step that never keeps the (B, T, V) logits
    (:func:`glassformer.linear.linear_cross_entropy`; fp32 only, under autocast the usual path).
    ``hooks`` reads or replaces named activations (use :meth:`run_with_cache` / :meth:`run_with_hooks`).
    """

    config_class = GPTConfig
    tied_weights = {"lm_head.weight": "tok_emb.weight"}
    loss_without_logits = True  # return_logits=False: the LM head and its loss in one step
    # the family protocol (glassformer.models.family)
    attention_kinds = ("decoder-self",)
    readout_stack = "decoder"
    head_module = "lm_head"

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config)
        self.tok_emb = TokenEmbedding(config.vocab_size, config.d_model)
        self.pos_emb = positional_encoding(config)
        self.drop = nn.Dropout(config.dropout)
        self.decoder = Decoder(config, cross_attention=False)
        self.lm_head = Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self._init_normal(0.02)
        # scaled residual init: projections into the residual stream get std 0.02/√(2N) (GPT-2 §2.3)
        for name, p in self.named_parameters():
            if name.endswith("w_o.weight") or name.endswith("ffn.w_2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * config.n_layers))

    def new_cache(self) -> list[LayerCache]:
        """An empty KV cache for incremental decoding."""
        return self.decoder.new_cache()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        return_attentions: bool = False,
        *,
        position_ids: Tensor | None = None,
        cache: list[LayerCache] | None = None,
        last_only: bool = False,
        hooks: Hooks | None = None,
        return_logits: bool = True,
    ) -> ModelOutput:
        check_input_ids(input_ids, self.config.vocab_size)
        b, t = input_ids.shape
        past = cache_length(cache)
        check_length(past + t, self.config.max_len)
        check_attention_mask(attention_mask, b, past + t)
        if position_ids is None:
            position_ids = torch.arange(past, past + t, device=input_ids.device).unsqueeze(0)  # (1, T)
        hooks = scope(hooks, "decoder")  # every name starts with the stack: "decoder.0.attn.z"
        x = self.tok_emb(input_ids)  # (B, T, C)
        if self.pos_emb is not None:  # rotary positions enter in the attention instead
            x = x + self.pos_emb(position_ids)
        x = tap(hooks, "embed", self.drop(x))  # (B, T, C)
        self_mask = padding_mask(attention_mask) if attention_mask is not None else None  # (B, 1, 1, past+T)
        h, self_ws, _ = self.decoder(x, self_mask=self_mask, cache=cache, return_attentions=return_attentions, hooks=hooks,
                                     position_ids=position_ids)
        if last_only and labels is not None:
            raise ValueError("labels need logits at every position; last_only=True gives the last one only")
        if labels is not None and labels.shape != input_ids.shape:
            raise ValueError(f"labels has shape {tuple(labels.shape)}, expected {tuple(input_ids.shape)}")
        if not return_logits and labels is None:
            raise ValueError("return_logits=False needs labels: the loss is all that is returned")
        attentions = [AttentionMap("decoder-self", i, w) for i, w in enumerate(self_ws)] if return_attentions else None
        if not return_logits and not torch.is_autocast_enabled(h.device.type):
            loss_sum = linear_cross_entropy(h, self.lm_head.weight, self.lm_head.bias, labels, IGNORE_INDEX)
            loss = loss_sum / (labels != IGNORE_INDEX).sum().clamp_min(1)  # the mean over targets (0 if none)
            return ModelOutput(logits=None, loss=loss, attentions=attentions, last_hidden_state=h)
        logits = self.lm_head(h[:, -1:] if last_only else h)  # (B, T, V), or (B, 1, V) with last_only
        loss = lm_loss(logits, labels) if labels is not None else None
        return ModelOutput(logits=logits, loss=loss, attentions=attentions, last_hidden_state=h)
