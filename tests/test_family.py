"""The family protocol and the ActivationCache: every family answers the same questions, and the
cache's arithmetic adds up to what the model computes."""

from __future__ import annotations

import pytest
import torch

from conftest import random_gpt, random_transformer, randomize
from glassformer.models import BERT, BERTConfig
from glassformer.models.activations import DecompositionError, decomposition_names
from glassformer.models.family import HeadError, HeadRef


def random_bert(**kw):
    torch.manual_seed(0)
    return randomize(BERT(BERTConfig.from_name("bert-tiny", **{"dropout": 0.0, **kw})), std=0.1)


def ids(n=7, seed=0, v=60):
    return torch.randint(3, v, (2, n), generator=torch.Generator().manual_seed(seed))


def test_each_family_states_its_anatomy():
    gpt, bert, seq = random_gpt(), random_bert(), random_transformer()
    assert gpt.stacks == ("decoder",) and bert.stacks == ("encoder",) and seq.stacks == ("encoder", "decoder")
    assert [s.kind for s in seq.attentions_spec()] == ["encoder-self", "decoder-self", "cross"]
    cross = seq.attention_spec("cross")
    assert (cross.stack, cross.site, cross.label, cross.queries, cross.keys) == ("decoder", "cross", "cross", "target", "source")
    assert gpt.main_attention.kind == "decoder-self" and gpt.main_attention.causal
    assert bert.main_attention.kind == "encoder-self" and not bert.main_attention.causal
    assert seq.main_attention.kind == "decoder-self"
    assert (gpt.predicts, bert.predicts, seq.predicts) == ("next", "masked", "next")
    assert random_bert(mlm_head=False, num_labels=2).predicts == "none"
    assert gpt.needs_target is False and seq.needs_target is True


def test_head_labels_round_trip_and_bad_labels_are_named():
    seq = random_transformer()
    for spec in seq.attentions_spec():
        for ref in spec.heads():
            assert seq.parse_head(ref.label) == ref
    assert seq.parse_head("1.0") == HeadRef("decoder-self", 1, 0)  # a bare label: the main attention
    assert seq.parse_head("1.0", kind="encoder-self").label == "encoder.1.0"
    assert seq.parse_head((0, 1)).label == "decoder.0.1"
    n_layers = seq.attention_spec("cross").n_layers
    with pytest.raises(HeadError, match="layer 9 is out of range"):
        seq.parse_head("cross.9.0")
    with pytest.raises(HeadError, match="head 99 is out of range"):
        seq.parse_head(f"cross.{n_layers - 1}.99")
    with pytest.raises(HeadError, match="not an attention"):
        seq.parse_head("ffn.0.0")
    with pytest.raises(HeadError, match="no cross attention"):
        random_gpt().parse_head("cross.0.0")
    with pytest.raises(HeadError, match="integers"):
        seq.parse_head("a.b")


def test_forward_inputs_call_the_model_as_its_own_signature_does():
    gpt, seq = random_gpt(), random_transformer()
    x = ids()
    args, kwargs = gpt.forward_inputs(x, attention_mask=torch.ones_like(x))
    torch.testing.assert_close(gpt(*args, **kwargs).logits, gpt(x).logits)
    tgt = ids(5, seed=1)
    args, kwargs = seq.forward_inputs(x, tgt)
    torch.testing.assert_close(seq(*args, **kwargs).logits, seq(x, tgt).logits)
    with pytest.raises(ValueError, match="needs tgt_ids"):
        seq.forward_inputs(x)
    with pytest.raises(ValueError, match="only for an encoder-decoder"):
        gpt.forward_inputs(x, tgt)


@pytest.mark.parametrize("make", [random_gpt, lambda: random_transformer(norm_first=True)], ids=["gpt", "seq2seq-preln"])
def test_readout_of_the_last_stream_is_the_models_logits(make):
    model = make()
    args, kwargs = model.forward_inputs(ids(), ids(5, seed=1) if model.needs_target else None)
    with torch.no_grad():
        out, cache = model.run_with_cache(*args, **kwargs)
        labels, resid = cache.accumulated_resid()
        assert labels[0] == "embed" and len(labels) == model.main_attention.n_layers + 1
        torch.testing.assert_close(model.readout(resid[-1]), out.logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "make",
    [random_gpt, lambda: random_gpt(bias=False), lambda: random_transformer(norm_first=True)],
    ids=["gpt", "gpt-nobias", "seq2seq-preln"],
)
def test_parts_sum_to_the_stream_and_attributions_sum_to_the_logit(make):
    model = make()
    args, kwargs = model.forward_inputs(ids(), ids(5, seed=1) if model.needs_target else None)
    with torch.no_grad():
        out, cache = model.run_with_cache(*args, names=decomposition_names(model), **kwargs)
        pos = 3
        labels, parts = cache.decompose_resid(pos)
        assert len(labels) == parts.shape[0] == len(set(labels))
        torch.testing.assert_close(parts.sum(0), cache.final_stream(pos), atol=1e-5, rtol=1e-5)
        tokens = out.logits[:, pos].argmax(-1)  # (B,)
        attrs = cache.logit_attrs(parts, tokens, pos)  # (N, B)
        logit = out.logits[torch.arange(2), pos, tokens]
        torch.testing.assert_close(attrs.sum(0) + cache.logit_constant(tokens), logit, atol=1e-4, rtol=1e-4)
        # a head's share is not the same for every head (the check can fail when the slicing is wrong)
        heads = [i for i, name in enumerate(labels) if name.count(".") == 2 and not name.endswith("ffn")]
        assert attrs[heads, 0].std() > 0


def test_stack_heads_is_the_layers_side_by_side():
    model = random_gpt()
    with torch.no_grad():
        _, cache = model.run_with_cache(ids())
    stacked = cache.stack_heads(site="pattern")
    assert stacked.shape[0] == model.main_attention.n_layers
    torch.testing.assert_close(stacked[1], cache["decoder.1.attn.pattern"])


def test_post_norm_models_refuse_the_decomposition_and_missing_names_are_named():
    bert = random_bert()
    with torch.no_grad():
        _, cache = bert.run_with_cache(ids())
    with pytest.raises(DecompositionError, match="post-norm"):
        cache.decompose_resid(0)
    gpt = random_gpt()
    with torch.no_grad():
        _, cache = gpt.run_with_cache(ids(), names=["decoder.embed"])
    with pytest.raises(DecompositionError, match="holds no 'decoder.0.attn.z'"):
        cache.decompose_resid(0)
    with pytest.raises(DecompositionError, match="token ids must be"):
        cache.logit_attrs(torch.zeros(1, 2, gpt.config.d_model), 10**6, 0)


def test_a_heads_part_is_what_removing_that_head_takes_out_of_its_block():
    model = random_gpt()
    x, pos, layer, head = ids(), 4, 1, 2
    with torch.no_grad():
        _, cache = model.run_with_cache(x)
        labels, parts = cache.decompose_resid(pos)

        def silence(z):  # (B, H, T, D)
            z = z.clone()
            z[:, head] = 0.0
            return z

        kept = {}
        model.run_with_hooks(x, hooks={f"decoder.{layer}.attn.z": silence,
                                       f"decoder.{layer}.attn.out": lambda t: kept.setdefault("out", t)})
    removed = cache[f"decoder.{layer}.attn.out"][:, pos] - kept["out"][:, pos]  # (B, C)
    torch.testing.assert_close(parts[labels.index(f"decoder.{layer}.{head}")], removed, atol=1e-5, rtol=1e-5)


def test_attributions_sum_to_the_logit_with_rmsnorm_rotary_and_grouped_heads():
    model = random_gpt(positions="rotary", norm="rmsnorm", ffn="swiglu", n_kv_heads=2, bias=False)
    with torch.no_grad():
        out, cache = model.run_with_cache(ids())
        labels, parts = cache.decompose_resid(5)
        tokens = out.logits[:, 5].argmax(-1)
        attrs = cache.logit_attrs(parts, tokens, 5)
    torch.testing.assert_close(attrs.sum(0) + cache.logit_constant(tokens), out.logits[torch.arange(2), 5, tokens],
                               atol=1e-4, rtol=1e-4)
