"""``d_ff = 0``: attention-only layers (the models of the induction-head papers). Each layer is
exactly x + attention(norm(x)); every tool that reads the layers still works."""

import pytest
import torch

from glassformer.explain.attribution import direct_logit_attribution
from glassformer.models import BERT, GPT, BERTConfig, GPTConfig
from glassformer.models.hooks import activation_names
from glassformer.training.config import TrainConfig

IDS = torch.tensor([[3, 14, 15, 9, 26, 5, 35, 8]])


def attention_only_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=40, d_model=32, n_heads=2, n_layers=2, d_ff=0, max_len=16)).eval()


def test_a_layer_is_the_residual_plus_attention_and_nothing_else():
    model = attention_only_gpt()
    assert all(layer.ffn is None and layer.ffn_sub is None for layer in model.decoder.layers)
    out, cache = model.run_with_cache(IDS)
    for i in range(2):
        assert torch.equal(cache[f"decoder.{i}.resid_post"], cache[f"decoder.{i}.resid_mid"])
        assert torch.equal(cache[f"decoder.{i}.resid_mid"],
                           cache[f"decoder.{i}.resid_pre"] + cache[f"decoder.{i}.attn.out"])
    assert not any(".ffn." in name for name in activation_names(model))


def test_attention_only_has_exactly_the_feed_forward_parameters_fewer():
    with_ffn = GPT(GPTConfig(vocab_size=40, d_model=32, n_heads=2, n_layers=2, d_ff=8, max_len=16))
    without = attention_only_gpt()
    ffn = sum(p.numel() for name, p in with_ffn.named_parameters() if ".ffn" in name)
    assert ffn == 2 * ((32 * 8 + 8) + (8 * 32 + 32) + 2 * 32)  # W_1, b_1, W_2, b_2 and the LayerNorm, per layer
    assert sum(p.numel() for p in without.parameters()) == sum(p.numel() for p in with_ffn.parameters()) - ffn


def test_attribution_of_an_attention_only_model_sums_to_the_logit_with_no_ffn_part():
    model = attention_only_gpt()
    a = direct_logit_attribution(model, IDS, 7)
    with torch.no_grad():
        logit = float(model(IDS).logits[0, -1, 7])
    assert abs(a.total - logit) <= 1e-4 and torch.equal(a.ffn, torch.zeros(2))


def test_attention_only_bert_runs_and_cached_decoding_matches_for_gpt(tmp_path):
    bert = BERT(BERTConfig(vocab_size=40, d_model=32, n_heads=2, n_layers=2, d_ff=0, max_len=16)).eval()
    assert bert(IDS).last_hidden_state.shape == (1, 8, 32)
    model = attention_only_gpt()
    model.save_pretrained(tmp_path / "m")
    again = GPT.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        full = model(IDS).logits[:, -1]
        cache = again.new_cache()
        again(IDS[:, :-1], cache=cache)
        step = again(IDS[:, -1:], cache=cache).logits[:, -1]
    assert torch.allclose(full, step, atol=1e-5)


def test_negative_widths_are_refused_and_gpt2_export_names_the_reason():
    with pytest.raises(ValueError, match="d_ff must be positive, or 0"):
        GPTConfig(vocab_size=40, d_model=32, n_heads=2, n_layers=2, d_ff=-1, max_len=16)
    with pytest.raises(ValueError, match="d_ff must be positive, or 0"):
        TrainConfig(d_ff=-4)
    assert TrainConfig(d_ff=0).ffn_width == 0
    from glassformer.interop import export_hf

    with pytest.raises(ValueError, match="attention-only"):
        export_hf(attention_only_gpt())
