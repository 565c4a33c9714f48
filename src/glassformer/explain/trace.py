"""The generation inspector's record: for each generated token, what the model paid attention to
and how the candidates' probabilities looked before and after the sampling settings.

The tokens come from the library's own decoding loop (:mod:`glassformer.generation.loop`): the
record is a per-step callback on it, so what the inspector shows is what ``generate`` does.
Each step hands over the raw logits (``p_model``), the scores the token was drawn from after
repetition penalty -> temperature -> top-k -> top-p (``p_sampled``), and the attention row of
the newest position in every layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from glassformer.explain.capture import as_batch, evaluating, unwrap
from glassformer.generation.config import GenerationConfig
from glassformer.generation.gpt import generate_lists
from glassformer.generation.loop import Step
from glassformer.generation.seq2seq import generate_seq2seq_lists


@dataclass
class Candidate:
    """One token the model considered at a step."""

    token_id: int
    p_model: float  # softmax of the raw logits (temperature 1, nothing filtered)
    p_sampled: float  # the distribution actually drawn from, after penalty/temperature/top-k/top-p


@dataclass
class TraceStep:
    """One generated token."""

    token_id: int
    query: int  # the position whose output chose it (the last position of the context)
    candidates: list[Candidate]  # the most likely tokens, most likely first
    attention: dict[str, np.ndarray]  # kind -> (L, H, Tk): the attention row of ``query`` per layer and head


@dataclass
class GenerationTrace:
    """Everything the generation inspector shows. ``context_ids`` are the ids the decoder read
    (GPT: prompt + generated; encoder-decoder: start token + generated)."""

    family: str
    prompt_ids: list[int]  # GPT: the prompt; encoder-decoder: the source
    context_ids: list[int]
    steps: list[TraceStep] = field(default_factory=list)
    settings: dict[str, float | int | None] = field(default_factory=dict)

    @property
    def generated_ids(self) -> list[int]:
        return [s.token_id for s in self.steps]


def _candidates(p_model: Tensor, p_sampled: Tensor, chosen: int, n: int) -> list[Candidate]:
    """The n most likely tokens under the model, the n most likely of those still drawable, and the chosen one."""
    ids = dict.fromkeys(p_model.topk(min(n, p_model.numel())).indices.tolist())
    top_sampled = p_sampled.topk(min(n, p_sampled.numel()))
    ids.update(dict.fromkeys(i for i, p in zip(top_sampled.indices.tolist(), top_sampled.values.tolist()) if p > 0))
    ids[chosen] = None
    order = sorted(ids, key=lambda i: (-float(p_model[i]), i))
    return [Candidate(i, float(p_model[i]), float(p_sampled[i])) for i in order]


def trace_generation(
    model: nn.Module,
    input_ids: Tensor | list[int],
    max_new_tokens: int = 16,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    eos_token_id: int | None = None,
    start_token_id: int | None = None,
    n_candidates: int = 10,
) -> GenerationTrace:
    """Generate up to ``max_new_tokens`` tokens for one prompt (GPT) or source (encoder-decoder),
    keeping each step's attention rows and candidate probabilities. Stops at ``eos_token_id``
    (the model's when None; kept as the last step) or when the context fills ``max_len`` (the
    inspector shows no sliding window)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    config = GenerationConfig(max_new_tokens=max(1, max_new_tokens), temperature=temperature, top_k=top_k, top_p=top_p,
                              repetition_penalty=repetition_penalty, seed=seed, eos_token_id=eos_token_id)
    m = unwrap(model)
    if m.predicts != "next":
        raise ValueError(f"a {type(m).__name__} does not generate text (its logits do not predict the next token); "
                         "the generation inspector needs a GPT or an encoder-decoder")
    seq2seq = m.needs_target
    ids = as_batch(input_ids)[:1].to(next(m.parameters()).device)  # (1, T)
    prompt = ids[0].tolist()
    settings = dict(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty, seed=seed)
    steps: list[TraceStep] = []
    offset = 0 if seq2seq else len(prompt) - 1  # the query position of the first step

    def record(step: Step) -> None:
        chosen = step.tokens[0]
        p_model = step.logits[0].softmax(-1)  # (V,)
        if temperature == 0:  # greedy: the argmax is drawn with probability 1
            p_sampled = torch.zeros_like(p_model)
            p_sampled[chosen] = 1.0
        else:
            p_sampled = step.scores[0].softmax(-1)  # (V,)
        attention = {k: torch.stack([w[0] for w in ws]).float().cpu().numpy() for k, ws in step.attentions.items()}
        steps.append(TraceStep(chosen, offset + step.index, _candidates(p_model, p_sampled, chosen, n_candidates), attention))

    with evaluating(m):
        if not seq2seq:
            room = m.config.max_len - len(prompt) + 1  # the last token is chosen from a full context
            if max_new_tokens > 0 and room > 0:
                generate_lists(m, [prompt], config.replace(max_new_tokens=min(max_new_tokens, room)),
                               on_step=record, return_attentions=True)
            trace = GenerationTrace(m.config.model_type, prompt, prompt + [s.token_id for s in steps], settings=settings)
        else:
            start = start_token_id if start_token_id is not None else m.decoder_start_token_id
            if start is None:
                raise ValueError("this encoder-decoder has no decoder_start_token_id or bos_token_id to start from")
            if max_new_tokens > 0:
                generate_seq2seq_lists(m, ids, config, start_token_id=int(start), on_step=record, return_attentions=True)
            trace = GenerationTrace(m.config.model_type, prompt, [int(start)] + [s.token_id for s in steps], settings=settings)
    trace.steps = steps
    return trace


def eos_id(model: nn.Module, tokenizer: Any) -> int | None:
    """The end-of-sequence id: the model's config first, then the tokenizer's."""
    eos = unwrap(model).config.eos_token_id
    return eos if eos is not None else getattr(tokenizer, "eos_id", None)


def greedy_translation(
    model: nn.Module, tokenizer: Any, src_ids: list[int], max_new_tokens: int | None = None
) -> GenerationTrace:
    """The encoder-decoder's greedy output for a source, step by step. The default budget,
    1.5 × the source length + 8 (within ``max_len``), covers dates, copies and most translations."""
    from glassformer.explain.tokens import start_token

    m = unwrap(model)
    if max_new_tokens is None:
        max_new_tokens = max(1, min(m.config.max_len - 1, (3 * len(src_ids)) // 2 + 8))
    return trace_generation(
        m, src_ids, max_new_tokens, eos_token_id=eos_id(m, tokenizer), start_token_id=start_token(m, tokenizer)
    )
