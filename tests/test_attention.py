"""Scaled dot-product attention: the explicit four steps agree with the fused kernel, masks mean
what they say, and a fully masked row is zeros rather than NaN."""

import math

import pytest
import torch

from glassformer.attention import (
    KVCache,
    MultiHeadAttention,
    causal_mask,
    combine_masks,
    padding_mask,
    scaled_dot_product_attention,
)

torch.manual_seed(0)


def qkv(b=2, h=3, tq=5, tk=5, d=8, dtype=torch.float32, grad=True):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(b, h, tq, d, generator=g, dtype=dtype)
    k = torch.randn(b, h, tk, d, generator=g, dtype=dtype)
    v = torch.randn(b, h, tk, d, generator=g, dtype=dtype)
    return [t.requires_grad_(grad) for t in (q, k, v)]


def run(backend, q, k, v, **kw):
    z, w = scaled_dot_product_attention(q, k, v, backend=backend, **kw)
    grads = torch.autograd.grad((z * torch.linspace(-1, 1, z.numel()).view_as(z)).sum(), (q, k, v))
    return z, w, grads


def random_mask(b, tq, tk, seed=3):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(b, 1, tq, tk, generator=g) > 0.4
    m[..., 0] = True  # every row sees at least one key here
    return m


@pytest.mark.parametrize("tq,tk", [(5, 5), (3, 7), (1, 6), (6, 2)])
@pytest.mark.parametrize("masked", [False, True])
def test_math_and_fused_agree_values_and_gradients(tq, tk, masked):
    q, k, v = qkv(tq=tq, tk=tk)
    mask = random_mask(2, tq, tk) if masked else None
    z_m, _, g_m = run("math", q, k, v, mask=mask)
    z_f, _, g_f = run("fused", q, k, v, mask=mask)
    assert (z_m - z_f).abs().max() < 1e-5
    for a, b in zip(g_m, g_f):
        assert (a - b).abs().max() < 1e-5


@pytest.mark.parametrize("tq,tk", [(5, 5), (2, 6), (1, 4)])
def test_causal_agrees_between_paths_and_matches_explicit_mask(tq, tk):
    q, k, v = qkv(tq=tq, tk=tk)
    z_m, _, g_m = run("math", q, k, v, is_causal=True)
    z_f, _, g_f = run("fused", q, k, v, is_causal=True)
    z_x, _, _ = run("math", q, k, v, mask=causal_mask(tq, tk))
    assert (z_m - z_f).abs().max() < 1e-5
    assert (z_m - z_x).abs().max() < 1e-6
    for a, b in zip(g_m, g_f):
        assert (a - b).abs().max() < 1e-5


def test_auto_backend_returns_weights_only_when_asked_and_they_match_the_formula():
    q, k, v = qkv(grad=False)
    z, w = scaled_dot_product_attention(q, k, v)
    assert w is None
    z2, w2 = scaled_dot_product_attention(q, k, v, return_weights=True)
    expected = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    assert (w2 - expected).abs().max() < 1e-6
    assert (z2 - expected @ v).abs().max() < 1e-5
    assert (z - z2).abs().max() < 1e-5
    assert torch.allclose(w2.sum(-1), torch.ones(w2.shape[:-1]))


def test_causal_mask_is_aligned_bottom_right():
    m = causal_mask(2, 4)
    # the last 2 of 4 positions: query 0 is position 2, query 1 is position 3
    assert m.tolist() == [[True, True, True, False], [True, True, True, True]]
    assert causal_mask(3, 3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    with pytest.raises(ValueError, match="Tq <= Tk"):
        causal_mask(3, 2)


def test_masked_keys_get_exactly_zero_weight_and_do_not_change_output():
    q, k, v = qkv(b=1, tq=4, tk=6, grad=False)
    keep = torch.tensor([True, True, False, True, False, True])
    _, w = scaled_dot_product_attention(q, k, v, mask=keep.view(1, 1, 1, 6), return_weights=True)
    assert (w[..., ~keep] == 0).all()
    # changing the masked keys/values changes nothing
    k2, v2 = k.clone(), v.clone()
    k2[..., ~keep, :] = 1e4
    v2[..., ~keep, :] = -1e4
    for backend in ("math", "fused"):
        z1, _ = scaled_dot_product_attention(q, k, v, mask=keep.view(1, 1, 1, 6), backend=backend)
        z2, _ = scaled_dot_product_attention(q, k2, v2, mask=keep.view(1, 1, 1, 6), backend=backend)
        assert (z1 - z2).abs().max() < 1e-5


def test_padding_and_causal_combine():
    attn = torch.tensor([[0, 1, 1]])  # left padding
    m = combine_masks(padding_mask(attn), causal_mask(3, 3))
    assert m.shape == (1, 1, 3, 3)
    assert m[0, 0].tolist() == [[False, False, False], [False, True, False], [False, True, True]]
    assert combine_masks(None, None) is None


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("backend", ["math", "fused"])
def test_fully_masked_rows_give_zeros_and_finite_gradients(dtype, tol, backend):
    q, k, v = qkv(tq=4, tk=5, dtype=dtype)
    mask = random_mask(2, 4, 5)
    mask[0, :, 1, :] = False  # batch 0, query 1 sees nothing
    mask[1, :, 3, :] = False
    z, _, grads = run(backend, q, k, v, mask=mask)
    assert torch.isfinite(z).all()
    assert (z[0, :, 1] == 0).all() and (z[1, :, 3] == 0).all()
    for g in grads:
        assert torch.isfinite(g).all()
    assert (grads[0][0, :, 1] == 0).all()  # a query that sees nothing gets no gradient
    # the other rows are untouched by the trick
    z_ref, _, _ = run("math", q.float().detach().requires_grad_(), k.float().detach().requires_grad_(),
                      v.float().detach().requires_grad_(), mask=mask)
    assert (z.float() - z_ref).abs().max() < tol


def test_fully_masked_rows_weights_are_zero():
    q, k, v = qkv(b=1, tq=2, tk=3, grad=False)
    mask = torch.tensor([[True, False, True], [False, False, False]]).view(1, 1, 2, 3)
    _, w = scaled_dot_product_attention(q, k, v, mask=mask, return_weights=True)
    assert (w[0, :, 1] == 0).all()
    assert torch.allclose(w[0, :, 0].sum(-1), torch.ones(3))


def test_bad_masks_and_backends_are_refused():
    q, k, v = qkv(grad=False)
    with pytest.raises(TypeError, match="bool"):
        scaled_dot_product_attention(q, k, v, mask=torch.ones(5, 5))
    with pytest.raises(ValueError, match="does not broadcast"):
        scaled_dot_product_attention(q, k, v, mask=torch.ones(4, 5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="fused backend cannot return"):
        scaled_dot_product_attention(q, k, v, return_weights=True, backend="fused")
    with pytest.raises(ValueError, match="unknown attention backend"):
        scaled_dot_product_attention(q, k, v, backend="flash")


def test_dropout_changes_weights_only_when_on():
    q, k, v = qkv(grad=False)
    z0, _ = scaled_dot_product_attention(q, k, v, backend="math")
    z1, _ = scaled_dot_product_attention(q, k, v, backend="math", dropout_p=0.5)
    assert (z0 - z1).abs().max() > 1e-3


# ----------------------------------------------------------------- multi-head attention


@pytest.mark.parametrize("chunks", [[1] * 6, [3, 1, 2], [6]])
def test_mha_kv_cache_equals_full_causal_self_attention(chunks):
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 6, 16)
    full, _ = mha(x, is_causal=True)
    cache, outs, start = KVCache(), [], 0
    for n in chunks:
        out, _ = mha(x[:, start:start + n], is_causal=True, cache=cache)
        outs.append(out)
        start += n
    assert len(cache) == 6
    assert (torch.cat(outs, 1) - full).abs().max() < 1e-5


def test_mha_cross_attention_cache_computes_memory_once():
    mha = MultiHeadAttention(16, 4, cross=True).eval()
    x, memory = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    full, w = mha(x, memory, return_weights=True)
    assert w.shape == (2, 4, 3, 5)
    cache = KVCache()
    a, _ = mha(x[:, :2], memory, cache=cache)
    k_first = cache.k
    b, _ = mha(x[:, 2:], memory=None, cache=cache)  # memory no longer needed
    assert cache.k is k_first  # computed on the first call, reused after
    assert (torch.cat([a, b], 1) - full).abs().max() < 1e-5
    with pytest.raises(ValueError, match="memory"):
        mha(x)


def test_mha_heads_are_independent_slices_of_the_projection():
    """Changing W^Q of head 0 changes only head 0's part of Concat(heads)."""
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(1, 5, 16)
    captured = []
    hook = mha.w_o.register_forward_hook(lambda m, i, o: captured.append(i[0].detach()))
    mha(x)
    with torch.no_grad():
        mha.w_qkv.weight[:4] *= 3.0  # rows 0..3 of W^Q belong to head 0
    mha(x)
    hook.remove()
    before, after = captured
    assert (before[..., :4] - after[..., :4]).abs().max() > 1e-4
    assert (before[..., 4:] - after[..., 4:]).abs().max() < 1e-6


def test_mha_keeps_no_attention_state():
    mha = MultiHeadAttention(16, 4)
    names_before = set(vars(mha))
    mha(torch.randn(1, 4, 16), return_weights=True)
    assert set(vars(mha)) == names_before
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 4)
