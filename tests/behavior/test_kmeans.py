"""k-means: every backend returns exactly the reference assignment (ties to the lowest index),
the same centres, iterations and reseeding; k-means++; the discretizer; errors."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastorals
from fastorals import _ext
from fastorals.behavior import KMeansDiscretizer, kmeans, kmeans_assign, kmeans_plusplus, reference
from fastorals.behavior import ops as bops
from fastorals.testing import assert_close, assert_raises, make_noncontiguous

FAST = ["torch"] + (["cpp"] if _ext.HAS_EXT else [])


def _km(backend, *args, **kw):
    with fastorals.use_backend(backend):
        return kmeans(*args, **kw)


def _same(a, b, exact_centers=False):
    assert torch.equal(a.labels, b.labels), (a.labels != b.labels).nonzero()[:10]
    assert a.n_iter == b.n_iter and a.converged == b.converged, (a.n_iter, b.n_iter, a.converged, b.converged)
    if exact_centers:
        assert torch.equal(a.centers, b.centers)
    else:
        assert_close(a.centers, b.centers)
    assert abs(a.inertia - b.inertia) <= 1e-9 * max(1.0, abs(b.inertia))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 3, 2), (97, 2, 24), (1025, 8, 64), (300, 17, 5), (4097, 1, 3),
                                   (257, 33, 9)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_equals_reference(backend, shape, dtype):
    n, d, k = shape
    g = torch.Generator().manual_seed(n + d)
    x = torch.randn(n, d, generator=g, dtype=dtype) * 3 + 1
    ref = _km("reference", x, k, 20, seed=3)
    out = _km(backend, x, k, 20, seed=3)
    _same(out, ref)
    assert out.centers.dtype == dtype and out.labels.dtype == torch.int64


@pytest.mark.parametrize("backend", FAST)
def test_exact_ties_go_to_lowest_index(backend):
    # integer grid points and centres: many exactly equidistant pairs
    x = torch.tensor([[float(i), float(j)] for i in range(-4, 5) for j in range(-4, 5)])
    c = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0], [-2.0, -2.0], [0.0, 0.0]])
    with fastorals.use_backend(backend):
        lab = kmeans_assign(x, c)
    ref = reference.assign_reference(x, c)[0]
    assert torch.equal(lab, ref)
    assert int((lab == 5).sum()) == 0  # the duplicate of centre 0 never wins
    # point (1, 0) is equidistant from centres 0 and 1
    assert int(lab[((x[:, 0] == 1) & (x[:, 1] == 0)).nonzero()[0, 0]]) == 0


@pytest.mark.parametrize("backend", FAST)
def test_near_ties_are_rechecked(backend):
    # points on the bisector of two centres, perturbed by one ulp: the GEMM screen cannot decide
    c = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]], dtype=torch.float32)
    y = torch.linspace(-50, 50, 2001)
    x = torch.stack([torch.zeros_like(y), y, y * 0.5], 1)
    x[::2, 0] = torch.nextafter(x[::2, 0], torch.tensor(1.0))
    x[1::4, 0] = torch.nextafter(x[1::4, 0], torch.tensor(-1.0))
    with fastorals.use_backend(backend):
        lab = kmeans_assign(x, c)
    assert torch.equal(lab, reference.assign_reference(x, c)[0])


@pytest.mark.parametrize("backend", FAST)
def test_labels_and_sums_of_one_pass(backend):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2000, 5, generator=g)
    c = torch.randn(13, 5, generator=g)
    lab = torch.full((2000,), -1, dtype=torch.int64)
    fn = bops.lloyd_pass_cpp if backend == "cpp" else bops.lloyd_pass_torch
    sums, counts, stats = fn(x, c, lab, True, 2.0**-24)
    rl, _ = reference.assign_reference(x, c)
    rs, rc = reference.update_reference(x, rl, 13)
    assert torch.equal(lab, rl) and torch.equal(counts, rc)
    assert_close(sums, rs, kind="kernel")
    assert int(stats[0]) == 2000  # every label changed from -1
    lab2 = lab.clone()
    _, _, stats2 = fn(x, c, lab2, False, 2.0**-24)
    assert int(stats2[0]) == 0 and torch.equal(lab2, lab)


@pytest.mark.skipif(not _ext.HAS_EXT, reason="needs the C++ extension")
@pytest.mark.parametrize("d", [1, 2, 7, 8, 9, 16, 17])
@pytest.mark.parametrize("data", ["gauss", "grid"])
def test_cpp_pass_every_group_layout(d, data):
    """Lane groups transposed in registers (float32, D = 1, 2, 4, 8, 16) or through memory, partial last groups,
    several blocks, exact ties: one pass equals the reference (labels, counts, float64 sums)."""
    g = torch.Generator().manual_seed(d)
    n = 2 * 4096 + 45
    if data == "gauss":
        x = torch.randn(n, d, generator=g)
    else:  # integer grid: exact ties between centres
        x = torch.randint(-2, 3, (n, d), generator=g).float()
    c = x[torch.randperm(n, generator=g)[:40]].clone() + (0.0 if data == "grid" else 0.01)
    lab = torch.full((n,), -1, dtype=torch.int64)
    sums, counts, _ = bops.lloyd_pass_cpp(x, c, lab, True, 2.0**-24)
    rl, _ = reference.assign_reference(x, c)
    rs, rc = reference.update_reference(x, rl, 40)
    assert torch.equal(lab, rl) and torch.equal(counts, rc)
    assert_close(sums, rs, kind="kernel")
    # the same points through the gathered (non-consecutive) path of bounded passes
    up, lo = torch.empty(n), torch.empty(n)
    drift = torch.zeros(40, dtype=torch.float64)
    lab2 = torch.full((n,), -1, dtype=torch.int64)
    bops.lloyd_pass_cpp(x, c, lab2, False, 2.0**-24, up, lo, drift, 0.0)
    c2 = c + 0.05
    motion, half = bops.centre_motion(c, c2)
    bops.lloyd_pass_cpp(x, c2, lab2, False, 2.0**-24, up, lo, drift + motion, float(motion.max()), half)
    assert torch.equal(lab2, reference.assign_reference(x, c2)[0])


def test_nan_found_in_large_inputs():
    x = torch.randn(300_001, 8)
    for v, at in ((float("nan"), 123_457), (float("inf"), 300_000), (-float("inf"), 0)):
        bad = x.clone()
        bad[at, 5] = v
        with assert_raises(ValueError, "x", "NaN or infinite"):
            kmeans(bad, 4, 1)


@pytest.mark.skipif(not _ext.HAS_EXT, reason="needs the C++ extension")
def test_cpp_independent_of_thread_count():
    x = torch.randn(30000, 6, generator=torch.Generator().manual_seed(2))
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = _km("cpp", x, 17, 10, seed=0)
        torch.set_num_threads(2)
        b = _km("cpp", x, 17, 10, seed=0)
    finally:
        torch.set_num_threads(old)
    _same(a, b, exact_centers=True)
    assert a.inertia == b.inertia


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("reseed", ["farthest", "random"])
def test_empty_clusters_reseeded_like_reference(backend, reseed):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(500, 2, generator=g)
    init = torch.cat([x[:3], torch.full((4, 2), 100.0), torch.tensor([[100.0, 100.0]])])  # 5 start empty
    ref = _km("reference", x, 8, 10, seed=9, init=init, reseed=reseed)
    out = _km(backend, x, 8, 10, seed=9, init=init, reseed=reseed)
    _same(out, ref)
    assert torch.bincount(out.labels, minlength=8).min() > 0  # every cluster got points back
    # same seed, same result; another seed may differ for random reseeding
    again = _km(backend, x, 8, 10, seed=9, init=init, reseed=reseed)
    _same(again, out, exact_centers=True)


def test_farthest_reseed_picks_farthest_points():
    x = torch.tensor([[0.0], [1.0], [10.0], [-7.0], [0.5]])
    centers = torch.tensor([[0.0], [50.0], [60.0]])
    labels, dists = reference.assign_reference(x, centers)
    sums, counts = reference.update_reference(x, labels, 3)
    new = centers.clone()
    empty = reference.reseed_empty(x, new, counts, dists, "farthest", None)
    assert empty.tolist() == [1, 2]
    assert new[1:, 0].tolist() == [10.0, -7.0]


@pytest.mark.parametrize("backend", FAST)
def test_duplicate_points_and_more_clusters_than_distinct_values(backend):
    x = torch.tensor([[1.0, 1.0]] * 5 + [[2.0, 2.0]] * 5)
    ref = _km("reference", x, 4, 5, seed=0, init="random")
    out = _km(backend, x, 4, 5, seed=0, init="random")
    _same(out, ref)
    assert out.inertia == 0.0


@pytest.mark.parametrize("backend", FAST)
def test_noncontiguous_and_half_inputs(backend):
    x = torch.randn(301, 4, generator=torch.Generator().manual_seed(5))
    xn = make_noncontiguous(x)
    assert not xn.is_contiguous()
    _same(_km(backend, xn, 6, 10, seed=1), _km("reference", x, 6, 10, seed=1))
    half = _km(backend, x.half(), 6, 10, seed=1)
    assert half.centers.dtype == torch.float32
    _same(half, _km("reference", x.half().float(), 6, 10, seed=1))


@pytest.mark.parametrize("backend", FAST)
def test_large_magnitudes_stay_exact(backend):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(200, 3, generator=g) * 1e18  # squared distances overflow float32
    _same(_km(backend, x, 4, 5, seed=0), _km("reference", x, 4, 5, seed=0))
    tiny = torch.randn(200, 3, generator=g) * 1e-20
    _same(_km(backend, tiny, 4, 5, seed=0), _km("reference", tiny, 4, 5, seed=0))


@pytest.mark.parametrize("backend", FAST)
def test_tol_and_convergence(backend):
    g = torch.Generator().manual_seed(7)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = centres[torch.randint(0, 3, (600,), generator=g)] + 0.1 * torch.randn(600, 2, generator=g)
    out = _km(backend, x, 3, 100, seed=0)
    assert out.converged and out.n_iter < 100
    _same(out, _km("reference", x, 3, 100, seed=0))
    loose = _km(backend, x, 3, 100, seed=0, init="random", tol=1.0)
    _same(loose, _km("reference", x, 3, 100, seed=0, init="random", tol=1.0))
    zero = _km(backend, x, 3, 0, seed=0)
    assert zero.n_iter == 0 and not zero.converged


def test_kmeans_plusplus_deterministic_and_spread():
    g = torch.Generator().manual_seed(8)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = centres.repeat_interleave(100, 0) + 0.01 * torch.randn(400, 2, generator=g)
    a = kmeans_plusplus(x, 4, seed=3)
    b = kmeans_plusplus(x, 4, seed=3)
    assert torch.equal(a, b)
    # one seed in each well-separated blob
    blob = torch.cdist(a, centres).argmin(1)
    assert sorted(blob.tolist()) == [0, 1, 2, 3]
    assert any(not torch.equal(kmeans_plusplus(x, 4, seed=s), a) for s in range(4, 8))


@pytest.mark.parametrize("backend", FAST)
def test_matches_sklearn_with_same_init(backend):
    sk = pytest.importorskip("sklearn.cluster")
    g = torch.Generator().manual_seed(9)
    x = torch.randn(3000, 4, generator=g, dtype=torch.float64)
    init = x[:10].clone()
    ours = _km(backend, x, 10, 30, init=init)
    km = sk.KMeans(10, init=init.numpy(), n_init=1, max_iter=30, tol=0, algorithm="lloyd").fit(x.numpy())
    np.testing.assert_allclose(ours.centers.numpy(), km.cluster_centers_, rtol=1e-9, atol=1e-9)
    assert (ours.labels.numpy() == km.labels_).all()
    assert abs(ours.inertia - km.inertia_) <= 1e-8 * km.inertia_


@given(n=st.integers(1, 120), d=st.integers(1, 20), k=st.integers(1, 12), levels=st.integers(1, 5),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16))
def test_property_integer_grid_ties(n, d, k, levels, dtype, seed):
    """Few distinct integer values: exact ties everywhere; every backend agrees with the reference."""
    k = min(k, n)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-levels, levels + 1, (n, d), generator=g).to(dtype)
    ref = _km("reference", x, k, 8, seed=seed, init="random")
    for backend in FAST:
        _same(_km(backend, x, k, 8, seed=seed, init="random"), ref)


@given(n=st.integers(1, 200), d=st.integers(1, 12), k=st.integers(1, 20), scale=st.sampled_from([1e-3, 1.0, 1e4]),
       seed=st.integers(0, 2**16))
def test_property_random_assign(n, d, k, scale, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * scale
    c = torch.randn(k, d, generator=g) * scale
    ref = reference.assign_reference(x, c)[0]
    for backend in FAST:
        with fastorals.use_backend(backend):
            assert torch.equal(kmeans_assign(x, c), ref)


# ----------------------------------------------------------------------------- discretizer


def test_discretizer_roundtrip_and_state_dict():
    g = torch.Generator().manual_seed(10)
    actions = torch.randn(4, 50, 3, generator=g)
    disc = KMeansDiscretizer(8, iters=20).fit(actions)
    bins, res = disc.encode(actions)
    assert bins.shape == (4, 50) and res.shape == actions.shape
    assert_close(disc.decode(bins, res), actions)
    assert torch.equal(bins.flatten(), reference.assign_reference(actions.reshape(-1, 3), disc.centers)[0])
    # residuals are those of the nearest centre: no centre is closer
    d_own = (res**2).sum(-1)
    d_all = ((actions[..., None, :] - disc.centers) ** 2).sum(-1)
    assert bool((d_own <= d_all.min(-1).values + 1e-6).all())
    other = KMeansDiscretizer(8)
    other.load_state_dict(disc.state_dict())
    assert torch.equal(other.centers, disc.centers) and bool(other.fitted)
    assert torch.equal(other.encode(actions)[0], bins)


def test_discretizer_mask_excludes_padding():
    actions = torch.zeros(2, 10, 2)
    actions[:, :5] = torch.randn(2, 5, 2)
    actions[:, 5:] = 1e6  # padding garbage
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[:, :5] = True
    disc = KMeansDiscretizer(3).fit(actions, mask)
    assert float(disc.centers.abs().max()) < 100


# ----------------------------------------------------------------------------- errors


def test_errors():
    x = torch.randn(10, 2)
    with assert_raises(ValueError, "k", "N=10"):
        kmeans(x, 11)
    with assert_raises(ValueError, "k", "positive"):
        kmeans(x, 0)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with assert_raises(ValueError, "x", "NaN"):
        kmeans(bad, 2)
    with assert_raises(ValueError, "x", "2-D"):
        kmeans(torch.randn(10), 2)
    with assert_raises(TypeError, "x", "floating"):
        kmeans(torch.ones(10, 2, dtype=torch.int64), 2)
    with assert_raises(ValueError, "init", "(3, 2)"):
        kmeans(x, 3, init=torch.randn(3, 5))
    with assert_raises(ValueError, "init"):
        kmeans(x, 3, init="kmeans")
    with assert_raises(ValueError, "reseed"):
        kmeans(x, 3, reseed="nearest")
    with assert_raises(ValueError, "iters"):
        kmeans(x, 3, iters=-1)
    with assert_raises(ValueError, "tol"):
        kmeans(x, 3, tol=-1.0)
    with assert_raises(ValueError, "centers", "columns"):
        kmeans_assign(x, torch.randn(3, 4))
    disc = KMeansDiscretizer(4, action_dim=2)
    with assert_raises(RuntimeError, "fit"):
        disc.encode(x)
    with assert_raises(ValueError, "action dim", "A=2"):
        disc.fit(torch.randn(20, 3))
    with assert_raises(ValueError, "num_bins", "at least"):
        KMeansDiscretizer(30).fit(x)
    disc.fit(torch.randn(20, 2))
    with assert_raises(ValueError, "bins", "num_bins"):
        disc.decode(torch.tensor([4]))


@pytest.mark.skipif(not _ext.HAS_EXT, reason="needs the C++ extension")
def test_custom_ops_opcheck():
    x = torch.randn(50, 3)
    c = torch.randn(4, 3)
    lab = torch.full((50,), -1, dtype=torch.int64)
    torch.library.opcheck(bops.lloyd_pass_cpp, (x, c, lab, True, 2.0**-24), test_utils=("test_schema", "test_faketensor"))
    lab2 = torch.zeros(50, dtype=torch.int64)
    torch.library.opcheck(bops.assigned_dist_cpp, (x, c, lab2, True))


@pytest.mark.skipif(not _ext.HAS_EXT, reason="needs the C++ extension")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bounded_passes_give_the_same_result(monkeypatch, dtype):
    """Force Hamerly-bounded passes from the second iteration on: identical labels and centres."""
    import fastorals.behavior.cluster as km

    g = torch.Generator().manual_seed(11)
    centres = torch.randn(12, 3, generator=g, dtype=dtype) * 4
    x = centres[torch.randint(0, 12, (5000,), generator=g)] + torch.randn(5000, 3, generator=g, dtype=dtype)
    ref = _km("reference", x, 12, 25, seed=2, init="random")
    monkeypatch.setattr(km, "BOUNDS_ON", 1.0)
    monkeypatch.setattr(km, "BOUNDS_OFF", 2.0)
    _same(_km("cpp", x, 12, 25, seed=2, init="random"), ref)
    # the bounds do skip points once the assignment settles
    N = x.shape[0]
    lab = torch.full((N,), -1, dtype=torch.int64)
    up, lo = torch.empty(N), torch.empty(N)
    drift = torch.zeros(12, dtype=torch.float64)
    c = ref.centers
    bops.lloyd_pass_cpp(x, c, lab, False, 2.0**-53 if dtype == torch.float64 else 2.0**-24, up, lo, drift, 0.0)
    c2 = c + 1e-3
    motion, half = bops.centre_motion(c, c2)
    lab2 = lab.clone()
    _, _, stats = bops.lloyd_pass_cpp(x, c2, lab, False, 2.0**-24, up, lo, drift + motion, float(motion.max()), half)
    assert int(stats[2]) < N // 4
    plain = lab2.clone()
    bops.lloyd_pass_cpp(x, c2, plain, False, 2.0**-24)
    assert torch.equal(lab, plain) and torch.equal(lab, reference.assign_reference(x, c2)[0])


def test_state_of_another_bin_count_is_refused():
    two = KMeansDiscretizer(2).fit(torch.randn(20, 2))
    with pytest.raises(ValueError, match="num_bins=3"):
        KMeansDiscretizer(3).load_state_dict(two.state_dict())
    fresh = KMeansDiscretizer(2)
    fresh.load_state_dict(two.state_dict())  # an unfitted discretizer of the same size takes it
    assert torch.equal(fresh.centers, two.centers)
