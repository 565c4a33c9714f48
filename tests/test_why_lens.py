"""The logit lens: every layer read through the model's own head; the last layer is the model's output."""

import pytest
import torch

from glassformer.explain.lens import format_lens, logit_lens, readout, save_lens_png
from glassformer.models import BERT, GPT, BERTConfig, GPTConfig, Transformer, TransformerConfig


def tiny(family):
    torch.manual_seed(0)
    if family == "gpt":
        return GPT(GPTConfig.from_name("gpt-tiny")).eval()
    if family == "bert":
        return BERT(BERTConfig.from_name("bert-tiny", num_labels=2)).eval()  # auto head = classifier
    return Transformer(TransformerConfig.from_name("transformer-tiny", norm_first=True)).eval()


IDS = torch.tensor([[3, 14, 15, 9, 26, 5, 35]])


@pytest.mark.parametrize("family", ["gpt", "bert", "transformer"])
def test_the_last_layer_of_the_lens_is_the_models_logits(family):
    model = tiny(family)
    tgt = torch.tensor([[1, 7, 8]]) if family == "transformer" else None
    lens = logit_lens(model, IDS, k=3, tgt_ids=tgt)
    with torch.no_grad():
        if family == "transformer":
            want = model(IDS, tgt).logits[0]
        else:
            want = model(IDS, head="mlm").logits[0] if family == "bert" else model(IDS).logits[0]
    assert lens.rows == ["embed", "0", "1"]
    assert lens.logits.shape == (3, want.shape[0], 64) and lens.top_ids.shape == (3, want.shape[0], 3)
    assert (lens.logits[-1] - want).abs().max() <= 1e-5
    assert lens.max_error <= 1e-5
    assert torch.equal(lens.top_ids[-1, :, 0], want.argmax(-1))
    # earlier rows are genuinely different readouts, not copies of the last
    assert not torch.allclose(lens.logits[1], lens.logits[-1], atol=1e-3)


def test_an_earlier_row_is_the_readout_of_that_layers_residual_stream():
    model = tiny("gpt")
    lens = logit_lens(model, IDS)
    with torch.no_grad():
        _, cache = model.run_with_cache(IDS, names=["decoder.0.resid_post"])
        want = model.lm_head(model.decoder.final_norm(cache["decoder.0.resid_post"]))[0]
    assert torch.allclose(lens.logits[1], want, atol=1e-6)
    assert torch.allclose(readout(model, cache["decoder.0.resid_post"])[0], want, atol=1e-6)


def test_lens_text_and_png(tmp_path):
    model = tiny("gpt")
    lens = logit_lens(model, IDS, k=2)
    tokens = [f"t{i}" for i in IDS[0].tolist()]
    top1 = [[f"#{int(i)}" for i in row] for row in lens.top_ids[:, :, 0]]
    text = format_lens(lens, tokens, top1)
    assert text.splitlines()[0].split()[:3] == ["layer", "t3", "t14"]
    assert len(text.splitlines()) == 4
    path = save_lens_png(lens, tokens, top1, tmp_path / "lens.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="png"):
        save_lens_png(lens, tokens, top1, tmp_path / "lens.jpg")
