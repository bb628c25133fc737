"""SKD Koopman layer per training step: fit + eigendecomposition + spectral loss (+ backward).

Cases (float32, T = 8 frames, batch B sequences of k-dimensional latents; on the CPU, and on CUDA
when present, where the spectral terms run the Triton kernel):

* ``koopman_fit``: C from (B, 8, k) latents. fastorals: normal equations + Cholesky (no host
  sync). Reference: ``torch.linalg.lstsq`` (the official layer). Peers: lstsq with the SVD
  driver, ``pinv(X) @ Y`` (the official code's alternative), ``scipy.linalg.lstsq``.
* ``koopman_step``: the whole Koopman part of a training step, forward and backward: fit,
  eigenvalues, conjugate-aware split, both loss terms, ``backward()`` to the latents.
  Reference: lstsq + eig + the reference split (a loop, as the official code). Peer:
  "official-style": lstsq + eigvals + argsort and the official pair-counting loop.
* ``spectral_terms``: the split + penalties alone on a batch of spectra (fused C++ kernel vs
  the vectorized PyTorch version vs the reference loop).
"""

from __future__ import annotations

import torch

from benchmarks.harness import Case, Suite, native_backend
from fastorals import _ext
from fastorals.koopman import eigenvalue_loss, fit_koopman
from fastorals.koopman import ops as kops
from fastorals.koopman.reference import fit_koopman_reference, spectral_terms_reference

T = 8


def _latents(b: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # smooth-ish latents in (-1, 1) like an LSTM's output
    base = torch.randn(b, 1, k, generator=g)
    drift = torch.randn(b, T, k, generator=g).cumsum(1) * 0.2
    return torch.tanh(base + drift)


def _official_style_loss(C: torch.Tensor, num_static: int = 7, threshold: float = 0.5) -> torch.Tensor:
    """The released layer's spectral term: argsort, then a Python loop over eigenvalues to widen s."""
    D = torch.linalg.eigvals(C)
    Db = torch.sqrt((D.real - 1) ** 2 + D.imag**2)
    order = torch.argsort(Db)
    rev = torch.flip(order, dims=[0])
    i = 0
    for _ in range(num_static):
        val = D[rev[len(rev) - i - 1]]
        i += 1 if val.imag == 0 else 2  # a host sync per step
    Is, Id = order[:i], order[i:]
    static = (Db[Is] ** 2).mean()
    dyn = torch.nn.functional.threshold(D.real[Id], threshold, 0.0).mean()
    return static + dyn


def _step_fast(z0: torch.Tensor) -> torch.Tensor:
    z = z0.detach().requires_grad_()
    fit = fit_koopman(z)
    lam = torch.linalg.eigvals(fit.C)
    loss = (fit.z_pred - z).square().mean() + eigenvalue_loss(lam, 7)
    loss.backward()
    return z.grad


def _step_reference(z0: torch.Tensor) -> torch.Tensor:
    z = z0.detach().requires_grad_()
    C, pred = fit_koopman_reference(z)
    lam = torch.linalg.eigvals(C)
    s, d, _ = spectral_terms_reference(lam.unsqueeze(0), 7, "ball", "real")
    loss = (pred - z).square().mean() + (s + d).mean()
    loss.backward()
    return z.grad


def _step_official(z0: torch.Tensor) -> torch.Tensor:
    z = z0.detach().requires_grad_()
    b, t, k = z.shape
    X, Y = z[:, :-1], z[:, 1:]
    C = torch.linalg.lstsq(X.reshape(-1, k), Y.reshape(-1, k)).solution
    pred = torch.cat([X[:, :1], X @ C], dim=1)
    loss = (pred - z).square().mean() + _official_style_loss(C)
    loss.backward()
    return z.grad


def _verify_fit(fast_out, other, name: str) -> None:
    C_fast, C_other = fast_out.C if hasattr(fast_out, "C") else fast_out, other
    if hasattr(C_other, "solution"):
        C_other = C_other.solution
    if isinstance(C_other, tuple):
        C_other = C_other[0]
    C_other = torch.as_tensor(C_other).to(C_fast.dtype)
    err = float((C_fast - C_other).norm() / C_other.norm().clamp_min(1e-30))
    assert err < 5e-2, f"{name}: Koopman matrices differ (relative error {err:.2e})"


def _verify_grad(fast_out, other, name: str) -> None:
    err = float((fast_out - other).norm() / other.norm().clamp_min(1e-30))
    assert err < 5e-2, f"{name}: gradients differ (relative error {err:.2e})"


def cases(mode: str, device: str):
    if device not in ("cpu", "cuda"):
        return
    cuda = device == "cuda"
    sizes = {
        "smoke": [(32, 40)],
        "quick": [(32, 40), (128, 128), (512, 256)],
        "full": [(32, 40), (128, 40), (512, 40), (32, 128), (128, 128), (512, 128), (128, 256), (512, 256)],
    }[mode]
    try:
        import scipy.linalg as sla
    except ImportError:  # pragma: no cover
        sla = None
    for b, k in sizes:
        z = _latents(b, k).to(device)
        n = b * (T - 1)
        X = z[:, :-1].reshape(n, k).contiguous()
        Y = z[:, 1:].reshape(n, k).contiguous()
        peers = {
            "torch.lstsq(gelsd)": lambda X=X, Y=Y: torch.linalg.lstsq(X, Y, driver="gelsd").solution,
            "pinv(X)@Y": lambda X=X, Y=Y: torch.linalg.pinv(X) @ Y,
        }
        if sla is not None and not cuda:
            Xn, Yn = X.numpy(), Y.numpy()
            peers["scipy.lstsq"] = lambda Xn=Xn, Yn=Yn: torch.from_numpy(sla.lstsq(Xn, Yn, check_finite=False)[0])
        yield Case(
            op="koopman_fit", shape=f"B{b}xT{T}xk{k}", dtype="float32", device=device,
            fast={"fastorals": lambda z=z: fit_koopman(z)},
            reference=lambda z=z: fit_koopman_reference(z)[0],
            peers=peers, backend="cpp" if not cuda and _ext.HAS_EXT and k <= kops.CPP_FIT_MAX_K else "torch",
            flops=4.0 * n * k * k + 3.0 * k**3, verify=_verify_fit,
            note="reference = torch.linalg.lstsq (default driver), as the official layer",
        )
        yield Case(
            op="koopman_step", shape=f"B{b}xT{T}xk{k}", dtype="float32", device=device,
            fast={"fastorals": lambda z=z: _step_fast(z)},
            reference=lambda z=z: _step_reference(z),
            peers={"official-style": lambda z=z: _step_official(z)},
            backend="triton" if cuda else ("cpp" if _ext.HAS_EXT else "torch"), verify=_verify_grad,
            note="fit + eigvals + split + static/dynamic loss + backward to the latents",
        )
    m_list = {"smoke": [(64, 40)], "quick": [(256, 40), (64, 256)], "full": [(256, 40), (1024, 40), (64, 256)]}[mode]
    for m, k in m_list:
        g = torch.Generator().manual_seed(m + k)
        lam = torch.linalg.eigvals(torch.randn(m, k, k, generator=g) / k**0.5).to(device)

        def run(backend: str, lam=lam):
            with _ext.use_backend(backend):
                return eigenvalue_loss(lam, 7, reduction="none")

        nb = native_backend(device)
        fast = {f"fastorals-{nb}": lambda nb=nb: run(nb)} if nb else {}
        fast["fastorals-torch"] = lambda: run("torch")
        yield Case(
            op="spectral_terms", shape=f"M{m}xk{k}", dtype="complex64", device=device, fast=fast,
            reference=lambda lam=lam: run("reference"),
            backend={name: name.removeprefix("fastorals-") for name in fast},
            verify=lambda a, b_, name: torch.testing.assert_close(a, b_, atol=1e-5, rtol=1e-4),
            note="conjugate-aware static/dynamic split + both penalties + gradients, per spectrum",
        )


SUITE = Suite("koopman", cases, "SKD Koopman layer: fit, eigendecomposition, spectral loss (fast vs lstsq + eig)")
