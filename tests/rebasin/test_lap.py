"""Linear assignment: exactness against SciPy (hypothesis), duals, warm starts, every kernel path, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment as scipy_lsa

import fastorals
from fastorals import _ext
from fastorals.rebasin import AssignmentDuals, linear_sum_assignment
from fastorals.rebasin.reference import lap_reference
from fastorals.testing import assert_raises

LAP = _ext.ext_topic("lap")
BACKENDS = ["cpp", "reference"] if LAP is not None else ["reference"]
ISAS = {"scalar": 1, "avx2": 2, "avx512": 3}


def _objective(c: np.ndarray, r: np.ndarray, k: np.ndarray) -> float:
    return float(np.asarray(c, dtype=np.float64)[r, k].sum())


def _scipy(c: np.ndarray, maximize: bool):
    try:
        r, k = scipy_lsa(np.asarray(c, dtype=np.float64), maximize=maximize)
        return _objective(c, r, k)
    except ValueError:
        return None


def _check_duals(c: np.ndarray, d: AssignmentDuals, maximize: bool, obj: float) -> None:
    c64 = np.asarray(c, dtype=np.float64)
    scale = max(1.0, float(np.abs(c64[np.isfinite(c64)]).max(initial=0.0)))
    slack = c64 - d.row_duals[:, None] - d.col_duals[None, :]
    if maximize:
        slack = -slack
    slack[~np.isfinite(slack)] = 0.0  # forbidden pairs
    assert slack.min(initial=0.0) >= -1e-9 * scale * max(c.shape), "dual infeasible"
    assert d.objective() == pytest.approx(obj, rel=1e-9, abs=1e-9 * scale), "no strong duality"
    n, m = c.shape
    if n < m:  # unassigned columns: dual 0, others on the same side of 0
        free = np.ones(m, bool)
        free[d.col_of_row[d.col_of_row >= 0]] = False
        assert np.all(d.col_duals[free] == 0)
    if n > m:
        assert np.all(d.row_duals[d.col_of_row < 0] == 0)


@st.composite
def matrices(draw, max_side: int = 9):
    n = draw(st.integers(0, max_side))
    m = draw(st.integers(0, max_side))
    kind = draw(st.sampled_from(["int", "float", "inf", "ties"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    if kind == "int":
        c = rng.integers(-50, 50, (n, m)).astype(np.float64)
    elif kind == "ties":
        c = rng.integers(0, 3, (n, m)).astype(np.float64)
    elif kind == "float":
        c = rng.standard_normal((n, m)) * 10.0 ** draw(st.integers(-6, 6))
    else:
        c = rng.integers(0, 10, (n, m)).astype(np.float64)
        c[rng.random((n, m)) < draw(st.sampled_from([0.2, 0.5, 0.8]))] = np.inf
    return c


@pytest.mark.parametrize("backend", BACKENDS)
@given(c=matrices(), maximize=st.booleans(), f32=st.booleans())
def test_objective_equals_scipy(backend, c, maximize, f32):
    if maximize:
        c = -c  # +inf forbidden when minimizing becomes -inf when maximizing
    if f32:
        c = c.astype(np.float32)
    ref = _scipy(c, maximize)
    with fastorals.use_backend(backend):
        if ref is None:
            with assert_raises(ValueError, "cost", "infeasible"):
                linear_sum_assignment(c, maximize)
            return
        r, k, d = linear_sum_assignment(c, maximize, return_duals=True)
    assert r.dtype == np.int64 and k.dtype == np.int64
    assert len(r) == min(c.shape) and np.all(np.diff(r) > 0) and len(set(k.tolist())) == len(k)
    obj = _objective(c, r, k)
    assert obj == pytest.approx(ref, rel=1e-9, abs=1e-9 * max(1.0, abs(ref)))
    _check_duals(c, d, maximize, obj)


@pytest.mark.parametrize("backend", BACKENDS)
@given(c=matrices(7), maximize=st.booleans(), noise=st.sampled_from([0.0, 1e-9, 1e-3, 1.0, 100.0]),
       seed=st.integers(0, 1000))
def test_warm_start_is_exact(backend, c, maximize, noise, seed):
    """A warm start from a previous (nearby or unrelated) solve still gives the exact optimum."""
    if maximize:
        c = -c
    assume(_scipy(c, maximize) is not None)
    with fastorals.use_backend(backend):
        _, _, d = linear_sum_assignment(c, maximize, return_duals=True)
        rng = np.random.default_rng(seed)
        c2 = c + noise * rng.standard_normal(c.shape)
        ref = _scipy(c2, maximize)
        assume(ref is not None)
        r, k, d2 = linear_sum_assignment(c2, maximize, warm_start=d, return_duals=True)
    obj = _objective(c2, r, k)
    assert obj == pytest.approx(ref, rel=1e-9, abs=1e-9 * max(1.0, abs(ref)))
    _check_duals(c2, d2, maximize, obj)


@pytest.mark.parametrize("backend", BACKENDS)
@given(shape=st.tuples(st.integers(1, 8), st.integers(1, 8)), seed=st.integers(0, 1000))
def test_warm_start_from_garbage_duals(backend, shape, seed):
    """Arbitrary duals and assignments (duplicates, out of range) are repaired, not trusted."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal(shape)
    n, m = shape
    bogus = AssignmentDuals(rng.standard_normal(n) * 5, rng.standard_normal(m) * 5,
                            rng.integers(-2, m + 2, n).astype(np.int64), False)
    with fastorals.use_backend(backend):
        r, k = linear_sum_assignment(c, warm_start=bogus)
    assert _objective(c, r, k) == pytest.approx(_scipy(c, False), rel=1e-9, abs=1e-12)


@pytest.mark.skipif(LAP is None, reason="C++ extension not built")
@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,m", [(1, 1), (7, 7), (7, 13), (33, 97), (97, 97), (130, 131)])
def test_every_kernel_path(isa, dtype, n, m):
    """Scalar, AVX2 and AVX-512 kernels (the last two fall back when the CPU lacks them) are exact,
    including tails of every length, float32 and float64, negated (maximize) and cold / warm."""
    rng = np.random.default_rng(n * 1000 + m)
    for negate in (False, True):
        c = rng.random((n, m)).astype(dtype)
        c[rng.random((n, m)) < 0.05] = np.inf if not negate else -np.inf
        ref = _scipy(c, negate)
        if ref is None:
            continue
        fn = LAP.solve_f32 if dtype == np.float32 else LAP.solve_f64
        v, x, u = np.zeros(m), np.full(n, -1, np.int64), np.zeros(n)
        fn(c, negate, v, x, u, False, ISAS[isa], 2)
        assert _objective(c, np.arange(n), x) == pytest.approx(ref, rel=1e-12)
        c2 = (c + dtype(0.01) * rng.random((n, m)).astype(dtype)).astype(dtype)
        ref2 = _scipy(c2, negate)
        fn(c2, negate, v, x, u, True, ISAS[isa], 2)
        assert _objective(c2, np.arange(n), x) == pytest.approx(ref2, rel=1e-12)


@pytest.mark.skipif(LAP is None, reason="C++ extension not built")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_larger_matrices_match_scipy(dtype):
    rng = np.random.default_rng(0)
    for n, m in [(300, 300), (200, 450)]:
        c = rng.random((n, m)).astype(dtype)
        r, k, d = linear_sum_assignment(c, maximize=True, return_duals=True)
        ref = _scipy(c, True)
        assert _objective(c, r, k) == pytest.approx(ref, rel=1e-12)
        c2 = c + dtype(1e-3) * rng.random((n, m)).astype(dtype)
        r2, k2 = linear_sum_assignment(c2, maximize=True, warm_start=d)
        assert _objective(c2, r2, k2) == pytest.approx(_scipy(c2, True), rel=1e-12)
        # the same matrix again: the warm start is already optimal
        r3, k3 = linear_sum_assignment(c, maximize=True, warm_start=d)
        assert np.array_equal(k3, k)


def test_tensor_input_output_and_dtypes():
    c = torch.rand(6, 9, dtype=torch.float64)
    r, k = linear_sum_assignment(c)
    assert isinstance(r, torch.Tensor) and r.dtype == torch.int64 and k.dtype == torch.int64
    ref = _scipy(c.numpy(), False)
    assert _objective(c.numpy(), r.numpy(), k.numpy()) == pytest.approx(ref)
    for t in (c.float(), c.half(), (c * 100).long(), c.T.contiguous().T):  # dtypes and a non-contiguous view
        r, k = linear_sum_assignment(t)
        cn = t.double().numpy()
        assert _objective(cn, r.numpy(), k.numpy()) == pytest.approx(_scipy(cn, False), rel=1e-6)
    r, k = linear_sum_assignment([[4, 1, 3], [2, 0, 5], [3, 2, 2]])
    assert r.tolist() == [0, 1, 2] and k.tolist() == [1, 0, 2]


def test_empty_and_one_by_one():
    for shape in [(0, 0), (0, 4), (3, 0)]:
        r, k, d = linear_sum_assignment(np.zeros(shape), return_duals=True)
        assert r.shape == (0,) and k.shape == (0,) and d.shape == shape
    r, k = linear_sum_assignment(np.array([[5.0]]), maximize=True)
    assert r.tolist() == [0] and k.tolist() == [0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_errors(backend):
    with fastorals.use_backend(backend):
        with assert_raises(ValueError, "cost", "nan"):
            linear_sum_assignment(np.array([[1.0, np.nan], [0.0, 1.0]]))
        with assert_raises(ValueError, "cost", "-inf"):
            linear_sum_assignment(np.array([[1.0, -np.inf], [0.0, 1.0]]))
        with assert_raises(ValueError, "cost", "+inf"):
            linear_sum_assignment(np.array([[1.0, np.inf], [0.0, 1.0]]), maximize=True)
        with assert_raises(ValueError, "cost", "infeasible"):
            linear_sum_assignment(np.array([[1.0, np.inf], [2.0, np.inf]]))
        with assert_raises(ValueError, "cost", "infeasible"):  # rectangular, wide
            linear_sum_assignment(np.array([[1.0, np.inf, np.inf], [2.0, np.inf, np.inf]]))
    with assert_raises(ValueError, "cost", "2-d"):
        linear_sum_assignment(np.zeros(3))
    with assert_raises(TypeError, "cost"):
        linear_sum_assignment(np.array([["a", "b"]]))
    _, _, d = linear_sum_assignment(np.eye(3), return_duals=True)
    with assert_raises(ValueError, "warm_start", "(3, 3)"):
        linear_sum_assignment(np.eye(4), warm_start=d)
    with assert_raises(ValueError, "warm_start", "maximize"):
        linear_sum_assignment(np.eye(3), maximize=True, warm_start=d)
    with assert_raises(TypeError, "warm_start"):
        linear_sum_assignment(np.eye(3), warm_start=(np.zeros(3), np.zeros(3)))


def test_reference_matches_cpp_duals_semantics():
    """The NumPy fallback returns the same optimum and valid duals (it is the no-extension path)."""
    rng = np.random.default_rng(3)
    c = rng.random((20, 31))
    x, u, v = lap_reference(c, negate=True)
    assert _objective(c, np.arange(20), x) == pytest.approx(_scipy(c, True), rel=1e-12)
    slack = -c - u[:, None] - v[None, :]
    assert slack.min() > -1e-12


@pytest.mark.skipif(LAP is None, reason="C++ extension not built")
@pytest.mark.parametrize("threads", [1, 2])
def test_warm_start_work_and_exactness(threads):
    """Same matrix: nothing to repair (one pass). Nearby / unrelated matrices: exact."""
    rng = np.random.default_rng(7)
    n = 120
    c = rng.random((n, n))
    v, x, u = np.zeros(n), np.full(n, -1, np.int64), np.zeros(n)
    LAP.solve_f64(c, False, v, x, u, False, 0, threads)
    v0, x0 = v.copy(), x.copy()
    same = LAP.solve_f64(c, False, v, x, u, True, 0, threads)
    assert same["released"] == 0 and same["dijkstra_scans"] == 0 and same["arr_steps"] == 0
    for c2 in (c + 1e-6 * rng.standard_normal((n, n)), rng.random((n, n))):
        v, x = v0.copy(), x0.copy()
        st = LAP.solve_f64(c2, False, v, x, u, True, 0, threads)
        assert st["released"] > 0
        assert _objective(c2, np.arange(n), x) == pytest.approx(_scipy(c2, False), rel=1e-12)


def test_torch_library_op():
    c = torch.rand(7, 11, dtype=torch.float64)
    r, k = torch.ops.fastorals.rebasin_linear_sum_assignment(c, True)
    assert r.dtype == torch.int64 and r.shape == (7,)
    assert _objective(c.numpy(), r.numpy(), k.numpy()) == pytest.approx(_scipy(c.numpy(), True), rel=1e-12)
    checks = ("test_schema", "test_faketensor")  # the autograd checks do not apply (integer outputs)
    torch.library.opcheck(torch.ops.fastorals.rebasin_linear_sum_assignment.default, (c, False), test_utils=checks)
    torch.library.opcheck(torch.ops.fastorals.rebasin_linear_sum_assignment.default, (c.T.float(), True),
                          test_utils=checks)
