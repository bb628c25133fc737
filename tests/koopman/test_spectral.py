"""Spectral loss and static/dynamic split: every backend against the reference, gradients, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastorals
from fastorals import _ext
from fastorals.koopman import eigenvalue_loss, spectral_loss, static_dynamic_split
from fastorals.koopman import ops as kops
from fastorals.koopman.reference import (
    DYNAMIC_MODES,
    STATIC_MODES,
    components_reference,
    spectral_loss_reference,
    spectral_terms_reference,
    static_mask_reference,
)
from fastorals.testing import assert_close, assert_raises, make_noncontiguous

BACKENDS = ["torch", "reference"] + (["cpp"] if _ext.HAS_EXT else [])


def spectrum_from_values(vals: list[complex], dtype=torch.complex128) -> torch.Tensor:
    return torch.tensor(vals, dtype=dtype)


def real_matrix_with(vals: list[complex], seed: int = 0) -> torch.Tensor:
    """A real matrix with the given spectrum (complex values must come with their conjugates)."""
    blocks = []
    seen = set()
    for i, v in enumerate(vals):
        if v.imag == 0:
            blocks.append(torch.tensor([[v.real]], dtype=torch.float64))
        elif v.imag > 0 and i not in seen:
            blocks.append(torch.tensor([[v.real, v.imag], [-v.imag, v.real]], dtype=torch.float64))
    D = torch.block_diag(*blocks)
    g = torch.Generator().manual_seed(seed)
    P = torch.randn(D.shape[0], D.shape[0], generator=g, dtype=torch.float64) + 3 * torch.eye(D.shape[0], dtype=torch.float64)
    return P @ D @ torch.linalg.inv(P)


def run_backend(lam: torch.Tensor, backend: str, num_static: int, sm: str, dm: str, **kw):
    with fastorals.use_backend(backend):
        return eigenvalue_loss(lam, num_static, static_mode=sm, dynamic_mode=dm, reduction="none",
                               return_details=True, **kw)


# ------------------------------------------------------------------------------ agreement


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sm", STATIC_MODES)
@pytest.mark.parametrize("dm", DYNAMIC_MODES)
def test_backends_match_reference_forward_and_backward(backend, sm, dm):
    g = torch.Generator().manual_seed(hash((sm, dm)) % 1000)
    C = torch.randn(4, 11, 11, generator=g, dtype=torch.float64) / 2.5
    lam = torch.linalg.eigvals(C)
    lam_a = lam.clone().requires_grad_()
    out = run_backend(lam_a, backend, 3, sm, dm)
    lam_b = lam.clone().requires_grad_()
    s, d, mask = spectral_terms_reference(lam_b, 3, sm, dm)
    assert torch.equal(out.static_mask, mask)
    assert_close(out.static, s)
    assert_close(out.dynamic, d)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    ((out.static * w).sum() + (out.dynamic * w.flip(0)).sum()).backward()
    ((s * w).sum() + (d * w.flip(0)).sum()).backward()
    assert_close(torch.view_as_real(lam_a.grad), torch.view_as_real(lam_b.grad), kind="grad")


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
@pytest.mark.parametrize("k", [1, 7, 97])
def test_float32_and_odd_sizes(backend, k):
    g = torch.Generator().manual_seed(k)
    C = torch.randn(3, k, k, generator=g) / math.sqrt(k)
    lam = torch.linalg.eigvals(C)
    out = run_backend(lam, backend, 5, "ball", "real")
    s, d, mask = spectral_terms_reference(lam, 5, "ball", "real")
    assert out.static.dtype == torch.float32
    assert torch.equal(out.static_mask, mask)
    assert_close(out.static, s)
    assert_close(out.dynamic, d)


def test_noncontiguous_eigvals():
    lam = torch.linalg.eigvals(torch.randn(5, 9, 9, dtype=torch.float64))
    ln = make_noncontiguous(lam, dim=0)
    for be in BACKENDS:
        a = run_backend(ln, be, 2, "norm", "ball")
        b = run_backend(lam, be, 2, "norm", "ball")
        assert_close(a.loss, b.loss, kind="exact")


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_spectral_loss_gradcheck_float64(variant):
    g = torch.Generator().manual_seed(7)
    for _ in range(3):
        C = (torch.randn(9, 9, generator=g, dtype=torch.float64) / 3).requires_grad_()
        lam = torch.linalg.eigvals(C.detach())
        dist = (lam - 1).abs()
        # keep eigenvalues away from the non-smooth thresholds (finite differences would straddle them)
        if ((lam.real - 0.5).abs().min() < 1e-3) or ((dist - 0.6).abs().min() < 1e-3):
            continue
        assert torch.autograd.gradcheck(lambda C: spectral_loss(C, 3, variant), (C,))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("sm", "dm"), [("real", "thresh"), ("ball", "strict"), ("norm", "none")])
def test_other_modes_gradcheck_through_eig(backend, sm, dm):
    g = torch.Generator().manual_seed(11)
    C = (torch.randn(2, 6, 6, generator=g, dtype=torch.float64) / 2).requires_grad_()
    with fastorals.use_backend(backend):
        assert torch.autograd.gradcheck(
            lambda C: spectral_loss(C, 2, static_mode=sm, dynamic_mode=dm, dynamic_threshold=0.3, reduction="sum"),
            (C,), fast_mode=True)


def test_matches_reference_loss_on_matrices():
    g = torch.Generator().manual_seed(5)
    C = torch.randn(3, 12, 12, generator=g, dtype=torch.float64) / 3
    for variant, (sm, dm) in (("paper", ("ball", "real")), ("released", ("norm", "ball"))):
        assert_close(spectral_loss(C, 4, variant), spectral_loss_reference(C, 4, sm, dm))


# ------------------------------------------------------------------------------ split semantics


def test_conjugate_pairs_are_never_split():
    vals = [0.95 + 0.1j, 0.95 - 0.1j, 0.99, 0.2 + 0.5j, 0.2 - 0.5j, -0.4]
    lam = spectrum_from_values(vals)
    for be in BACKENDS:
        with fastorals.use_backend(be):
            sp = static_dynamic_split(lam, 2)
        # components by distance to 1: 0.99 (0.01), pair (0.112): s=2 takes 0.99 and the whole pair
        assert sp.static_mask.tolist() == [True, True, True, False, False, False]
        assert int(sp.num_static_eigvals) == 3
        assert sp.components.tolist() == [0, 0, 2, 3, 3, 5]
        with fastorals.use_backend(be):
            sp1 = static_dynamic_split(lam, 1)
        assert sp1.static_mask.tolist() == [False, False, True, False, False, False]


def test_duplicate_conjugate_pairs_pair_in_order():
    a = 0.5 + 0.25j
    vals = [a, a, a.conjugate(), 0.75, a.conjugate()]
    lam = spectrum_from_values(vals)
    comp = components_reference(lam)
    assert comp == [0, 1, 0, 3, 1]
    for be in BACKENDS:
        with fastorals.use_backend(be):
            sp = static_dynamic_split(lam, 1)
            assert sp.components.tolist() == comp
            # |0.75 - 1| = 0.25 < |a - 1| = 0.559: the real one is static
            assert sp.static_mask.tolist() == [False, False, False, True, False]
            sp2 = static_dynamic_split(lam, 2)
            assert sp2.static_mask.tolist() == [True, False, True, True, False]  # ties broken by id


def test_criteria():
    vals = [1.5, 0.9, -1.2, 0.1 + 1.1j, 0.1 - 1.1j]
    lam = spectrum_from_values(vals)
    assert static_dynamic_split(lam, 1, "ball").static_mask.tolist() == [False, True, False, False, False]
    assert static_dynamic_split(lam, 1, "real").static_mask.tolist() == [True, False, False, False, False]
    assert static_dynamic_split(lam, 1, "norm").static_mask.tolist() == [True, False, False, False, False]
    assert static_dynamic_split(lam, 2, "norm").static_mask.tolist() == [True, False, True, False, False]
    # |0.1 +- 1.1i|^2 = 1.22 < 1.44 = |-1.2|^2, so the pair is third by modulus
    assert static_dynamic_split(lam, 3, "norm").static_mask.tolist() == [True, False, True, True, True]


def test_everything_static_or_nothing_static():
    lam = torch.linalg.eigvals(torch.randn(6, 6, dtype=torch.float64))
    for be in BACKENDS:
        out = run_backend(lam, be, 100, "ball", "real")
        assert bool(out.static_mask.all()) and float(out.dynamic) == 0.0
        out0 = run_backend(lam, be, 0, "ball", "real")
        assert not bool(out0.static_mask.any()) and float(out0.static) == 0.0


def test_loss_values_by_hand():
    lam = spectrum_from_values([1.0 + 0.0j, 0.8 + 0.0j, 0.3 + 0.4j, 0.3 - 0.4j, 0.7 + 0.0j])
    # s = 2 components by distance: 1.0 (0), 0.8 (0.2)  -> static; dynamic: pair (|.| .806), 0.7 (0.3)
    for be in BACKENDS:
        out = run_backend(lam, be, 2, "ball", "real")
        assert out.static_mask.tolist() == [True, True, False, False, True] or out.static_mask.tolist() == [
            True, True, False, False, False]
        assert out.static_mask.tolist() == [True, True, False, False, False]
        assert math.isclose(float(out.static), (0.0 + 0.04) / 2)
        assert math.isclose(float(out.dynamic), (0.0 + 0.0 + 0.7) / 3)  # only Re = 0.7 > 0.5 counts
        outb = run_backend(lam, be, 2, "ball", "ball")
        d = abs(0.7 - 1)  # 0.3 < 0.6; the pair is at 0.806 > 0.6
        assert math.isclose(float(outb.dynamic), (2 - d) / 3)
        outn = run_backend(lam, be, 2, "norm", "strict", eigs_threshold=0.5)
        # norm criterion: 1.0, 0.8 largest moduli; static (|l|^2-1)^2 = 0, 0.1296
        assert math.isclose(float(outn.static), (0 + (0.64 - 1) ** 2) / 2)
        assert math.isclose(float(outn.dynamic), ((0.25 - 0.25) ** 2 * 2 + (0.49 - 0.25) ** 2) / 3)


@given(
    reals=st.lists(st.sampled_from([-1.0, -0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 2.0]), max_size=6),
    pairs=st.lists(st.tuples(st.sampled_from([-0.5, 0.0, 0.5, 0.75, 1.0]), st.sampled_from([0.25, 0.5, 1.0])),
                   max_size=4),
    num_static=st.integers(0, 8),
    crit=st.sampled_from(STATIC_MODES),
    seed=st.integers(0, 1000),
)
def test_property_split_with_ties_matches_reference(reals, pairs, num_static, crit, seed):
    """Exact ties, duplicates and conjugate pairs in shuffled order: all backends agree with the reference."""
    vals = [complex(r) for r in reals]
    for a, b in pairs:
        vals += [complex(a, b), complex(a, -b)]
    if not vals:
        vals = [0.5 + 0j]
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(vals), generator=g).tolist()
    vals = [vals[i] for i in order]
    lam = spectrum_from_values(vals)
    ref_mask = static_mask_reference(lam, num_static, crit)
    ref_comp = components_reference(lam)
    # a conjugate pair is static or dynamic as a whole
    for i, c in enumerate(ref_comp):
        assert ref_mask[i] == ref_mask[c]
    n_comp = len(set(ref_comp))
    assert sum(1 for c in set(ref_comp) if ref_mask[c]) == min(num_static, n_comp)
    for be in BACKENDS:
        with fastorals.use_backend(be):
            sp = static_dynamic_split(lam, num_static, crit)
        assert sp.static_mask.tolist() == ref_mask.tolist(), be
        assert sp.components.tolist() == ref_comp, be
        for sm, dm in (("ball", "real"), ("norm", "ball"), ("real", "thresh"), ("ball", "strict")):
            out = run_backend(lam, be, num_static, sm, dm)
            s, d, _ = spectral_terms_reference(lam, num_static, sm, dm)
            assert_close(out.static, s)
            assert_close(out.dynamic, d)


@given(k=st.integers(1, 24), m=st.integers(1, 4), num_static=st.integers(0, 10), seed=st.integers(0, 10_000),
       scale=st.sampled_from([1e-3, 0.3, 1.0, 50.0]))
def test_property_random_spectra(k, m, num_static, seed, scale):
    g = torch.Generator().manual_seed(seed)
    C = torch.randn(m, k, k, generator=g, dtype=torch.float64) * scale / math.sqrt(k)
    lam = torch.linalg.eigvals(C)
    ref = spectral_terms_reference(lam, num_static, "ball", "ball")
    for be in [b for b in BACKENDS if b != "reference"]:
        out = run_backend(lam, be, num_static, "ball", "ball")
        assert torch.equal(out.static_mask, ref[2])
        assert_close(out.static, ref[0])
        assert_close(out.dynamic, ref[1])


# ------------------------------------------------------------------------------ degenerate spectra


def test_repeated_eigenvalues_gradient_is_finite():
    """C = I (all eigenvalues 1, diagonalizable): the eigenvalue-only gradient stays finite."""
    C = torch.eye(6, dtype=torch.float64).requires_grad_()
    spectral_loss(C, 2, "paper").backward()
    assert torch.isfinite(C.grad).all()
    # a double static eigenvalue 0.9 (semisimple): the static term 1/2 sum (lam - 1)^2 over the cluster
    # is a smooth function of C with gradient (0.9 - 1) * Pi^T, Pi the spectral projector of the cluster
    f64 = dict(dtype=torch.float64)
    D = torch.block_diag(torch.tensor([[0.9]], **f64), torch.tensor([[0.9]], **f64),
                         torch.tensor([[0.2, 0.3], [-0.3, 0.2]], **f64), torch.tensor([[-0.1]], **f64)).requires_grad_()
    spectral_loss(D, 2, "paper").backward()
    expected = torch.zeros(5, 5, dtype=torch.float64)
    expected[0, 0] = expected[1, 1] = -0.1
    assert_close(D.grad, expected, kind="grad")
    P = torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) + 3 * torch.eye(5)
    C3 = (P @ D.detach() @ torch.linalg.inv(P)).requires_grad_()
    spectral_loss(C3, 2, "paper").backward()
    assert torch.isfinite(C3.grad).all()


def test_ball_dynamic_subgradient_at_one():
    lam = spectrum_from_values([1.0 + 0j, 1.0 + 0j, 0.1 + 0j]).requires_grad_()
    out = eigenvalue_loss(lam, 1, "released", return_details=True)  # one static; the second 1.0 is dynamic
    out.loss.backward()
    assert torch.isfinite(lam.grad).all()


# ------------------------------------------------------------------------------ API details


def test_batched_reduction_and_details():
    C = torch.randn(2, 3, 8, 8, dtype=torch.float64) / 3
    out = spectral_loss(C, 3, reduction="none", return_details=True)
    assert out.loss.shape == (2, 3) and out.static_mask.shape == (2, 3, 8) and out.num_static_eigvals.shape == (2, 3)
    assert_close(spectral_loss(C, 3, reduction="mean"), out.loss.mean())
    assert_close(spectral_loss(C, 3, reduction="sum"), out.loss.sum())
    assert_close(out.loss, out.static + out.dynamic)
    one = spectral_loss(C[1, 2], 3, reduction="none")
    assert_close(one, out.loss[1, 2])


def test_opcheck_ops():
    ev = torch.view_as_real(torch.linalg.eigvals(torch.randn(3, 6, 6, dtype=torch.float64))).contiguous()
    ev.requires_grad_()
    torch.library.opcheck(kops._spectral_torch, (ev, 2, 0, 1, 0.5, 0.6, 0.5))
    if _ext.HAS_EXT:
        torch.library.opcheck(kops._spectral_cpp, (ev, 2, 1, 2, 0.5, 0.6, 0.5))


def test_torch_compile_of_spectral_loss_torch_backend():
    C = torch.randn(7, 7) / 3
    with fastorals.use_backend("torch"):
        ref = eigenvalue_loss(torch.linalg.eigvals(C), 2)
        f = torch.compile(lambda lam: eigenvalue_loss(lam, 2), backend="eager", fullgraph=False)
        assert_close(f(torch.linalg.eigvals(C)), ref)


def test_backend_errors():
    lam = torch.linalg.eigvals(torch.randn(5, 5))
    with fastorals.use_backend("triton"):
        if not _ext.triton_runs_on(torch.device("cpu")):
            with assert_raises(fastorals.BackendUnavailableError, "triton"):
                eigenvalue_loss(lam, 2)


@pytest.mark.parametrize(
    ("call", "exc", "words"),
    [
        (lambda: spectral_loss(torch.randn(3, 4), 1), ValueError, ("C", "square")),
        (lambda: spectral_loss(torch.randn(4), 1), ValueError, ("C", "square")),
        (lambda: spectral_loss(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), 1), ValueError, ("C", "non-finite")),
        (lambda: spectral_loss(torch.randint(0, 2, (3, 3)), 1), TypeError, ("C", "floating")),
        (lambda: spectral_loss(torch.randn(3, 3), -1), ValueError, ("num_static", ">= 0")),
        (lambda: spectral_loss(torch.randn(3, 3), 1.5), ValueError, ("num_static",)),
        (lambda: spectral_loss(torch.randn(3, 3), 1, "official"), ValueError, ("variant", "paper")),
        (lambda: spectral_loss(torch.randn(3, 3), 1, static_mode="circle"), ValueError, ("static_mode",)),
        (lambda: spectral_loss(torch.randn(3, 3), 1, dynamic_mode="x"), ValueError, ("dynamic_mode",)),
        (lambda: spectral_loss(torch.randn(3, 3), 1, reduction="max"), ValueError, ("reduction",)),
        (lambda: spectral_loss(torch.randn(3, 3), 1, dynamic_threshold=float("nan")), ValueError,
         ("dynamic_threshold",)),
        (lambda: eigenvalue_loss(torch.randn(3), 1), TypeError, ("eigvals", "complex")),
        (lambda: eigenvalue_loss(torch.tensor([complex("nan")]), 1), ValueError, ("eigvals", "non-finite")),
        (lambda: static_dynamic_split(torch.randn(3), 1), TypeError, ("eigvals", "complex")),
        (lambda: static_dynamic_split(torch.zeros(3, dtype=torch.complex64), 1, "nearest"), ValueError,
         ("criterion",)),
    ],
)
def test_bad_input(call, exc, words):
    with assert_raises(exc, *words):
        call()
