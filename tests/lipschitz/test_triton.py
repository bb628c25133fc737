"""Triton kernels vs the reference (run with ``TRITON_INTERPRET=1 python -m pytest tests/lipschitz -m interpret``)."""

from __future__ import annotations

import pytest
import torch

import fastorals
from fastorals.lipschitz import functional as LF
from fastorals.lipschitz import reference as R
from fastorals.testing import assert_close, assert_grads_close

pytestmark = pytest.mark.interpret


def _grads(out, inputs, g):
    return list(torch.autograd.grad(out, inputs, g))


@pytest.mark.parametrize("m,n", [(1, 1), (7, 5), (16, 16), (70, 33), (130, 20)])
def test_gram_t_kernel(triton_device, m, n):
    from fastorals.lipschitz import triton as T

    torch.manual_seed(m)
    w = (torch.randn(m, n, device=triton_device) / n**0.5).requires_grad_()
    q = torch.randn(m, device=triton_device).requires_grad_()
    t = T.gram_t(w, q)
    t_ref = R.sll_dense_t(w, q)
    assert_close(t, t_ref)
    g = torch.randn(m, device=triton_device)
    assert_grads_close(_grads(t, [w, q], g), _grads(t_ref, [w, q], g))


@pytest.mark.parametrize("bsz,n,m,bias", [(1, 1, 1, True), (5, 21, 37, True), (17, 33, 70, False), (3, 64, 16, True)])
def test_residual_dense_kernels(triton_device, bsz, n, m, bias):
    from fastorals.lipschitz import triton as T

    torch.manual_seed(bsz + m)
    x = torch.randn(bsz, n, device=triton_device, requires_grad=True)
    w = (torch.randn(m, n, device=triton_device) / n**0.5).requires_grad_()
    b = torch.randn(m, device=triton_device, requires_grad=True) if bias else None
    s = torch.rand(m, device=triton_device, requires_grad=True)
    y = T.residual_dense(x, w, b, s)
    y_ref = x - (torch.relu(torch.nn.functional.linear(x, w, b)) * s) @ w
    assert_close(y, y_ref)
    g = torch.randn_like(y).expand(bsz, n)  # also an expanded (stride-0 capable) gradient
    ins = [x, w, s] + ([b] if bias else [])
    assert_grads_close(_grads(y, ins, g), _grads(y_ref, ins, g))


def test_sll_linear_through_the_triton_backend(triton_device):
    torch.manual_seed(0)
    x = torch.randn(6, 24, device=triton_device, requires_grad=True)
    w = (torch.randn(40, 24, device=triton_device) * 0.2).requires_grad_()
    b = torch.randn(40, device=triton_device, requires_grad=True)
    q = torch.randn(40, device=triton_device, requires_grad=True)
    with fastorals.use_backend("triton"):
        y = LF.sll_linear(x, w, b, q)
        s = LF.aol_scale(w)
    y_ref = R.sll_dense(x, w, b, q)
    assert_close(y, y_ref)
    assert_close(s, R.aol_dense_scale(w), atol=1e-5, rtol=1e-4)
    g = torch.randn_like(y)
    assert_grads_close(_grads(y, [x, w, b, q], g), _grads(y_ref, [x, w, b, q], g))


@pytest.mark.gpu
def test_triton_ops_compile():
    from fastorals.lipschitz import triton as T

    dev = torch.device("cuda")
    x = torch.randn(8, 32, device=dev, requires_grad=True)
    w = torch.randn(48, 32, device=dev, requires_grad=True)
    q = torch.randn(48, device=dev, requires_grad=True)

    def f(x, w, q):
        return T.residual_dense(x, w, None, 2 / T.gram_t(w, q))

    y = torch.compile(f, fullgraph=True)(x, w, q)
    assert_close(y, f(x, w, q), atol=1e-4, rtol=1e-3)
