"""Every layer is 1-Lipschitz (measured, float64) at init and after training; caching, export, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import fastorals
from fastorals import lipschitz as L
from fastorals.lipschitz import reference as R
from fastorals.testing import assert_close, assert_raises

TOL = 1 + 1e-5

# (factory, input shape without batch)
LAYERS = {
    "sll_linear": (lambda: L.SLLLinear(12, 20), (12,)),
    "sll_linear_narrow": (lambda: L.SLLLinear(16, 5, bias=False), (16,)),
    "sll_conv_k3": (lambda: L.SLLConv2d(4, 3, 3), (4, 7, 8)),
    "sll_conv_k5_s2": (lambda: L.SLLConv2d(3, 5, 5, stride=2), (3, 9, 8)),
    "sll_conv_k1": (lambda: L.SLLConv2d(5, 2, 1), (5, 4, 4)),
    "sll_conv_k7_s3": (lambda: L.SLLConv2d(2, 4, 7, stride=3), (2, 10, 11)),
    "aol_linear": (lambda: L.AOLLinear(10, 14), (10,)),
    "aol_conv_s2": (lambda: L.AOLConv2d(3, 5, 3, stride=2), (3, 8, 7)),
    "aol_conv_k5": (lambda: L.AOLConv2d(4, 4, 5), (4, 6, 6)),
    "cpl_linear": (lambda: L.CPLLinear(10, 16), (10,)),
    "cpl_conv": (lambda: L.CPLConv2d(3, 4, 3), (3, 7, 7)),
    "cpl_conv_s2": (lambda: L.CPLConv2d(3, 2, 5, stride=2), (3, 8, 9)),
}


def _measure(layer: nn.Module, shape) -> float:
    worst = L.lipschitz_constant(layer, shape, n_points=2)
    if isinstance(layer, (L.SLLLinear, L.SLLConv2d, L.CPLLinear, L.CPLConv2d)):
        worst = max(worst, L.lipschitz_constant(layer, shape, n_points=1, gates="open"))
    worst = max(worst, L.random_pair_ratio(layer, shape, n_pairs=64))
    return worst


def _train_steps(layer: nn.Module, shape, steps: int = 15, lr: float = 0.05) -> None:
    """A few Adam steps that push the layer to expand (maximize ||f(x) - f(y)||)."""
    torch.manual_seed(1)
    layer.train()
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    for _ in range(steps):
        x = torch.randn(8, *shape)
        y = x + 0.1 * torch.randn_like(x)
        loss = -(layer(x) - layer(y)).flatten(1).norm(dim=1).mean() - layer(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_is_1_lipschitz_at_init_and_after_training(name):
    torch.manual_seed(0)
    factory, shape = LAYERS[name]
    layer = factory()
    assert _measure(layer, shape) <= TOL
    _train_steps(layer, shape)
    assert all(torch.isfinite(p).all() for p in layer.parameters())
    assert _measure(layer, shape) <= TOL


def test_sll_linear_worst_case_is_certified_exactly():
    """max over gates of ||J|| = max(1, ||I - 2 A^T A||) with A = diag(1/t)^{1/2} W: check T >= W W^T."""
    torch.manual_seed(0)
    for _ in range(5):
        layer = L.SLLLinear(8, 30).double()
        with torch.no_grad():
            layer.weight.mul_(torch.rand(30, 1, dtype=torch.float64) * 10)
            layer.q.mul_(3)
        t = R.sll_dense_t(layer.weight, layer.q)
        a = torch.diag(R.safe_inv(t).sqrt()) @ layer.weight
        jac = torch.eye(8, dtype=torch.float64) - 2 * a.T @ a
        exact = max(1.0, float(torch.linalg.matrix_norm(jac.detach(), 2)))
        measured = L.lipschitz_constant(layer, (8,), gates="open", n_points=1)
        assert exact <= TOL
        assert measured == pytest.approx(float(torch.linalg.matrix_norm(jac.detach(), 2)), rel=1e-9)


def test_power_iteration_matches_svd_on_linear_maps():
    torch.manual_seed(0)
    lin = nn.Linear(20, 30).double()
    exact = float(torch.linalg.svdvals(lin.weight.detach())[0])
    assert L.lipschitz_constant(lin, (20,), n_points=1) == pytest.approx(exact, rel=1e-12)
    assert L.lipschitz_constant(lin, (20,), n_points=1, exact_below=1, n_iter=2000) == pytest.approx(exact, rel=1e-6)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False).double()
    eye = torch.eye(3 * 36, dtype=torch.float64).view(-1, 3, 6, 6)
    mat = conv(eye).detach().flatten(1)
    exact = float(torch.linalg.matrix_norm(mat, 2))
    assert L.lipschitz_constant(conv, (3, 6, 6), n_points=1, exact_below=1, n_iter=3000) == pytest.approx(exact,
                                                                                                       rel=1e-5)


def test_epsilon_free_numerics_of_tiny_and_zero_rows():
    layer = L.SLLLinear(6, 4).double()
    with torch.no_grad():
        layer.weight[0] = 0
        layer.weight[1] *= 1e-150
    x = torch.randn(10, 6, dtype=torch.float64)
    y = layer(x)
    assert torch.isfinite(y).all()
    assert L.random_pair_ratio(layer, (6,)) <= TOL


@pytest.mark.parametrize("kind", ["dense", "conv", "aol", "aol_conv", "cpl", "cpl_conv"])
def test_eval_cache_equals_training_path_and_is_invalidated(kind):
    torch.manual_seed(0)
    layer, x = {
        "dense": (L.SLLLinear(10, 12), torch.randn(4, 10)),
        "conv": (L.SLLConv2d(3, 2, 3, stride=2), torch.randn(2, 3, 7, 6)),
        "aol": (L.AOLLinear(10, 6), torch.randn(4, 10)),
        "aol_conv": (L.AOLConv2d(3, 5, 3), torch.randn(2, 3, 6, 6)),
        "cpl": (L.CPLLinear(10, 12), torch.randn(4, 10)),
        "cpl_conv": (L.CPLConv2d(3, 2, 3, eval_norm="power", eval_iterations=2000), torch.randn(2, 3, 6, 6)),
    }[kind]
    if kind.startswith("cpl"):
        layer.power_iterations = 2000  # the training path converges to the same norm
    layer.train()
    y_train = layer(x)
    layer.eval()
    y_eval = layer(x)
    assert_close(y_eval, y_train.detach(), atol=1e-4, rtol=1e-3)
    cache = layer.__dict__["_eval_cache"]
    y_eval2 = layer(x)
    assert layer.__dict__["_eval_cache"] is cache  # reused
    assert_close(y_eval2, y_eval, kind="exact")
    with torch.no_grad():
        layer.weight.mul_(1.5)  # an in-place update bumps the version counter
    y_new = layer(x)
    assert layer.__dict__["_eval_cache"] is not cache
    layer.train()
    assert_close(y_new, layer(x).detach(), atol=1e-4, rtol=1e-3)


def test_eval_cache_invalidated_by_optimizer_and_load_state_dict():
    torch.manual_seed(0)
    layer = L.SLLLinear(8, 16)
    x = torch.randn(3, 8)
    layer.eval()
    y0 = layer(x)
    layer.train()
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer(x).pow(2).sum().backward()
    opt.step()
    layer.eval()
    y1 = layer(x)
    assert not torch.allclose(y0, y1)
    with fastorals.use_backend("reference"):
        assert_close(y1, R.sll_dense(x, layer.weight, layer.bias, layer.q).detach(), atol=1e-5, rtol=1e-4)
    other = L.SLLLinear(8, 16)
    layer.load_state_dict(other.state_dict())
    assert_close(layer(x), R.sll_dense(x, other.weight, other.bias, other.q).detach())


def test_eval_mode_input_gradients_and_frozen_parameters():
    torch.manual_seed(0)
    layer = L.SLLLinear(6, 9).eval()
    x = torch.randn(4, 6, dtype=torch.float32, requires_grad=True)
    y = layer(x)
    (gx,) = torch.autograd.grad(y.sum(), x)
    xr = x.detach().clone().requires_grad_()
    (gr,) = torch.autograd.grad(R.sll_dense(xr, layer.weight, layer.bias, layer.q).sum(), xr)
    assert_close(gx, gr, kind="grad")
    assert layer.weight.grad is None


@pytest.mark.parametrize("factory,shape,kw", [
    (lambda: L.SLLLinear(7, 11), (5, 7), {}),
    (lambda: L.SLLConv2d(3, 4, 3), (2, 3, 6, 5), {}),
    (lambda: L.SLLConv2d(3, 4, 5, stride=2), (2, 3, 9, 8), {"input_size": (9, 8)}),
    (lambda: L.AOLLinear(7, 4), (5, 7), {}),
    (lambda: L.AOLConv2d(3, 6, 3, stride=2), (2, 3, 8, 8), {}),
    (lambda: L.CPLLinear(7, 9), (5, 7), {}),
    (lambda: L.CPLConv2d(3, 2, 3), (2, 3, 6, 6), {"input_size": (6, 6)}),
    (lambda: L.LinearNormalized(7, 3), (5, 7), {}),
])
def test_export_matches_eval(factory, shape, kw):
    torch.manual_seed(0)
    layer = factory().eval()
    x = torch.randn(*shape)
    exported = layer.export(**kw)
    assert not any(type(m).__module__.startswith("fastorals") for m in exported.modules()
                   if not isinstance(m, L.ResidualExport))
    assert_close(exported(x), layer(x), atol=1e-5, rtol=1e-4)


def test_export_strided_needs_input_size():
    with assert_raises(ValueError, "input_size"):
        L.SLLConv2d(3, 2, 3, stride=2).export()


def test_activations_and_pooling_are_1_lipschitz():
    torch.manual_seed(0)
    mods = [(L.MaxMin(), (6, 4, 4)), (L.GroupSort(3), (6, 4, 4)), (L.GroupSort(2, dim=-1), (8,)),
            (L.LipschitzAvgPool2d(4), (3, 8, 8)), (L.LipschitzAvgPool2d(None), (3, 5, 6)),
            (L.PaddingChannels(9, 3), (3, 4, 4)), (L.PaddingChannels(9, 3, "clone"), (3, 4, 4)),
            (L.PoolingLinear(12, 4, "mean"), (12,)), (L.PoolingLinear(12, 4, "max"), (12,)),
            (L.PoolingLinear(12, 5, "trunc"), (12,)), (L.MeanShift((0.1, 0.2, 0.3)), (3, 4, 4))]
    for mod, shape in mods:
        assert L.random_pair_ratio(mod, shape, n_pairs=64) <= TOL, mod
    # the pooling is exactly sum / k: an isometry on constant windows
    x = torch.ones(1, 1, 4, 4)
    assert float(L.LipschitzAvgPool2d(4)(x)) == pytest.approx(4.0)
    assert_close(L.PaddingChannels(6, 3, "clone")(x.expand(1, 3, 4, 4)).norm(), x.expand(1, 3, 4, 4).norm())
    assert_close(L.MaxMin()(torch.tensor([[1.0, 5.0, 3.0, 2.0]])), torch.tensor([[3.0, 5.0, 1.0, 2.0]]))
    assert_close(L.GroupSort(2)(torch.tensor([[1.0, 5.0, 3.0, 2.0]])), torch.tensor([[5.0, 1.0, 3.0, 2.0]]))


def test_linear_normalized_pairwise_constant():
    torch.manual_seed(0)
    head = L.LinearNormalized(6, 4)
    w = head.normalized_weight().detach()
    assert_close(w.norm(dim=1), torch.ones(4))
    x, y = torch.randn(100, 6), torch.randn(100, 6)
    d = head(x) - head(y)
    for i in range(4):
        for j in range(4):
            lip = float((w[i] - w[j]).norm())
            assert ((d[:, i] - d[:, j]).abs() <= lip * (x - y).norm(dim=1) + 1e-5).all()


def test_bad_inputs_raise_clear_errors():
    with assert_raises(ValueError, "kernel_size", "odd"):
        L.SLLConv2d(4, 2, 4)
    with assert_raises(ValueError, "kernel_size", "odd"):
        L.AOLConv2d(4, 2, 2)
    with assert_raises(ValueError, "stride"):
        L.SLLConv2d(4, 2, 3, stride=0)
    with assert_raises(ValueError, "features"):
        L.SLLLinear(0)
    layer = L.SLLConv2d(4, 2, 3)
    with assert_raises(ValueError, "x", "channels"):
        layer(torch.randn(1, 3, 5, 5))
    with assert_raises(ValueError, "x", "4-d"):
        layer(torch.randn(4, 5, 5))
    with assert_raises(ValueError, "x", "channels"):
        layer.eval()(torch.randn(1, 3, 5, 5))
    lin = L.SLLLinear(5, 7)
    with assert_raises(ValueError, "x", "5"):
        lin(torch.randn(2, 6))
    with assert_raises(TypeError, "x", "floating"):
        lin(torch.ones(2, 5, dtype=torch.int64))
    with assert_raises(TypeError, "weight", "dtype"):
        lin(torch.randn(2, 5, dtype=torch.float64))
    with assert_raises(ValueError, "q", "shape"):
        L.sll_linear(torch.randn(2, 5), torch.randn(7, 5), None, torch.randn(6))
    with assert_raises(ValueError, "weight", "matrix"):
        L.sll_linear(torch.randn(2, 5), torch.randn(7, 5, 1), None, torch.randn(7))
    with assert_raises(ValueError, "bias", "shape"):
        L.sll_conv2d(torch.randn(1, 3, 5, 5), torch.randn(2, 3, 3, 3), torch.randn(3), torch.zeros(2))
    with assert_raises(ValueError, "kernel_size", "odd"):
        L.sll_conv2d(torch.randn(1, 3, 5, 5), torch.randn(2, 3, 2, 2), None, torch.zeros(2))
    with assert_raises(ValueError, "mode"):
        L.PaddingChannels(6, 3, "reflect")
    with assert_raises(ValueError, "out_channels", "multiple"):
        L.PaddingChannels(7, 3, "clone")
    with assert_raises(ValueError, "group_size"):
        L.GroupSort(3)(torch.randn(2, 4))
    with assert_raises(ValueError, "eval_norm"):
        L.CPLConv2d(3, eval_norm="exact")


def test_cpl_power_iteration_state_and_resize():
    torch.manual_seed(0)
    layer = L.CPLConv2d(3, 4, 3)
    layer(torch.randn(2, 3, 6, 6))
    assert layer.u.shape == (1, 3, 6, 6)
    u0 = layer.u.clone()
    layer(torch.randn(2, 3, 6, 6))
    assert not torch.equal(u0, layer.u)  # one step per training forward
    layer(torch.randn(1, 3, 5, 7))  # new size: re-allocated
    assert layer.u.shape == (1, 3, 5, 7)
    state = layer.state_dict()
    fresh = L.CPLConv2d(3, 4, 3)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.u, layer.u)
    # power iteration converges to the exact norm of the zero-padded operator (small case: dense matrix)
    k = layer.weight.detach().double()
    eye = torch.eye(3 * 5 * 7, dtype=torch.float64).view(-1, 3, 5, 7)
    mat = torch.nn.functional.conv2d(eye, k, padding=1).flatten(1)
    exact = float(torch.linalg.matrix_norm(mat, 2))
    layer.double()
    layer.power_iterations = 5000
    sigma = float(layer.sigma((5, 7)).detach())
    assert sigma == pytest.approx(exact, rel=1e-5)
    assert float(L.conv_operator_norm_bound(k, (5, 7))) >= exact * (1 - 1e-12)


def test_conv_norm_bound_is_an_upper_bound():
    torch.manual_seed(0)
    for m, c, k, s, h, w in [(3, 2, 3, 1, 5, 6), (2, 3, 5, 2, 7, 6), (4, 1, 1, 1, 3, 3), (2, 2, 7, 3, 9, 8)]:
        kern = torch.randn(m, c, k, k, dtype=torch.float64)
        eye = torch.eye(c * h * w, dtype=torch.float64).view(-1, c, h, w)
        mat = torch.nn.functional.conv2d(eye, kern, stride=s, padding=k // 2).flatten(1)
        exact = float(torch.linalg.matrix_norm(mat, 2))
        bound = float(L.conv_operator_norm_bound(kern, (h, w), s))
        assert exact <= bound * (1 + 1e-12)
        if k == 1:
            assert bound == pytest.approx(exact, rel=1e-9)  # 1x1: no boundary effect, exact
    w = torch.randn(7, 5, dtype=torch.float64)
    assert float(L.dense_operator_norm(w)) == pytest.approx(float(torch.linalg.svdvals(w)[0]))
    assert math.isfinite(float(L.dense_operator_norm(torch.zeros(3, 2))))


def test_empty_batch_and_single_feature():
    lin = L.SLLLinear(5, 7)
    x = torch.randn(0, 5, requires_grad=True)
    lin(x).sum().backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() == 0
    conv = L.SLLConv2d(3, 2, 3, stride=2)
    assert conv(torch.randn(0, 3, 5, 5)).shape == (0, 3, 5, 5)
    one = L.SLLLinear(1, 1).double()
    assert L.random_pair_ratio(one, (1,)) <= TOL
