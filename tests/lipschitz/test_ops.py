"""Fast ops vs the reference: forward and backward, dtypes, odd sizes, layouts, opcheck, compile."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastorals
from fastorals.lipschitz import functional as LF
from fastorals.lipschitz import ops as O
from fastorals.lipschitz import reference as R
from fastorals.testing import assert_close, assert_grads_close, make_noncontiguous

DTYPES = [torch.float32, torch.float64]


def _grads(out, inputs, gout):
    gs = torch.autograd.grad(out, inputs, gout, allow_unused=True)
    return list(gs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n", [(1, 1), (7, 5), (97, 33), (1025, 7), (600, 130)])
def test_gram_t_matches_reference(m, n, dtype):
    torch.manual_seed(m + n)
    w = (torch.randn(m, n, dtype=dtype) / n**0.5).requires_grad_()
    q = torch.randn(m, dtype=dtype).requires_grad_()
    t_ref = R.sll_dense_t(w, q)
    t = O.gram_t(w, q)
    assert_close(t, t_ref)
    g = torch.randn(m, dtype=dtype)
    assert_grads_close(_grads(t, [w, q], g), _grads(t_ref, [w, q], g))


def test_gram_t_handles_zero_rows_and_ties():
    w = torch.randn(9, 4, dtype=torch.float64)
    w[3] = 0
    w[5] = w[1]  # duplicated row: exact ties in |G|
    w[6, :] = torch.tensor([1.0, -1.0, 0.0, 0.0])
    w[7, :] = torch.tensor([1.0, 1.0, 0.0, 0.0])  # orthogonal to row 6: G_67 == 0 exactly
    w.requires_grad_()
    q = torch.zeros(9, dtype=torch.float64, requires_grad=True)
    t = O.gram_t(w, q)
    assert t[3] == 0
    assert_close(t, R.sll_dense_t(w, q))
    g = torch.randn(9, dtype=torch.float64)
    assert_grads_close(_grads(t, [w, q], g), _grads(R.sll_dense_t(w, q), [w, q], g))


def test_gram_t_extreme_q_does_not_overflow():
    w = torch.randn(20, 6, dtype=torch.float32)
    q = torch.linspace(-40, 40, 20)
    t = O.gram_t(w, q)
    assert torch.isfinite(t).all()
    assert_close(t.double(), R.sll_dense_t(w.double(), q.double()), rtol=1e-4, atol=0)


def test_gradcheck_float64():
    torch.manual_seed(0)
    w = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    q = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(O.gram_t, (w, q))
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    s = (torch.rand(6, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(O.residual_dense, (x, w, b, s))
    assert torch.autograd.gradcheck(O.residual_dense, (torch.randn(9, 5, dtype=torch.float64, requires_grad=True),
                                                       w, None, s))  # batch > features: scale folded into W
    k = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    xc = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    bc = torch.randn(3, dtype=torch.float64, requires_grad=True)
    sc = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_()
    for stride in (1, 2):
        assert torch.autograd.gradcheck(lambda *a, s=stride: O.residual_conv(*a, s), (xc, k, bc, sc), fast_mode=True)
    # the whole SLL layer through the public functional API
    assert torch.autograd.gradcheck(LF.sll_linear, (x, w, b, q), fast_mode=True)
    qc = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, k, b, q: LF.sll_conv2d(x, k, b, q, 2), (xc, k, bc, qc), fast_mode=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bsz,n,m,bias", [(1, 1, 1, True), (7, 97, 33, True), (64, 33, 97, False), (3, 8, 1025, True)])
def test_sll_linear_matches_reference(bsz, n, m, bias, dtype):
    torch.manual_seed(bsz * 7 + m)
    x = torch.randn(bsz, n, dtype=dtype, requires_grad=True)
    w = (torch.randn(m, n, dtype=dtype) / n**0.5).requires_grad_()
    b = torch.randn(m, dtype=dtype, requires_grad=True) if bias else None
    q = torch.randn(m, dtype=dtype, requires_grad=True)
    y_ref = R.sll_dense(x, w, b, q)
    with fastorals.use_backend("torch"):
        y = LF.sll_linear(x, w, b, q)
    assert_close(y, y_ref)
    g = torch.randn_like(y)
    ins = [x, w, q] + ([b] if bias else [])
    assert_grads_close(_grads(y, ins, g), _grads(y_ref, ins, g))


def test_sll_linear_noncontiguous_and_batched_dims():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 10, dtype=torch.float64)
    w = torch.randn(12, 10, dtype=torch.float64)
    b = torch.randn(12, dtype=torch.float64)
    q = torch.randn(12, dtype=torch.float64)
    xn, wn, bn, qn = (make_noncontiguous(t) for t in (x, w, b, q))
    for t in (xn, wn, bn, qn):
        t.requires_grad_()
    y = LF.sll_linear(xn, wn, bn, qn)
    y_ref = R.sll_dense(x.reshape(-1, 10), w, b, q).reshape(2, 3, 10)
    assert_close(y, y_ref)
    y.sum().backward()
    xr, wr, br, qr = (t.clone().requires_grad_() for t in (x, w, b, q))
    R.sll_dense(xr, wr, br, qr).sum().backward()
    assert_grads_close([xn.grad, wn.grad, bn.grad, qn.grad], [xr.grad, wr.grad, br.grad, qr.grad])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,stride,hw,m,c", [(1, 1, (5, 5), 2, 3), (3, 1, (8, 7), 5, 6), (3, 2, (9, 8), 4, 3),
                                             (5, 2, (7, 11), 3, 2), (7, 3, (10, 10), 2, 4)])
def test_sll_conv_matches_reference(k, stride, hw, m, c, dtype):
    torch.manual_seed(k * 10 + stride)
    x = torch.randn(2, c, *hw, dtype=dtype, requires_grad=True)
    kern = (torch.randn(m, c, k, k, dtype=dtype) * 0.3).requires_grad_()
    b = torch.randn(m, dtype=dtype, requires_grad=True)
    q = torch.randn(m, dtype=dtype, requires_grad=True)
    y_ref = R.sll_conv(x, kern, b, q, stride)
    with fastorals.use_backend("torch"):
        y = LF.sll_conv2d(make_noncontiguous(x.detach()).requires_grad_(), kern, b, q, stride)
    assert_close(y, y_ref)
    xs = x.detach().clone().requires_grad_()
    y2 = LF.sll_conv2d(xs, kern, b, q, stride)
    g = torch.randn_like(y2)
    assert_grads_close(_grads(y2, [xs, kern, b, q], g), _grads(y_ref, [x, kern, b, q], g))


def test_stride_t_is_tighter_and_stride1_is_full_sum():
    torch.manual_seed(0)
    kern = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    q = torch.randn(4, dtype=torch.float64)
    full = R.sll_conv_t(kern, q, 1)
    g = R.conv_gram(kern).abs().sum(dim=(2, 3))
    assert_close(full, (g * torch.exp(q[None] - q[:, None])).sum(1))
    assert (R.sll_conv_t(kern, q, 2) <= full + 1e-12).all()
    assert (R.sll_conv_t(kern, q, 3) <= R.sll_conv_t(kern, q, 1) + 1e-12).all()


def test_scale_folding_branch_matches():
    """Batch larger than the features folds the scale into W instead of the activation."""
    torch.manual_seed(0)
    x = torch.randn(50, 8, dtype=torch.float64)
    w = torch.randn(12, 8, dtype=torch.float64)
    s = torch.rand(12, dtype=torch.float64)
    y, act = O.residual_dense_forward(x, w, None, s)
    assert_close(y, x - (torch.relu(x @ w.T) * s) @ w)
    assert_close(act, torch.relu(x @ w.T))


@given(m=st.integers(1, 40), n=st.integers(1, 40), seed=st.integers(0, 2**16), qscale=st.sampled_from([0.0, 1.0, 5.0]))
def test_gram_t_property(m, n, seed, qscale):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, n, generator=g, dtype=torch.float64)
    q = torch.randn(m, generator=g, dtype=torch.float64) * qscale
    t = O.gram_t(w, q)
    assert_close(t, R.sll_dense_t(w, q))
    # the certificate: T - W W^T is positive semi-definite
    gram = w @ w.T
    eig = torch.linalg.eigvalsh(torch.diag(t) - gram)
    assert eig.min() >= -1e-9 * max(1.0, float(t.max()))


@given(bsz=st.integers(1, 9), n=st.integers(1, 12), m=st.integers(1, 12), seed=st.integers(0, 2**16),
       bias=st.booleans())
def test_residual_dense_property(bsz, n, m, seed, bias):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(bsz, n, generator=g, dtype=torch.float64)
    w = torch.randn(m, n, generator=g, dtype=torch.float64)
    b = torch.randn(m, generator=g, dtype=torch.float64) if bias else None
    s = torch.rand(m, generator=g, dtype=torch.float64)
    s[0] = 0.0  # a zero scale (t = 0 row) must not break the gradient of the scale
    ins = [t.clone().requires_grad_() for t in (x, w, s)]
    bb = b.clone().requires_grad_() if bias else None
    y = O.residual_dense(ins[0], ins[1], bb, ins[2])
    y_ref = ins[0] - (torch.relu(torch.nn.functional.linear(ins[0], ins[1], bb)) * ins[2]) @ ins[1]
    assert_close(y, y_ref)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    params = ins + ([bb] if bias else [])
    assert_grads_close(_grads(y, params, gy), _grads(y_ref, params, gy))


def test_opcheck_all_ops():
    torch.manual_seed(0)
    w = torch.randn(9, 6, requires_grad=True)
    q = torch.randn(9, requires_grad=True)
    x = torch.randn(5, 6, requires_grad=True)
    b = torch.randn(9, requires_grad=True)
    s = torch.rand(9, requires_grad=True)
    torch.library.opcheck(torch.ops.fastorals.lipschitz_gram_t, (w, q))
    torch.library.opcheck(torch.ops.fastorals.lipschitz_residual_dense, (x, w, b, s))
    torch.library.opcheck(torch.ops.fastorals.lipschitz_residual_dense, (x, w, None, s))
    xc = torch.randn(2, 3, 6, 7, requires_grad=True)
    k = torch.randn(4, 3, 3, 3, requires_grad=True)
    bc = torch.randn(4, requires_grad=True)
    sc = torch.rand(4, requires_grad=True)
    torch.library.opcheck(torch.ops.fastorals.lipschitz_residual_conv, (xc, k, bc, sc, 2))
    torch.library.opcheck(torch.ops.fastorals.lipschitz_residual_conv, (xc, k, None, sc, 1))
    g = torch.randn(9)
    t = O.gram_t(w, q).detach()
    torch.library.opcheck(torch.ops.fastorals.lipschitz_gram_t_backward, (g, w.detach(), q.detach(), t))


def test_torch_compile_over_layers():
    from fastorals.lipschitz import SLLConv2d, SLLLinear

    torch.manual_seed(0)
    lin = SLLLinear(16, 24)
    conv = SLLConv2d(4, 3, 3, stride=2)
    x = torch.randn(5, 16, requires_grad=True)
    xc = torch.randn(2, 4, 7, 7, requires_grad=True)
    with fastorals.use_backend("torch"):
        y_eager = lin(x)
        yc_eager = conv(xc)
        fl = torch.compile(lin, backend="aot_eager", fullgraph=True)
        fc = torch.compile(conv, backend="aot_eager", fullgraph=True)
        y = fl(x)
        yc = fc(xc)
    assert_close(y, y_eager)
    assert_close(yc, yc_eager)
    gx = torch.autograd.grad(y.sum(), x)[0]
    gx_ref = torch.autograd.grad(lin(x).sum(), x)[0]
    assert_close(gx, gx_ref, kind="grad")


def test_reference_backend_is_used_when_forced():
    torch.manual_seed(0)
    x = torch.randn(3, 5, dtype=torch.float64)
    w = torch.randn(4, 5, dtype=torch.float64)
    q = torch.zeros(4, dtype=torch.float64)
    with fastorals.use_backend("reference"):
        y = LF.sll_linear(x, w, None, q)
        t = LF.sll_t(w, q)
    assert y.grad_fn is None or "fastorals" not in type(y.grad_fn).__name__
    assert_close(y, R.sll_dense(x, w, None, q))
    assert_close(t, R.sll_dense_t(w, q))
    with pytest.raises(fastorals.BackendUnavailableError, match="cpp"), fastorals.use_backend("cpp"):
        LF.sll_linear(x, w, None, q)


def test_works_without_the_extension():
    import os
    import subprocess
    import sys

    code = ("import torch, fastorals; from fastorals import lipschitz as L; assert not fastorals._ext.HAS_EXT; "
            "m = L.SLLLinear(6, 9); x = torch.randn(3, 6, requires_grad=True); m(x).sum().backward(); "
            "c = L.SLLConv2d(3, 2, 3); c(torch.randn(1, 3, 5, 5)).sum().backward(); print('ok')")
    env = {**os.environ, "FASTORALS_NO_EXT": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@given(k=st.sampled_from([1, 3, 5]), stride=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
       m=st.integers(1, 4), c=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_sll_conv_property(k, stride, h, w, m, c, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c, h, w, generator=g, dtype=torch.float64, requires_grad=True)
    kern = torch.randn(m, c, k, k, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(m, generator=g, dtype=torch.float64, requires_grad=True)
    q = torch.randn(m, generator=g, dtype=torch.float64, requires_grad=True)
    y = LF.sll_conv2d(x, kern, b, q, stride)
    y_ref = R.sll_conv(x, kern, b, q, stride)
    assert y.shape == x.shape
    assert_close(y, y_ref)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    assert_grads_close(_grads(y, [x, kern, b, q], gy), _grads(y_ref, [x, kern, b, q], gy))
    # 1-Lipschitz on this pair of inputs
    x2 = x.detach() + torch.randn(x.shape, generator=g, dtype=torch.float64)
    d_out = (LF.sll_conv2d(x2, kern, b, q, stride) - y).detach().norm()
    assert d_out <= (x2 - x.detach()).norm() * (1 + 1e-9)
