"""The sampling functions: each rule of temperature, top-k, top-p, repetition penalty and seeding."""

import math

import pytest
import torch

from glassformer.generation.sampling import (
    apply_repetition_penalty,
    apply_temperature,
    make_generators,
    sample_next,
    top_k_filter,
    top_p_filter,
    validate_sampling,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def logits(b=3, v=11, seed=0):
    return torch.randn(b, v, generator=torch.Generator().manual_seed(seed)) * 3


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_p=-0.2), "top_p"),
        (dict(top_k=0), "top_k"),
        (dict(top_k=2.5), "top_k"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(repetition_penalty=-1.0), "repetition_penalty"),
    ],
)
def test_out_of_range_settings_are_refused_by_name(kwargs, field):
    with pytest.raises(ValueError, match=field):
        validate_sampling(**kwargs)
    if field != "repetition_penalty":  # sample_next checks its own settings too
        with pytest.raises(ValueError, match=field):
            sample_next(logits(), **kwargs)


def test_boundary_settings_are_accepted():
    validate_sampling(temperature=0.0, top_k=1, top_p=1.0, repetition_penalty=1.0)
    validate_sampling(temperature=2.0, top_k=10**9, top_p=1e-9, repetition_penalty=0.5)
    x = logits()
    # top_k past the vocabulary is clamped: the same draw as no top-k at all
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(sample_next(x, 2.0, 10**9, None, generator=g1), sample_next(x, 2.0, None, None, generator=g2))
    # a tiny top_p still keeps one token: the most likely one
    assert torch.equal(sample_next(x, 2.0, None, 1e-9, generator=torch.Generator().manual_seed(0)), x.argmax(-1))


# ------------------------------------------------------------------------ temperature, greedy


def test_temperature_zero_is_argmax_whatever_the_filters():
    x = logits()
    for k, p in [(None, None), (1, None), (3, 0.5), (None, 1e-6)]:
        assert torch.equal(sample_next(x, 0.0, k, p), x.argmax(-1))


def test_temperature_scales_logits_and_zero_leaves_them():
    x = logits()
    assert torch.allclose(apply_temperature(x, 2.0), x / 2)
    assert torch.equal(apply_temperature(x, 0.0), x)
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(x, -1.0)


def test_low_temperature_concentrates_on_the_argmax():
    x = logits(b=1, v=20)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(x, 1e-3, generator=g) for _ in range(50)])
    assert (draws == x.argmax(-1)).all()


# ------------------------------------------------------------------------------- top-k, top-p


def test_top_k_keeps_exactly_the_k_largest():
    x = logits(v=11)
    for k in (1, 4, 10):
        kept = torch.isfinite(top_k_filter(x, k))
        assert (kept.sum(-1) == k).all()
        for row, mask in zip(x, kept):
            assert set(row.topk(k).indices.tolist()) == set(mask.nonzero().flatten().tolist())


def test_top_k_is_clamped_to_the_vocabulary():
    x = logits(v=7)
    assert torch.equal(top_k_filter(x, 7), x)
    assert torch.equal(top_k_filter(x, 1000), x)
    assert sample_next(x, 1.0, top_k=1000, generator=torch.Generator().manual_seed(0)).shape == (3,)


def test_top_p_keeps_the_smallest_set_reaching_p():
    x = logits(b=4, v=9)
    for p in (0.05, 0.3, 0.7, 0.95):
        out = top_p_filter(x, p)
        probs = x.softmax(-1)
        for row_probs, row_out in zip(probs, out):
            kept = torch.isfinite(row_out)
            mass = row_probs[kept].sum().item()
            assert mass >= p - 1e-6  # enough mass
            # removing the least likely kept token would fall below p: the set is minimal
            assert mass - row_probs[kept].min().item() < p + 1e-6
            # kept tokens are the most likely ones
            if (~kept).any():
                assert row_probs[kept].min() >= row_probs[~kept].max()


def test_top_p_always_keeps_at_least_one_token():
    x = torch.tensor([[10.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    out = top_p_filter(x, 1e-9)
    assert (torch.isfinite(out).sum(-1) >= 1).all()
    assert torch.isfinite(out[0, 0])
    assert torch.equal(top_p_filter(x, 1.0), x)


def test_filters_mask_with_minus_infinity_and_never_produce_nan():
    x = logits()
    for out in (top_k_filter(x, 2), top_p_filter(x, 0.5)):
        dropped = ~torch.isfinite(out)
        assert (out[dropped] == float("-inf")).all()
        assert torch.equal(out[~dropped], x[~dropped])  # survivors untouched
        assert not torch.isnan(out.softmax(-1)).any()


def test_sampling_never_draws_a_filtered_token():
    x = logits(b=2, v=30)
    allowed = torch.isfinite(top_p_filter(top_k_filter(x, 5), 0.8))
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        ids = sample_next(x, 1.0, top_k=5, top_p=0.8, generator=g)
        assert allowed.gather(1, ids[:, None]).all()


def test_sampling_follows_the_softmax_distribution():
    x = torch.tensor([[0.0, math.log(3.0)]])  # P = 1/4, 3/4
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([sample_next(x, 1.0, generator=g) for _ in range(4000)])
    assert abs(draws.float().mean().item() - 0.75) < 0.03


# ---------------------------------------------------------------------------------- seeding


def test_a_seed_makes_sampling_reproducible_and_different_seeds_differ():
    x = logits(b=4, v=50)

    def run(seed):
        gens = make_generators(seed, 4)
        return torch.stack([sample_next(x, 1.0, generator=gens) for _ in range(20)])

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_per_row_generators_make_a_row_independent_of_its_batch():
    x = logits(b=3, v=40)
    batch = sample_next(x, 1.0, generator=make_generators(5, 3))
    for i in range(3):
        alone = sample_next(x[i : i + 1], 1.0, generator=make_generators(5 + i, 1))
        assert alone.item() == batch[i].item()


# ------------------------------------------------------------------------ repetition penalty


def test_repetition_penalty_lowers_seen_tokens_only():
    x = torch.tensor([[2.0, -2.0, 1.0, -1.0, 0.5]])
    seen = torch.tensor([[0, 1, 1]])  # token 1 twice: penalised once, not twice
    out = apply_repetition_penalty(x, seen, 2.0)
    assert torch.equal(out, torch.tensor([[1.0, -4.0, 1.0, -1.0, 0.5]]))
    assert (out.softmax(-1)[0, :2] < x.softmax(-1)[0, :2]).all()


def test_repetition_penalty_ignores_padding_and_one_is_identity():
    x = logits(b=2, v=6)
    prev = torch.tensor([[3, -1, -1], [-1, -1, -1]])
    out = apply_repetition_penalty(x, prev, 1.5)
    assert torch.equal(out[1], x[1])  # a row of padding only is untouched
    assert torch.equal(out[0, [0, 1, 2, 4, 5]], x[0, [0, 1, 2, 4, 5]])
    assert out[0, 3] != x[0, 3]
    assert torch.equal(apply_repetition_penalty(x, prev, 1.0), x)
