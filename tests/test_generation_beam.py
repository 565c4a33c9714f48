"""GPT beam search: a strategy of the one decoder-only loop (width one is greedy, a wide beam is exact)."""

import itertools

import pytest
import torch

from conftest import NO_EOS, random_gpt, random_prompt
from glassformer.generation import GenerationConfig, generate, generate_lists
from glassformer.generation.loop import Step

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def log_prob(model, context, hyps):
    """log P(h | context) of each continuation, teacher-forced without a cache."""
    out = []
    for h in hyps:
        logp = model(torch.tensor([context + h[:-1]])).logits[0].float().log_softmax(-1)  # (T, V)
        out.append(sum(logp[len(context) - 1 + t, tok].item() for t, tok in enumerate(h)))
    return out


def test_beam_width_one_is_greedy():
    m = random_gpt()
    prompts = [random_prompt(n, 40 + n) for n in (3, 8, 5)]
    free = generate_lists(m, prompts, max_new_tokens=15, eos_token_id=NO_EOS)
    eos = free[1][4]
    greedy = generate_lists(m, prompts, max_new_tokens=15, eos_token_id=eos)
    assert any(len(g) < 15 for g in greedy)  # eos handling is exercised
    for lp in (0.0, 1.0, 2.5):  # the beam strategy itself, with one beam
        beams = generate_lists(m, prompts, max_new_tokens=15, num_beams=1, length_penalty=lp, eos_token_id=eos,
                               beam_search=True)
        assert beams == greedy


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_a_wide_beam_finds_the_exhaustive_best(length_penalty):
    """Vocabulary 5 (eos = 4), at most 4 new tokens: 85 continuations end in eos, 256 reach the limit."""
    v, eos, n = 5, 4, 4
    m = random_gpt(seed=2, std=0.25, vocab_size=v, bos_token_id=3, eos_token_id=eos, pad_token_id=0)
    context = [1, 2, 0, 1, 3]
    hyps = [list(p) + [eos] for length in range(n) for p in itertools.product(range(4), repeat=length)]
    hyps += [list(p) for p in itertools.product(range(4), repeat=n)]
    assert len(hyps) == 341
    with torch.no_grad():
        scores = [s / len(h) ** length_penalty for s, h in zip(log_prob(m, context, hyps), hyps)]
    ranked = sorted(zip(scores, hyps), reverse=True)
    assert ranked[0][0] - ranked[1][0] > 1e-4  # a clear winner, so float noise cannot decide
    best = generate_lists(m, [context], max_new_tokens=n, num_beams=len(hyps), length_penalty=length_penalty)[0]
    assert best == ranked[0][1]
    narrow = generate_lists(m, [context], max_new_tokens=n, num_beams=3, length_penalty=length_penalty)[0]
    assert narrow in hyps  # a narrow beam still returns a complete hypothesis
    # the search matters here: following the argmax gives another answer (and lp 0 prefers a short one)
    assert best != generate_lists(m, [context], max_new_tokens=n)[0]
    assert (len(best) == 1) == (length_penalty == 0.0)


def test_batched_beams_with_left_padding_equal_one_prompt_at_a_time():
    m = random_gpt(seed=1)
    prompts = [random_prompt(n, 50 + n) for n in (2, 9, 5, 30)]
    free = generate_lists(m, prompts, max_new_tokens=12, eos_token_id=NO_EOS)
    eos = free[0][3]
    batched = generate_lists(m, prompts, max_new_tokens=12, num_beams=4, eos_token_id=eos)
    alone = [generate_lists(m, [p], max_new_tokens=12, num_beams=4, eos_token_id=eos)[0] for p in prompts]
    assert batched == alone


def test_beam_search_with_and_without_cache_across_the_sliding_window():
    m = random_gpt(seed=2)
    prompts = [random_prompt(60, 7), random_prompt(20, 8)]  # max_len 64: the first prompt's window slides
    cfg = GenerationConfig(max_new_tokens=12, num_beams=3, eos_token_id=(), length_penalty=0.5)
    assert generate_lists(m, prompts, cfg) == generate_lists(m, prompts, cfg.replace(use_cache=False))


def test_on_step_sees_each_beam_step_and_the_tensor_api_pads():
    m = random_gpt(pad_token_id=63)
    steps: list[Step] = []
    out = generate(m, torch.tensor([random_prompt(4, 1)]), num_beams=2, max_new_tokens=5, eos_token_id=NO_EOS,
                   on_step=steps.append)
    assert out.shape == (1, 4 + 5)
    assert [s.index for s in steps] == list(range(5))
    assert all(s.origins is not None and len(s.tokens) == len(s.origins) for s in steps[:-1])
    assert torch.allclose(steps[0].scores.exp().sum(-1), torch.ones(1))  # log-probabilities of one row


def test_streaming_and_sampling_are_refused_with_beams():
    m = random_gpt()
    with pytest.raises(ValueError, match="beam search chooses only at the end"):
        generate_lists(m, [[1, 2]], max_new_tokens=3, num_beams=2, streamer=lambda row, t: None)
    with pytest.raises(ValueError, match="beam search is deterministic"):
        generate_lists(m, [[1, 2]], max_new_tokens=3, num_beams=2, temperature=0.7)


def test_a_beam_that_completes_a_stop_string_is_finished():
    from glassformer.tokenizers import build_tokenizer

    tok = build_tokenizer("char", "abcdefgh ")
    m = random_gpt(vocab_size=tok.vocab_size)
    p = tok.encode("abc", add_special_tokens=False)
    cfg = GenerationConfig(max_new_tokens=20, num_beams=3, eos_token_id=(), suppress_tokens=tuple(tok.special_ids))
    free = tok.decode(generate_lists(m, [p], cfg)[0])
    stop = free[5:7]  # a string the unconstrained search produces
    out = generate_lists(m, [p], cfg.replace(stop=(stop,)), tokenizer=tok)[0]
    text = tok.decode(out)
    assert stop in text and stop not in tok.decode(out[:-1]) and len(out) < 20
