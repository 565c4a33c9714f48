"""The three families: smoke, causality, padding, KV cache, labelled attentions, bad input."""

import pytest
import torch

from glassformer.layers import (
    DecoderLayer,
    EncoderLayer,
    PositionwiseFeedForward,
    SinusoidalPositionalEncoding,
    sinusoidal_table,
)
from glassformer.models import (
    BERT,
    GPT,
    BERTConfig,
    Decoder,
    Encoder,
    GPTConfig,
    Transformer,
    TransformerConfig,
)


def gpt(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig.from_name("gpt-tiny", **kw)).eval()


def bert(**kw):
    torch.manual_seed(0)
    return BERT(BERTConfig.from_name("bert-tiny", **kw)).eval()


def transformer(**kw):
    torch.manual_seed(0)
    return Transformer(TransformerConfig.from_name("transformer-tiny", **kw)).eval()


def ids(b, t, v=64, seed=0):
    return torch.randint(4, v, (b, t), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------- smoke


def assert_all_parameters_get_gradients(model, loss):
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def test_gpt_smoke_shapes_loss_and_backward():
    m = gpt().train()
    x = ids(2, 9)
    out = m(x, labels=x)
    assert out.logits.shape == (2, 9, 64) and out.last_hidden_state.shape == (2, 9, 32)
    assert abs(out.loss.item() - torch.log(torch.tensor(64.0)).item()) < 0.5  # untrained ≈ ln V
    assert_all_parameters_get_gradients(m, out.loss)


def test_bert_smoke_mlm_and_classifier():
    m = bert(num_labels=3, label_names=["a", "b", "c"]).train()
    x = ids(2, 7)
    out = m(x, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and out.pooler_output.shape == (2, 32)
    mlm_labels = torch.full_like(x, -100)
    mlm_labels[:, 2] = x[:, 2]
    out2 = m(x, labels=mlm_labels, head="mlm")
    assert out2.logits.shape == (2, 7, 64)
    assert_all_parameters_get_gradients(m, out.loss + out2.loss)
    assert m(x, head="none").logits is None


def test_transformer_smoke_and_backward():
    m = transformer().train()
    src, tgt = ids(2, 6), ids(2, 5, seed=1)
    out = m(src, tgt, labels=tgt)
    assert out.logits.shape == (2, 5, 64) and out.encoder_last_hidden_state.shape == (2, 6, 32)
    assert_all_parameters_get_gradients(m, out.loss)


@pytest.mark.parametrize("norm_first", [False, True])
def test_layers_and_stacks_smoke(norm_first):
    cfg = TransformerConfig.from_name("transformer-tiny", norm_first=norm_first, dropout=0.0)
    x, memory = torch.randn(2, 5, 32, requires_grad=True), torch.randn(2, 7, 32, requires_grad=True)
    y, w = EncoderLayer(cfg)(x, return_weights=True)
    assert y.shape == x.shape and w.shape == (2, 4, 5, 5)
    y, ws, wc = DecoderLayer(cfg)(x, memory, return_weights=True)
    assert ws.shape == (2, 4, 5, 5) and wc.shape == (2, 4, 5, 7)
    h, _ = Encoder(cfg)(x)
    d, _, _ = Decoder(cfg)(x, h)
    ff = PositionwiseFeedForward(32, 64, "gelu")(x)
    (d.sum() + ff.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_sinusoidal_encoding_matches_the_paper_formula():
    pe = sinusoidal_table(50, 16)
    pos, i = 7, 3
    angle = pos / 10000 ** (2 * i / 16)
    assert abs(pe[pos, 2 * i] - torch.sin(torch.tensor(angle))) < 1e-6
    assert abs(pe[pos, 2 * i + 1] - torch.cos(torch.tensor(angle))) < 1e-6
    halves = sinusoidal_table(50, 16, "halves")
    assert abs(halves[pos, i] - pe[pos, 2 * i]) < 1e-6 and abs(halves[pos, 8 + i] - pe[pos, 2 * i + 1]) < 1e-6
    enc = SinusoidalPositionalEncoding(50, 16)
    assert "table" not in enc.state_dict()  # fixed, not saved


def test_transformer_embeddings_are_scaled_by_sqrt_d_model():
    m = transformer(dropout=0.0)
    x = ids(1, 3)
    assert torch.allclose(m.src_emb(x), m.src_emb.weight[x] * 32**0.5)
    assert m.tgt_emb is m.src_emb and m.generator.weight is m.src_emb.weight


# -------------------------------------------------------------------------- causality


def perturb_future(x, t, seed=5):
    y = x.clone()
    y[:, t + 1:] = ids(x.shape[0], x.shape[1] - t - 1, seed=seed)
    return y


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_gpt_future_tokens_never_change_the_past(scale):
    m = gpt()
    with torch.no_grad():
        for layer in m.decoder.layers:
            layer.self_attn.w_qkv.weight.mul_(scale)  # huge scores: a leaky mask would show
    x = ids(2, 12)
    for t in (0, 5, 10):
        y = perturb_future(x, t)
        a, b = m(x).logits, m(y).logits
        assert (a[:, : t + 1] - b[:, : t + 1]).abs().max() == 0
        assert (a[:, t + 1:] - b[:, t + 1:]).abs().max() > 0  # the test can see a change


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_decoder_future_targets_never_change_the_past(scale):
    m = transformer()
    with torch.no_grad():
        for layer in m.decoder.layers:
            layer.self_attn.w_qkv.weight.mul_(scale)
    src, tgt = ids(2, 6), ids(2, 10, seed=2)
    for t in (0, 4, 8):
        a = m(src, tgt).logits
        b = m(src, perturb_future(tgt, t)).logits
        assert (a[:, : t + 1] - b[:, : t + 1]).abs().max() == 0
        assert (a[:, t + 1:] - b[:, t + 1:]).abs().max() > 0


# ---------------------------------------------------------------------------- padding


def test_bert_padding_never_changes_real_positions():
    m = bert()
    x = ids(1, 6)
    alone = m(x).last_hidden_state
    padded = torch.cat([x, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.tensor([[1] * 6 + [0] * 4])
    out = m(padded, attention_mask=mask).last_hidden_state
    assert (out[:, :6] - alone).abs().max() < 1e-5
    # the padding really would matter without the mask
    assert (m(padded).last_hidden_state[:, :6] - alone).abs().max() > 1e-3


def test_batched_bert_equals_one_at_a_time():
    m = bert()
    a, b = ids(1, 4, seed=1), ids(1, 7, seed=2)
    batch = torch.zeros(2, 7, dtype=torch.long)
    batch[0, :4], batch[1] = a[0], b[0]
    mask = torch.tensor([[1] * 4 + [0] * 3, [1] * 7])
    out = m(batch, attention_mask=mask, head="mlm").logits
    assert (out[0, :4] - m(a, head="mlm").logits[0]).abs().max() < 1e-5
    assert (out[1] - m(b, head="mlm").logits[0]).abs().max() < 1e-5


def test_encoder_padding_never_changes_real_positions_nor_the_decoder():
    m = transformer()
    src, tgt = ids(1, 5), ids(1, 4, seed=3)
    alone = m(src, tgt)
    padded = torch.cat([src, torch.zeros(1, 3, dtype=torch.long)], 1)
    out = m(padded, tgt, src_mask=torch.tensor([[1] * 5 + [0] * 3]))
    assert (out.encoder_last_hidden_state[:, :5] - alone.encoder_last_hidden_state).abs().max() < 1e-5
    assert (out.logits - alone.logits).abs().max() < 1e-5


def test_gpt_left_padding_with_positions_from_the_mask_equals_unpadded():
    m = gpt()
    x = ids(1, 5)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), x], 1)
    mask = torch.tensor([[0] * 3 + [1] * 5])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = m(padded, attention_mask=mask, position_ids=positions).logits
    assert (out[:, 3:] - m(x).logits).abs().max() < 1e-5
    assert torch.isfinite(out).all()  # pad rows attend to nothing: zeros, not NaN


# --------------------------------------------------------------------------- KV cache


@pytest.mark.parametrize("chunks", [[4] + [1] * 6, [3, 2, 5]])
def test_gpt_kv_cache_equals_full_forward(chunks):
    m = gpt()
    x = ids(2, sum(chunks))
    full = m(x).logits
    cache, outs, start = m.new_cache(), [], 0
    for n in chunks:
        outs.append(m(x[:, start:start + n], cache=cache).logits)
        start += n
    assert (torch.cat(outs, 1) - full).abs().max() < 1e-5


def test_gpt_kv_cache_respects_the_max_len():
    m = gpt(max_len=8)
    cache = m.new_cache()
    m(ids(1, 6), cache=cache)
    with pytest.raises(ValueError, match="max_len=8"):
        m(ids(1, 3), cache=cache)


@pytest.mark.parametrize("chunks", [[1] * 6, [2, 1, 3]])
def test_transformer_decoder_kv_cache_equals_full_forward(chunks):
    m = transformer()
    src, tgt = ids(2, 7), ids(2, sum(chunks), seed=4)
    src_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    full = m(src, tgt, src_mask=src_mask).logits
    memory, _ = m.encode(src, src_mask)
    cache, outs, start = m.new_cache(), [], 0
    for n in chunks:
        logits, *_ = m.decode(tgt[:, start:start + n], memory, src_mask, cache=cache)
        outs.append(logits)
        start += n
    assert (torch.cat(outs, 1) - full).abs().max() < 1e-5


# ------------------------------------------------------------------------- attentions


def test_attentions_are_labelled_rows_sum_to_one_and_are_not_stored():
    m = transformer()
    src, tgt = ids(1, 6), ids(1, 4, seed=1)
    out = m(src, tgt, return_attentions=True)
    kinds = [(a.kind, a.layer) for a in out.attentions]
    assert kinds == [("encoder-self", 0), ("encoder-self", 1), ("decoder-self", 0), ("cross", 0),
                     ("decoder-self", 1), ("cross", 1)]
    assert out.attention("cross", 1).shape == (1, 4, 4, 6)
    dec = out.attention("decoder-self", 0)
    assert torch.allclose(dec.sum(-1), torch.ones(1, 4, 4), atol=1e-5)
    assert (dec.triu(1) == 0).all()  # masked self-attention never looks ahead
    # the same logits with or without weights (math path vs fused path)
    assert (m(src, tgt).logits - out.logits).abs().max() < 1e-5
    for module in m.modules():
        assert not any(isinstance(v, torch.Tensor) for v in vars(module).values())
    with pytest.raises(KeyError, match="no cross attention at layer 5"):
        out.attention("cross", 5)


def test_gpt_and_bert_attentions():
    g = gpt()(ids(1, 5), return_attentions=True)
    assert [a.kind for a in g.attentions] == ["decoder-self"] * 2
    b = bert()(ids(1, 5), attention_mask=torch.tensor([[1, 1, 1, 0, 0]]), return_attentions=True)
    w = b.attention("encoder-self", 0)
    assert w.shape == (1, 4, 5, 5) and (w[..., 3:] == 0).all()


def test_dropout_is_active_in_training_only():
    m = gpt(dropout=0.5)
    x = ids(1, 6)
    assert torch.equal(m(x).logits, m(x).logits)
    m.train()
    assert not torch.equal(m(x).logits, m(x).logits)


# -------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda: torch.tensor([[1, 2, 64]]), ValueError, "token id 64 at position \\[0, 2\\]"),
        (lambda: torch.tensor([[1, -1]]), ValueError, "token id -1"),
        (lambda: torch.zeros(1, 65, dtype=torch.long), ValueError, "more than max_len=64"),
        (lambda: torch.tensor([[1.0, 2.0]]), TypeError, "integer token ids"),
        (lambda: torch.zeros(1, 0, dtype=torch.long), ValueError, "empty"),
        (lambda: torch.zeros(0, 3, dtype=torch.long), ValueError, "empty"),
        (lambda: torch.tensor([1, 2, 3]), ValueError, "shape \\(B, T\\)"),
        (lambda: [[1, 2]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_input_ids_are_refused_by_every_family(make, exc, match):
    with pytest.raises(exc, match=match):
        gpt()(make())
    with pytest.raises(exc, match=match):
        bert()(make())
    with pytest.raises(exc, match=match.replace("input_ids", "src_ids")):
        transformer()(make(), ids(1, 2))


def test_a_mask_that_does_not_fit_is_refused():
    x = ids(2, 5)
    with pytest.raises(ValueError, match="attention_mask has shape \\(2, 4\\)"):
        gpt()(x, attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="src_mask has shape"):
        transformer()(x, x, src_mask=torch.ones(3, 5))
    with pytest.raises(ValueError, match="token_type_ids"):
        bert()(x, token_type_ids=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels has shape"):
        gpt()(x, labels=x[:, :3])
