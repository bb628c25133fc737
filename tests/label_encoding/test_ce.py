"""Fused soft-target CE + expected-value decoding: C++ and PyTorch paths against the reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastorals
from fastorals._ext import HAS_EXT
from fastorals.label_encoding import encoded_cross_entropy, ops, rlel_loss
from fastorals.label_encoding import reference as R
from fastorals.testing import assert_close, make_noncontiguous

BACKENDS = ["torch"] + (["cpp"] if HAS_EXT else [])
needs_ext = pytest.mark.skipif(not HAS_EXT, reason="C++ extension not built")


def _data(B, M, Q, dtype, seed=0, lo=-3.0, hi=5.0, z_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, M, generator=g, dtype=torch.float64) * z_scale
    D = torch.rand(M, Q, generator=g, dtype=torch.float64)
    y = lo + torch.rand(B, generator=g, dtype=torch.float64) * (hi - lo)
    return z.to(dtype), D.to(dtype), y.to(dtype), (lo, hi)


def _check(z, D, y, rng, backend, temperature=1.0):
    Q = D.shape[1]
    step = (rng[1] - rng[0]) / (Q - 1)
    zf, Df = z.clone().requires_grad_(), D.clone().requires_grad_()
    zr, Dr = z.clone().requires_grad_(), D.clone().requires_grad_()
    with fastorals.use_backend(backend):
        ce, pred = encoded_cross_entropy(zf, Df, y, rng, temperature=temperature, reduction="none")
    ce_r, pred_r = R.soft_target_ce(zr, Dr, y, rng[0], step, temperature)
    assert ce.dtype == z.dtype and pred.shape == (z.shape[0],)
    assert_close(ce, ce_r)
    assert_close(pred, pred_r)
    g = torch.Generator().manual_seed(1)
    w1 = torch.randn(ce.shape, generator=g, dtype=torch.float64).to(z.dtype)
    w2 = torch.randn(ce.shape, generator=g, dtype=torch.float64).to(z.dtype)
    gz, gD = torch.autograd.grad((ce * w1).sum() + (pred * w2).sum(), (zf, Df))
    gzr, gDr = torch.autograd.grad((ce_r * w1).sum() + (pred_r * w2).sum(), (zr, Dr))
    assert_close(gz, gzr, kind="grad")
    assert_close(gD, gDr, kind="grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("B", "M", "Q"), [(1, 1, 2), (7, 5, 7), (97, 13, 97), (33, 24, 1025), (260, 8, 151)])
def test_matches_reference(backend, dtype, B, M, Q):
    z, D, y, rng = _data(B, M, Q, dtype, seed=B + M + Q)
    _check(z, D, y, rng, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [0.05, 0.5, 3.0])
def test_temperatures_and_sharp_scores(backend, temperature):
    # large scores (peaked softmax) and sharp targets: far terms underflow to exact zeros
    z, D, y, rng = _data(19, 6, 40, torch.float32, seed=5, lo=0.0, hi=39.0, z_scale=12.0)
    _check(z, D, y, rng, backend, temperature)


@pytest.mark.parametrize("backend", BACKENDS)
def test_labels_on_bounds_and_levels(backend):
    z, D, _, rng = _data(6, 4, 9, torch.float64, seed=2, lo=-1.0, hi=1.0)
    y = torch.tensor([-1.0, 1.0, 0.0, 0.25, 0.125, -0.9999], dtype=torch.float64)
    _check(z, D, y, rng, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_inputs(backend):
    z, D, y, rng = _data(21, 7, 30, torch.float32, seed=8)
    zn, Dn, yn = make_noncontiguous(z), make_noncontiguous(D, 0), make_noncontiguous(y)
    with fastorals.use_backend(backend):
        ce, pred = encoded_cross_entropy(zn, Dn, yn, rng, reduction="none")
    ce_r, pred_r = R.soft_target_ce(z, D, y, rng[0], (rng[1] - rng[0]) / 29)
    assert_close(ce, ce_r)
    assert_close(pred, pred_r)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reductions_and_unused_prediction(backend):
    z, D, y, rng = _data(12, 5, 16, torch.float64, seed=3)
    with fastorals.use_backend(backend):
        mean, _ = encoded_cross_entropy(z, D, y, rng)
        total, _ = encoded_cross_entropy(z, D, y, rng, reduction="sum")
        each, _ = encoded_cross_entropy(z, D, y, rng, reduction="none")
        # only the loss is used: the prediction's gradient is None / zeros
        zz = z.clone().requires_grad_()
        loss, _ = encoded_cross_entropy(zz, D, y, rng)
        (g,) = torch.autograd.grad(loss, zz)
        # only the prediction is used
        zz2 = z.clone().requires_grad_()
        _, pred = encoded_cross_entropy(zz2, D, y, rng)
        (g2,) = torch.autograd.grad(pred.sum(), zz2)
    assert_close(mean, each.mean())
    assert_close(total, each.sum())
    zr = z.clone().requires_grad_()
    ce_r, pred_r = R.soft_target_ce(zr, D, y, rng[0], (rng[1] - rng[0]) / 15)
    assert_close(g, torch.autograd.grad(ce_r.mean(), zr)[0], kind="grad")
    zr2 = z.clone().requires_grad_()
    _, pred_r2 = R.soft_target_ce(zr2, D, y, rng[0], (rng[1] - rng[0]) / 15)
    assert_close(g2, torch.autograd.grad(pred_r2.sum(), zr2)[0], kind="grad")


@given(B=st.integers(1, 30), M=st.integers(1, 20), Q=st.integers(2, 80), seed=st.integers(0, 2**16),
       z_scale=st.sampled_from([0.0, 1.0, 30.0]))
def test_property(B, M, Q, seed, z_scale):
    """Random shapes, all-equal scores (z = 0: exact ties) and very peaked scores."""
    z, D, y, rng = _data(B, M, Q, torch.float64, seed=seed, z_scale=z_scale)
    for backend in BACKENDS:
        _check(z, D, y, rng, backend)


def test_gradcheck_torch_path():
    z, D, y, _ = _data(5, 3, 9, torch.float64, seed=1)
    f = lambda a, b: sum(o.sum() for o in ops.ce_torch(a, b, y, -3.0, 1.0, 0.7)[:2])
    assert torch.autograd.gradcheck(f, (z.requires_grad_(), D.requires_grad_()))


@needs_ext
def test_gradcheck_cpp_path():
    z, D, y, _ = _data(5, 3, 9, torch.float64, seed=1)
    f = lambda a, b: tuple(ops.ce_cpp(a, b, y, -3.0, 1.0, 0.7)[:2])
    assert torch.autograd.gradcheck(f, (z.requires_grad_(), D.requires_grad_()))


@pytest.mark.parametrize("op", [ops.ce_torch] + ([ops.ce_cpp] if HAS_EXT else []))
def test_opcheck(op):
    z, D, y, _ = _data(6, 4, 10, torch.float32, seed=6)
    torch.library.opcheck(op, (z.requires_grad_(), D.requires_grad_(), y, -3.0, 8.0 / 9.0, 1.125))


@pytest.mark.parametrize("backend", BACKENDS)
def test_rlel_loss_matches_reference(backend):
    z, D, y, rng = _data(40, 9, 31, torch.float64, seed=12, lo=0.0, hi=30.0)
    zf, Df = z.clone().requires_grad_(), D.clone().requires_grad_()
    zr, Dr = z.clone().requires_grad_(), D.clone().requires_grad_()
    with fastorals.use_backend(backend):
        terms = rlel_loss(zf, Df, y, rng, alpha=0.05, beta=0.3, return_terms=True)
    ref = R.rlel_loss(zr, Dr, y, 0.0, 1.0, alpha=0.05, beta=0.3)
    for k in ("loss", "ce", "r1", "r2", "prediction"):
        assert_close(getattr(terms, k), ref[k], msg=k)
    grads = torch.autograd.grad(terms.loss, (zf, Df))
    grads_r = torch.autograd.grad(ref["loss"], (zr, Dr))
    for a, b in zip(grads, grads_r):
        assert_close(a, b, kind="grad")


def test_float16_on_cpu_uses_torch_path():
    z, D, y, rng = _data(8, 4, 12, torch.float64, seed=1)
    ce, pred = encoded_cross_entropy(z.to(torch.bfloat16), D.to(torch.bfloat16), y, rng)
    ce_r, pred_r = encoded_cross_entropy(z, D, y, rng)
    assert ce.dtype == torch.bfloat16
    assert abs(ce.double().item() - ce_r.item()) < 0.05 * max(1.0, abs(ce_r.item()))
