"""Inputs a new user passes that the main tests do not: layers after the certified head, zero and
tiny weights, non-finite maps, eval caches filled under inference_mode or torch.func, and
non-square kernels."""

import copy

import pytest
import torch
from torch import nn

from fastorals import lipschitz as L
from fastorals.lipschitz import functional as LF
from fastorals.testing import assert_raises


class _Scale(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.s = s

    def forward(self, x):
        return self.s * x


def test_the_per_pair_rule_needs_the_head_to_give_the_logits():
    torch.manual_seed(0)
    head = L.LinearNormalized(8, 3)
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    scaled = nn.Sequential(head, _Scale(3.0))  # radii of the head's logits would be 3x too large
    for rule in ("auto", "lln"):
        with assert_raises(ValueError, f"rule='{rule}'", "LinearNormalized", "global"):
            L.certified_accuracy(scaled, (x, y), [0.1], rule=rule)
    ok = L.certified_accuracy(nn.Sequential(nn.Identity(), head), (x, y), [0.1])
    assert ok["n"] == 16
    with pytest.warns(UserWarning, match="LinearNormalized"):
        L.certified_accuracy(nn.Sequential(head), (x, y), [0.1], rule="global")
    r = L.certified_accuracy(scaled, (x, y), [0.1], rule="global", lipschitz=3.0 * 3 ** 0.5)
    assert r["n"] == 16


@pytest.mark.parametrize("cls,args,shape", [(L.CPLLinear, (6, 9), (6,)), (L.CPLConv2d, (3, 4, 3), (3, 5, 5))])
def test_cpl_with_zero_weights_is_the_identity(cls, args, shape):
    layer = cls(*args)
    with torch.no_grad():
        layer.weight.zero_()
    x = torch.randn(2, *shape)
    for train in (True, False):
        layer.train(train)
        y = layer(x)
        assert torch.equal(y, x), train
    layer.train()
    xg = x.clone().requires_grad_()
    layer(xg).sum().backward()
    assert torch.isfinite(layer.weight.grad).all()


def test_cpl_power_iteration_keeps_unit_vectors_for_tiny_weights():
    torch.manual_seed(0)
    layer = L.CPLLinear(6, 9)
    with torch.no_grad():
        layer.weight.mul_(1e-13)
    exact = torch.linalg.matrix_norm(layer.weight.detach().double(), ord=2)
    for _ in range(20):
        sigma = layer.sigma()
    assert abs(float(layer.u.norm()) - 1) < 1e-5
    assert float(sigma.detach()) == pytest.approx(float(exact), rel=1e-3)


def test_measured_constants_refuse_non_finite_maps():
    class NaNAt(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return torch.where(x.sum() > 0, 2 * x * self.w, x * float("nan"))

    for exact_below in (0, 4096):  # power iteration and exact paths
        with assert_raises(ValueError, "module", "NaN"):
            L.lipschitz_constant(NaNAt(), (3,), n_points=8, exact_below=exact_below, n_iter=5)
    with assert_raises(ValueError, "module", "NaN"):
        L.random_pair_ratio(NaNAt(), (3,), n_pairs=8)
    with assert_raises(ValueError, "n_points"):
        L.lipschitz_constant(L.SLLLinear(4, 8), (4,), n_points=0)


@pytest.mark.parametrize("cls,args,shape", [(L.SLLLinear, (5, 7), (5,)), (L.AOLLinear, (5, 4), (5,)),
                                            (L.SLLConv2d, (2, 3, 3), (2, 4, 4)), (L.CPLLinear, (5, 7), (5,))])
def test_eval_caches_filled_under_inference_mode_or_torch_func_stay_usable(cls, args, shape):
    layer = cls(*args).eval()
    x = torch.randn(2, *shape)
    with torch.inference_mode():
        y_inf = layer(x)
    xg = x.clone().requires_grad_()
    layer(xg).sum().backward()  # an attack after an inference-mode evaluation
    assert xg.grad is not None and torch.allclose(layer(x), y_inf)
    layer.invalidate_cache()
    jac = torch.func.jacrev(lambda v: layer(v[None])[0])(x[0])
    assert jac.shape == (*layer(x[:1])[0].shape, *shape)
    copy.deepcopy(layer)  # no functorch wrapper was cached
    assert L.lipschitz_constant(layer, shape, n_points=1) <= 1 + 1e-6


def test_kernels_must_be_square_and_odd():
    x = torch.randn(1, 2, 6, 6)
    for k in (torch.randn(2, 2, 3, 1), torch.randn(2, 2, 1, 3), torch.randn(2, 2, 2, 2)):
        with assert_raises(ValueError, "kernel_size", "square, odd"):
            LF.aol_conv2d(x, k, None)
        with assert_raises(ValueError, "kernel_size"):
            LF.sll_conv_t(k, torch.zeros(2))
    with assert_raises(ValueError, "stride"):
        LF.aol_conv2d(x, torch.randn(2, 2, 3, 3), None, stride=True)


def test_small_arguments_are_named():
    x, w = torch.randn(2, 4), torch.randn(3, 4)
    assert torch.allclose(LF.cpl_linear(x, w, None, 2.0), LF.cpl_linear(x, w, None, torch.tensor(2.0)))
    with assert_raises(ValueError, "sigma", "scalar"):
        LF.cpl_linear(x, w, None, torch.ones(2))
    with assert_raises(TypeError, "head", "Linear"):
        L.certified_radius(torch.randn(3, 4), torch.tensor([0, 1, 2]), head=nn.Linear(2, 4))
