"""Masks made visible: the grids are the masks the model applies, checked on its weights."""

from __future__ import annotations

import pytest
import torch

from glassformer.explain.masks import build_mask_demo, check_on_model, format_masks
from glassformer.models import BERT, GPT, BERTConfig, GPTConfig, Transformer, TransformerConfig
from glassformer.tokenizers import CharTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


TOK = CharTokenizer.train("the cat sat on a mat")


def model(kind):
    torch.manual_seed(0)
    if kind == "gpt":
        return GPT(GPTConfig.from_name("gpt-tiny", vocab_size=TOK.vocab_size))
    if kind == "bert":
        return BERT(BERTConfig.from_name("bert-tiny", vocab_size=TOK.vocab_size))
    return Transformer(TransformerConfig.from_name("transformer-tiny", vocab_size=TOK.vocab_size))


@pytest.mark.parametrize("side", ["right", "left"])
def test_combined_mask_is_causal_and_padding(side):
    demo = build_mask_demo(["the cat", "a mat", "on"], padding_side=side)
    b, t = demo.attention_mask.shape
    for r in range(b):
        for i in range(t):
            for j in range(t):
                assert bool(demo.combined[r, i, j]) == (j <= i and bool(demo.attention_mask[r, j]))
    lengths = demo.attention_mask.sum(1).tolist()
    assert lengths == [2, 2, 1] and t == 2  # whitespace words stand in for tokens without a model
    text = format_masks(demo)
    legend = 1  # "■ may attend" in the header
    assert text.count("■") == legend + int(demo.combined.sum()) + int(demo.causal.sum()) * b + t * int(demo.padding.sum())
    last_rows = text.rstrip().splitlines()[-t:]  # the last sequence's grids, one line per query
    printed = [[c == "■" for c in line.split("   ")[-1].split()] for line in last_rows]
    assert printed == demo.combined[-1].tolist()


@pytest.mark.parametrize("kind,side", [("gpt", "left"), ("gpt", "right"), ("bert", "right"), ("s2s", "left")])
def test_the_model_hides_exactly_what_the_masks_say(kind, side):
    demo = build_mask_demo(["the cat sat", "a mat"], TOK, model(kind), padding_side=side)
    c = demo.check
    assert c.max_hidden_weight == 0.0 and c.max_row_sum_error <= 1e-5 and c.empty_rows_ok
    assert demo.causal is None if kind == "bert" else demo.causal is not None
    # left padding + causal: the pad queries at the start see nothing, and get zeros, not NaN
    assert c.empty_rows == (6 if (side == "left" and kind != "bert") else 0)
    assert "OK" in format_masks(demo).splitlines()[-1]


def test_check_catches_a_wrong_mask():
    """Negative control: claim BERT is causal and the check on its weights must object."""
    m = model("bert")
    demo = build_mask_demo(["the cat sat", "a mat"], TOK, None, causal=True)
    ids = torch.tensor([TOK.encode("the cat sat"), TOK.encode("a mat") + [0] * 6])
    demo.kind = "encoder-self"
    check = check_on_model(m, ids, demo)
    assert check.max_hidden_weight > 0.01


def test_one_text_gets_a_shorter_copy_and_bad_side_is_refused():
    demo = build_mask_demo(["the cat sat"], TOK, model("gpt"))
    assert demo.attention_mask.sum(1).tolist() == [11, 5]
    with pytest.raises(ValueError, match="padding_side"):
        build_mask_demo(["a"], padding_side="middle")
