"""R1 (error correction): the C++ and chunked PyTorch paths against the materializing reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastorals
from fastorals._ext import HAS_EXT
from fastorals.label_encoding import error_correction_penalty, ops
from fastorals.label_encoding import reference as R
from fastorals.testing import assert_close, make_noncontiguous

BACKENDS = ["torch"] + (["cpp"] if HAS_EXT else [])
needs_ext = pytest.mark.skipif(not HAS_EXT, reason="C++ extension not built")


def _data(B, M, dtype, seed=0, label_scale=20.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, M, generator=g, dtype=torch.float64)
    y = torch.rand(B, generator=g, dtype=torch.float64) * label_scale
    return z.to(dtype), y.to(dtype)


def _check(z, y, backend, margin=2.0, step=1.0):
    zf = z.clone().requires_grad_()
    zr = z.clone().requires_grad_()
    with fastorals.use_backend(backend):
        out = error_correction_penalty(zf, y, margin=margin, label_step=step)
    ref = R.error_correction_penalty(zr, y, margin, step)
    assert out.dtype == z.dtype and out.shape == ()
    assert_close(out, ref)
    gout = torch.tensor(1.7, dtype=z.dtype)
    (g,) = torch.autograd.grad(out, zf, gout)
    (gr,) = torch.autograd.grad(ref, zr, gout)
    assert_close(g, gr, kind="grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("B", "M"), [(1, 3), (2, 1), (7, 5), (97, 13), (130, 33)])
def test_matches_reference(backend, dtype, B, M):
    z, y = _data(B, M, dtype, seed=B * 31 + M)
    _check(z, y, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_batch_float64(backend):
    z, y = _data(1025, 6, torch.float64, seed=7, label_scale=8.0)
    _check(z, y, backend, margin=1.5, step=0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_and_integer_labels(backend):
    z, _ = _data(33, 9, torch.float32, seed=3)
    y_int = torch.randint(0, 12, (33,))
    zn = make_noncontiguous(z)
    with fastorals.use_backend(backend):
        a = error_correction_penalty(zn, y_int)
    assert_close(a, R.error_correction_penalty(z, y_int.float()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_duplicates_and_zero_margin(backend):
    # duplicated rows and labels, integer-valued codes that hit exact zero pre-activations
    z = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 1.0], [3.0, -1.0], [0.5, 0.5]], dtype=torch.float64)
    y = torch.tensor([0.0, 0.0, 0.5, 2.0, 1.0], dtype=torch.float64)
    _check(z, y, backend)
    _check(z, y, backend, margin=0.0)
    _check(z[:1], y[:1], backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    z = torch.zeros(0, 4, requires_grad=True)
    with fastorals.use_backend(backend):
        out = error_correction_penalty(z, torch.zeros(0))
    assert out.item() == 0.0
    out.backward()
    assert z.grad.shape == (0, 4)


@given(
    B=st.integers(1, 24),
    M=st.integers(1, 10),
    levels=st.integers(1, 6),
    code_grid=st.sampled_from([0.0, 0.5, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_property_float64(B, M, levels, code_grid, seed):
    """Random shapes, many ties (labels on a coarse grid, codes rounded to a grid), float64."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, M, generator=g, dtype=torch.float64) * 3
    if code_grid:
        z = torch.round(z / code_grid) * code_grid
    y = torch.randint(0, levels, (B,), generator=g).to(torch.float64)
    for backend in BACKENDS:
        _check(z, y, backend)


@needs_ext
def test_gradcheck_cpp():
    z, y = _data(11, 4, torch.float64, seed=2)
    z.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ops.r1_cpp(t, y, 2.0), (z,))


def test_gradcheck_chunked():
    z, y = _data(11, 4, torch.float64, seed=2)
    z.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ops.r1_chunked(t, y, 2.0), (z,))


@pytest.mark.parametrize("op", [ops.r1_chunked] + ([ops.r1_cpp] if HAS_EXT else []))
def test_opcheck(op):
    z, y = _data(9, 5, torch.float32, seed=4)
    torch.library.opcheck(op, (z.requires_grad_(), y, 2.0))


def test_chunked_path_spans_several_chunks(monkeypatch):
    monkeypatch.setattr(ops, "R1_CHUNK_ELEMENTS", 64)  # forces many row blocks
    z, y = _data(45, 7, torch.float64, seed=9)
    _check(z, y, "torch")


@needs_ext
def test_cpp_threads_agree():
    z, y = _data(300, 17, torch.float64, seed=11)
    outs = []
    for t in (1, 2):
        old = torch.get_num_threads()
        torch.set_num_threads(t)
        try:
            zz = z.clone().requires_grad_()
            v = ops.r1_cpp(zz, y, 2.0)
            v.backward()
            outs.append((v.detach(), zz.grad))
        finally:
            torch.set_num_threads(old)
    assert_close(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1], outs[1][1])  # gradient sums of +-1 are exact
