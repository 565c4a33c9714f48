"""Decoding with the encoder-decoder Transformer: greedy (or sampled) and beam search.

The encoder runs once per source. The decoder then runs one step per target token with a
cache: its masked self-attention appends each step's keys and values, and each layer's
cross-attention projects the encoder output (``memory``) into keys and values on the first
step only (``LayerCache.cross_attn``) and reuses them afterwards.

Beam search (as in fairseq): keep the ``beam`` best partial translations of each source by
total log-probability. At each step take the 2·beam best one-token extensions; an extension
ending in eos that ranks within the first ``beam`` becomes a finished hypothesis, the best
``beam`` others live on. A source is done when ``beam`` hypotheses have finished, or when
``max_new_tokens`` is reached (live beams then finish as they are). The answer is the
finished hypothesis with the best length-normalised score

    score(y) = log P(y | x) / len(y) ** length_penalty        (len counts the eos token)

``length_penalty`` 0 compares plain log-probabilities (favouring short outputs); 1 compares
the mean per-token log-probability. With ``beam=1`` the search keeps the single most likely
token at every step: exactly greedy decoding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor

from glassformer.generation.cache import new_decoding_cache, select_rows
from glassformer.generation.gpt import _eos_set, _first_not_none, check_max_new_tokens, suppress_mask
from glassformer.generation.sampling import (
    apply_repetition_penalty,
    make_generators,
    sample_next,
    validate_sampling,
)

log = logging.getLogger(__name__)


def _prepare(model, src_ids: Tensor, src_mask: Tensor | None, max_new_tokens: int):
    check_max_new_tokens(max_new_tokens)
    if isinstance(src_ids, Tensor) and src_ids.dim() == 1:
        src_ids = src_ids.unsqueeze(0)
        src_mask = src_mask.unsqueeze(0) if src_mask is not None else None
    start = model.decoder_start_token_id
    if start is None:
        raise ValueError("the model has no decoder start token: set decoder_start_token_id or bos_token_id in its config")
    limit = model.config.max_len - 1  # the start token takes one decoder position
    if max_new_tokens > limit:
        log.warning("max_new_tokens=%d exceeds what the decoder can hold; generating at most %d", max_new_tokens, limit)
        max_new_tokens = limit
    if src_mask is not None:
        src_mask = src_mask.bool()
    memory, _ = model.encode(src_ids, src_mask)  # (B, S, C), computed once
    return src_ids, src_mask, memory, start, max_new_tokens


@torch.no_grad()
def greedy_seq2seq(
    model,
    src_ids: Tensor,
    src_mask: Tensor | None = None,
    max_new_tokens: int = 32,
    eos_token_id: int | Sequence[int] | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    suppress_tokens: Sequence[int] | None = None,
) -> list[list[int]]:
    """The target ids of each source (no start token; ending with eos when it was produced).

    Temperature 0 is greedy; > 0 samples (with ``top_k``/``top_p``; ``seed`` gives source i
    the generator ``seed + i``, as in :func:`glassformer.generation.generate`).
    """
    validate_sampling(temperature, top_k, top_p, repetition_penalty)
    src_ids, src_mask, memory, start, max_new_tokens = _prepare(model, src_ids, src_mask, max_new_tokens)
    eos = _eos_set(eos_token_id, model.config.eos_token_id)
    b = src_ids.shape[0]
    device = memory.device
    cache = new_decoding_cache(len(model.decoder.layers), max_new_tokens + 1)
    generators = make_generators(seed, b, device) if temperature > 0 else None
    banned = suppress_mask(suppress_tokens, model.config.vocab_size, device)
    out: list[list[int]] = [[] for _ in range(b)]
    alive = list(range(b))  # sources still decoding, in cache row order
    last = torch.full((b, 1), start, dtype=torch.long, device=device)  # (A, 1)
    for _ in range(max_new_tokens):
        logits = model.decode(last, memory, src_mask, None, cache)[0][:, -1].float()  # (A, V)
        if banned is not None:
            logits = logits.masked_fill(banned, float("-inf"))
        if repetition_penalty != 1.0:
            hist = _history([out[i] for i in alive], start, device)
            logits = apply_repetition_penalty(logits, hist, repetition_penalty)
        gens = [generators[i] for i in alive] if generators is not None else None
        ids = sample_next(logits, temperature, top_k, top_p, gens).tolist()  # (A,)
        keep = []
        for j, (i, token) in enumerate(zip(alive, ids)):
            out[i].append(token)
            if token not in eos:
                keep.append(j)
        if len(keep) < len(alive):  # finished sources leave the batch
            if not keep:
                break
            index = torch.tensor(keep, dtype=torch.long, device=device)
            select_rows(cache, index, cross=True)
            memory = memory.index_select(0, index)
            src_mask = src_mask.index_select(0, index) if src_mask is not None else None
            alive = [alive[j] for j in keep]
            ids = [ids[j] for j in keep]
        last = torch.tensor(ids, dtype=torch.long, device=device).unsqueeze(1)  # (A, 1)
    return out


@torch.no_grad()
def beam_search(
    model,
    src_ids: Tensor,
    src_mask: Tensor | None = None,
    max_new_tokens: int = 32,
    beam: int = 4,
    length_penalty: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    suppress_tokens: Sequence[int] | None = None,
) -> list[list[int]]:
    """The best hypothesis of each source under the length-normalised score (see module doc)."""
    if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
        raise ValueError(f"beam must be an integer >= 1, got {beam!r}")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)):
        raise ValueError(f"length_penalty must be a number, got {length_penalty!r}")
    src_ids, src_mask, memory, start, max_new_tokens = _prepare(model, src_ids, src_mask, max_new_tokens)
    eos = _eos_set(eos_token_id, model.config.eos_token_id)
    n_src, k, device = src_ids.shape[0], beam, memory.device
    v = model.config.vocab_size
    banned = suppress_mask(suppress_tokens, v, device)
    # every source gets k rows; only its first beam is live at the start (the others are -inf)
    memory = memory.repeat_interleave(k, dim=0)  # (B·k, S, C)
    src_mask = src_mask.repeat_interleave(k, dim=0) if src_mask is not None else None
    cache = new_decoding_cache(len(model.decoder.layers), max_new_tokens + 1)
    scores = torch.full((n_src, k), float("-inf"), device=device)  # (B, k) total log-probability
    scores[:, 0] = 0.0
    seqs: list[list[int]] = [[] for _ in range(n_src * k)]  # tokens so far, one list per row
    last = torch.full((n_src * k, 1), start, dtype=torch.long, device=device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(n_src)]
    alive = list(range(n_src))  # sources still searching, in row-block order

    def finish(src: int, total: float, hyp: list[int]) -> None:
        finished[src].append((total / len(hyp) ** length_penalty, hyp))

    for step in range(1, max_new_tokens + 1):
        a = len(alive)
        logits = model.decode(last, memory, src_mask, None, cache)[0][:, -1]  # (A·k, V)
        logp = torch.log_softmax(logits.float(), dim=-1)  # (A·k, V)
        if banned is not None:  # never chosen; the others keep their probabilities
            logp = logp.masked_fill(banned, float("-inf"))
        logp = logp.view(a, k, v)  # (A, k, V)
        cand = (scores.unsqueeze(-1) + logp).view(a, k * v)  # (A, k·V) total log-prob of each extension
        top_scores, top_idx = cand.topk(min(2 * k, k * v), dim=-1)  # (A, 2k)
        still, rows, new_scores, new_tokens = [], [], [], []  # the next step's sources and k rows each
        for j, (row_scores, row_idx) in enumerate(zip(top_scores.tolist(), top_idx.tolist())):
            src, live = alive[j], []  # live: (total, origin row, token) of this source's next beams
            for rank, (total, idx) in enumerate(zip(row_scores, row_idx)):
                if total == float("-inf"):
                    break  # only impossible extensions remain
                origin, token = divmod(idx, v)
                if token in eos:
                    if rank < k:  # an eos that ranks among the best k finishes a hypothesis
                        finish(src, total, seqs[j * k + origin] + [token])
                    continue
                live.append((total, j * k + origin, token))
                if len(live) == k:
                    break
            if len(finished[src]) >= k or not live:
                continue  # this source is done
            if step == max_new_tokens:  # out of room: the live beams finish as they are
                for total, row, token in live:
                    finish(src, total, seqs[row] + [token])
                continue
            live += [(float("-inf"), live[0][1], live[0][2])] * (k - len(live))  # fill up with dead beams
            still.append(j)
            for total, row, token in live:
                rows.append(row)
                new_scores.append(total)
                new_tokens.append(token)
        if not still:
            break
        index = torch.tensor(rows, dtype=torch.long, device=device)  # (A'·k,) origin row of each new beam
        # The self-attention caches follow each beam's origin. All k rows of a source hold the
        # same encoder output, so memory and the cross-attention caches only need selecting when
        # a finished source drops out.
        dropped = len(still) < a
        select_rows(cache, index, cross=dropped)
        if dropped:
            memory = memory.index_select(0, index)
            src_mask = src_mask.index_select(0, index) if src_mask is not None else None
        seqs = [seqs[r] + [t] for r, t in zip(rows, new_tokens)]
        scores = torch.tensor(new_scores, device=device).view(len(still), k)  # (A', k)
        last = torch.tensor(new_tokens, dtype=torch.long, device=device).unsqueeze(1)  # (A'·k, 1)
        alive = [alive[j] for j in still]

    return [max(f, key=lambda x: x[0])[1] if f else [] for f in finished]


@torch.no_grad()
def generate_seq2seq_lists(
    model,
    src_ids: Tensor,
    src_mask: Tensor | None = None,
    max_new_tokens: int = 32,
    beam: int = 1,
    length_penalty: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    suppress_tokens: Sequence[int] | None = None,
) -> list[list[int]]:
    """The target ids of each source as lists (no padding); see :func:`generate_seq2seq`."""
    was_training = model.training
    model.eval()  # dropout off while decoding
    try:
        if beam == 1:
            return greedy_seq2seq(
                model, src_ids, src_mask, max_new_tokens, eos_token_id, temperature, top_k, top_p,
                repetition_penalty, seed, suppress_tokens,
            )
        if temperature != 0 or top_k is not None or top_p is not None or repetition_penalty != 1.0:
            raise ValueError("beam search is deterministic: drop temperature/top_k/top_p/repetition_penalty, or use beam=1")
        return beam_search(model, src_ids, src_mask, max_new_tokens, beam, length_penalty, eos_token_id, suppress_tokens)
    finally:
        model.train(was_training)


@torch.no_grad()
def generate_seq2seq(
    model,
    src_ids: Tensor,
    src_mask: Tensor | None = None,
    max_new_tokens: int = 32,
    beam: int = 1,
    length_penalty: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    pad_token_id: int | None = None,
    suppress_tokens: Sequence[int] | None = None,
) -> Tensor:
    """Translate each source: (B, S) ids -> (B, N) target ids, without the start token.

    ``src_mask`` (B, S) is 1 on real source tokens. ``beam=1`` decodes greedily (or samples,
    with ``temperature > 0``, ``top_k``, ``top_p``, ``repetition_penalty``, ``seed``); ``beam > 1``
    runs beam search with ``length_penalty`` (sampling settings are then refused). Decoding
    stops at ``eos_token_id`` (None: the config's; [] never) or after ``max_new_tokens``
    (capped at what the decoder holds, ``max_len - 1``). ``suppress_tokens`` are never
    generated (Marian's pad). Each row ends with the eos id when one was produced and is
    right-filled with the pad id (config ``pad_token_id``, else ``eos_token_id``, else 0).
    """
    rows = generate_seq2seq_lists(
        model, src_ids, src_mask, max_new_tokens, beam, length_penalty, eos_token_id, temperature, top_k, top_p,
        repetition_penalty, seed, suppress_tokens,
    )
    c = model.config
    pad = _first_not_none(pad_token_id, c.pad_token_id, c.eos_token_id, 0)
    n = max(1, max(len(r) for r in rows))
    out = torch.full((len(rows), n), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def _history(rows: list[list[int]], start: int, device: torch.device) -> Tensor:
    """(A, L) the target tokens so far (start token included), -1 as padding."""
    longest = 1 + max(len(r) for r in rows)
    hist = torch.full((len(rows), longest), -1, dtype=torch.long)
    for j, r in enumerate(rows):
        hist[j, : 1 + len(r)] = torch.tensor([start, *r], dtype=torch.long)
    return hist.to(device)
