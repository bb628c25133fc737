"""Triton kernel of the fused spectral terms, against the reference (interpreter on CPU, or CUDA)."""

from __future__ import annotations

import pytest
import torch

import fastorals
from fastorals.koopman import eigenvalue_loss, spectral_loss, static_dynamic_split
from fastorals.koopman.reference import (
    DYNAMIC_MODES,
    STATIC_MODES,
    components_reference,
    spectral_terms_reference,
)
from fastorals.testing import assert_close

pytestmark = pytest.mark.interpret


@pytest.mark.parametrize("sm", STATIC_MODES)
@pytest.mark.parametrize("dm", DYNAMIC_MODES)
def test_triton_matches_reference(triton_device, sm, dm):
    g = torch.Generator().manual_seed(hash((sm, dm)) % 997)
    lam = torch.linalg.eigvals(torch.randn(3, 7, 7, generator=g) / 2).to(triton_device)
    lam_t = lam.clone().requires_grad_()
    with fastorals.use_backend("triton"):
        out = eigenvalue_loss(lam_t, 2, static_mode=sm, dynamic_mode=dm, reduction="none", return_details=True)
    lam_r = lam.cpu().clone().requires_grad_()
    s, d, mask = spectral_terms_reference(lam_r, 2, sm, dm)
    assert torch.equal(out.static_mask.cpu(), mask)
    assert_close(out.static.cpu(), s)
    assert_close(out.dynamic.cpu(), d)
    (out.static.sum() + 2 * out.dynamic.sum()).backward()
    (s.sum() + 2 * d.sum()).backward()
    assert_close(torch.view_as_real(lam_t.grad).cpu(), torch.view_as_real(lam_r.grad), kind="grad")


@pytest.mark.parametrize("k", [1, 5, 17])
def test_triton_ties_duplicates_and_sizes(triton_device, k):
    a = 0.5 + 0.25j
    base = [a, a, a.conjugate(), 0.75, a.conjugate(), 1.0, 1.0, -0.5 + 0.5j, -0.5 - 0.5j, 0.25]
    vals = (base * 2)[:k]
    vals = [v for v in vals]
    lam = torch.tensor(vals, dtype=torch.complex64).reshape(1, -1)
    for crit in STATIC_MODES:
        for s in (0, 1, 3, 20):
            with fastorals.use_backend("triton"):
                sp = static_dynamic_split(lam.to(triton_device), s, crit)
            with fastorals.use_backend("reference"):
                ref = static_dynamic_split(lam, s, crit)
            assert sp.static_mask.cpu().tolist() == ref.static_mask.tolist()
            assert sp.components.cpu().tolist() == [components_reference(lam[0])]


def test_triton_spectral_loss_of_matrices(triton_device):
    C = torch.randn(2, 9, 9) / 3
    ref = spectral_loss(C, 3, "released")
    with fastorals.use_backend("triton"):
        got = spectral_loss(C.to(triton_device), 3, "released")
    assert_close(got.cpu(), ref)


@pytest.mark.gpu
def test_triton_op_under_torch_compile():
    lam = torch.linalg.eigvals(torch.randn(4, 40, 40, device="cuda") / 7)
    with fastorals.use_backend("triton"):
        ref = eigenvalue_loss(lam, 7, reduction="none", check_finite=False)
        f = torch.compile(lambda x: eigenvalue_loss(x, 7, reduction="none", check_finite=False))
        assert_close(f(lam), ref)
