"""Public API: sampler semantics, pipeline draws, determinism, backends, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from augment_helpers import canonical, make_images

import fastorals
from fastorals import _ext, augment
from fastorals.augment import opset as O
from fastorals.augment.ops import augment_apply_reference
from fastorals.testing import assert_close, assert_raises, make_noncontiguous

CPP = pytest.mark.skipif(not _ext.HAS_EXT, reason="needs the C++ extension")


# ----------------------------------------------------------------------------- sampler


def test_sample_chains_shapes_padding_and_counts():
    g = torch.Generator().manual_seed(0)
    s = torch.tensor([0, 3, 10, 1, 7])
    ch = augment.sample_chains(s, image_size=(32, 32), generator=g)
    assert ch.ops.shape == (5, 10) and ch.ops.dtype == torch.int32
    assert ch.magnitudes.dtype == torch.float64 and ch.signs.dtype == torch.int8
    assert torch.equal(ch.num_ops(), s)
    for i, n in enumerate(s.tolist()):
        assert (ch.ops[i, n:] == O.NONE).all() and (ch.ops[i, :n] >= 0).all()
        assert (ch.magnitudes[i, n:] == 0).all() and (ch.signs[i, n:] == 1).all()
    assert len(ch) == 5 and ch.max_ops == 10
    wide = augment.sample_chains(s, image_size=(32, 32), max_ops=12, generator=g)
    assert wide.max_ops == 12
    fixed = augment.sample_chains(s, image_size=(32, 32), num_ops=2, generator=g)
    assert torch.equal(fixed.num_ops(), torch.full((5,), 2))


def test_sample_chains_draws_all_ops_uniformly():
    g = torch.Generator().manual_seed(1)
    ch = augment.sample_chains(torch.full((4000,), 10), image_size=(32, 32), generator=g)
    counts = torch.bincount(ch.ops.flatten().long(), minlength=O.NUM_OPS).double()
    expect = 40000 / O.NUM_OPS
    assert counts.min() > 0.9 * expect and counts.max() < 1.1 * expect
    sub = augment.sample_chains(torch.full((100,), 5), image_size=(32, 32), ops=["Rotate", "Invert"], generator=g)
    assert set(sub.ops.flatten().tolist()) <= {O.ROTATE, O.INVERT}


def test_sampler_is_deterministic_for_a_seed():
    s = torch.randint(0, 11, (64,), generator=torch.Generator().manual_seed(0))
    a = augment.sample_chains(s, image_size=(32, 32), generator=torch.Generator().manual_seed(5))
    b = augment.sample_chains(s, image_size=(32, 32), generator=torch.Generator().manual_seed(5))
    c = augment.sample_chains(s, image_size=(32, 32), generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.ops, b.ops) and torch.equal(a.magnitudes, b.magnitudes) and torch.equal(a.signs, b.signs)
    assert not torch.equal(a.ops, c.ops)


def test_cached_op_tables_give_the_same_chains():
    """The per-op tables are cached by argument; a cache hit, a miss and an uncacheable call agree,
    and different image sizes / overrides / modes get their own tables."""
    from fastorals.augment import api

    s = torch.randint(0, 11, (64,), generator=torch.Generator().manual_seed(1))
    api._CHAIN_TABLES.clear()
    for mode in ("monotone", "official"):
        kw = dict(magnitude_mode=mode, strongest={"Rotate": 20.0} if mode == "monotone" else None)
        first = augment.sample_chains(s, image_size=(32, 40), generator=torch.Generator().manual_seed(3), **kw)
        hit = augment.sample_chains(s, image_size=(32, 40), generator=torch.Generator().manual_seed(3), **kw)
        listed = augment.sample_chains(s, image_size=[32, 40], generator=torch.Generator().manual_seed(3), **kw)
        for other in (hit, listed):
            assert torch.equal(first.ops, other.ops) and torch.equal(first.signs, other.signs)
            assert torch.equal(first.magnitudes, other.magnitudes)
    small = augment.sample_chains(torch.full((64,), 10), image_size=(8, 8), ops=["TranslateX"],
                                  generator=torch.Generator().manual_seed(0))
    big = augment.sample_chains(torch.full((64,), 10), image_size=(64, 64), ops=["TranslateX"],
                                generator=torch.Generator().manual_seed(0))
    assert torch.equal(big.magnitudes, small.magnitudes * 8)


def _composed(aug, images, strengths, seed, num_ops=None):
    """BatchAugment spelled out: sample the chains, then batch_augment (the checked path)."""
    g = torch.Generator().manual_seed(seed)
    ch = aug.sample(strengths, tuple(images.shape[2:]), generator=g, num_ops=num_ops)
    return augment.batch_augment(images, ch.ops, ch.magnitudes, ch.signs, g, crop_padding=aug.crop_padding,
                                 flip_prob=aug.flip_prob, cutout=aug.cutout, mean=aug.mean, std=aug.std,
                                 out_dtype=aug.out_dtype)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_module_fast_path_equals_sampling_then_batch_augment(backend):
    """BatchAugment's table-driven forward gives the bits of sample_chains + batch_augment, with the
    same generator consumption, for modes, op subsets, overrides, chain lengths, C = 1 / 3, uint8 and
    float output."""
    configs = [
        dict(kw=dict(), c=3, hw=(9, 7)),
        dict(kw=dict(crop_padding=4, flip_prob=0.5, cutout=6, mean=augment.CIFAR10_MEAN, std=augment.CIFAR10_STD),
             c=3, hw=(12, 10)),
        dict(kw=dict(magnitude_mode="official", crop_padding=2, flip_prob=1.0), c=1, hw=(8, 8)),
        dict(kw=dict(ops=["Rotate", "TranslateX", "Solarize", "Posterize"], strongest={"Rotate": 50.0},
                     cutout=3, max_level=4), c=3, hw=(6, 11)),
        dict(kw=dict(out_dtype=torch.float32, cutout=20), c=1, hw=(5, 5)),
    ]
    with fastorals.use_backend(backend):
        for i, cfg in enumerate(configs):
            aug = augment.BatchAugment(**cfg["kw"])
            images = make_images(7, cfg["c"], *cfg["hw"])
            s = torch.randint(0, aug.max_level + 1, (7,), generator=torch.Generator().manual_seed(i))
            for num_ops in (None, 0, 2, torch.tensor([0, 1, 3, 0, 2, 5, 1])):
                for seed in (0, 11):
                    fast = aug(images, s, torch.Generator().manual_seed(seed), num_ops=num_ops)
                    assert torch.equal(fast, _composed(aug, images, s, seed, num_ops)), (i, num_ops, seed)
                    # the generator is left where the composed path leaves it
                    g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
                    aug(images, s, g1, num_ops=num_ops)
                    _composed_g = aug.sample(s, cfg["hw"], generator=g2, num_ops=num_ops)
                    augment.draw_pipeline(7, *cfg["hw"], crop_padding=aug.crop_padding, flip_prob=aug.flip_prob,
                                          cutout=aug.cutout, generator=g2)
                    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))
        zeros = augment.BatchAugment()(make_images(0, 3, 4, 4), torch.zeros(0, dtype=torch.int64))
        assert zeros.shape == (0, 3, 4, 4)


def test_out_of_domain_configurations_raise_when_configured_not_when_drawn():
    """A configured value outside its op's domain (at any level, either sign) raises when the
    sampler is built, whatever a seed would draw, naming the setting; TranslateX/Y (a fraction of
    the side) once the image size is known."""
    with assert_raises(ValueError, "strongest", "Posterize", "12.0", "level 10", "domain"):
        augment.BatchAugment(ops=["Posterize"], strongest={"Posterize": 12.0})
    with assert_raises(ValueError, "strongest", "GaussianBlur", "domain"):
        augment.ChainSampler(strongest={"GaussianBlur": 1e20})
    with assert_raises(ValueError, "strongest", "ResizeCrop", "domain"):
        augment.sample_chains([0, 0], image_size=(8, 8), strongest={"ResizeCrop": 0.5})
    with assert_raises(ValueError, "max_level/official_max_d", "GaussianBlur", "domain"):
        augment.ChainSampler(magnitude_mode="official", official_max_d=1e-9)
    # official mode past level 2 d: Posterize's bits pass 8, Pillow's identity as at 8, so held
    # there (levels up to 2 d unchanged); a sampler of any size builds at once (two levels checked)
    with pytest.warns(UserWarning, match="official_max_d"):  # allowed, past the paper's ranges
        big = augment.ChainSampler(max_level=100, magnitude_mode="official", ops=["Posterize"])
    ch = big(torch.tensor([0, 30, 60, 61, 100]), image_size=(8, 8), num_ops=1)
    want = torch.tensor([0.0, 4.0, 8.0, 8.0, 8.0], dtype=torch.float64)
    assert torch.equal(ch.magnitudes[:, 0], torch.minimum(torch.tensor([0, 30, 60, 61, 100]) / 30.0 * 4, want))
    augment.ChainSampler(max_level=10**7)
    with assert_raises(ValueError, "max_level/official_max_d", "level 10000000"):
        augment.ChainSampler(max_level=10**7, magnitude_mode="official")
    for bad in (0, -1, float("nan"), float("inf"), True, "30"):
        with assert_raises(ValueError, "official_max_d"):
            augment.BatchAugment(magnitude_mode="official", official_max_d=bad)
    with assert_raises(ValueError, "strongest", "Foo"):
        augment.BatchAugment(strongest={"Foo": 1.0})
    aug = augment.BatchAugment(strongest={"TranslateX": 1e5})  # 1e5 x the width
    aug(make_images(2, 3, 4, 4), [1, 1], torch.Generator().manual_seed(0))  # 4e5 px: inside
    with assert_raises(ValueError, "strongest", "TranslateX", "domain"):
        aug(make_images(2, 3, 4, 40), [1, 1], torch.Generator().manual_seed(0))  # 4e6 px at level 10


def test_crop_padding_larger_than_the_image_is_all_padding_beyond_the_side():
    # offsets past the image side all mean an all-padding crop: clamped, never an error, so no
    # seed decides whether a call fails
    images = make_images(6, 3, 2, 3)
    aug = augment.BatchAugment(crop_padding=4)
    for seed in range(6):
        got = aug(images, [0] * 6, torch.Generator().manual_seed(seed))
        assert torch.equal(got, _composed(aug, images, torch.zeros(6, dtype=torch.int64), seed))
        d = augment.draw_pipeline(6, 2, 3, crop_padding=4, generator=torch.Generator().manual_seed(seed))
        ref = augment_apply_reference(*canonical(images, torch.empty(6, 0, dtype=torch.int32),
                                                 torch.empty(6, 0), crop=d.crop))
        assert torch.equal(got, ref)
    x = make_images(1, 1, 5, 5)
    for dy, dx in ((2**40, 0), (-(2**33) - 1, 1), (7, -7)):  # no wrap-around when narrowed to int32
        got = augment.apply_chains(x, [[]], [[]], crop=[[dy, dx]])
        ref = augment.apply_chains(x, [[]], [[]], crop=[[max(-5, min(5, dy)), max(-5, min(5, dx))]])
        assert torch.equal(got, ref) and (got == 0).all()


def _one_op_chains(op, levels, mode, **kw):
    s = torch.tensor(levels)
    return augment.sample_chains(s, image_size=(32, 40), num_ops=1, ops=[op], magnitude_mode=mode,
                                 generator=torch.Generator().manual_seed(0), **kw)


@pytest.mark.parametrize("op", sorted(O._TAKES_VALUE), ids=lambda i: O.OP_NAMES[i])
def test_monotone_mode_moves_away_from_identity_with_the_level(op):
    levels = list(range(11))
    ch = _one_op_chains(op, levels, "monotone")
    dist = (ch.magnitudes[:, 0] - O.IDENTITY[op]).abs()
    assert dist[0] == 0
    assert (dist[1:] >= dist[:-1]).all(), dist
    assert dist[-1] > 0
    strongest = O.MONOTONE_STRONGEST[O.OP_NAMES[op]]
    if op == O.TRANSLATE_X:
        strongest *= 40
    if op == O.TRANSLATE_Y:
        strongest *= 32
    assert math.isclose(float(ch.magnitudes[-1, 0]), strongest, rel_tol=1e-12)


def test_official_mode_reproduces_the_paper_formula():
    levels = list(range(11))
    for op in range(O.NUM_OPS):
        ch = _one_op_chains(op, levels, "official")
        lo, hi = O.OFFICIAL_RANGES[op]
        for lvl in levels:
            expect = (lvl / 30.0) * (hi - lo) + lo if O.takes_value(op) else 0.0
            assert float(ch.magnitudes[lvl, 0]) == expect
    # several ops are strongest at LOW levels in official mode (documented difference)
    post = _one_op_chains(O.POSTERIZE, levels, "official")
    assert (post.magnitudes[:, 0] < 2).all()  # max(1, int(v)) = 1 bit at every level 0..10
    color = _one_op_chains(O.COLOR, levels, "official")
    assert float(color.magnitudes[0, 0]) == pytest.approx(0.1)


def test_signs_only_on_signed_ops_and_enhance_signs_by_mode():
    g = torch.Generator().manual_seed(3)
    ch = augment.sample_chains(torch.full((3000,), 10), image_size=(32, 32), generator=g)
    for op in range(O.NUM_OPS):
        sel = ch.signs[ch.ops == op]
        if op in O.SIGNED_OPS:
            assert (sel == -1).any() and (sel == 1).any()
        else:
            assert (sel == 1).all()
    off = augment.sample_chains(torch.full((3000,), 10), magnitude_mode="official", generator=g, image_size=None,
                                ops=[O.COLOR, O.ROTATE])
    assert (off.signs[off.ops == O.COLOR] == 1).all()
    assert (off.signs[off.ops == O.ROTATE] == -1).any()
    # sign -1 reflects the value about the op's identity
    vals = ch.values()
    m = (ch.ops == O.BRIGHTNESS) & (ch.signs == -1)
    assert torch.allclose(vals[m], 2.0 - ch.magnitudes[m])
    r = (ch.ops == O.ROTATE) & (ch.signs == -1)
    assert torch.equal(vals[r], -ch.magnitudes[r])


def test_strongest_override_and_chain_sampler():
    ch = _one_op_chains(O.ROTATE, [10], "monotone", strongest={"rotate": 45.0})
    assert float(ch.magnitudes[0, 0]) == 45.0
    sampler = augment.ChainSampler(max_level=5, magnitude_mode="official", ops=["Solarize"])
    out = sampler(torch.tensor([5]), num_ops=1, generator=torch.Generator().manual_seed(0))
    assert float(out.magnitudes[0, 0]) == (5 / 30.0) * 256.0
    assert "official" in repr(sampler)


def test_chains_from_lists():
    ch = augment.Chains.from_lists([["Rotate", "invert"], [], [5]], [[15.0, 0.0], [], [0.0]], [[-1, 1], [], [1]])
    assert ch.ops.tolist() == [[O.ROTATE, O.INVERT], [-1, -1], [5, -1]]
    assert ch.values()[0, 0].item() == -15.0


# ----------------------------------------------------------------------------- pipeline draws


def test_draw_pipeline_ranges_and_cutout_boxes():
    g = torch.Generator().manual_seed(0)
    d = augment.draw_pipeline(2000, 32, 30, crop_padding=4, flip_prob=0.5, cutout=16, generator=g)
    assert d.crop.min() == -4 and d.crop.max() == 4
    assert 0.45 < d.flip.float().mean() < 0.55
    y1, y2, x1, x2 = d.cutout.unbind(1)
    assert (y1 >= 0).all() and (y2 <= 32).all() and (x2 <= 30).all() and ((y2 - y1) <= 16).all()
    assert ((y2 - y1) == 16).any() and ((x2 - x1) < 16).any()  # clipped at the border, as the paper's Cutout
    none = augment.draw_pipeline(5, 8, 8)
    assert (none.crop == 0).all() and not none.flip.any() and (none.cutout == 0).all()


# ----------------------------------------------------------------------------- application


@CPP
def test_apply_chains_matches_reference_backend_and_is_deterministic():
    images = make_images(12, 3, 20, 18)
    aug = augment.BatchAugment.cifar(cutout=8)
    s = torch.randint(0, 11, (12,), generator=torch.Generator().manual_seed(0))
    a = aug(images, s, torch.Generator().manual_seed(7))
    b = aug(images, s, torch.Generator().manual_seed(7))
    with fastorals.use_backend("reference"):
        r = aug(images, s, torch.Generator().manual_seed(7))
    assert a.dtype == torch.float32 and a.shape == images.shape
    assert torch.equal(a, b) and torch.equal(a, r)
    c = aug(images, s, torch.Generator().manual_seed(8))
    assert not torch.equal(a, c)


@CPP
def test_batch_augment_uint8_official_mode_vs_reference():
    images = make_images(10, 1, 16, 16)
    ch = augment.sample_chains(torch.arange(10), magnitude_mode="official", generator=torch.Generator().manual_seed(1))
    kw = dict(crop_padding=2, flip_prob=0.5, cutout=6)
    a = augment.batch_augment(images, ch.ops, ch.magnitudes, ch.signs, torch.Generator().manual_seed(2), **kw)
    with fastorals.use_backend("reference"):
        r = augment.batch_augment(images, ch.ops, ch.magnitudes, ch.signs, torch.Generator().manual_seed(2), **kw)
    assert a.dtype == torch.uint8 and torch.equal(a, r)


@CPP
def test_noncontiguous_and_channels_last_inputs():
    images = make_images(6, 3, 12, 10)
    ops = torch.tensor([[O.ROTATE, O.EQUALIZE]] * 6)
    mags = torch.tensor([[20.0, 0.0]] * 6)
    ref = augment.apply_chains(images, ops, mags)
    nc = make_noncontiguous(images, dim=-1)
    assert torch.equal(augment.apply_chains(nc, ops, mags), ref)
    cl = images.contiguous(memory_format=torch.channels_last)
    assert torch.equal(augment.apply_chains(cl, ops, mags), ref)
    assert torch.equal(augment.apply_chains(images, make_noncontiguous(ops), make_noncontiguous(mags)), ref)


def test_reference_backend_works_without_the_extension_path():
    images = make_images(4, 3, 8, 8)
    with fastorals.use_backend("reference"):
        out = augment.apply_chains(images, torch.tensor([[O.INVERT]] * 4), torch.zeros(4, 1))
    assert torch.equal(out, 255 - images)


def test_empty_batch_and_empty_chains():
    empty = torch.zeros(0, 3, 8, 8, dtype=torch.uint8)
    out = augment.apply_chains(empty, torch.zeros(0, 2, dtype=torch.int64), torch.zeros(0, 2))
    assert out.shape == empty.shape
    images = make_images(3, 3, 8, 8)
    assert torch.equal(augment.apply_chains(images, torch.zeros(3, 0, dtype=torch.int64), torch.zeros(3, 0)), images)
    x = augment.BatchAugment()(images, torch.zeros(3, dtype=torch.int64))
    assert torch.equal(x, images)


def test_scalar_mean_std_and_float_without_normalize():
    images = make_images(2, 3, 5, 5)
    x = augment.apply_chains(images, torch.zeros(2, 0, dtype=torch.int64), torch.zeros(2, 0), out_dtype=torch.float32)
    assert_close(x, images.float() / 255, kind="exact")
    y = augment.apply_chains(images, torch.zeros(2, 0, dtype=torch.int64), torch.zeros(2, 0), mean=0.5, std=0.25)
    assert_close(y, (images.float() / 255 - 0.5) / 0.25, kind="exact")


def test_module_repr_and_properties():
    aug = augment.BatchAugment.cifar(cutout=16, magnitude_mode="official")
    text = repr(aug)
    assert "official" in text and "cutout=16" in text
    assert aug.max_level == 10 and aug.magnitude_mode == "official"


# ----------------------------------------------------------------------------- bad input


def test_bad_images():
    ops, mags = torch.zeros(2, 1, dtype=torch.int64), torch.zeros(2, 1)
    with assert_raises(TypeError, "images", "uint8"):
        augment.apply_chains(torch.rand(2, 3, 4, 4), ops, mags)
    with assert_raises(ValueError, "images", "rank"):
        augment.apply_chains(torch.zeros(3, 4, 4, dtype=torch.uint8), ops, mags)
    with assert_raises(ValueError, "images", "channels"):
        augment.apply_chains(torch.zeros(2, 2, 4, 4, dtype=torch.uint8), ops, mags)
    with assert_raises(TypeError, "images"):
        augment.apply_chains([[1]], ops, mags)


def test_bad_chains():
    images = make_images(2, 3, 4, 4)
    with assert_raises(ValueError, "ops", "unknown op id 22"):
        augment.apply_chains(images, torch.tensor([[0], [22]]), torch.zeros(2, 1))
    with assert_raises(ValueError, "ops", "unknown op id -2"):
        augment.apply_chains(images, torch.tensor([[0], [-2]]), torch.zeros(2, 1))
    with assert_raises(TypeError, "ops", "integer"):
        augment.apply_chains(images, torch.zeros(2, 1), torch.zeros(2, 1))
    with assert_raises(ValueError, "ops", "shape"):
        augment.apply_chains(images, torch.zeros(3, 1, dtype=torch.int64), torch.zeros(3, 1))
    with assert_raises(ValueError, "magnitudes", "shape"):
        augment.apply_chains(images, torch.zeros(2, 2, dtype=torch.int64), torch.zeros(2, 1))
    with assert_raises(ValueError, "magnitudes", "finite"):
        augment.apply_chains(images, torch.tensor([[O.ROTATE]] * 2), torch.tensor([[math.nan]] * 2))
    with assert_raises(ValueError, "magnitudes", "ResizeCrop", "domain"):
        augment.apply_chains(images, torch.tensor([[O.RESIZE_CROP]] * 2), torch.tensor([[0.5]] * 2))
    with assert_raises(ValueError, "magnitudes", "Posterize"):
        augment.apply_chains(images, torch.tensor([[O.POSTERIZE]] * 2), torch.tensor([[9.0]] * 2))
    with assert_raises(ValueError, "signs"):
        augment.apply_chains(images, torch.tensor([[O.ROTATE]] * 2), torch.ones(2, 1), torch.zeros(2, 1))
    with assert_raises(ValueError, "signs", "shape"):
        augment.apply_chains(images, torch.tensor([[O.ROTATE]] * 2), torch.ones(2, 1), torch.ones(2, 2))


def test_bad_pipeline_arguments():
    images = make_images(2, 3, 4, 4)
    ops, mags = torch.zeros(2, 0, dtype=torch.int64), torch.zeros(2, 0)
    with assert_raises(ValueError, "crop", "shape"):
        augment.apply_chains(images, ops, mags, crop=torch.zeros(2, 3, dtype=torch.int64))
    with assert_raises(TypeError, "crop", "integer"):
        augment.apply_chains(images, ops, mags, crop=torch.zeros(2, 2))
    with assert_raises(TypeError, "crop", "integer"):
        augment.apply_chains(images, ops, mags, crop=torch.zeros(2, 2, dtype=torch.bool))
    with assert_raises(ValueError, "flip", "shape"):
        augment.apply_chains(images, ops, mags, flip=torch.zeros(3, dtype=torch.bool))
    with assert_raises(ValueError, "cutout", "shape"):
        augment.apply_chains(images, ops, mags, cutout=torch.zeros(2, 2, dtype=torch.int64))
    with assert_raises(ValueError, "mean", "std"):
        augment.apply_chains(images, ops, mags, mean=[0.5, 0.5, 0.5])
    with assert_raises(ValueError, "mean", "3 values"):
        augment.apply_chains(images, ops, mags, mean=[0.5, 0.5], std=[1, 1])
    with assert_raises(ValueError, "std", "non-zero"):
        augment.apply_chains(images, ops, mags, mean=[0.5] * 3, std=[1, 0, 1])
    with assert_raises(ValueError, "out_dtype", "float32"):
        augment.apply_chains(images, ops, mags, mean=[0.5] * 3, std=[1] * 3, out_dtype=torch.uint8)
    with assert_raises(TypeError, "out_dtype"):
        augment.apply_chains(images, ops, mags, out_dtype=torch.float16)
    with assert_raises(ValueError, "crop_padding"):
        augment.draw_pipeline(2, 4, 4, crop_padding=-1)
    with assert_raises(ValueError, "flip_prob"):
        augment.draw_pipeline(2, 4, 4, flip_prob=1.5)
    with assert_raises(ValueError, "cutout"):
        augment.draw_pipeline(2, 4, 4, cutout=-3)
    with assert_raises(ValueError, "height"):
        augment.draw_pipeline(2, 0, 4)


def test_bad_sampler_arguments():
    with assert_raises(ValueError, "strengths", "max_level"):
        augment.sample_chains(torch.tensor([3, 11]), image_size=(8, 8))
    with assert_raises(ValueError, "strengths"):
        augment.sample_chains(torch.tensor([-1]), image_size=(8, 8))
    with assert_raises(ValueError, "strengths", "whole"):
        augment.sample_chains(torch.tensor([1.5]), image_size=(8, 8))
    with assert_raises(ValueError, "strengths", "shape"):
        augment.sample_chains(torch.tensor([[1]]), image_size=(8, 8))
    with assert_raises(ValueError, "magnitude_mode"):
        augment.sample_chains(torch.tensor([1]), magnitude_mode="fast")
    with assert_raises(ValueError, "max_level"):
        augment.sample_chains(torch.tensor([1]), max_level=0)
    with assert_raises(ValueError, "op", "unknown op name"):
        augment.sample_chains(torch.tensor([1]), ops=["Rotate", "Blur"])
    with assert_raises(ValueError, "op", "unknown op id"):
        augment.sample_chains(torch.tensor([1]), ops=[30])
    with assert_raises(ValueError, "max_ops"):
        augment.sample_chains(torch.tensor([5]), image_size=(8, 8), max_ops=3)
    with assert_raises(ValueError, "num_ops"):
        augment.sample_chains(torch.tensor([5]), num_ops=-1)
    with assert_raises(ValueError, "num_ops"):
        augment.sample_chains(torch.tensor([5, 2]), num_ops=torch.tensor([1]))
    with assert_raises(ValueError, "image_size", "translate"):
        augment.sample_chains(torch.full((50,), 10), ops=["TranslateX"])
    with assert_raises(ValueError, "strongest"):
        augment.sample_chains(torch.tensor([1]), strongest={"Invert": 1.0})
    with assert_raises(ValueError, "strengths", "entries"):
        augment.BatchAugment()(make_images(2, 3, 4, 4), torch.tensor([1, 2, 3]))
    with assert_raises(ValueError, "mean", "std"):
        augment.BatchAugment(mean=[0.5] * 3)


def test_works_with_the_extension_disabled():
    import os
    import subprocess
    import sys

    code = (
        "import torch, fastorals\n"
        "from fastorals import augment, _ext\n"
        "assert not _ext.HAS_EXT\n"
        "x = torch.randint(0, 256, (3, 3, 9, 7), dtype=torch.uint8)\n"
        "aug = augment.BatchAugment.cifar(cutout=4)\n"
        "y = aug(x, torch.tensor([0, 4, 10]), torch.Generator().manual_seed(0))\n"
        "assert y.shape == x.shape and y.dtype == torch.float32\n"
        "print('ok')\n"
    )
    env = dict(os.environ, FASTORALS_NO_EXT="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("size", [32, 224])
def test_gpu_module_equals_the_checked_path_for_both_generator_devices(size):
    # CPU generator with CUDA images: the draws travel in one asynchronous copy and the op replays
    # a graph; the bytes are those of the checked path (sample, then batch_augment) on the same
    # draws, and a replayed call never waits for the device
    images = make_images(8, 3, size, size, seed=5).cuda()
    aug = augment.BatchAugment.cifar(cutout=16)
    strengths = torch.arange(8) % 11
    expect = {seed: _composed(aug, images, strengths, seed) for seed in (7, 8, 9)}
    for seed in (7, 8, 9):  # the first call captures a graph, the next ones replay it on new draws
        if seed > 7:
            torch.cuda.set_sync_debug_mode("error")
        try:
            got = aug(images, strengths, torch.Generator().manual_seed(seed))
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert torch.equal(got, expect[seed])
    gc = torch.Generator(device="cuda")
    a = aug(images.cuda(), strengths.cuda(), gc.manual_seed(3))
    b = aug(images.cuda(), strengths.cuda(), gc.manual_seed(3))
    assert torch.equal(a, b) and a.is_cuda


def test_missing_image_size_fails_whatever_is_drawn():
    # the monotone TranslateX/Y values scale with the side: no seed gets past a missing size
    for seed in range(5):
        with assert_raises(ValueError, "image_size", "TranslateX/Y"):
            augment.sample_chains([2, 2], generator=torch.Generator().manual_seed(seed))
    augment.sample_chains([2, 2], ops=["Rotate", "Invert"])  # no translation in the pool: not needed
    augment.sample_chains([2, 2], magnitude_mode="official")  # absolute pixels: not needed
    for bad in (8, (0, 8), (2.5, 3), (4,), "ab", "11", (True, 3)):
        with assert_raises(ValueError, "image_size"):
            augment.sample_chains([2, 2], image_size=bad)


def test_unchecked_values_stay_in_bounds():
    # validate=False (the LoL test's path: no host sync) never hands a kernel a value it cannot use:
    # unknown ids are no-ops, values are clamped into their op's domain, NaN counts as 0
    x = make_images(2, 3, 9, 7, seed=3)
    for op, v, same_as in ((O.GAUSSIAN_BLUR, float("nan"), 0.0), (O.GAUSSIAN_BLUR, float("inf"), 1024.0),
                           (O.GAUSSIAN_BLUR, 1e20, 1024.0), (O.GAUSSIAN_BLUR, -3.0, 0.0),
                           (O.RESIZE_CROP, 0.25, 1.0), (O.POSTERIZE, 11.6, 8.0), (O.SHEAR_X, -150.0, -100.0)):
        got = augment.apply_chains(x, [[op], [op]], [[v], [v]], validate=False)
        want = augment.apply_chains(x, [[op], [op]], [[same_as], [same_as]])
        assert torch.equal(got, want), (O.OP_NAMES[op], v)
    got = augment.apply_chains(x, [[57, O.INVERT], [-9, -1]], [[0.0, float("nan")], [0.0, 0.0]], validate=False)
    assert torch.equal(got, augment.apply_chains(x, [[-1, O.INVERT], [-1, -1]], [[0.0, 0.0], [0.0, 0.0]]))


def test_integer_arguments_are_checked_before_narrowing():
    x = make_images(1, 3, 4, 4)
    with assert_raises(ValueError, "ops", "4294967306"):
        augment.apply_chains(x, torch.tensor([[2**32 + 10]]), [[0.0]])
    with assert_raises(ValueError, "signs", "+1 or -1"):
        augment.apply_chains(x, [[O.ROTATE]], [[10.0]], signs=torch.tensor([[-1]]).to(torch.uint8))
    box = augment.apply_chains(x, [[]], [[]], cutout=[[2**32 + 1, 2**40, 0, 4]])  # rows from 2**32 + 1: none
    assert torch.equal(box, x)
    for bad in (float("inf"), 1e19, float("nan")):
        with assert_raises(ValueError, "strengths", "whole numbers"):
            augment.sample_chains(torch.tensor([bad]), image_size=(4, 4))
    assert augment.apply_chains(x.expand(2, -1, -1, -1), [[], []], [[], []]).shape == (2, 3, 4, 4)


def test_chains_from_lists_padding_and_lengths():
    ch = augment.Chains.from_lists([["Rotate", -1, None], []], [[20.0, 0.0, 0.0], []])
    assert ch.ops.tolist() == [[O.ROTATE, -1, -1], [-1, -1, -1]]
    with assert_raises(ValueError, "magnitudes", "row 0", "1 entries", "2 ops"):
        augment.Chains.from_lists([["Rotate", "Invert"]], [[20.0]])
    with assert_raises(ValueError, "magnitudes", "2 rows"):
        augment.Chains.from_lists([["Rotate"], []], [[20.0]])
    with assert_raises(ValueError, "signs", "+1 or -1"):
        augment.Chains.from_lists([["Rotate"]], [[20.0]], [[0]])


def test_batch_augment_checks_its_settings_when_built():
    x = make_images(2, 3, 5, 5)
    a = augment.BatchAugment(mean=0.5, std=0.25)  # a scalar serves every channel, as in apply_chains
    want = augment.apply_chains(x, [[], []], [[], []], mean=0.5, std=0.25)
    assert torch.equal(a(x, [0, 0], torch.Generator().manual_seed(0)), want)
    for kwargs, exc, words in (
        (dict(mean=[1.0, 2.0], std=[1.0, 2.0]), ValueError, ("mean", "1 value or 3")),
        (dict(mean=[0.0] * 3, std=[0.0, 1.0, 1.0]), ValueError, ("std", "non-zero")),
        (dict(mean=[float("nan")] * 3, std=[1.0] * 3), ValueError, ("mean", "finite")),
        (dict(out_dtype=torch.float16), TypeError, ("out_dtype",)),
        (dict(mean=[0.5] * 3, std=[0.2] * 3, out_dtype=torch.uint8), ValueError, ("out_dtype", "float32")),
        (dict(magnitude_mode="official", official_max_d=-1), ValueError, ("official_max_d",)),
    ):
        with assert_raises(exc, *words):
            augment.BatchAugment(**kwargs)


def test_reference_clips_boxes_and_offsets_as_the_kernels_do():
    # the PIL reference takes any offsets and box edges: a negative Cutout edge is the image's
    # edge (not a Python slice wrapping around), offsets past int32 are all padding
    from fastorals._ext import HAS_EXT

    if not HAS_EXT:
        pytest.skip("compares with the C++ kernel")
    from fastorals.augment.ops import augment_apply_cpp

    x = make_images(3, 3, 4, 5, seed=9)
    o, v = torch.empty(3, 0, dtype=torch.int32), torch.empty(3, 0, dtype=torch.float64)
    crop = torch.tensor([[2**31 - 1, 0], [-3, 2], [0, -(2**31)]], dtype=torch.int32)
    cut = torch.tensor([[-1, 4, 0, 4], [2, 9, -5, 2], [-10, -2, 1, 3]], dtype=torch.int32)
    fl = torch.tensor([0, 1, 0], dtype=torch.uint8)
    args = (x, o, v, crop, fl, cut, torch.zeros(3), torch.ones(3), False)
    ref = augment_apply_reference(*args)
    assert torch.equal(ref, augment_apply_cpp(*args))
    assert (ref[1, :, 2:, :2] == 0).all() and (ref[0] == 0).all()


def test_direct_and_registered_op_paths_give_the_same_bytes():
    # eager calls skip the registered op's dispatch; a dispatch mode (or a compile trace) takes
    # the op: both give the same bytes
    from torch.utils._python_dispatch import TorchDispatchMode

    if not _ext.HAS_EXT:
        pytest.skip("the registered C++ op needs the extension")

    class Seen(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(str(func))
            return func(*args, **(kwargs or {}))

    x = make_images(6, 3, 9, 11, seed=4)
    ch = augment.sample_chains(torch.arange(6) % 11, image_size=(9, 11), generator=torch.Generator().manual_seed(2))
    kw = dict(crop=torch.randint(-3, 4, (6, 2)), flip=torch.tensor([1, 0, 1, 0, 0, 1]), mean=0.5, std=0.25)
    direct = augment.apply_chains(x, ch.ops, ch.magnitudes, ch.signs, **kw)
    with Seen() as seen:
        via_op = augment.apply_chains(x, ch.ops, ch.magnitudes, ch.signs, **kw)
    assert any("augment_apply" in op for op in seen.ops), seen.ops
    assert torch.equal(direct, via_op)


def test_official_levels_past_official_max_d_warn():
    import warnings

    with pytest.warns(UserWarning, match="max_level=40 > official_max_d=30"):
        augment.ChainSampler(magnitude_mode="official", max_level=40)
    with pytest.warns(UserWarning, match="official_max_d"):
        augment.sample_chains(torch.tensor([0]), image_size=(8, 8), magnitude_mode="official", max_level=31)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        augment.ChainSampler(magnitude_mode="official", max_level=30)
        augment.ChainSampler(magnitude_mode="monotone", max_level=40)
        augment.BatchAugment(magnitude_mode="official", max_level=20, official_max_d=20)


def test_new_user_inputs_are_accepted_or_named():

    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8, generator=g)
    by_id = augment.apply_chains(img, [[10, 7], [5, -1]], [[15.0, 0.0], [0.0, 0.0]])
    assert torch.equal(augment.apply_chains(img, [["Rotate", "invert"], ["AutoContrast", None]],
                                            [[15.0, 0.0], [0.0, 0.0]]), by_id)  # names like Chains.from_lists
    with assert_raises(ValueError, "ops", "Foo", "[1, 0]"):
        augment.apply_chains(img, [["Rotate"], ["Foo"]], [[1.0], [0.0]])
    with assert_raises(TypeError, "signs", "Generator"):  # the generator one position too early
        augment.batch_augment(img, [[10], [7]], [[15.0], [0.0]], g)
    for kwargs, name in ((dict(ops=[[10, 7], [5]], magnitudes=[[1.0, 0.0], [0.0]]), "ops"),
                         (dict(ops=[[10], [7]], magnitudes=[[1.0, 2.0], [0.0]]), "magnitudes"),
                         (dict(ops=[[10], [7]], magnitudes=[[1.0], [0.0]], crop=[[1, 2], [3]]), "crop")):
        with assert_raises(ValueError, name, "rectangular"):
            augment.apply_chains(img, **kwargs)
    with assert_raises(ValueError, "strengths", "rectangular"):
        augment.sample_chains([[1, 2], [3]], image_size=(8, 8))
    mags = torch.tensor([[15.0, 0.0], [0.0, 0.0]], requires_grad=True)
    mean = torch.nn.Parameter(torch.tensor([0.5, 0.4, 0.3]))
    out = augment.apply_chains(img, [[10, 7], [5, -1]], mags, mean=mean, std=torch.tensor(0.25))
    assert torch.equal(out, augment.apply_chains(img, [[10, 7], [5, -1]], mags.detach(), mean=[0.5, 0.4, 0.3],
                                                 std=0.25))
    with assert_raises(TypeError, "mean", "str"):
        augment.BatchAugment(mean="x", std=[1.0])
    with assert_raises(ValueError, "mean", "rectangular"):
        augment.BatchAugment(mean=[0.1, None, 0.3], std=[1.0])
    with assert_raises(ValueError, "mean", "1 value (one per channel)"):
        augment.apply_chains(img[:, :1], [[-1], [-1]], [[0.0], [0.0]], mean=[0.1, 0.2], std=1.0)
    with assert_raises(ValueError, "std", "inverse"):
        augment.apply_chains(img, [[-1], [-1]], [[0.0], [0.0]], mean=0.0, std=1e-45)
    with assert_raises(ValueError, "images", "meta"):
        augment.apply_chains(img.to("meta"), [[-1], [-1]], [[0.0], [0.0]], validate=False)
    with assert_raises(TypeError, "ops", "uint64"):
        augment.apply_chains(img, torch.full((2, 1), 2**63, dtype=torch.uint64), [[0.0], [0.0]])
    with assert_raises(TypeError, "strengths", "uint64"):
        augment.sample_chains(torch.tensor([1, 2], dtype=torch.uint64), image_size=(8, 8))
    # an empty batch from Python lists
    empty = torch.zeros(0, 3, 8, 8, dtype=torch.uint8)
    assert augment.apply_chains(empty, [], []).shape == (0, 3, 8, 8)


def test_integer_and_bool_arguments_are_told_apart():
    import numpy as np

    a = augment.BatchAugment(max_level=np.int64(5), crop_padding=np.int32(2), cutout=np.int64(4),
                             flip_prob=np.float32(0.5), ops=[np.int64(10), "Invert"])
    assert (a.max_level, a.crop_padding, a.cutout) == (5, 2, 4) and type(a.crop_padding) is int
    assert a.sampler.ops == [10, 7]
    ch = augment.sample_chains([2, 3], image_size=(8, 8), num_ops=np.int64(2), max_ops=np.int64(4))
    assert ch.ops.shape == (2, 4) and ch.num_ops().tolist() == [2, 2]
    for kwargs, name in ((dict(crop_padding=True), "crop_padding"), (dict(cutout=True), "cutout"),
                         (dict(flip_prob=True), "flip_prob"), (dict(max_level=True), "max_level")):
        with assert_raises(ValueError, name):
            augment.BatchAugment(**kwargs)
    with assert_raises(ValueError, "max_ops"):
        augment.sample_chains([1], image_size=(8, 8), max_ops=True)
    with assert_raises(ValueError, "num_ops"):
        augment.sample_chains([1, 2], image_size=(8, 8), num_ops=2.0)
    with assert_raises(ValueError, "ops", "Rotate", "twice"):
        augment.BatchAugment(ops=["Rotate", 10, "Invert"])
    with assert_raises(ValueError, "strongest", "monotone"):
        augment.BatchAugment(magnitude_mode="official", strongest={"Rotate": 10.0})


def test_normalize_settings_change_through_set_output():
    import copy
    import pickle

    img = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    aug = augment.BatchAugment(crop_padding=2, mean=0.5, std=0.25)
    g = lambda: torch.Generator().manual_seed(1)
    first = aug(img, torch.tensor([0, 1, 2, 3]), g())
    with pytest.raises(AttributeError):
        aug.mean = (0.1, 0.2, 0.3)  # read-only: both settings change together, checked
    aug.set_output([0.1, 0.2, 0.3], [0.2, 0.2, 0.2])
    assert aug.mean == (0.1, 0.2, 0.3)
    moved = aug(img, torch.tensor([0, 1, 2, 3]), g())
    want = augment.BatchAugment(crop_padding=2, mean=[0.1, 0.2, 0.3], std=0.2)(img, torch.tensor([0, 1, 2, 3]), g())
    assert torch.equal(moved, want) and not torch.equal(moved, first)  # the cached spec was dropped
    with assert_raises(ValueError, "mean, std"):
        aug.set_output(mean=0.5)
    aug.set_output(out_dtype=torch.uint8)
    assert aug(img, torch.tensor([0, 1, 2, 3]), g()).dtype == torch.uint8
    clone = pickle.loads(pickle.dumps(aug))
    assert torch.equal(clone(img, torch.tensor([0, 1, 2, 3]), g()), aug(img, torch.tensor([0, 1, 2, 3]), g()))
    old = copy.copy(aug.__dict__)  # the attribute layout before Normalize became properties
    for k in ("mean", "std", "out_dtype"):
        old[k] = old.pop("_" + k)
    revived = augment.BatchAugment.__new__(augment.BatchAugment)
    revived.__setstate__(old)
    assert revived.out_dtype == torch.uint8 and revived.mean is None


def test_host_draws_inside_a_cuda_graph_capture_are_refused(monkeypatch):
    aug = augment.BatchAugment(crop_padding=2)
    img = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with assert_raises(RuntimeError, "CUDA graph", "generator"):
        aug(img, torch.tensor([1, 2]), torch.Generator().manual_seed(0))
    with assert_raises(RuntimeError, "batch_augment", "CUDA graph"):  # the same draws through the functional API
        augment.batch_augment(img, [[7], [7]], [[0.0], [0.0]], None, torch.Generator(), crop_padding=2)
