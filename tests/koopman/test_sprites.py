"""Procedural sprites: shapes, ground truth, factor visibility, determinism, errors."""

from __future__ import annotations

import pytest
import torch

from fastorals.koopman import sprites
from fastorals.testing import assert_raises


def test_all_labels_and_splits():
    lab = sprites.all_labels()
    assert lab.shape == (6**4 * 9, 6) and lab.dtype == torch.int64
    assert len({tuple(r) for r in lab.tolist()}) == lab.shape[0]
    train, test = sprites.sprite_splits(seed=0)
    assert (len(train), len(test)) == (9000, 2664)
    chars = lambda s: {tuple(r) for r in s.labels[:, :4].tolist()}
    assert len(chars(train)) == 1000 and len(chars(test)) == 296 and not chars(train) & chars(test)
    # every character appears with all 9 motions
    assert torch.equal(torch.bincount(train.motion, minlength=9), torch.full((9,), 1000))
    again, _ = sprites.sprite_splits(seed=0)
    assert torch.equal(again.labels, train.labels)
    other, _ = sprites.sprite_splits(seed=1)
    assert not torch.equal(other.labels, train.labels)


@pytest.mark.parametrize("size", [16, 32, 64])
def test_render_shapes_dtypes(size):
    lab = sprites.all_labels()[torch.tensor([0, 100, 5000, 11663])]
    x = sprites.render(lab, size=size)
    assert x.shape == (4, 8, 3, size, size) and x.dtype == torch.float32
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    u8 = sprites.render(lab, size=size, dtype=torch.uint8)
    assert u8.dtype == torch.uint8 and int((u8.float() / 255 - x).abs().max() * 255) <= 1
    x64 = sprites.render(lab, size=size, dtype=torch.float64)
    assert x64.dtype == torch.float64
    assert torch.equal(sprites.render(lab, size=size), x)  # deterministic


def test_coverage_is_a_partition():
    cov = sprites._coverage(32, 8)
    assert cov.shape == (3, 9, 8, 8, 32, 32)
    assert torch.allclose(cov.sum(3), torch.ones(()), atol=1e-5)
    # every part except the sword (slash only) is visible in every frame of every motion
    vis = cov.sum((-1, -2))  # (style, motion, frame, part)
    assert bool((vis[..., :7] > 0.5).all())
    assert bool((vis[:, 6:, :, 7] > 0).any()) and float(vis[:, :6, :, 7].sum()) == 0.0


def test_each_factor_changes_only_its_part():
    base = torch.tensor([[0, 0, 0, 0, 0, 1]])
    x0 = sprites.render(base, size=32)
    cov = sprites._coverage(32, 8)[0, 1]  # style 0, motion (walk, front): (T, P, H, W)
    for j in range(4):
        lab = base.clone()
        lab[0, j] = 3  # hair value 3 keeps style 0 (3 % 3): only colours change
        diff = (sprites.render(lab, size=32) - x0).abs().sum(2)[0]  # (T, H, W)
        part = cov[:, 1 + j]
        assert float(diff[part > 0].sum()) > 0, sprites.STATIC_FACTORS[j]
        assert float(diff[part == 0].sum()) == 0.0, sprites.STATIC_FACTORS[j]


def test_motions_differ_and_move():
    lab = torch.tensor([[1, 2, 3, 4, a, d] for a in range(3) for d in range(3)])
    x = sprites.render(lab, size=32)
    flat = x.flatten(1)
    d = torch.cdist(flat, flat)
    assert float(d[~torch.eye(9, dtype=torch.bool)].min()) > 1.0  # all 9 motions look different
    motion = (x[:, 1:] - x[:, :-1]).abs().flatten(1).sum(1)
    assert bool((motion > 1.0).all())  # every motion moves
    assert sprites.motion_of(lab).tolist() == list(range(9))


def test_frame_zero_shows_only_the_appearance():
    """All 9 motions of a character start from the same rest pose; the motion unfolds from frame 1."""
    lab = torch.tensor([[2, 4, 1, 5, a, d] for a in range(3) for d in range(3)])
    x = sprites.render(lab, size=32)
    assert bool((x[:, 0] == x[:1, 0]).all())
    assert float((x[:, 1:] - x[:1, 1:]).abs().sum()) > 0


def test_batches():
    train, _ = sprites.sprite_splits(10, size=16)
    got = list(train.batches(32, shuffle=False))
    assert len(got) == 90 // 32 and got[0][0].shape == (32, 8, 3, 16, 16)
    assert torch.equal(got[0][1], train.labels[:32])
    assert sum(b.shape[0] for b, _ in train.batches(32, drop_last=False)) == 90
    with assert_raises(ValueError, "batch_size"):
        next(train.batches(0))


@pytest.mark.parametrize(
    ("call", "exc", "words"),
    [
        (lambda: sprites.render(torch.zeros(2, 5, dtype=torch.long)), ValueError, ("labels", "(n, 6)")),
        (lambda: sprites.render(torch.zeros(2, 6)), TypeError, ("labels", "integer")),
        (lambda: sprites.render(torch.tensor([[6, 0, 0, 0, 0, 0]])), ValueError, ("labels", "out of range")),
        (lambda: sprites.render(torch.tensor([[0, 0, 0, 0, 3, 0]])), ValueError, ("labels", "out of range")),
        (lambda: sprites.render(torch.tensor([[0, 0, 0, 0, 0, -1]])), ValueError, ("labels", "out of range")),
        (lambda: sprites.render(torch.zeros(1, 6, dtype=torch.long), size=8), ValueError, ("size",)),
        (lambda: sprites.render(torch.zeros(1, 6, dtype=torch.long), num_frames=1), ValueError, ("num_frames",)),
        (lambda: sprites.render(torch.zeros(1, 6, dtype=torch.long), dtype=torch.int32), TypeError, ("dtype",)),
        (lambda: sprites.render([[0] * 6]), TypeError, ("labels", "tensor")),
        (lambda: sprites.sprite_splits(0), ValueError, ("num_train_characters",)),
        (lambda: sprites.sprite_splits(1296), ValueError, ("num_train_characters",)),
    ],
)
def test_errors(call, exc, words):
    with assert_raises(exc, *words):
        call()
