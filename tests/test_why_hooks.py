"""Named activations and interventions: run_with_cache, run_with_hooks, ablate_heads, patch, last_only."""

import pytest
import torch

from glassformer.explain.hooks import ablate_heads, patch
from glassformer.models import BERT, GPT, BERTConfig, GPTConfig, Transformer, TransformerConfig
from glassformer.models.hooks import ActivationNameError, layer_sites


def tiny(family: str, **kw):
    torch.manual_seed(0)
    if family == "gpt":
        return GPT(GPTConfig.from_name("gpt-tiny", **kw)).eval()
    if family == "bert":
        return BERT(BERTConfig.from_name("bert-tiny", **kw)).eval()
    return Transformer(TransformerConfig.from_name("transformer-tiny", **kw)).eval()


def inputs(family: str, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (2, 7), generator=g)
    if family == "transformer":
        return (ids, torch.randint(0, 64, (2, 5), generator=g))
    return (ids,)


FAMILIES = ["gpt", "bert", "transformer"]
# sites whose hooks keep the fused attention kernel (scores/pattern switch to the explicit path)
FUSED_SAFE = ("resid_pre", "attn.q", "attn.k", "attn.v", "attn.z", "attn.out", "resid_mid", "ffn.pre", "ffn.post",
              "ffn.out", "resid_post", "embed", "final_norm")


@pytest.mark.parametrize("family", FAMILIES)
def test_run_with_cache_gives_every_documented_name_with_its_shape(family):
    model = tiny(family)
    args = inputs(family)
    with torch.no_grad():
        out, cache = model.run_with_cache(*args)
    assert list(cache) == model.activation_names()  # in forward order, nothing missing or extra
    stacks = ["encoder", "decoder"] if family == "transformer" else ["decoder" if family == "gpt" else "encoder"]
    for stack in stacks:
        t = args[0].shape[1] if stack == "encoder" else args[-1].shape[1]
        cross = family == "transformer" and stack == "decoder"
        assert [n.split(".", 2)[2] for n in cache if n.startswith(f"{stack}.0.")] == layer_sites(cross)
        assert cache[f"{stack}.embed"].shape == (2, t, 32)
        assert cache[f"{stack}.1.attn.q"].shape == (2, 4, t, 8)
        assert cache[f"{stack}.1.attn.pattern"].shape == (2, 4, t, t)
        assert cache[f"{stack}.1.attn.z"].shape == (2, 4, t, 8)
        assert cache[f"{stack}.1.ffn.post"].shape == (2, t, 64)
        assert torch.equal(cache[f"{stack}.1.resid_post"], cache[f"{stack}.1.resid_post"])
    if family == "gpt":  # pre-LN: the final norm is the last hidden state
        assert torch.equal(cache["decoder.final_norm"], out.last_hidden_state)
    else:  # post-LN: the last layer's output is the last hidden state
        last = stacks[-1]
        assert torch.equal(cache[f"{last}.1.resid_post"], out.last_hidden_state)


@pytest.mark.parametrize("family", FAMILIES)
def test_run_with_cache_patterns_equal_return_attentions_patterns(family):
    model = tiny(family)
    with torch.no_grad():
        ref = model(*inputs(family), return_attentions=True)
        out, cache = model.run_with_cache(*inputs(family))
    prefix = {"encoder-self": "encoder.{}.attn", "decoder-self": "decoder.{}.attn", "cross": "decoder.{}.cross"}
    assert ref.attentions
    for a in ref.attentions:
        assert torch.equal(cache[prefix[a.kind].format(a.layer) + ".pattern"], a.weights), (a.kind, a.layer)
    assert torch.equal(out.logits, ref.logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_hooks_leave_the_logits_bit_identical(family):
    model = tiny(family)
    args = inputs(family)
    seen = []

    def identity(x):
        seen.append(1)
        return x

    with torch.no_grad():
        plain = model(*args).logits
        fused_names = [n for n in model.activation_names() if n.split(".", 2)[-1] in FUSED_SAFE or n.endswith(FUSED_SAFE)]
        out = model.run_with_hooks(*args, hooks={n: identity for n in fused_names})
        assert len(seen) == len(fused_names)
        assert torch.equal(out.logits, plain)
        # reading-only hooks (returning None) on every name, scores and pattern included: the explicit
        # path, so the reference is the explicit path too (return_attentions=True)
        explicit = model(*args, return_attentions=True).logits
        out = model.run_with_hooks(*args, hooks={n: (lambda x: None) for n in model.activation_names()})
        assert torch.equal(out.logits, explicit)
        out = model.run_with_hooks(*args, hooks={n: identity for n in model.activation_names()})
        assert torch.equal(out.logits, explicit)


def test_a_hook_that_replaces_changes_what_follows_and_names_are_checked():
    model = tiny("gpt")
    ids = inputs("gpt")[0]
    with torch.no_grad():
        plain = model(ids).logits
        out = model.run_with_hooks(ids, hooks={"decoder.1.ffn.out": lambda x: x + 1.0})
    assert not torch.allclose(out.logits, plain)
    with pytest.raises(ActivationNameError, match="did you mean 'decoder.embed'"):
        model.run_with_hooks(ids, hooks={"embed": lambda x: x})
    with pytest.raises(ActivationNameError, match="not a named activation"):
        model.run_with_cache(ids, names=["decoder.9.resid_post"])
    with pytest.raises(ValueError, match="returned \\(2, 7\\); expected a tensor of shape \\(2, 7, 32\\)"):
        model.run_with_hooks(ids, hooks={"decoder.0.resid_pre": lambda x: x[..., 0]})


def test_names_limit_what_the_cache_keeps_and_keep_the_fused_path():
    model = tiny("gpt")
    ids = inputs("gpt")[0]
    with torch.no_grad():
        out, cache = model.run_with_cache(ids, names=["decoder.0.attn.z", "decoder.1.resid_post"])
    assert list(cache) == ["decoder.0.attn.z", "decoder.1.resid_post"]
    assert torch.equal(out.logits, model(ids).logits)  # nothing asked for the pattern: fused kernel kept


@pytest.mark.parametrize("family", FAMILIES)
def test_patching_clean_into_clean_changes_nothing(family):
    model = tiny(family)
    args = inputs(family)
    kw = {"tgt_ids": args[1]} if family == "transformer" else {}
    stack = "decoder" if family != "bert" else "encoder"
    with torch.no_grad():
        plain = model(*args).logits
        for name in (f"{stack}.embed", f"{stack}.0.attn.z", f"{stack}.1.resid_mid", f"{stack}.1.ffn.post"):
            assert torch.equal(patch(model, args[0], args[0], name, **kw).logits, plain), name
            assert torch.equal(patch(model, args[0], args[0], name, positions=[1, 3], **kw).logits, plain), name


def test_patching_the_last_residual_stream_restores_the_clean_logits():
    model = tiny("gpt")
    clean, corrupted = inputs("gpt", 1)[0], inputs("gpt", 2)[0]
    with torch.no_grad():
        want = model(clean).logits
        other = model(corrupted).logits
        full = patch(model, clean, corrupted, "decoder.1.resid_post").logits
        at3 = patch(model, clean, corrupted, "decoder.1.resid_post", positions=[3]).logits
    assert torch.allclose(full, want, atol=1e-6)
    assert torch.allclose(at3[:, 3], want[:, 3], atol=1e-6)
    assert torch.equal(at3[:, 4:], other[:, 4:])  # later positions read position 3 only through layer 1's output
    with pytest.raises(ValueError, match="same shape"):
        patch(model, clean, corrupted[:, :5], "decoder.0.resid_pre")
    with pytest.raises(ValueError, match="position 9 is out of range"):
        patch(model, clean, corrupted, "decoder.0.resid_pre", positions=[9])


@pytest.mark.parametrize("mode", ["zero", "mean"])
@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_ablating_a_head_equals_editing_its_slice_of_the_w_o_input_by_hand(family, mode):
    model = tiny(family)
    ids = inputs(family)[0]
    stack = "decoder" if family == "gpt" else "encoder"
    layer, head, d = 1, 2, model.config.d_head
    mha = getattr(model, stack).layers[layer].self_attn
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names=[f"{stack}.{layer}.attn.z"])
        z = cache[f"{stack}.{layer}.attn.z"]  # (B, H, T, D)
        concat = z.transpose(1, 2).reshape(ids.shape[0], ids.shape[1], -1)  # (B, T, C) = W^O's input
        cols = slice(head * d, (head + 1) * d)
        concat[..., cols] = 0.0 if mode == "zero" else concat[..., cols].mean(dim=(0, 1))
        by_hand = concat @ mha.w_o.weight.T + mha.w_o.bias  # (B, T, C)
        ablated, seen = ablate_heads(model, ids, [(layer, head)], mode=mode), {}
        model.run_with_hooks(ids, hooks={
            **{n: f for n, f in _ablation(model, layer, head, mode).items()},
            f"{stack}.{layer}.attn.out": lambda x: seen.setdefault("out", x),
        })
        replaced = model.run_with_hooks(ids, hooks={f"{stack}.{layer}.attn.out": lambda x: by_hand})
        plain = model(ids).logits
    assert torch.allclose(seen["out"], by_hand, atol=1e-6)
    assert torch.allclose(ablated.logits, replaced.logits, atol=1e-5)
    assert not torch.allclose(ablated.logits, plain, atol=1e-4)  # the head mattered


def _ablation(model, layer, head, mode):
    from glassformer.explain.hooks import ablation_hooks

    return ablation_hooks(model, [(layer, head)], mode)  # a bare pair: the main attention


def test_ablate_heads_refuses_bad_heads_and_modes():
    model = tiny("gpt")
    ids = inputs("gpt")[0]
    with pytest.raises(ValueError, match="head 2.0: layer 2 is out of range 0..1"):
        ablate_heads(model, ids, [(2, 0)])
    with pytest.raises(ValueError, match="head 0.4: head 4 is out of range 0..3"):
        ablate_heads(model, ids, [(0, 4)])
    with pytest.raises(ValueError, match="unknown ablation mode"):
        ablate_heads(model, ids, [(0, 0)], mode="resample")


def test_last_only_gives_the_last_positions_logits():
    model = tiny("gpt")
    ids = inputs("gpt")[0]
    with torch.no_grad():
        full = model(ids).logits
        last = model(ids, last_only=True).logits
        assert last.shape == (2, 1, 64)
        assert torch.allclose(last, full[:, -1:], atol=1e-6)
        cache = model.new_cache()
        model(ids[:, :4], cache=cache, last_only=True)
        step = model(ids[:, 4:], cache=cache, last_only=True).logits
        assert torch.allclose(step, full[:, -1:], atol=1e-5)
    with pytest.raises(ValueError, match="last_only"):
        model(ids, labels=ids, last_only=True)


def test_last_only_on_the_encoder_decoder():
    model = tiny("transformer")
    src, tgt = inputs("transformer")
    with torch.no_grad():
        full = model(src, tgt).logits
        last = model(src, tgt, last_only=True).logits
        memory, _ = model.encode(src)
        logits, h, _, _ = model.decode(tgt, memory, last_only=True)
    assert last.shape == (2, 1, 64) and h.shape == (2, 5, 32)
    assert torch.allclose(last, full[:, -1:], atol=1e-6) and torch.allclose(logits, last, atol=1e-6)
    with pytest.raises(ValueError, match="last_only"):
        model(src, tgt, labels=tgt, last_only=True)


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_padding_masks_pass_through_run_with_cache(family):
    model = tiny(family)
    ids = inputs(family)[0]
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0  # right padding on the first row
    with torch.no_grad():
        ref = model(ids, attention_mask=mask, return_attentions=True)
        out, cache = model.run_with_cache(ids, attention_mask=mask, names=[f"{'decoder' if family == 'gpt' else 'encoder'}.0.attn.pattern"])
    pattern = next(iter(cache.values()))
    assert torch.equal(pattern, ref.attentions[0].weights)
    assert (pattern[0, :, :, -3:] == 0).all()  # nobody attends to padding
    # only layer 0 took the explicit path here (the other used the fused kernel): equal within rounding
    assert torch.allclose(out.logits, ref.logits, atol=1e-5)
