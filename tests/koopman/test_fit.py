"""Koopman fit: exact recovery, agreement with lstsq, closed-form backward, fallback, errors."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastorals
from fastorals.koopman import KoopmanFitWarning, fit_koopman
from fastorals.koopman import ops as kops
from fastorals.koopman.reference import fit_koopman_reference
from fastorals.testing import assert_close, assert_raises, make_noncontiguous


def linear_sequences(b: int, t: int, k: int, dtype=torch.float64, lead=(), seed=0, scale=0.9):
    """Noise-free z[t+1] = z[t] @ C with a well-conditioned, stable C."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(*lead, k, k, generator=g, dtype=torch.float64))
    d = torch.empty(*lead, k, dtype=torch.float64).uniform_(0.5, 1.0, generator=g)
    C = scale * q * d.unsqueeze(-2)  # orthogonal times diagonal: singular values in [0.45, 0.9]
    z = [torch.randn(*lead, b, 1, k, generator=g, dtype=torch.float64)]
    for _ in range(t - 1):
        z.append(z[-1] @ C.unsqueeze(-3))
    return torch.cat(z, dim=-2).to(dtype), C.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("b", "t", "k"), [(32, 8, 40), (7, 3, 7), (8, 14, 97), (5, 2, 1), (97, 2, 13), (1, 9, 3)])
def test_exact_recovery(dtype, b, t, k):
    z, C = linear_sequences(b, t, k, dtype)
    sv = torch.linalg.svdvals(z[:, :-1].reshape(-1, k).double())
    kappa = float(sv[0] / sv[-1])  # no backward-stable solver beats ~kappa * eps
    fit = fit_koopman(z)
    tol = max(1e-9 if dtype == torch.float64 else 2e-4, 50 * kappa * torch.finfo(dtype).eps)
    assert_close(fit.C, C, atol=tol, rtol=tol)
    assert_close(fit.z_pred, z, atol=tol, rtol=tol)
    assert bool(fit.ill_conditioned) == fit.used_lstsq
    assert fit.used_lstsq == (kappa**2 * torch.finfo(dtype).eps > 0.01)  # the estimate is tight here
    assert fit.C.dtype == dtype and fit.z_pred.shape == z.shape


def test_exact_recovery_batched_leading_dims():
    z, C = linear_sequences(9, 5, 6, torch.float64, lead=(2, 3))
    fit = fit_koopman(z)
    assert fit.C.shape == (2, 3, 6, 6) and fit.ill_conditioned.shape == (2, 3)
    assert_close(fit.C, C, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("b", "t", "k"), [(32, 8, 40), (7, 5, 7), (13, 9, 25)])
def test_matches_lstsq_on_noisy_latents(dtype, b, t, k):
    g = torch.Generator().manual_seed(b * t + k)
    z = torch.randn(b, t, k, generator=g, dtype=dtype)
    fit = fit_koopman(z)
    C_ref, pred_ref = fit_koopman_reference(z.double())
    # normal equations lose up to cond(X)^2 * eps: compare the residual optimality and C loosely
    x, y = z[:, :-1].reshape(-1, k).double(), z[:, 1:].reshape(-1, k).double()
    r_fast = (x @ fit.C.double() - y).norm()
    r_ref = (x @ C_ref - y).norm()
    assert float(r_fast) <= float(r_ref) * (1 + (1e-10 if dtype == torch.float64 else 1e-5))
    tol = 1e-8 if dtype == torch.float64 else 1e-3
    assert_close(fit.C.double(), C_ref, atol=tol, rtol=tol)
    assert_close(fit.z_pred.double(), pred_ref, atol=tol, rtol=tol)


def test_noncontiguous_input():
    z, C = linear_sequences(6, 4, 5)
    zn = make_noncontiguous(z, dim=-1)
    assert not zn.is_contiguous()
    assert_close(fit_koopman(zn).C, fit_koopman(z).C, kind="exact")
    zt = z.transpose(0, 1).contiguous().transpose(0, 1)  # (B, T, k) view with permuted strides
    assert_close(fit_koopman(zt).C, fit_koopman(z).C, kind="exact")


@pytest.mark.parametrize(("ridge", "relative"), [(0.0, True), (0.3, True), (0.3, False)])
def test_gradcheck_float64(relative, ridge):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    f = lambda z: fit_koopman(z, ridge=ridge, relative_ridge=relative, check_finite=False)
    assert torch.autograd.gradcheck(lambda z: (f(z).C, f(z).z_pred), (z,))
    zb = torch.randn(2, 3, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: f(z).C, (zb,), fast_mode=True)


def test_gradgrad_not_needed_but_backward_matches_lstsq_autograd():
    g = torch.Generator().manual_seed(2)
    for b, t, k in [(8, 6, 5), (1, 20, 7), (30, 2, 11)]:
        z = torch.randn(b, t, k, generator=g, dtype=torch.float64)
        w = torch.randn(k, k, generator=g, dtype=torch.float64)
        wp = torch.randn(b, t, k, generator=g, dtype=torch.float64)
        grads = []
        for impl in ("fast", "reference"):
            zz = z.clone().requires_grad_()
            if impl == "fast":
                fit = fit_koopman(zz, ridge=0.0)
                C, pred = fit.C, fit.z_pred
            else:
                C, pred = fit_koopman_reference(zz)
            ((C * w).sum() + (pred * wp).sum() + (pred - zz).square().mean()).backward()
            grads.append(zz.grad)
        assert_close(grads[0], grads[1], atol=1e-8, rtol=1e-7)


def test_float32_backward_matches_float64():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(16, 8, 10, generator=g, dtype=torch.float64)
    out = []
    for dt in (torch.float32, torch.float64):
        zz = z.to(dt).requires_grad_()
        fit = fit_koopman(zz)
        (fit.C.sum() + (fit.z_pred - zz).square().sum()).backward()
        out.append(zz.grad.double())
    assert_close(out[0], out[1], atol=1e-4, rtol=1e-3)


def test_half_inputs_computed_in_float32():
    z, C = linear_sequences(16, 6, 8, torch.float32)
    fit = fit_koopman(z.to(torch.bfloat16))
    assert fit.C.dtype == torch.float32 and fit.z_pred.dtype == torch.bfloat16
    assert float((fit.C - C).abs().max()) < 0.1


def test_rank_deficient_falls_back_with_warning():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(1, 5, 10, generator=g, dtype=torch.float64)  # 4 rows for k = 10: rank 4
    with pytest.warns(KoopmanFitWarning, match="fell back"):
        fit = fit_koopman(z)
    assert fit.used_lstsq and bool(fit.ill_conditioned)
    x, y = z[:, :-1].reshape(-1, 10), z[:, 1:].reshape(-1, 10)
    min_norm = torch.linalg.lstsq(x, y, driver="gelsd").solution
    assert_close(fit.C, min_norm, atol=1e-9, rtol=1e-9)
    assert_close(fit.z_pred[:, 1:], z[:, 1:], atol=1e-9, rtol=1e-9)  # consistent system: exact fit


def test_fallback_gradient_is_finite_and_matches_lstsq():
    g = torch.Generator().manual_seed(6)
    z0 = torch.randn(2, 10, 4, 6, generator=g, dtype=torch.float64)
    z0[1] = torch.randn(10, 4, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 6, generator=g,
                                                                                 dtype=torch.float64)
    z = z0.clone().requires_grad_()  # group 0: full rank (Cholesky), group 1: rank 2 (lstsq fallback)
    with pytest.warns(KoopmanFitWarning, match="1 of 2"):
        fit = fit_koopman(z)
    assert fit.ill_conditioned.tolist() == [False, True]
    fit.C.square().sum().backward()
    assert torch.isfinite(z.grad).all()
    zr = z0.clone().requires_grad_()
    x, y = zr[:, :, :-1].reshape(2, -1, 6), zr[:, :, 1:].reshape(2, -1, 6)
    torch.linalg.lstsq(x, y, driver="gelsd").solution.square().sum().backward()
    assert_close(z.grad, zr.grad, atol=1e-8, rtol=1e-7)


def test_fallback_none_only_flags():
    z = torch.zeros(4, 6, 3, dtype=torch.float64)
    z[..., 0] = torch.randn(4, 6, dtype=torch.float64)  # rank 1 of 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = fit_koopman(z, fallback="none")
    assert bool(fit.ill_conditioned) and not fit.used_lstsq
    assert torch.isfinite(fit.C).all()  # the ridge keeps the solve finite


def test_cond_limit_controls_fallback():
    z, _ = linear_sequences(8, 6, 5)
    with pytest.warns(KoopmanFitWarning):
        fit = fit_koopman(z, cond_limit=1.0)
    assert fit.used_lstsq
    assert not fit_koopman(z, cond_limit=1e12).used_lstsq


def test_all_zero_latents_give_zero_matrix():
    with pytest.warns(KoopmanFitWarning):  # X = 0 is rank 0: the min-norm solution C = 0
        fit = fit_koopman(torch.zeros(3, 4, 5))
    assert torch.equal(fit.C, torch.zeros(5, 5)) and fit.used_lstsq


def test_reference_backend_and_torch_backend_agree():
    z, C = linear_sequences(10, 6, 7)
    with fastorals.use_backend("reference"):
        ref = fit_koopman(z)
    with fastorals.use_backend("torch"):
        fast = fit_koopman(z)
    assert ref.used_lstsq
    assert_close(ref.C, fast.C, atol=1e-9, rtol=1e-9)
    with fastorals.use_backend("cpp"):
        cpp = fit_koopman(z)
    assert_close(cpp.C, fast.C, atol=1e-9, rtol=1e-9)
    with fastorals.use_backend("triton"), assert_raises(fastorals.BackendUnavailableError, "fit_koopman", "triton"):
        fit_koopman(z)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("g", "b", "t", "k"), [(1, 32, 8, 40), (3, 4, 5, 7), (1, 2, 3, 1), (2, 16, 8, 64),
                                                (1, 3, 9, 17), (1, 64, 8, 130), (1, 5, 2, 3)])
@pytest.mark.parametrize("relative", [True, False])
def test_cpp_solve_matches_torch_path(dtype, g, b, t, k, relative):
    """The fused C++ solve (ridge, Cholesky, solves, condition estimate) against the PyTorch ops:
    same C, factor and condition estimate up to rounding, same status, same gradient."""
    z = torch.randn(g, b, t, k, dtype=dtype, generator=torch.Generator().manual_seed(g * 1000 + k))
    ridge = 1e-6 if relative else 0.1
    cpp = kops.koopman_fit(z, ridge, relative, cpp=True)
    ref = kops.koopman_fit(z, ridge, relative, cpp=False)
    tol = dict(atol=2e-4, rtol=2e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-10)
    for a, r in zip(cpp[:3], ref[:3]):
        assert_close(a, r, **tol)
    assert torch.equal(cpp[3], ref[3]) and int(cpp[3].abs().sum()) == 0
    w = torch.randn(g, k, k, dtype=dtype, generator=torch.Generator().manual_seed(7))
    grads = []
    for use_cpp in (True, False):
        zz = z.clone().requires_grad_(True)
        (kops.koopman_fit(zz, ridge, relative, cpp=use_cpp)[0] * w).sum().backward()
        grads.append(zz.grad)
    assert_close(grads[0], grads[1], **tol)


def test_cpp_solve_failed_factorization_is_flagged():
    z = torch.zeros(1, 4, 5, 6)
    c, factor, cond, info = kops.koopman_fit(z, 0.0, False, cpp=True)
    assert int(info[0]) == 1 and bool(torch.isnan(c).all()) and bool(torch.isnan(factor).all())
    assert not bool(cond[0] <= 1e30)
    with pytest.warns(KoopmanFitWarning):  # fit_koopman falls back to lstsq, as on the torch path
        fit = fit_koopman(torch.zeros(3, 4, 5), ridge=0.0, relative_ridge=False)
    assert torch.equal(fit.C, torch.zeros(5, 5)) and fit.used_lstsq


@given(b=st.integers(1, 12), t=st.integers(2, 9), k=st.integers(1, 12), seed=st.integers(0, 10_000))
def test_property_prediction_is_optimal(b, t, k, seed):
    """The fitted C minimises the residual (up to ridge and rounding), for any shape."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, t, k, generator=g, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KoopmanFitWarning)
        fit = fit_koopman(z)
    x, y = z[:, :-1].reshape(-1, k), z[:, 1:].reshape(-1, k)
    best = torch.linalg.lstsq(x, y, driver="gelsd").solution
    r = float((x @ fit.C - y).norm())
    r_best = float((x @ best - y).norm())
    assert r <= r_best + 1e-6 * (1 + r_best)
    assert torch.equal(fit.z_pred[:, 0], z[:, 0])


def test_opcheck():
    z = torch.randn(2, 4, 5, 3, dtype=torch.float64, requires_grad=True)
    for cpp in (False, True):
        torch.library.opcheck(kops._koopman_fit, (z, 1e-6, True, cpp))
        torch.library.opcheck(kops._koopman_fit, (z, 0.1, False, cpp))


@pytest.mark.parametrize(
    ("z", "exc", "words"),
    [
        (torch.randn(4, 1, 3), ValueError, ("z", "T >= 2")),
        (torch.randn(4, 3), ValueError, ("z", "3 dimensions")),
        (torch.randint(0, 3, (4, 5, 3)), TypeError, ("z", "floating")),
        (torch.tensor([[[1.0, float("nan")], [0.0, 1.0]]]), ValueError, ("z", "non-finite")),
        (torch.tensor([[[1.0, float("inf")], [0.0, 1.0]]]), ValueError, ("z", "non-finite")),
        (torch.randn(0, 5, 3), ValueError, ("z", "b >= 1")),
        ([[[1.0]]], TypeError, ("z", "tensor")),
    ],
)
def test_bad_input(z, exc, words):
    with assert_raises(exc, *words):
        fit_koopman(z)


def test_bad_options():
    z = torch.randn(4, 5, 3)
    with assert_raises(ValueError, "fallback"):
        fit_koopman(z, fallback="maybe")
    with assert_raises(ValueError, "ridge", ">= 0"):
        fit_koopman(z, ridge=-1.0)
    fit_koopman(torch.tensor([[[1.0, float("nan")], [0.0, 1.0]]]), check_finite=False, fallback="none")


@pytest.mark.gpu
def test_cuda_fit_and_fused_loss_do_not_synchronize():
    from fastorals.koopman import eigenvalue_loss

    z = torch.randn(32, 8, 40, device="cuda")
    lam = torch.linalg.eigvals(torch.randn(40, 40, device="cuda") / 7)
    fit_koopman(z, check_finite=False)  # warm-up (caches the probe vectors on the device)
    eigenvalue_loss(lam, 7, check_finite=False)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fit = fit_koopman(z, check_finite=False)  # fallback "auto" = flag only on CUDA
        loss = eigenvalue_loss(lam, 7, check_finite=False)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert not fit.used_lstsq and fit.ill_conditioned.device.type == "cuda"
    ref, _ = fit_koopman_reference(z.double().cpu())
    assert_close(fit.C.double().cpu(), ref, atol=1e-3, rtol=1e-2)
    assert torch.isfinite(loss).item()
