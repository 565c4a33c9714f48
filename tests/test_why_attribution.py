"""Direct logit attribution: heads + FFN blocks + the stated remainder sum to the logit."""

import pytest
import torch

from glassformer.explain.attribution import AttributionError, direct_logit_attribution
from glassformer.explain.hooks import ablate_heads
from glassformer.models import BERT, GPT, BERTConfig, GPTConfig, Transformer, TransformerConfig

IDS = torch.tensor([[3, 14, 15, 9, 26, 5, 35, 8]])


def gpt():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("gpt-tiny"))
    with torch.no_grad():  # non-trivial norms and biases, so every remainder term is exercised
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.3 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("position", [-1, 2])
def test_contributions_and_remainder_sum_to_the_logit(position):
    model = gpt()
    for token in (0, 17, 63):
        a = direct_logit_attribution(model, IDS, token, position=position)
        with torch.no_grad():
            logit = float(model(IDS).logits[0, position, token])
        assert a.heads.shape == (2, 4) and a.ffn.shape == (2,)
        assert abs(a.total - logit) <= 1e-4 and a.check_error <= 1e-4
        assert set(a.remainder) == {"embeddings", "attention output biases", "final norm bias"}
        assert all(abs(v) > 0 for v in a.remainder.values())
        assert len(a.ranked(5)) == 5


def test_a_heads_attribution_is_its_own_direct_effect():
    """With σ frozen, a head's term is the logit change from removing its write into the stream
    at the final norm only: check it against zero-ablating that head in the last layer, where
    nothing downstream can read it (only the final norm's σ moves, so compare at σ of the ablated run)."""
    model = gpt()
    token, layer = 5, 1
    a = direct_logit_attribution(model, IDS, token)
    for head in range(4):
        with torch.no_grad():
            base = model(IDS).logits[0, -1, token]
            ablated = ablate_heads(model, IDS, [(layer, head)]).logits[0, -1, token]
        # same sign and rough size (σ differs slightly between the runs)
        assert abs(float(base - ablated) - float(a.heads[layer, head])) <= 0.25 * abs(float(a.heads[layer, head])) + 1e-3


def test_pre_ln_encoder_decoder_includes_cross_heads():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.from_name("transformer-tiny", norm_first=True, output_bias=True)).eval()
    tgt = torch.tensor([[1, 4, 9]])
    a = direct_logit_attribution(model, IDS, 11, tgt_ids=tgt)
    with torch.no_grad():
        logit = float(model(IDS, tgt).logits[0, -1, 11])
    assert a.cross_heads is not None and a.cross_heads.shape == (2, 4)
    assert "unembedding bias" in a.remainder
    assert abs(a.total - logit) <= 1e-4


def test_post_ln_models_are_refused_with_the_reason():
    torch.manual_seed(0)
    with pytest.raises(AttributionError, match="needs a pre-LN model.*post-LN"):
        direct_logit_attribution(BERT(BERTConfig.from_name("bert-tiny")).eval(), IDS, 3)
    with pytest.raises(AttributionError, match="pre-LN"):
        direct_logit_attribution(Transformer(TransformerConfig.from_name("transformer-tiny")).eval(), IDS, 3,
                                 tgt_ids=torch.tensor([[1]]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        direct_logit_attribution(gpt(), IDS, 64)
    with pytest.raises(ValueError, match="position 8 is out of range"):
        direct_logit_attribution(gpt(), IDS, 3, position=8)
