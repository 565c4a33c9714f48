"""The generation inspector's record: what it shows is what the model and the sampler did."""

from __future__ import annotations

import pytest
import torch

from glassformer.explain.trace import trace_generation
from glassformer.generation import generate_lists, generate_seq2seq_lists
from glassformer.models import BERT, GPT, BERTConfig, GPTConfig, Transformer, TransformerConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def gpt():
    torch.manual_seed(0)
    m = GPT(GPTConfig.from_name("gpt-tiny"))
    for p in m.parameters():  # a sharper random model, so candidates and choices differ
        p.data.mul_(4.0)
    return m.eval()


PROMPT = [7, 8, 9, 10, 11]


@pytest.mark.parametrize("settings", [
    dict(temperature=0.0),
    dict(temperature=0.8, top_k=5, seed=3),
    dict(temperature=1.3, top_p=0.7, repetition_penalty=1.5, seed=11),
])
def test_tokens_are_what_the_library_generates(settings):
    model = gpt()
    trace = trace_generation(model, PROMPT, 12, **settings)
    want = generate_lists(model, [PROMPT], max_new_tokens=12, **settings)[0]
    assert trace.generated_ids == want
    assert trace.context_ids == PROMPT + want


def test_each_step_shows_the_models_numbers():
    model = gpt()
    trace = trace_generation(model, PROMPT, 8, temperature=0.9, top_k=4, seed=0)
    full = torch.tensor([trace.context_ids])
    with torch.no_grad():
        out = model(full, return_attentions=True)
    for step in trace.steps:
        # the attention row the token was chosen with = the full recompute's row (KV cache == no cache)
        for layer in range(2):
            row = out.attention("decoder-self", layer)[0, :, step.query, : step.query + 1]  # (H, Tk)
            assert (torch.from_numpy(step.attention["decoder-self"][layer]) - row).abs().max() <= 1e-5
        probs = out.logits[0, step.query].softmax(-1)
        for c in step.candidates:
            assert abs(c.p_model - float(probs[c.token_id])) <= 1e-5
        drawable = [c for c in step.candidates if c.p_sampled > 0]
        assert 1 <= len(drawable) <= 4  # top-k 4
        assert step.token_id in {c.token_id for c in drawable}
        assert sum(c.p_sampled for c in drawable) == pytest.approx(1.0, abs=1e-5)
        top4 = set(probs.topk(4).indices.tolist())
        assert {c.token_id for c in drawable} <= top4  # top-k keeps the model's 4 most likely


def test_greedy_puts_all_probability_on_the_argmax():
    trace = trace_generation(gpt(), PROMPT, 4)
    for step in trace.steps:
        assert [c.p_sampled for c in step.candidates if c.token_id == step.token_id] == [1.0]
        assert step.token_id == max(step.candidates, key=lambda c: c.p_model).token_id


def test_seq2seq_trace_matches_greedy_decoding_and_records_cross_attention():
    torch.manual_seed(1)
    model = Transformer(TransformerConfig.from_name("transformer-tiny", bos_token_id=1, eos_token_id=2)).eval()
    src = [5, 6, 7, 8, 9, 10]
    trace = trace_generation(model, src, 7, eos_token_id=2, start_token_id=1)
    assert trace.generated_ids == generate_seq2seq_lists(model, torch.tensor([src]), max_new_tokens=7)[0]
    for n, step in enumerate(trace.steps):
        assert step.attention["cross"].shape == (2, 4, len(src))
        assert step.attention["decoder-self"].shape == (2, 4, n + 1)
        assert abs(step.attention["cross"].sum(-1) - 1).max() < 1e-5


def test_stops_at_eos_and_refuses_bad_settings():
    model = gpt()
    free = trace_generation(model, PROMPT, 6)
    eos = free.generated_ids[2]
    stopped = trace_generation(model, PROMPT, 6, eos_token_id=eos)
    assert stopped.generated_ids == free.generated_ids[: free.generated_ids.index(eos) + 1]
    with pytest.raises(ValueError, match="top_p"):
        trace_generation(model, PROMPT, 3, temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        trace_generation(model, PROMPT, -1)
    with pytest.raises(ValueError, match="BERT does not generate"):
        trace_generation(BERT(BERTConfig.from_name("bert-tiny")), PROMPT, 3)
