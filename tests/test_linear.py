"""glassformer.linear.Linear: nn.Linear's results, computed as W xᵀ for few rows."""

import pytest
import torch
import torch.nn.functional as F

from glassformer.linear import FEW_ROWS, Linear, few_rows_linear


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(2, 16), (3, 5, 16), (FEW_ROWS, 16), (FEW_ROWS + 1, 16), (1, 16), (16,)])
def test_linear_equals_nn_linear_for_every_row_count(bias, shape):
    torch.manual_seed(0)
    lin = Linear(16, 24, bias=bias)
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
    import glassformer.linear as linear

    real = linear.few_rows_linear
    monkeypatch.setattr(linear, "few_rows_linear", lambda *a: calls.append(1) or real(*a))
    lin = Linear(8, 8)
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
    lin = Linear(8, 8)
    y = lin(x)  # with gradients: the usual product, and a backward pass through it
    y.sum().backward()
    assert len(calls) == 1 and lin.weight.grad is not None
