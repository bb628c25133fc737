"""OPS search: every backend equals the reference exactly (positions, colours, ties, exclusions)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastorals
from fastorals import _ext
from fastorals.onepixel import (
    ShortcutPattern,
    apply_shortcut,
    colour_table,
    reference,
    scores_from_deviation_sums,
    search_shortcut,
)
from fastorals.onepixel import ops as ops_mod
from fastorals.testing import assert_close, make_noncontiguous

FAST = ["torch"] + (["cpp"] if _ext.HAS_EXT else [])


def _search(backend, *args, **kw):
    with fastorals.use_backend(backend):
        return search_shortcut(*args, **kw)


def _same(a: ShortcutPattern, b: ShortcutPattern, exact_scores: bool):
    assert torch.equal(a.positions, b.positions), (a.positions.tolist(), b.positions.tolist())
    assert torch.equal(a.colors, b.colors), (a.colors.tolist(), b.colors.tolist())
    assert a.image_shape == b.image_shape
    if exact_scores:
        assert torch.equal(a.scores, b.scores)
    else:
        assert_close(a.scores, b.scores, atol=1e-9, rtol=1e-9)  # e.g. float16 vs its float32 copy


def _data(n, c, h, w, k, seed, values=None, dtype=torch.uint8):
    g = torch.Generator().manual_seed(seed)
    if values is None:
        x = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    else:
        v = torch.tensor(values, dtype=torch.uint8)
        x = v[torch.randint(0, len(values), (n, c, h, w), generator=g)]
    y = torch.cat([torch.arange(k), torch.randint(0, k, (n - k,), generator=g)])
    y = y[torch.randperm(n, generator=g)]
    if dtype != torch.uint8:
        x = x.to(dtype) / 255
    return x, y


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("shape", [(40, 3, 8, 8), (23, 1, 5, 7), (31, 4, 3, 2), (12, 3, 1, 1), (97, 3, 9, 11)])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
def test_fast_equals_reference(backend, shape, dtype):
    n, c, h, w = shape
    k = 2 if h * w * 2**c < 8 else 5
    x, y = _data(n, c, h, w, k, seed=n, dtype=dtype)
    ref = _search("reference", x, y)
    _same(_search(backend, x, y), ref, exact_scores=True)
    assert ref.num_classes == k and ref.sparsity == 1


@pytest.mark.parametrize("backend", FAST)
def test_sparsity_and_exclusion_on_identical_classes(backend):
    # two classes with the same images: the second must take another (position, colour)
    x, _ = _data(10, 3, 4, 4, 1, seed=1)
    x = torch.cat([x, x])
    y = torch.tensor([0] * 10 + [1] * 10)
    for s in (1, 2, 3):
        ref = _search("reference", x, y, sparsity=s)
        fast = _search(backend, x, y, sparsity=s)
        _same(fast, ref, exact_scores=True)
        pairs0 = {(tuple(p), tuple(c)) for p, c in zip(ref.positions[0].tolist(), ref.colors[0].tolist())}
        pairs1 = {(tuple(p), tuple(c)) for p, c in zip(ref.positions[1].tolist(), ref.colors[1].tolist())}
        assert not pairs0 & pairs1
        assert len({tuple(p) for p in ref.positions[0].tolist()}) == s  # distinct positions per class


@pytest.mark.parametrize("backend", FAST)
def test_ties_constant_images(backend):
    # every image black: white is a constant deviation (score inf) at every position, all other
    # colours are finite -> class k takes white at the k-th position (earlier ones are excluded)
    x = torch.zeros(6, 3, 3, 3, dtype=torch.uint8)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    ref = _search("reference", x, y)
    _same(_search(backend, x, y), ref, exact_scores=True)
    assert ref.positions[:, 0].tolist() == [[0, 0], [0, 1], [0, 2]]
    assert ref.colors[:, 0].tolist() == [[1, 1, 1]] * 3 and torch.isinf(ref.scores).all()
    # a channel already at the colour adds a zero deviation: (1, 1, 0) on black is finite, not inf
    x[:, 2] = 255
    ref = _search("reference", x, y)
    _same(_search(backend, x, y), ref, exact_scores=True)
    assert ref.colors[:, 0].tolist() == [[1, 1, 0]] * 3


@given(
    n_extra=st.integers(0, 12), c=st.sampled_from([1, 2, 3]), h=st.integers(1, 4), w=st.integers(1, 4),
    k=st.integers(1, 4), seed=st.integers(0, 10**6), sparsity=st.integers(1, 3),
    alphabet=st.sampled_from([None, [0, 255], [0, 1, 254, 255], [7, 128], [0, 51, 102, 153, 204, 255]]),
    as_float=st.booleans(),
)
def test_property_fast_equals_reference(n_extra, c, h, w, k, seed, sparsity, alphabet, as_float):
    x, y = _data(k + n_extra, c, h, w, k, seed, values=alphabet, dtype=torch.float64 if as_float else torch.uint8)
    sparsity = min(sparsity, h * w)
    try:
        ref = _search("reference", x, y, sparsity=sparsity)
    except ValueError as exc:  # not enough free pairs: every backend must say so
        assert "sparsity" in str(exc)
        for b in FAST:
            with pytest.raises(ValueError, match="sparsity"):
                _search(b, x, y, sparsity=sparsity)
        return
    for b in FAST:
        _same(_search(b, x, y, sparsity=sparsity), ref, exact_scores=True)


def test_closed_form_matches_explicit_loop_per_position():
    """The per-position, per-colour NumPy-style loop of the paper, on a tiny set."""
    x, y = _data(9, 3, 2, 3, 2, seed=3)
    xf = x.double() / 255
    s1, s2, _ = ops_mod.class_sums_torch(x, y, 2)
    sc = ops_mod.scores_from_sums(s1, s2, torch.bincount(y), 255)
    table = colour_table(3)
    for k in range(2):
        xk = xf[y == k]
        for p in range(6):
            for j in range(8):
                d = (table[j].double().view(1, 3) - xk[:, :, p // 3, p % 3]).abs()
                want = d.mean() / d.std(unbiased=False)
                assert abs(float(sc[k, p, j]) - float(want)) < 1e-9 * float(want)


def test_score_rule_edge_cases():
    s = scores_from_deviation_sums(torch.tensor([0.0, 6.0, 6.0]), torch.tensor([0.0, 12.0, 20.0]), 3.0)
    assert s[0] == 0 and torch.isinf(s[1])  # zero deviation -> 0; constant non-zero deviation -> inf
    assert abs(float(s[2]) - 2.0 / (20 / 3 - 4) ** 0.5) < 1e-12


@pytest.mark.parametrize("backend", FAST)
def test_noncontiguous_and_other_label_dtypes(backend):
    x, y = _data(30, 3, 6, 6, 3, seed=5)
    ref = _search("reference", x, y)
    xn = make_noncontiguous(x, dim=3)
    _same(_search(backend, xn, y.to(torch.int32)), ref, exact_scores=True)
    _same(_search(backend, x.float().div(255).half(), y), _search("reference", x.float().div(255).half().float(), y),
          exact_scores=False)


@pytest.mark.skipif(not _ext.HAS_EXT, reason="C++ extension not built")
def test_class_sums_op_registration():
    x, y = _data(20, 3, 4, 5, 3, seed=2)
    torch.library.opcheck(torch.ops.fastorals.onepixel_class_sums.default, (x, y, 3))
    torch.library.opcheck(torch.ops.fastorals.onepixel_class_sums.default, (x.float() / 255, y, 3))
    a = ops_mod.class_sums_cpp(x, y, 3)
    b = ops_mod.class_sums_torch(x, y, 3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.skipif(not _ext.HAS_EXT, reason="C++ extension not built")
def test_large_class_sums_exact_across_flushes():
    # 700 images of one class: exercises the uint16 flush (every 257 images) with extreme values
    x = torch.full((700, 1, 2, 3), 255, dtype=torch.uint8)
    x[::3] = 0
    y = torch.zeros(700, dtype=torch.long)
    s1, s2, _ = ops_mod.class_sums_cpp(x, y, 1)
    want1 = x.long().sum(0).view(1, 1, 6)
    assert torch.equal(s1, want1) and torch.equal(s2, (x.long() ** 2).sum(0).view(1, 1, 6))


def test_apply_matches_reference_and_round_trips():
    x, y = _data(25, 3, 5, 6, 4, seed=9)
    pat = search_shortcut(x, y, sparsity=2)
    out = apply_shortcut(x, y, pat)
    assert torch.equal(out, reference.apply_shortcut(x, y, pat))
    assert out.dtype == torch.uint8 and not torch.equal(out, x)
    # only the pattern pixels changed, to 0 or 255
    changed = (out != x).any(1)
    for n in range(25):
        pos = {tuple(p) for p in pat.positions[y[n]].tolist()}
        assert {tuple(p) for p in torch.nonzero(changed[n]).tolist()} <= pos
    xf = x.float() / 255
    outf = apply_shortcut(xf, y, pat)
    assert torch.equal((outf * 255).round().to(torch.uint8), out)  # uint8 <-> float round trip is exact
    y2 = x.clone()
    apply_shortcut(y2, y, pat, inplace=True)
    assert torch.equal(y2, out)


def test_pattern_save_load(tmp_path):
    x = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    y = torch.tensor([0, 0, 1, 1])
    pat = search_shortcut(x, y, sparsity=2)
    pat.save(tmp_path / "p.json")
    back = ShortcutPattern.load(tmp_path / "p.json")
    _same(back, pat, exact_scores=True)
    assert torch.isinf(back.scores).any()


@pytest.mark.parametrize("backend", FAST)
def test_float_near_constant_deviation_is_exact(backend):
    # one image per class and nearly equal values: the variance is tiny, where float64 sums of
    # different orders would disagree; the exact integer sums make every backend agree
    g = torch.Generator().manual_seed(0)
    x = (0.5 + torch.randint(0, 3, (6, 3, 3, 3), generator=g) * 1e-6).double()
    y = torch.arange(6) % 3
    _same(_search(backend, x, y, sparsity=2), _search("reference", x, y, sparsity=2), exact_scores=True)
    x1 = torch.rand(3, 1, 2, 2, generator=g)
    _same(_search(backend, x1, torch.arange(3)), _search("reference", x1, torch.arange(3)), exact_scores=True)


@pytest.mark.skipif(not _ext.HAS_EXT, reason="C++ extension not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float_sums_exact_across_flushes(dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4100 + 7, 2, 3, 1, generator=g, dtype=dtype)
    x[::5] = 1.0
    y = (torch.arange(x.shape[0]) % 2 == 0).long()
    a1, a2, stats = ops_mod.class_sums_cpp(x, y, 2)
    b1, b2, _ = ops_mod.class_sums_torch(x, y, 2)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert stats[2] == 0 and float(stats[1]) == 1.0


@pytest.mark.skipif(not _ext.HAS_EXT, reason="C++ extension not built")
@pytest.mark.parametrize("n", [257, 258, 1030, 1031])
def test_cpp_sums_exact_across_flushes_and_tails(n):
    """Saturated values over class sizes around the uint16 flush period (257 images), in groups of
    four images plus a tail: the C++ sums equal int64 sums computed directly."""
    g = torch.Generator().manual_seed(n)
    x = torch.full((n + 5, 2, 3, 5), 255, dtype=torch.uint8)
    x[n:] = torch.randint(0, 256, (5, 2, 3, 5), dtype=torch.uint8, generator=g)  # a second class
    x[: n // 3] = torch.randint(250, 256, (n // 3, 2, 3, 5), dtype=torch.uint8, generator=g)
    y = torch.cat([torch.zeros(n, dtype=torch.int64), torch.ones(5, dtype=torch.int64)])
    perm = torch.randperm(n + 5, generator=g)
    x, y = x[perm], y[perm]
    s1, s2, _ = ops_mod.class_sums_cpp(x, y, 2)
    xi = x.to(torch.int64).flatten(2)
    for k in range(2):
        assert torch.equal(s1[k], xi[y == k].sum(0))
        assert torch.equal(s2[k], (xi[y == k] ** 2).sum(0))
