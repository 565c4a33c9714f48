"""glassformer.linear: Linear is plain nn.Linear; the decoding products of a prepared model
(glassformer.generation.layout.DecodingLinear) give nn.Linear's results, computed as W xᵀ for few
rows and as per-thread slices of a column-major W for one row; the LM head's fused loss."""

import pytest
import torch
import torch.nn.functional as F

from glassformer.generation.layout import (
    FEW_ROWS,
    DecodingLinear,
    few_rows_linear,
    inner_slices,
    split_inner_linear,
)
from glassformer.linear import Linear


def test_the_models_projection_is_plain_nn_linear():
    """No branching on grad mode, device, dtype or strides in the core: nn.Linear's own forward."""
    assert Linear.forward is torch.nn.Linear.forward
    lin = DecodingLinear(8, 12)
    x = torch.randn(3, 8)
    assert torch.equal(lin(x), F.linear(x, lin.weight, lin.bias))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(2, 16), (3, 5, 16), (FEW_ROWS, 16), (FEW_ROWS + 1, 16), (1, 16), (16,)])
def test_linear_equals_nn_linear_for_every_row_count(bias, shape):
    torch.manual_seed(0)
    lin = DecodingLinear(16, 24, bias=bias)
    x = torch.randn(*shape)
    with torch.no_grad():
        y = lin(x)
    assert y.shape == (*shape[:-1], 24) and y.is_contiguous()
    assert torch.allclose(y, F.linear(x, lin.weight, lin.bias), atol=1e-6)


def test_few_rows_path_is_the_transposed_product():
    torch.manual_seed(0)
    w, b, x = torch.randn(7, 5), torch.randn(7), torch.randn(2, 3, 5)
    y = few_rows_linear(x, w, b)
    assert torch.allclose(y, x @ w.T + b, atol=1e-6)
    assert torch.allclose(few_rows_linear(x, w, None), x @ w.T, atol=1e-6)


def test_few_rows_path_is_taken_only_where_it_pays(monkeypatch):
    calls = []
    import glassformer.generation.layout as linear

    real = linear.few_rows_linear
    monkeypatch.setattr(linear, "few_rows_linear", lambda *a: calls.append(1) or real(*a))
    lin = DecodingLinear(8, 8)
    x = torch.randn(4, 8)
    with torch.no_grad():
        lin(x)
        assert len(calls) == 1  # 4 rows, fp32, CPU, row-major weight, no gradients
        lin(torch.randn(FEW_ROWS + 1, 8))  # many rows: the usual product
        lin(torch.randn(1, 8))  # one row: the usual product
        lin.weight.data = lin.weight.data.t().contiguous().t()  # (in, out) storage
        lin(x)
        lin.weight.data = lin.weight.data.contiguous().double()
        lin.bias.data = lin.bias.data.double()
        lin(x.double())
    assert len(calls) == 1
    lin = DecodingLinear(8, 8)
    y = lin(x)  # with gradients: the usual product, and a backward pass through it
    y.sum().backward()
    assert len(calls) == 1 and lin.weight.grad is not None


def column_major(lin: DecodingLinear) -> DecodingLinear:
    lin.weight.data = lin.weight.data.t().contiguous().t()  # same (out, in) values, (in, out) storage
    return lin


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(24,), (1, 24), (1, 1, 24)])
@pytest.mark.parametrize("slices", [2, 3, 4])
def test_one_row_as_summed_slices_equals_nn_linear(bias, shape, slices):
    torch.manual_seed(0)
    lin = column_major(DecodingLinear(24, 40, bias=bias))
    x = torch.randn(*shape)
    y = split_inner_linear(x, lin.weight, lin.bias, slices)
    assert y.shape == (*shape[:-1], 40)
    assert torch.allclose(y, F.linear(x, lin.weight, lin.bias), atol=1e-5)


def test_inner_slices_follow_the_threads_and_divide_the_width():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        assert (inner_slices(2304, 768), inner_slices(768, 3072), inner_slices(1 << 18, 30)) == (4, 4, 3)
        assert inner_slices(1 << 19, 7) == 1  # 7 divides by no thread count
        assert inner_slices(320, 1280) == 1  # under SLICE_MIN_ELEMENTS: not worth the extra ops
        torch.set_num_threads(1)
        assert inner_slices(2304, 768) == 1  # one thread: nothing to share out
    finally:
        torch.set_num_threads(threads)


def test_one_row_slices_only_a_column_major_fp32_weight_without_gradients(monkeypatch):
    calls = []
    import glassformer.generation.layout as linear

    real = linear.split_inner_linear
    monkeypatch.setattr(linear, "split_inner_linear", lambda *a: calls.append(a[3]) or real(*a))
    monkeypatch.setattr(linear, "inner_slices", lambda n_out, n_in: 2)  # as on a 2-thread machine
    lin = DecodingLinear(8, 12)
    x = torch.randn(1, 8)
    with torch.no_grad():
        lin(x)  # row-major weight: the usual product
        assert calls == []
        column_major(lin)
        y = lin(x)
        assert calls == [2] and torch.allclose(y, F.linear(x, lin.weight, lin.bias), atol=1e-6)
        lin(torch.randn(3, 8))  # several rows: not sliced
        lin.double()
        lin(x.double())  # another dtype: the usual product
    assert calls == [2]
    lin = column_major(DecodingLinear(8, 12))
    lin(x).sum().backward()  # with gradients: the usual product, and a backward pass through it
    assert calls == [2] and lin.weight.grad is not None
    monkeypatch.setattr(linear, "inner_slices", lambda n_out, n_in: 1)  # one thread
    with torch.no_grad():
        lin(x)
    assert calls == [2]


# ------------------------------------------------------------------- the LM head and its loss fused

def usual_head_loss(h, w, b, labels):
    return F.cross_entropy(F.linear(h, w, b).float().flatten(0, -2), labels.flatten(), reduction="sum")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("ignored", [False, True])
@pytest.mark.parametrize("chunk_rows", [None, 7])  # one chunk, or chunks of 7 rows (the last one shorter)
def test_linear_cross_entropy_gives_the_usual_loss_and_gradients(monkeypatch, bias, ignored, chunk_rows):
    import glassformer.linear as lin

    v = 97
    monkeypatch.setattr(lin, "FUSED_MIN_VOCAB", 1)  # the fused path at a small vocabulary
    if chunk_rows:
        monkeypatch.setattr(lin, "LOGITS_CHUNK_BYTES", 4 * v * chunk_rows)
    torch.manual_seed(0)
    h = torch.randn(3, 17, 24, requires_grad=True)  # (B, T, C): 51 rows
    w = torch.randn(v, 24, requires_grad=True)
    b = torch.randn(v, requires_grad=True) if bias else None
    labels = torch.randint(0, v, (3, 17))
    if ignored:
        labels[:, ::3] = -100
    params = [t for t in (h, w, b) if t is not None]

    want = usual_head_loss(h, w, b, labels)
    want_grads = torch.autograd.grad(want * 0.37, params)  # a scale, as the trainer's 1 / targets
    got = lin.linear_cross_entropy(h, w, b, labels)
    got_grads = torch.autograd.grad(got * 0.37, params)
    assert torch.allclose(got, want, rtol=1e-5)
    for g, r in zip(got_grads, want_grads):
        assert torch.allclose(g, r, atol=1e-5), (g - r).abs().max()
    with torch.no_grad():
        assert torch.allclose(lin.linear_cross_entropy(h, w, b, labels), want, rtol=1e-5)
    # not vacuous: the ignored labels are really left out
    if ignored:
        assert not torch.allclose(got, usual_head_loss(h, w, b, labels.clamp(min=0)), rtol=1e-3)


def test_linear_cross_entropy_with_a_frozen_head_gives_the_input_gradient(monkeypatch):
    import glassformer.linear as lin

    monkeypatch.setattr(lin, "FUSED_MIN_VOCAB", 1)
    torch.manual_seed(0)
    h, w, b = torch.randn(9, 8, requires_grad=True), torch.randn(13, 8), torch.randn(13)  # W, b frozen
    labels = torch.randint(0, 13, (9,))
    (want,) = torch.autograd.grad(usual_head_loss(h, w, b, labels), [h])
    (got,) = torch.autograd.grad(lin.linear_cross_entropy(h, w, b, labels), [h])
    assert torch.allclose(got, want, atol=1e-6)


def test_linear_cross_entropy_backpropagates_once(monkeypatch):
    import glassformer.linear as lin

    monkeypatch.setattr(lin, "FUSED_MIN_VOCAB", 1)
    h, w = torch.randn(4, 8, requires_grad=True), torch.randn(11, 8, requires_grad=True)
    loss = lin.linear_cross_entropy(h, w, None, torch.randint(0, 11, (4,)))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="once"):
        loss.backward()


def test_gpt_loss_without_logits_equals_the_loss_from_logits(monkeypatch):
    import glassformer.linear as lin
    from glassformer.models import GPT, GPTConfig

    monkeypatch.setattr(lin, "FUSED_MIN_VOCAB", 1)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("gpt-tiny"))
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    labels = torch.randint(0, model.config.vocab_size, (2, 12))
    labels[0, :5] = -100
    usual = model(ids, labels=labels)
    usual_grads = torch.autograd.grad(usual.loss, list(model.parameters()))
    fused = model(ids, labels=labels, return_logits=False)
    assert fused.logits is None and torch.allclose(fused.loss, usual.loss, rtol=1e-5)
    for g, r in zip(torch.autograd.grad(fused.loss, list(model.parameters())), usual_grads):
        assert torch.allclose(g, r, atol=1e-6)
    with pytest.raises(ValueError, match="needs labels"):
        model(ids, return_logits=False)
    seen = model(ids, labels=labels, return_logits=False, return_attentions=True)
    assert len(seen.attentions) == model.config.n_layers and torch.allclose(seen.loss, usual.loss, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast keeps the usual path, logits included
        mixed = model(ids, labels=labels, return_logits=False)
    assert mixed.logits is not None and torch.isfinite(mixed.loss)


def test_importing_and_running_a_model_does_not_load_the_compiler():
    """torch._dynamo costs 1-2 s of every command's start-up; nothing on the eager path loads it."""
    import os
    import subprocess
    import sys

    from conftest import SRC

    code = ("import sys, torch\nfrom glassformer.models import GPT, GPTConfig\n"
            "m = GPT(GPTConfig.from_name('gpt-tiny', vocab_size=5000))\nids = torch.randint(0, 5000, (1, 8))\n"
            "m(ids, labels=ids, return_logits=False).loss.backward()\nprint('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": SRC},
                         capture_output=True, text=True, timeout=120, check=True).stdout.strip()
    assert out == "False"


@pytest.mark.slow
def test_the_fused_loss_inside_a_compiled_model_equals_eager():
    from glassformer.models import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("gpt-tiny", vocab_size=5000, dropout=0.0))  # above FUSED_MIN_VOCAB
    ids, labels = torch.randint(0, 5000, (2, 16)), torch.randint(0, 5000, (2, 16))
    eager = model(ids, labels=labels, return_logits=False).loss
    eager.backward()
    grad = model.tok_emb.weight.grad.clone()
    model.zero_grad()
    compiled = torch.compile(model)(ids, labels=labels, return_logits=False).loss
    compiled.backward()
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(model.tok_emb.weight.grad, grad, atol=1e-6, rtol=1e-5)
