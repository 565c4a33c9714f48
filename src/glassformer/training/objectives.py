"""The loss of each training objective, as a sum over target tokens.

All four objectives are cross-entropy between the model's logits and ``labels`` (-100 = not a
target): next tokens for GPT, the masked tokens for BERT, the shifted target for seq2seq, the
class for classification. The trainer needs *sums* and *counts*, not means, so that gradient
accumulation divides by the number of target tokens in the whole optimiser step; a mean per
micro-batch would weigh a short micro-batch's tokens more than a long one's.

Sentence embeddings (``train embed``) are trained the sentence-transformers way, with in-batch
negatives (Henderson et al., 2017; ``MultipleNegativesRankingLoss``): the "logits" of anchor i are
its cosine similarities to every positive of the batch, times a scale of 20, and its label is i.

Seq2seq uses label smoothing ε_ls = 0.1 ("Attention Is All You Need", §5.4): it hurts
perplexity but helps accuracy and BLEU. Validation loss is always reported without smoothing, so
it stays a true negative log-likelihood (perplexity = e^loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glassformer.io import IGNORE_INDEX

INPUT_ID_KEYS = ("input_ids", "src_ids", "tgt_ids", "positive_ids")

# what each task calls its model
TASK_FAMILY = {"gpt": "gpt", "bert": "bert", "seq2seq": "transformer", "classifier": "bert", "embed": "bert"}

CONTRASTIVE_SCALE = 20.0  # sentence-transformers' MultipleNegativesRankingLoss default (cosine / 0.05)


def sentence_vectors(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean-pooled, L2-normalised sentence vectors (B, C) of an encoder's last hidden states: the
    Pooling + Normalize modules a saved embedding model declares."""
    from glassformer.interop.sentence_transformers import pool

    hidden = model(input_ids, attention_mask, head="none").last_hidden_state  # (B, T, C)
    return F.normalize(pool(hidden.float(), attention_mask, ("mean",)), dim=-1)  # (B, C)


def contrastive_logits(model: nn.Module, inputs: dict[str, Tensor], scale: float = CONTRASTIVE_SCALE) -> Tensor:
    """(B, B) scaled cosine similarities of each anchor (row) to each positive (column)."""
    anchors = sentence_vectors(model, inputs["input_ids"], inputs["attention_mask"])  # (B, C)
    positives = sentence_vectors(model, inputs["positive_ids"], inputs["positive_mask"])  # (B, C)
    return scale * anchors @ positives.T  # (B, B)


@dataclass
class LossSum:
    """One micro-batch's summed loss, how many targets it had, and how many it got right."""

    loss: Tensor  # scalar, Σ over targets (carries the graph in training)
    count: Tensor  # scalar int64, number of targets
    correct: Tensor | None  # scalar int64, argmax == label; None when not asked for (training steps)


def split_batch(batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
    """The model's forward kwargs and the labels."""
    if "labels" not in batch:
        raise KeyError(f"a training batch needs 'labels'; got keys {sorted(batch)}")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return inputs, batch["labels"]


def count_targets(batch: dict[str, Tensor]) -> int:
    """Targets in a batch (labels that are not -100): what the loss is averaged over."""
    return int((batch["labels"] != IGNORE_INDEX).sum())


def count_input_tokens(batch: dict[str, Tensor]) -> int:
    """Positions the model read (for tokens/s): input ids, or source plus target ids."""
    return sum(int(batch[k].numel()) for k in INPUT_ID_KEYS if k in batch)


def token_loss_sum(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0, count_correct: bool = True) -> LossSum:
    """Σ cross-entropy over labels != -100. logits (..., V) and labels (...), e.g. (B, T, V), (B, T).

    ``count_correct=False`` skips the argmax over the vocabulary (a pass over all N × V logits
    that a training step never reads: 2% of the demo GPT's step).
    """
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()  # (N, V); fp32 softmax under autocast
    flat_labels = labels.reshape(-1)  # (N,)
    loss = F.cross_entropy(
        flat_logits, flat_labels, ignore_index=IGNORE_INDEX, reduction="sum", label_smoothing=label_smoothing
    )
    keep = flat_labels != IGNORE_INDEX
    correct = None
    if count_correct:
        with torch.no_grad():
            correct = ((flat_logits.argmax(-1) == flat_labels) & keep).sum()
    return LossSum(loss, keep.sum(), correct)


def compute_loss(model: nn.Module, batch: dict[str, Tensor], label_smoothing: float = 0.0,
                 count_correct: bool = True, loss_in_model: bool = False) -> LossSum:
    """Run ``model`` on a batch (its keys are the forward kwargs plus ``labels``) and sum the loss.

    The loss is computed here from the logits, as a sum, for every family.
    ``count_correct``: also count the argmax hits (see :func:`token_loss_sum`).
    ``loss_in_model``: instead, a model with ``loss_without_logits`` (a GPT) is given the labels and ``return_logits=False`` and computes
    the loss itself, without keeping the logits (its LM head and cross-entropy in one step; no
    label smoothing, no argmax count); its mean is turned back into the sum.
    """
    inputs, labels = split_batch(batch)
    if loss_in_model:
        if label_smoothing or count_correct:
            raise ValueError("loss_in_model takes neither label smoothing nor an argmax count")
        mean = model(**inputs, labels=labels, return_logits=False).loss  # Σ loss / max(count, 1)
        count = (labels != IGNORE_INDEX).sum()
        return LossSum(mean * count.clamp_min(1), count, None)
    logits = contrastive_logits(model, inputs) if "positive_ids" in inputs else model(**inputs).logits
    if logits is None:
        raise ValueError("the model returned no logits; it has no head for this objective")
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"labels of shape {tuple(labels.shape)} do not match logits {tuple(logits.shape)}")
    return token_loss_sum(logits, labels, label_smoothing, count_correct)
