"""The generation inspector's record: for each generated token, what the model paid attention to
and how the candidates' probabilities looked before and after the sampling settings.

Decoding here is deliberately step by step (a prefill, then one cached step per token) so each
step's numbers can be kept. The candidates' probabilities are computed with the very pure
functions the decoding loops use (``glassformer.generation.sampling``), in the same order:
repetition penalty -> temperature -> top-k -> top-p -> softmax -> draw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from glassformer.explain.capture import as_batch, evaluating, family, unwrap
from glassformer.generation.sampling import (
    apply_repetition_penalty,
    apply_temperature,
    make_generators,
    sample_next,
    top_k_filter,
    top_p_filter,
    validate_sampling,
)


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


def _distributions(
    logits: Tensor, prev: Tensor, temperature: float, top_k: int | None, top_p: float | None, penalty: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(p_model, p_sampled, penalised logits) for one row of logits (1, V)."""
    p_model = logits.float().softmax(-1)[0]  # (V,)
    penalised = apply_repetition_penalty(logits.float(), prev, penalty)  # (1, V)
    if temperature == 0:  # greedy: the argmax is drawn with probability 1
        p_sampled = torch.zeros_like(p_model)
        p_sampled[penalised[0].argmax()] = 1.0
    else:
        filtered = top_p_filter(top_k_filter(apply_temperature(penalised, temperature), top_k), top_p)
        p_sampled = filtered.softmax(-1)[0]  # (V,)
    return p_model, p_sampled, penalised


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
    (kept as the last step) or at the model's ``max_len``."""
    validate_sampling(temperature, top_k, top_p, repetition_penalty)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    m = unwrap(model)
    fam = family(m)
    if fam == "bert":
        raise ValueError("BERT does not generate text; the generation inspector needs a GPT or an encoder-decoder")
    ids = as_batch(input_ids)[:1]  # (1, T)
    device = next(m.parameters()).device
    ids = ids.to(device)
    eos = eos_token_id if eos_token_id is not None else m.config.eos_token_id
    gens = make_generators(seed, 1, device)
    settings = dict(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty, seed=seed)

    with evaluating(m):
        cache = m.new_cache()
        if fam == "gpt":
            trace = GenerationTrace(fam, ids[0].tolist(), ids[0].tolist(), settings=settings)
            step_in = ids
            memory = None
        else:
            start = start_token_id if start_token_id is not None else m.decoder_start_token_id
            if start is None:
                raise ValueError("this encoder-decoder has no decoder_start_token_id or bos_token_id to start from")
            memory, _ = m.encode(ids)  # (1, S, C), once
            trace = GenerationTrace(fam, ids[0].tolist(), [int(start)], settings=settings)
            step_in = torch.tensor([[int(start)]], device=device)
        for _ in range(max_new_tokens):
            if len(trace.context_ids) > m.config.max_len:
                break
            if fam == "gpt":
                out = m(step_in, cache=cache, return_attentions=True)
                logits = out.logits[:, -1]  # (1, V)
                rows = {"decoder-self": [out.attention("decoder-self", i)[0, :, -1] for i in range(len(cache))]}
            else:
                logits, _, self_ws, cross_ws = m.decode(step_in, memory, cache=cache, return_attentions=True)
                logits = logits[:, -1]  # (1, V)
                rows = {"decoder-self": [w[0, :, -1] for w in self_ws], "cross": [w[0, :, -1] for w in cross_ws]}
            prev = torch.tensor([trace.context_ids], device=device)  # (1, T) the ids seen so far
            p_model, p_sampled, penalised = _distributions(logits, prev, temperature, top_k, top_p, repetition_penalty)
            chosen = int(sample_next(penalised, temperature, top_k, top_p, generator=gens)[0])
            attention = {k: torch.stack(v).float().cpu().numpy() for k, v in rows.items()}  # (L, H, Tk)
            trace.steps.append(
                TraceStep(chosen, len(trace.context_ids) - 1, _candidates(p_model, p_sampled, chosen, n_candidates), attention)
            )
            trace.context_ids.append(chosen)
            if eos is not None and chosen == eos:
                break
            step_in = torch.tensor([[chosen]], device=device)
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
