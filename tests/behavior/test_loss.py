"""Fused BeT loss: every backend equals the reference (forward and backward), gradcheck, sampling."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastorals
from fastorals import _ext
from fastorals.behavior import BeTHead, bet_loss, reference, sample_actions
from fastorals.behavior import ops as bops
from fastorals.testing import assert_close, assert_grads_close, assert_raises, make_noncontiguous

FAST = ["torch"] + (["cpp"] if _ext.HAS_EXT else [])


def _inputs(lead, K, A, dtype, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(*lead, K, generator=g, dtype=dtype) * scale
    o = torch.randn(*lead, K, A, generator=g, dtype=dtype)
    b = torch.randint(0, K, lead, generator=g)
    r = torch.randn(*lead, A, generator=g, dtype=dtype)
    w = torch.rand(*lead, generator=g, dtype=dtype)
    return z, o, b, r, w


def _run(backend, z, o, b, r, w, gamma, lam):
    zz, oo, rr = (t.detach().clone().requires_grad_() for t in (z, o, r))
    with fastorals.use_backend(backend):
        out = bet_loss(zz, oo, b, rr, gamma=gamma, offset_weight=lam, weight=w)
    out.loss.backward()
    return out, [zz.grad, oo.grad, rr.grad]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lead,K,A", [((1,), 1, 1), ((7,), 5, 2), ((4, 25), 24, 3), ((97,), 64, 9), ((3, 11), 130, 1)])
@pytest.mark.parametrize("gamma", [2.0, 0.0, 0.5, 3.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_fast_equals_reference(backend, dtype, lead, K, A, gamma, weighted):
    z, o, b, r, w = _inputs(lead, K, A, dtype, seed=K + A)
    w = w if weighted else None
    out, grads = _run(backend, z, o, b, r, w, gamma, 7.0)
    ref, rgrads = _run("reference", z, o, b, r, w, gamma, 7.0)
    for a, e in zip(out, ref):
        assert_close(a, e)
    if K == 1 and 0 < gamma < 1:
        # p = 1 exactly: the reference's autograd gives 0 * inf = NaN, the limit is 0
        assert bool(torch.isnan(rgrads[0]).all()) and float(grads[0].abs().max()) == 0.0
        grads, rgrads = grads[1:], rgrads[1:]
    assert_grads_close(grads, rgrads)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("gamma", [2.0, 0.0, 1.5])
def test_gradcheck_float64(backend, gamma):
    z, o, b, r, w = _inputs((6,), 5, 2, torch.float64, seed=1)
    z, o, r = (t.requires_grad_() for t in (z, o, r))

    def f(z, o, r):
        with fastorals.use_backend(backend):
            out = bet_loss(z, o, b, r, gamma=gamma, offset_weight=3.0, weight=w)
        return out.class_loss, out.offset_loss

    assert torch.autograd.gradcheck(f, (z, o, r))


@pytest.mark.parametrize("backend", FAST)
def test_noncontiguous_inputs(backend):
    z, o, b, r, w = _inputs((9, 4), 12, 3, torch.float32, seed=2)
    args = [make_noncontiguous(t) for t in (z, o, r)]
    assert not any(t.is_contiguous() for t in args)
    out, grads = _run(backend, args[0], args[1], b, args[2], make_noncontiguous(w), 2.0, 1e3)
    ref, rgrads = _run("reference", z, o, b, r, w, 2.0, 1e3)
    for a, e in zip(out, ref):
        assert_close(a, e)
    assert_grads_close(grads, rgrads)


@pytest.mark.parametrize("backend", FAST)
def test_extreme_logits_are_finite(backend):
    # p = 1 exactly (gamma < 1 would divide 0 by 0 in a naive derivative) and p ~ 0
    z = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    o = torch.zeros(3, 3, 2, dtype=torch.float64)
    b = torch.tensor([0, 0, 2])
    r = torch.ones(3, 2, dtype=torch.float64)
    for gamma in (0.0, 0.5, 2.0):
        out, grads = _run(backend, z, o, b, r, None, gamma, 1.0)
        ref, rgrads = _run("reference", z, o, b, r, None, gamma, 1.0)
        assert all(bool(torch.isfinite(g).all()) for g in grads)
        assert_close(out.loss, ref.loss)
        if gamma >= 1:  # the reference's autograd is also finite there
            assert_grads_close(grads, rgrads)


@pytest.mark.parametrize("backend", FAST)
def test_weights_as_mask_equal_dropping_rows(backend):
    z, o, b, r, _ = _inputs((20,), 8, 2, torch.float64, seed=3)
    mask = torch.zeros(20, dtype=torch.float64)
    mask[:13] = 1
    out, grads = _run(backend, z, o, b, r, mask, 2.0, 10.0)
    sub, sgrads = _run(backend, z[:13], o[:13], b[:13], r[:13], None, 2.0, 10.0)
    assert_close(out.loss, sub.loss)
    assert_close(grads[0][:13], sgrads[0], kind="grad")
    assert float(grads[0][13:].abs().max()) == 0.0


def test_no_grad_forward_only():
    z, o, b, r, _ = _inputs((5,), 4, 2, torch.float32, seed=4)
    for backend in FAST:
        with torch.no_grad(), fastorals.use_backend(backend):
            out = bet_loss(z, o, b, r)
        assert_close(out.loss, bet_loss(z, o, b, r).loss)


@pytest.mark.skipif(not _ext.HAS_EXT, reason="needs the C++ extension")
def test_opcheck():
    z, o, b, r, w = _inputs((6,), 5, 2, torch.float32, seed=5)
    for op in (bops.bet_loss_cpp, bops.bet_loss_torch):
        torch.library.opcheck(op, (z, o, b, r, w, 2.0, 0.25, True), test_utils=("test_schema", "test_faketensor"))
        torch.library.opcheck(op, (z, o, b, r, None, 2.0, 1 / 6, False), test_utils=("test_schema", "test_faketensor"))


@given(M=st.integers(1, 40), K=st.integers(1, 40), A=st.integers(1, 6), gamma=st.sampled_from([0.0, 1.0, 2.0, 2.5]),
       scale=st.sampled_from([0.1, 3.0, 30.0]), seed=st.integers(0, 2**16))
def test_property_matches_reference(M, K, A, gamma, scale, seed):
    z, o, b, r, w = _inputs((M,), K, A, torch.float64, seed, scale)
    ref, rgrads = _run("reference", z, o, b, r, w, gamma, 5.0)
    for backend in FAST:
        out, grads = _run(backend, z, o, b, r, w, gamma, 5.0)
        assert_close(out.loss, ref.loss)
        assert_grads_close(grads, rgrads)


# ----------------------------------------------------------------------------- sampling and head


def test_sampling_distribution_and_temperature():
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3]])).repeat(20000, 1)
    offsets = torch.zeros(20000, 3, 2)
    offsets[:, 1] = 0.5
    centers = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    g = torch.Generator().manual_seed(0)
    actions, bins = sample_actions(logits, offsets, centers, 1.0, g)
    freq = torch.bincount(bins, minlength=3).double() / 20000
    assert_close(freq, torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64), atol=0.015, rtol=0)
    assert_close(actions[bins == 1][0], torch.tensor([1.5, 1.5]))
    greedy, gb = sample_actions(logits, offsets, centers, 0.0)
    assert bool((gb == 1).all())
    cold, cb = sample_actions(logits, offsets, centers, 0.05, g)
    assert float((cb == 1).double().mean()) > 0.999
    # the reference sampler (multinomial) agrees in distribution
    _, rb = reference.sample_reference(logits, offsets, centers, 1.0, torch.Generator().manual_seed(1))
    rfreq = torch.bincount(rb, minlength=3).double() / 20000
    assert_close(rfreq, freq, atol=0.02, rtol=0)


def test_head_shapes():
    head = BeTHead(16, 7, 3)
    logits, offsets = head(torch.randn(2, 5, 16))
    assert logits.shape == (2, 5, 7) and offsets.shape == (2, 5, 7, 3)


def test_errors():
    z, o, b, r, w = _inputs((6,), 5, 2, torch.float32, seed=6)
    with assert_raises(ValueError, "offsets", "(..., K, A)"):
        bet_loss(z, o[:, :4], b, r)
    with assert_raises(ValueError, "residuals", "(6, 2)"):
        bet_loss(z, o, b, r[:, :1])
    with assert_raises(ValueError, "bins", "[0, K=5)"):
        bet_loss(z, o, b + 5, r)
    with assert_raises(TypeError, "bins", "integer"):
        bet_loss(z, o, b.float(), r)
    with assert_raises(ValueError, "bins", "shape"):
        bet_loss(z, o, b[:3], r)
    with assert_raises(TypeError, "residuals", "dtype"):
        bet_loss(z, o, b, r.double())
    with assert_raises(ValueError, "gamma"):
        bet_loss(z, o, b, r, gamma=-1.0)
    with assert_raises(ValueError, "weight", "sum"):
        bet_loss(z, o, b, r, weight=torch.zeros(6))
    with assert_raises(ValueError, "weight", "non-negative"):
        bet_loss(z, o, b, r, weight=-w)
    with assert_raises(ValueError, "weight", "shape"):
        bet_loss(z, o, b, r, weight=w[:2])
    with assert_raises(ValueError, "temperature"):
        sample_actions(z, o, torch.zeros(5, 2), -1.0)
    with assert_raises(ValueError, "centers", "(5, 2)"):
        sample_actions(z, o, torch.zeros(4, 2))
