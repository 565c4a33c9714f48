"""Built-in tasks of the demos: swapped Python lines (order carries the label) and repeated
random tokens (induction)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from glassformer.data import BUILTIN_CLASSIFICATION, RepeatedTokensDataset, induction_scores, python_swaps
from glassformer.data.induction import ALPHABET, probe_text, repeat_mask
from glassformer.data.swaps import SWAP_LABELS, parses, swap_tokens, token_spans

# ---------------------------------------------------------------------- python-swaps


@pytest.fixture(scope="module")
def swaps():
    return python_swaps(300, seed=5)


def test_swaps_are_balanced_real_lines_and_broken_swaps(swaps):
    assert swaps.label_names == SWAP_LABELS == ["real", "swapped"]
    assert len(swaps.examples) == 300
    counts = Counter(swaps.labels)
    assert 110 <= counts[0] <= 190 and counts[0] + counts[1] == 300
    assert len(set(swaps.texts)) == 300  # each line once
    for text, label in swaps.examples:
        assert parses(text) == (label == 0), text  # real lines parse, swapped ones never do


def test_a_swap_keeps_length_characters_and_tokens():
    rng = random.Random(0)
    line = "result = compute(alpha, beta) + offset"
    for _ in range(20):
        swapped = swap_tokens(line, rng)
        assert swapped is not None and swapped != line and not parses(swapped)
        assert len(swapped) == len(line) and Counter(swapped) == Counter(line)
        tokens = sorted(line[a:b] for a, b in token_spans(line))
        assert sorted(swapped[a:b] for a, b in token_spans(swapped)) == tokens or Counter(swapped) == Counter(line)


def test_swaps_are_deterministic_by_seed_and_registered(swaps):
    assert python_swaps(300, seed=5) == swaps
    assert python_swaps(300, seed=6).texts != swaps.texts
    assert BUILTIN_CLASSIFICATION["python-swaps"] is python_swaps


def test_length_carries_no_label(swaps):
    """Same length distribution in both classes: a length-only classifier is at chance."""
    by_label = [[len(t) for t, y in swaps.examples if y == k] for k in (0, 1)]
    means = [sum(v) / len(v) for v in by_label]
    assert abs(means[0] - means[1]) < 6


# ---------------------------------------------------------------------- induction data


def test_repeated_sequences_hold_a_segment_of_distinct_letters_twice_and_nowhere_else():
    ids = list(range(5, 5 + len(ALPHABET)))
    data = RepeatedTokensDataset(ids, context=32)
    seq, periods, starts = data.sample(256, torch.Generator().manual_seed(0))
    assert seq.shape == (256, 33) and set(periods.tolist()) == set(range(8, 17))  # T//4 .. T//2
    assert int(starts.min()) == 0 and len(set(starts.tolist())) > 15  # the place varies, anywhere it fits
    for row, k, s in zip(seq.tolist(), periods.tolist(), starts.tolist()):
        segment = row[s: s + k]
        assert segment == row[s + k: s + 2 * k] and s + 2 * k <= 33
        assert len(set(segment)) == k  # distinct letters
        rest = row[:s] + row[s + 2 * k:]
        assert not set(rest) & set(segment)  # each repeated token has exactly one earlier occurrence
        assert set(row) <= set(ids)
    assert len(set(seq[:, :8].flatten().tolist())) == len(ids)  # random letters, all of them used
    limited = RepeatedTokensDataset(ids, context=64, min_period=8, max_start=8)
    seq, periods, starts = limited.sample(64, torch.Generator().manual_seed(0))
    assert int(starts.max()) <= 8 and 8 <= int(periods.min()) and int(periods.max()) <= 16  # half the letters


def test_repeated_only_labels_cover_exactly_the_predictable_positions():
    data = RepeatedTokensDataset(list(range(10, 58)), context=32, repeated_only=True, max_start=4)
    g = torch.Generator().manual_seed(1)
    batch = data.batch(8, g)
    g = torch.Generator().manual_seed(1)
    seq, periods, starts = data.sample(8, g)
    assert torch.equal(batch["input_ids"], seq[:, :-1])
    kept = batch["labels"] != -100
    assert torch.equal(kept, repeat_mask(periods, 32, starts))
    assert torch.equal(batch["labels"][kept], seq[:, 1:][kept])
    assert kept.sum(1).tolist() == (periods - 1).tolist()  # the second copy after its first token
    for row, (k, s) in enumerate(zip(periods.tolist(), starts.tolist())):
        assert kept[row].nonzero().flatten().tolist() == list(range(s + k, s + 2 * k - 1))


def test_induction_score_is_one_for_a_perfect_head_and_low_for_a_previous_token_head():
    data = RepeatedTokensDataset(list(range(48)), context=32)
    _, periods, _starts = data.sample(4, torch.Generator().manual_seed(2))
    b, t = 4, 32
    perfect = torch.zeros(b, t, t)
    previous = torch.zeros(b, t, t)
    for row, k in enumerate(periods.tolist()):
        for q in range(t):
            previous[row, q, max(q - 1, 0)] = 1.0
            perfect[row, q, q - k + 1 if k <= q <= 2 * k - 2 else 0] = 1.0
    weights = torch.stack([previous, perfect])[:, :, None]  # (L=2, B, H=1, T, T)
    scores = induction_scores(weights, periods, t)  # starts=None: segments at position 0
    assert scores.shape == (2, 1)
    assert scores[1, 0] == 1.0 and scores[0, 0] == 0.0


def test_probe_text_is_a_segment_twice():
    text = probe_text(12, seed=3)
    assert len(text) == 24 and text[:12] == text[12:] and set(text) <= set(ALPHABET)


# ---------------------------------------------------------------------- date-order


def test_date_order_labels_say_whether_the_first_date_comes_first():
    import datetime as dt

    from glassformer.data import ORDER_LABELS, date_order
    from glassformer.data.date_order import FOUR_DIGIT
    from glassformer.data.dates import date_parts

    data = date_order(400, seed=2)
    assert data.label_names == ORDER_LABELS == ["in order", "out of order"]
    assert Counter(data.labels) == {0: 200, 1: 200}
    assert date_order(400, seed=2) == data and date_order(400, seed=3) != data
    # parse each side back through the spellings it was written in: the label is the true order
    spellings = {}
    day = dt.date(1970, 1, 1)
    while day <= dt.date(2068, 12, 31):
        for spell in FOUR_DIGIT:
            spellings.setdefault(spell(date_parts(day)), day)
        day += dt.timedelta(days=1)
    for text, label in data.examples[:100]:
        first, second = (spellings[s] for s in text.split(", then "))
        assert (first > second) == bool(label), text
