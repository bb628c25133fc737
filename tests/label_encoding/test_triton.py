"""Triton kernels (fused CE + decode, R1) against the reference.

CPU: ``TRITON_INTERPRET=1 python -m pytest tests/label_encoding -m interpret`` (tiny float32
shapes that still span several blocks); CUDA: the same tests plus ``gpu`` ones.
"""

from __future__ import annotations

import pytest
import torch

import fastorals
from fastorals.label_encoding import encoded_cross_entropy, error_correction_penalty, rlel_loss
from fastorals.label_encoding import reference as R
from fastorals.testing import assert_close, make_noncontiguous

pytestmark = pytest.mark.interpret


def _data(B, M, Q, device, seed=0, lo=-2.0, hi=6.0, z_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, M, generator=g, dtype=torch.float64) * z_scale
    D = torch.rand(M, Q, generator=g, dtype=torch.float64)
    y = lo + torch.rand(B, generator=g, dtype=torch.float64) * (hi - lo)
    return z.float().to(device), D.float().to(device), y.float().to(device), (lo, hi)


# B, M, Q: partial blocks in every dimension; Q > 64 and M > 64 span several tiles
CE_SHAPES = [(1, 1, 2), (5, 3, 7), (19, 20, 33), (70, 17, 130), (9, 70, 12)]


@pytest.mark.parametrize(("B", "M", "Q"), CE_SHAPES)
def test_ce_matches_reference(triton_device, B, M, Q):
    z, D, y, rng = _data(B, M, Q, triton_device, seed=B + M + Q)
    zf, Df = z.clone().requires_grad_(), D.clone().requires_grad_()
    with fastorals.use_backend("triton"):
        ce, pred = encoded_cross_entropy(zf, Df, y, rng, reduction="none", temperature=0.7)
    z64, D64 = z.double().cpu().requires_grad_(), D.double().cpu().requires_grad_()
    ce_r, pred_r = R.soft_target_ce(z64, D64, y.double().cpu(), rng[0], (rng[1] - rng[0]) / (Q - 1), 0.7)
    assert ce.dtype == torch.float32
    assert_close(ce.cpu(), ce_r.float())
    assert_close(pred.cpu(), pred_r.float())
    w = torch.randn(B, dtype=torch.float64)
    gz, gD = torch.autograd.grad((ce * w.float().to(ce.device)).sum() + pred.sum(), (zf, Df))
    gzr, gDr = torch.autograd.grad((ce_r * w).sum() + pred_r.sum(), (z64, D64))
    assert_close(gz.cpu(), gzr.float(), kind="grad")
    assert_close(gD.cpu(), gDr.float(), kind="grad")


def test_ce_peaked_scores_and_noncontiguous(triton_device):
    z, D, y, rng = _data(21, 6, 40, triton_device, seed=3, z_scale=15.0)
    with fastorals.use_backend("triton"):
        ce, pred = encoded_cross_entropy(make_noncontiguous(z), make_noncontiguous(D, 0), y, rng, reduction="none")
    ce_r, pred_r = R.soft_target_ce(z.double().cpu(), D.double().cpu(), y.double().cpu(), rng[0], 8.0 / 39)
    assert_close(ce.cpu(), ce_r.float())
    assert_close(pred.cpu(), pred_r.float())


@pytest.mark.parametrize(("B", "M"), [(1, 2), (2, 1), (13, 9), (40, 17)])
def test_r1_matches_reference(triton_device, B, M):
    z, _, y, _ = _data(B, M, 2, triton_device, seed=B * 7 + M, hi=30.0)
    zf = z.clone().requires_grad_()
    with fastorals.use_backend("triton"):
        out = error_correction_penalty(zf, y, margin=2.0, label_step=0.5)
    z64 = z.double().cpu().requires_grad_()
    ref = R.error_correction_penalty(z64, y.double().cpu(), 2.0, 0.5)
    assert_close(out.cpu(), ref.float())
    (g,) = torch.autograd.grad(out * 1.3, zf)
    (gr,) = torch.autograd.grad(ref * 1.3, z64)
    assert_close(g.cpu(), gr.float(), kind="grad")


def test_r1_ties(triton_device):
    z = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 1.0], [3.0, -1.0], [0.5, 0.5]], device=triton_device)
    y = torch.tensor([0.0, 0.0, 0.5, 2.0, 1.0], device=triton_device)
    zf = z.clone().requires_grad_()
    with fastorals.use_backend("triton"):
        out = error_correction_penalty(zf, y)
    out.backward()
    zr = z.cpu().double().requires_grad_()
    ref = R.error_correction_penalty(zr, y.cpu().double())
    ref.backward()
    assert_close(out.cpu(), ref.float())
    assert_close(zf.grad.cpu(), zr.grad.float(), kind="grad")


def test_rlel_loss_triton(triton_device):
    z, D, y, rng = _data(24, 10, 21, triton_device, seed=11, lo=0.0, hi=20.0)
    zf, Df = z.clone().requires_grad_(), D.clone().requires_grad_()
    with fastorals.use_backend("triton"):
        loss = rlel_loss(zf, Df, y, rng, alpha=0.01, beta=0.1)
    z64, D64 = z.double().cpu().requires_grad_(), D.double().cpu().requires_grad_()
    ref = R.rlel_loss(z64, D64, y.double().cpu(), 0.0, 1.0, alpha=0.01, beta=0.1)["loss"]
    assert_close(loss.cpu(), ref.float())
    for a, b in zip(torch.autograd.grad(loss, (zf, Df)), torch.autograd.grad(ref, (z64, D64))):
        assert_close(a.cpu(), b.float(), kind="grad")


@pytest.mark.gpu
def test_compile_and_half_precision_on_gpu():
    z, D, y, rng = _data(300, 32, 151, "cuda", seed=1, lo=-75.0, hi=75.0)
    f = torch.compile(lambda a, b: rlel_loss(a, b, y, rng, alpha=1e-3, beta=1e-2, validate=False))
    ref = R.rlel_loss(z.double(), D.double(), y.double(), -75.0, 1.0, alpha=1e-3, beta=1e-2)["loss"]
    assert_close(f(z, D), ref.float())
    for dt in (torch.float16, torch.bfloat16):
        ce, _ = encoded_cross_entropy(z.to(dt), D.to(dt), y, rng)
        ce_32, _ = encoded_cross_entropy(z.to(dt).float(), D.to(dt).float(), y, rng)
        assert_close(ce.float(), ce_32, dtype=dt)


def test_half_z_with_float32_labels(triton_device):
    z, D, y, rng = _data(9, 5, 5001, triton_device, seed=3, lo=0.0, hi=5000.0)  # step 1: float16 labels move 2 levels
    zh, Dh = z.half(), D.half()
    with fastorals.use_backend("triton"):
        ce, pred = encoded_cross_entropy(zh, Dh, y, rng, reduction="none")  # labels stay float32
        r1 = error_correction_penalty(zh, y, label_step=125.0)
    ce_32, pred_32 = encoded_cross_entropy(zh.float(), Dh.float(), y, rng, reduction="none")
    assert_close(ce.float(), ce_32, dtype=torch.float16)
    assert_close(pred.float(), pred_32, dtype=torch.float16)
    assert_close(r1.float(), error_correction_penalty(zh.float(), y, label_step=125.0), dtype=torch.float16)
