"""Encoder-decoder decoding: the caches, greedy, beam search against greedy and exhaustive search."""

import itertools

import pytest
import torch

from conftest import random_transformer
from glassformer.generation import generate_seq2seq, generate_seq2seq_lists

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def sources(b=4, s=7, seed=0, v=64):
    return torch.randint(3, v, (b, s), generator=torch.Generator().manual_seed(seed))


def recompute_greedy(model, src, src_mask, n, eos):
    """Greedy decoding without any cache: the whole target prefix is run at every step."""
    out = []
    for b in range(src.shape[0]):
        s = src[b : b + 1] if src_mask is None else src[b : b + 1, src_mask[b].bool()]
        tgt = [model.decoder_start_token_id]
        for _ in range(n):
            logits = model(s, torch.tensor([tgt])).logits[0, -1]
            tgt.append(int(logits.argmax()))
            if tgt[-1] == eos:
                break
        out.append(tgt[1:])
    return out


def log_prob(model, src, hyps):
    """log P(y | x) of each hypothesis, teacher-forced in one batch (no cache)."""
    start, longest = model.decoder_start_token_id, max(len(h) for h in hyps)
    tgt = torch.tensor([[start, *h[:-1]] + [0] * (longest - len(h)) for h in hyps])
    logp = model(src.expand(len(hyps), -1), tgt).logits.float().log_softmax(-1)  # (N, T, V)
    return [sum(logp[i, t, tok].item() for t, tok in enumerate(h)) for i, h in enumerate(hyps)]


# ------------------------------------------------------------------------------ greedy


def test_cached_greedy_equals_recomputing_every_step_with_padded_sources():
    m = random_transformer()
    src = sources()
    mask = torch.ones_like(src)
    mask[1, :3] = 0  # padded sources: the padding must not change anything
    mask[3, 5:] = 0
    free = generate_seq2seq_lists(m, src, src_mask=mask, max_new_tokens=15, eos_token_id=[])
    eos = free[0][4]  # row 0 stops early, so rows leave the batch mid-way
    with torch.no_grad():
        ref = recompute_greedy(m, src, mask, 15, eos)
    got = generate_seq2seq_lists(m, src, src_mask=mask, max_new_tokens=15, eos_token_id=eos)
    assert got == ref
    assert len(got[0]) == 5 and len({tuple(r) for r in got}) > 1
    for b in range(4):  # each source alone, unpadded
        alone = generate_seq2seq_lists(m, src[b : b + 1, mask[b].bool()], max_new_tokens=15, eos_token_id=eos)
        assert alone[0] == got[b]


def test_cross_attention_keys_and_values_are_computed_once():
    m = random_transformer()
    calls = []
    for layer in m.decoder.layers:
        layer.cross_attn.w_kv.register_forward_hook(lambda *a: calls.append(1))
    for beam in (1, 3):
        calls.clear()
        generate_seq2seq(m, sources(b=2), max_new_tokens=10, num_beams=beam, eos_token_id=[])
        assert len(calls) == len(m.decoder.layers)  # once per layer, not once per step


# ------------------------------------------------------------------------- beam search


def test_beam_width_one_is_greedy():
    m = random_transformer(seed=1)
    src = sources(b=5, seed=1)
    free = generate_seq2seq_lists(m, src, max_new_tokens=12, eos_token_id=[])
    eos = free[2][3]
    greedy = generate_seq2seq_lists(m, src, max_new_tokens=12, eos_token_id=eos)
    assert any(len(g) < 12 for g in greedy)  # eos handling is exercised
    for lp in (0.0, 1.0, 2.5):
        assert generate_seq2seq_lists(m, src, max_new_tokens=12, num_beams=1, length_penalty=lp, eos_token_id=eos, beam_search=True) == greedy


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_a_wide_beam_finds_the_exhaustive_best(length_penalty):
    """Vocabulary 5 (eos = 4), at most 4 tokens: 85 sequences end in eos, 256 reach the limit."""
    v, eos, n = 5, 4, 4
    m = random_transformer(seed=3, std=0.3, vocab_size=v, bos_token_id=3, eos_token_id=eos, pad_token_id=0)
    src = torch.tensor([[1, 2, 0, 1, 3]])
    hyps = [list(p) + [eos] for length in range(n) for p in itertools.product(range(4), repeat=length)]
    hyps += [list(p) for p in itertools.product(range(4), repeat=n)]
    assert len(hyps) == 341
    with torch.no_grad():
        scores = [s / len(h) ** length_penalty for s, h in zip(log_prob(m, src, hyps), hyps)]
    ranked = sorted(zip(scores, hyps), reverse=True)
    assert ranked[0][0] - ranked[1][0] > 1e-4  # a clear winner, so float noise cannot decide
    best = generate_seq2seq_lists(m, src, max_new_tokens=n, num_beams=len(hyps), length_penalty=length_penalty)[0]
    assert best == ranked[0][1]
    narrow = generate_seq2seq_lists(m, src, max_new_tokens=n, num_beams=3, length_penalty=length_penalty)[0]
    assert narrow in hyps  # a narrow beam still returns a complete hypothesis
    if length_penalty == 2.0:  # here the best sequence is not the greedy one: the search matters
        assert best != generate_seq2seq_lists(m, src, max_new_tokens=n, num_beams=1, length_penalty=length_penalty, beam_search=True)[0]


def test_length_penalty_trades_length_for_probability():
    m = random_transformer(seed=3, std=0.3, vocab_size=5, bos_token_id=3, eos_token_id=4, pad_token_id=0)
    src = torch.tensor([[1, 2, 0, 1, 3]])
    # beam 1365 holds every sequence of up to 5 tokens: the search is exact, and for an exact
    # search a larger exponent can only make the best output longer (score = logP / len^lp, logP < 0)
    lengths = [len(generate_seq2seq_lists(m, src, max_new_tokens=5, num_beams=1365, length_penalty=lp)[0]) for lp in (0.0, 0.5, 1.0, 3.0)]
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]


def test_batched_beam_search_equals_one_source_at_a_time():
    m = random_transformer(seed=3)
    src = sources(b=4, seed=3)
    mask = torch.ones_like(src)
    mask[0, :2] = 0
    free = generate_seq2seq_lists(m, src, src_mask=mask, max_new_tokens=10, eos_token_id=[])
    eos = free[1][2]
    batched = generate_seq2seq_lists(m, src, src_mask=mask, max_new_tokens=10, num_beams=4, eos_token_id=eos)
    for b in range(4):
        alone = generate_seq2seq_lists(m, src[b : b + 1, mask[b].bool()], max_new_tokens=10, num_beams=4, eos_token_id=eos)
        assert alone[0] == batched[b]


# ---------------------------------------------------------------------------- API, input


def test_generate_seq2seq_pads_after_eos():
    m = random_transformer()
    src = sources(b=3)
    free = generate_seq2seq_lists(m, src, max_new_tokens=8, eos_token_id=[])
    eos = free[0][1]
    rows = generate_seq2seq_lists(m, src, max_new_tokens=8, eos_token_id=eos)
    out = generate_seq2seq(m, src, max_new_tokens=8, eos_token_id=eos, pad_token_id=63)
    for r, o in zip(rows, out.tolist()):
        assert o[: len(r)] == r and all(t == 63 for t in o[len(r) :])
    beams = generate_seq2seq_lists(m, src, max_new_tokens=8, num_beams=3, eos_token_id=eos)
    out = generate_seq2seq(m, src, max_new_tokens=8, num_beams=3, eos_token_id=eos, pad_token_id=63)
    for r, o in zip(beams, out.tolist()):
        assert o[: len(r)] == r and all(t == 63 for t in o[len(r) :])


def test_seeded_sampling_for_seq2seq_is_reproducible():
    m = random_transformer()
    src = sources(b=3)
    a = generate_seq2seq(m, src, max_new_tokens=10, temperature=1.0, seed=4, eos_token_id=[])
    assert torch.equal(a, generate_seq2seq(m, src, max_new_tokens=10, temperature=1.0, seed=4, eos_token_id=[]))
    assert not torch.equal(a, generate_seq2seq(m, src, max_new_tokens=10, eos_token_id=[]))


def test_bad_settings_are_refused_and_long_requests_are_capped():
    m = random_transformer()
    src = sources(b=1)
    with pytest.raises(ValueError, match="beam"):
        generate_seq2seq(m, src, num_beams=0)
    with pytest.raises(ValueError, match="beam search"):
        generate_seq2seq(m, src, num_beams=2, temperature=0.7)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_seq2seq(m, src, max_new_tokens=0)
    out = generate_seq2seq(m, src, max_new_tokens=500, eos_token_id=[])
    assert out.shape[1] == m.config.max_len - 1  # the decoder holds max_len positions, one is the start
    no_start = random_transformer(bos_token_id=None)
    with pytest.raises(ValueError, match="start"):
        generate_seq2seq(no_start, src)
