"""BERT: a bidirectional encoder-only Transformer (Devlin et al., 2019).

Token + position + token-type embeddings, LayerNorm, the paper's post-LN encoder stack, then
optional heads: the pooler (tanh dense over [CLS]), the masked-LM head (tied to the token
embedding) and a sequence-classification head on the pooled vector.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from glassformer.attention import padding_mask, scope, tap
from glassformer.layers import ACTIVATIONS, TokenEmbedding, positional_encoding
from glassformer.linear import Linear
from glassformer.models.base import (
    PretrainedModel,
    check_attention_mask,
    check_input_ids,
    check_length,
    lm_loss,
)
from glassformer.models.config import BERTConfig
from glassformer.models.encoder import Encoder
from glassformer.models.hooks import Hooks
from glassformer.models.outputs import AttentionMap, ModelOutput

Head = Literal["auto", "mlm", "classifier", "none"]


class MaskedLMHead(nn.Module):
    """dense -> activation -> LayerNorm -> vocabulary projection (tied) + bias."""

    def __init__(self, config: BERTConfig) -> None:
        super().__init__()
        self.dense = Linear(config.d_model, config.d_model)
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.decoder = Linear(config.d_model, config.vocab_size)
        self.activation = config.activation

    def forward(self, h: Tensor) -> Tensor:
        return self.decoder(self.norm(ACTIVATIONS[self.activation](self.dense(h))))  # (B, T, V)


class BERT(PretrainedModel):
    """``BERT(config)(input_ids, attention_mask=None, token_type_ids=None, labels=None, ...)``.

    ``logits`` come from the classification head when ``num_labels > 0`` (shape (B, num_labels),
    ``labels`` (B,)), otherwise from the masked-LM head ((B, T, V), ``labels`` (B, T) with -100
    on unmasked positions). ``head=`` picks another head explicitly; ``"none"`` gives no logits.
    ``hooks`` reads or replaces named activations (use :meth:`run_with_cache` / :meth:`run_with_hooks`).
    """

    config_class = BERTConfig
    # the family protocol (glassformer.models.family): the MLM head predicts the token at each position
    attention_kinds = ("encoder-self",)
    readout_stack = "encoder"
    head_module = "mlm_head"
    next_token = False
    tied_weights = {"mlm_head.decoder.weight": "tok_emb.weight"}

    def __init__(self, config: BERTConfig) -> None:
        super().__init__(config)
        self.tok_emb = TokenEmbedding(config.vocab_size, config.d_model)
        self.pos_emb = positional_encoding(config)
        self.type_emb = nn.Embedding(config.type_vocab_size, config.d_model)
        self.emb_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.drop = nn.Dropout(config.dropout)
        self.encoder = Encoder(config)
        self.pooler = Linear(config.d_model, config.d_model) if config.pooler else None
        self.mlm_head = MaskedLMHead(config) if config.mlm_head else None
        self.classifier = Linear(config.d_model, config.num_labels) if config.num_labels > 0 else None
        self._init_normal(0.02)
        nn.init.normal_(self.type_emb.weight, std=0.02)
        if self.mlm_head is not None:
            self.mlm_head.decoder.weight = self.tok_emb.weight

    def embeddings(self, input_ids: Tensor, token_type_ids: Tensor | None, position_ids: Tensor | None) -> Tensor:
        """Token + position + token-type embeddings, LayerNorm, dropout: (B, T) -> (B, T, C)."""
        b, t = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(t, device=input_ids.device).unsqueeze(0)  # (1, T)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        elif token_type_ids.shape != input_ids.shape:
            raise ValueError(f"token_type_ids has shape {tuple(token_type_ids.shape)}, expected {tuple(input_ids.shape)}")
        else:
            check_input_ids(token_type_ids, self.config.type_vocab_size, "token_type_ids")
        x = self.tok_emb(input_ids) + self.pos_emb(position_ids) + self.type_emb(token_type_ids)  # (B, T, C)
        return self.drop(self.emb_norm(x))

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        labels: Tensor | None = None,
        return_attentions: bool = False,
        *,
        position_ids: Tensor | None = None,
        head: Head = "auto",
        hooks: Hooks | None = None,
    ) -> ModelOutput:
        check_input_ids(input_ids, self.config.vocab_size)
        b, t = input_ids.shape
        check_length(t, self.config.max_len)
        check_attention_mask(attention_mask, b, t)
        hooks = scope(hooks, "encoder")  # every name starts with the stack: "encoder.0.attn.z"
        x = tap(hooks, "embed", self.embeddings(input_ids, token_type_ids, position_ids))
        mask = padding_mask(attention_mask) if attention_mask is not None else None  # (B, 1, 1, T)
        h, ws = self.encoder(x, mask, return_attentions=return_attentions, hooks=hooks)  # (B, T, C)
        pooled = torch.tanh(self.pooler(h[:, 0])) if self.pooler is not None else None  # (B, C)

        if head == "auto":
            head = "classifier" if self.classifier is not None else "mlm" if self.mlm_head is not None else "none"
        logits, loss = None, None
        if head == "classifier":
            if self.classifier is None:
                raise ValueError("this BERT has no classification head (num_labels=0)")
            logits = self.classifier(self.drop(pooled))  # (B, num_labels)
            if labels is not None:
                if labels.shape != (b,):
                    raise ValueError(f"classification labels must have shape (B,) = ({b},), got {tuple(labels.shape)}")
                loss = nn.functional.cross_entropy(logits.float(), labels)
        elif head == "mlm":
            if self.mlm_head is None:
                raise ValueError("this BERT has no masked-LM head (mlm_head=False)")
            logits = self.mlm_head(h)  # (B, T, V)
            if labels is not None:
                if labels.shape != input_ids.shape:
                    raise ValueError(f"MLM labels must have shape {tuple(input_ids.shape)}, got {tuple(labels.shape)}")
                loss = lm_loss(logits, labels)
        elif head != "none":
            raise ValueError(f"unknown head {head!r}; choose 'auto', 'mlm', 'classifier' or 'none'")
        attentions = [AttentionMap("encoder-self", i, w) for i, w in enumerate(ws)] if return_attentions else None
        return ModelOutput(logits=logits, loss=loss, attentions=attentions, last_hidden_state=h, pooler_output=pooled)

    # ------------------------------------------------------------------ inference helpers

    @torch.no_grad()
    def fill_mask(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, mask_token_id: int | None = None, top_k: int = 5
    ) -> list[list[tuple[list[int], list[float]]]]:
        """For each sequence, for each masked position (in order): the top-k ids and probabilities."""
        mask_id = mask_token_id if mask_token_id is not None else self.config.mask_token_id
        if mask_id is None:
            raise ValueError("no mask token id: set BERTConfig.mask_token_id or pass mask_token_id")
        logits = self(input_ids, attention_mask, head="mlm").logits  # (B, T, V)
        k = max(1, min(top_k, self.config.vocab_size))
        results = []
        for b in range(input_ids.shape[0]):
            positions = (input_ids[b] == mask_id).nonzero().flatten().tolist()
            per_seq = []
            for t in positions:
                probs, ids = logits[b, t].float().softmax(-1).topk(k)  # (k,)
                per_seq.append((ids.tolist(), probs.tolist()))
            results.append(per_seq)
        return results

    @torch.no_grad()
    def classify(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> tuple[Tensor, list[str]]:
        """Class probabilities (B, num_labels) and the label names (``LABEL_i`` when unnamed)."""
        logits = self(input_ids, attention_mask, token_type_ids, head="classifier").logits  # (B, L)
        names = self.config.label_names or [f"LABEL_{i}" for i in range(self.config.num_labels)]
        return logits.float().softmax(-1), names

    @torch.no_grad()
    def embed(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Mean-pooled over real tokens, L2-normalised sentence vectors: (B, C)."""
        h = self(input_ids, attention_mask, head="none").last_hidden_state  # (B, T, C)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        w = attention_mask.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
        pooled = (h * w).sum(1) / w.sum(1).clamp(min=1.0)  # (B, C)
        return nn.functional.normalize(pooled.float(), dim=-1)
