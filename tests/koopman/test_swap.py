"""Swaps on constructed latents with a known Koopman structure: static, dynamic and per-factor."""

from __future__ import annotations

import math

import pytest
import torch

from fastorals.koopman import (
    KoopmanDecomposition,
    assign_factors,
    fit_koopman,
    koopman_decompose,
    swap,
)
from fastorals.koopman.reference import swap_reference
from fastorals.testing import assert_close, assert_raises

STATIC_EIGS = (1.0, 0.98, 0.96, 0.94)  # distinct, near 1: time-invariant factors
THETA = (math.pi / 2, 2 * math.pi / 3)  # two rotations: the motion (Re <= 0, far from 1)


class World:
    """Latents z_t = w_t P^-1 with w_{t+1} = w_t D, D = diag(static eigs, rotations).

    w[0:2] encodes factor A (6 values on a circle), w[2:4] factor B, w[4:8] the motion (9 codes).
    """

    def __init__(self, seed: int = 0, dtype=torch.float64) -> None:
        g = torch.Generator().manual_seed(seed)
        blocks = [torch.tensor([[e]], dtype=torch.float64) for e in STATIC_EIGS]
        for th in THETA:
            blocks.append(torch.tensor([[math.cos(th), math.sin(th)], [-math.sin(th), math.cos(th)]],
                                       dtype=torch.float64))
        self.D = torch.block_diag(*blocks)
        self.P = torch.randn(8, 8, generator=g, dtype=torch.float64) + 2 * torch.eye(8, dtype=torch.float64)
        self.P_inv = torch.linalg.inv(self.P)
        ang = torch.arange(6, dtype=torch.float64) * 2 * math.pi / 6
        self.codes_a = torch.stack([torch.cos(ang), torch.sin(ang)], 1) * 2.0
        self.codes_b = torch.stack([torch.cos(ang + 0.3), torch.sin(ang + 0.3)], 1) * 1.5
        self.codes_m = torch.randn(9, 4, generator=g, dtype=torch.float64) * 1.5
        self.dtype = dtype

    def sample(self, n: int, t: int = 8, seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        a = torch.randint(0, 6, (n,), generator=g)
        b = torch.randint(0, 6, (n,), generator=g)
        m = torch.randint(0, 9, (n,), generator=g)
        w0 = torch.cat([self.codes_a[a], self.codes_b[b], self.codes_m[m]], 1)  # (n, 8)
        ws = [w0]
        for _ in range(t - 1):
            ws.append(ws[-1] @ self.D)
        w = torch.stack(ws, 1)
        return (w @ self.P_inv).to(self.dtype), a, b, m

    def decode(self, z: torch.Tensor):
        """Nearest codes of frame 0: (A, B, motion) labels."""
        w0 = z[:, 0].double() @ self.P
        a = torch.cdist(w0[:, :2], self.codes_a).argmin(1)
        b = torch.cdist(w0[:, 2:4], self.codes_b).argmin(1)
        m = torch.cdist(w0[:, 4:], self.codes_m).argmin(1)
        return a, b, m


@pytest.fixture(scope="module")
def world():
    wd = World()
    z, a, b, m = wd.sample(200)
    dec = koopman_decompose(fit_koopman(z).C, num_static=4)
    return wd, z, a, b, m, dec


def test_decomposition_finds_the_structure(world):
    wd, z, a, b, m, dec = world
    assert int(dec.static_mask.sum()) == 4
    static_vals = sorted(float(v.real) for v in dec.eigvals[dec.static_mask])
    assert static_vals == pytest.approx(sorted(STATIC_EIGS), abs=1e-9)
    assert dec.eigvec_condition < 1e4
    assert_close(dec.part(z, "static") + dec.part(z, "dynamic"), z, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_static_swap_preserves_decoded_static_factor_of_donor(world, dtype):
    wd, z, a, b, m, dec = world
    perm = torch.roll(torch.arange(z.shape[0]), 1)
    out = swap(z.to(dtype), z[perm].to(dtype), dec, "static")
    assert out.dtype == dtype and out.shape == z.shape
    da, db, dm = wd.decode(out)
    assert torch.equal(da, a[perm]) and torch.equal(db, b[perm])  # appearance of the donor
    assert torch.equal(dm, m)  # motion of the target
    if dtype == torch.float64:  # exact: w = [s_donor, d_target]
        w = out @ wd.P
        w2 = z[perm] @ wd.P
        w1 = z @ wd.P
        assert_close(w[..., :4], w2[..., :4], atol=1e-8, rtol=1e-8)
        assert_close(w[..., 4:], w1[..., 4:], atol=1e-8, rtol=1e-8)


def test_dynamic_swap_is_the_mirror(world):
    wd, z, a, b, m, dec = world
    perm = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(3))
    out = swap(z, z[perm], dec, "dynamic")
    da, db, dm = wd.decode(out)
    assert torch.equal(da, a) and torch.equal(db, b) and torch.equal(dm, m[perm])
    assert_close(out, swap(z[perm], z, dec, "static"), atol=1e-9, rtol=1e-9)


def test_matches_reference_loop(world):
    wd, z, a, b, m, dec = world
    perm = torch.roll(torch.arange(20), 3)
    for which in ("static", "dynamic"):
        ref = swap_reference(z[:20], z[:20][perm], dec.C, dec.indices(which), V=dec.V)
        assert_close(swap(z[:20], z[:20][perm], dec, which), ref, atol=1e-10, rtol=1e-9)


def test_assign_factors_and_per_factor_swaps(world):
    wd, z, a, b, m, dec = world
    fa = assign_factors(dec, z, {"A": a, "B": b})
    eig_a = sorted(float(dec.eigvals[i].real) for i in fa.groups["A"])
    eig_b = sorted(float(dec.eigvals[i].real) for i in fa.groups["B"])
    assert eig_a == pytest.approx([0.98, 1.0], abs=1e-9)
    assert eig_b == pytest.approx([0.94, 0.96], abs=1e-9)
    assert fa.scores.shape == (4, 2) and float(fa.scores.max()) <= 1 + 1e-12
    assert set(dec.factors) >= {"A", "B"}
    perm = torch.roll(torch.arange(z.shape[0]), 5)
    da, db, dm = wd.decode(swap(z, z[perm], dec, "A"))
    assert torch.equal(da, a[perm]) and torch.equal(db, b) and torch.equal(dm, m)
    da, db, dm = wd.decode(swap(z, z[perm], dec, "B"))
    assert torch.equal(da, a) and torch.equal(db, b[perm]) and torch.equal(dm, m)
    # incremental: A then B = the whole static swap
    assert_close(swap(z, z[perm], dec, ["A", "B"]), swap(z, z[perm], dec, "static"), atol=1e-9, rtol=1e-9)


def test_indices_are_closed_under_conjugation(world):
    wd, z, a, b, m, dec = world
    cplx = [i for i in range(8) if abs(float(dec.eigvals[i].imag)) > 0]
    assert len(cplx) == 4
    got = dec.indices([cplx[0]]).tolist()
    assert len(got) == 2 and cplx[0] in got
    assert float(dec.eigvals[got[0]].imag) == -float(dec.eigvals[got[1]].imag)
    # swapping "half" a pair still gives a real, consistent result
    out = swap(z, z.flip(0), dec, [cplx[0]])
    assert out.dtype == z.dtype and torch.isfinite(out).all()
    mask = torch.zeros(8, dtype=torch.bool)
    mask[cplx[0]] = True
    assert dec.indices(mask).tolist() == got


def test_broadcast_static_code(world):
    wd, z, a, b, m, dec = world
    out = swap(z[:10], z[10:20, :1], dec, "static")  # a single frame of the donor, broadcast over time
    da, db, dm = wd.decode(out)
    assert torch.equal(da, a[10:20]) and torch.equal(db, b[10:20]) and torch.equal(dm, m[:10])


def test_noisy_fit_still_swaps(world):
    wd, z, a, b, m, dec = world
    g = torch.Generator().manual_seed(9)
    zn = z + 1e-3 * torch.randn(z.shape, generator=g, dtype=z.dtype)
    dn = koopman_decompose(fit_koopman(zn).C, num_static=4)
    perm = torch.roll(torch.arange(z.shape[0]), 1)
    da, db, dm = wd.decode(swap(zn, zn[perm], dn, "static"))
    assert float((da == a[perm]).double().mean()) > 0.98 and float((dm == m).double().mean()) > 0.98


def test_errors(world):
    wd, z, a, b, m, dec = world
    with assert_raises(ValueError, "z", "k mismatch"):
        swap(z[..., :5], z, dec)
    with assert_raises(ValueError, "z_donor", "k mismatch"):
        swap(z, z[..., :5], dec)
    with assert_raises(ValueError, "z_donor", "broadcastable"):
        swap(z, z[:, :-1], dec)
    with assert_raises(ValueError, "z_donor", "broadcastable"):
        swap(z[:1], z, dec)
    with assert_raises(ValueError, "z_donor", "NaN"):
        swap(z, torch.full_like(z, float("nan")), dec)
    with assert_raises(ValueError, "which", "unknown factor", "hair"):
        swap(z, z, dec, "hair")
    with assert_raises(ValueError, "which", "out of range"):
        swap(z, z, dec, [99])
    with assert_raises(TypeError, "which"):
        swap(z, z, dec, [1.5])
    with assert_raises(TypeError, "decomposition"):
        swap(z, z, "static")  # type: ignore[arg-type]
    with assert_raises(ValueError, "c", "one (k, k)"):
        koopman_decompose(torch.randn(2, 4, 4), 1)
    with assert_raises(ValueError, "c", "square"):
        koopman_decompose(torch.randn(4, 3), 1)
    with assert_raises(ValueError, "labels"):
        assign_factors(dec, z, {})
    with assert_raises(ValueError, "labels['A']", "integer"):
        assign_factors(dec, z, {"A": a.double()})
    with assert_raises(ValueError, "labels", "reserved"):
        assign_factors(dec, z, {"static": a})
    with assert_raises(ValueError, "subset"):
        dec.component_members("some")
    assert isinstance(dec, KoopmanDecomposition)
