"""Shared helpers of the augment tests: canonical argument builders and value generators."""

from __future__ import annotations

import random
from typing import Optional

import torch

from fastorals.augment import opset as O

# A few values per op, covering the paper's ranges, signs, identities and edge cases.
VALUES = {
    O.GAUSSIAN_BLUR: [0.0, 0.3, 0.67, 1.0, 1.7, 2.0, 5.0],
    O.RESIZE_CROP: [1.0, 1.02, 1.1, 1.17, 1.3, 1.5, 2.5],
    O.ROTATE: [3.3, -10.0, 17.5, 30.0, 45.123, 90.0, 180.0, 270.0, -90.0, 360.0, 725.0],
    O.POSTERIZE: [0.0, 1.0, 2.5, 4.0, 7.9, 8.0],
    O.SOLARIZE: [0.0, 8.53, 128.0, 200.5, 256.0],
    O.SOLARIZE_ADD: [0.0, 3.67, 36.7, 110.0],
    O.COLOR: [0.0, 0.1, 0.16, 0.7, 1.0, 1.3333, 1.9],
    O.CONTRAST: [0.0, 0.1, 0.16, 0.7, 1.0, 1.3333, 1.9],
    O.BRIGHTNESS: [0.0, 0.1, 0.16, 0.7, 1.0, 1.3333, 1.9],
    O.SHARPNESS: [0.0, 0.1, 0.16, 0.7, 1.0, 1.3333, 1.9],
    O.SHEAR_X: [0.01, 0.1, -0.1, 0.3, -0.3, 1.5],
    O.SHEAR_Y: [0.01, 0.1, -0.1, 0.3, -0.3, 1.5],
    O.TRANSLATE_X: [0.5, 3.33, -3.33, 10.0, -14.4, 33.3, 100.0],
    O.TRANSLATE_Y: [0.5, 3.33, -3.33, 10.0, -14.4, 33.3, 100.0],
}


def values_for(op: int) -> list[float]:
    return VALUES.get(op, [0.0])


def random_value(op: int, rng: random.Random) -> float:
    """A value inside the op's useful range (wider than the paper's on purpose)."""
    r = rng.random()
    return {
        O.GAUSSIAN_BLUR: 3 * r, O.RESIZE_CROP: 1 + 0.6 * r, O.ROTATE: 400 * r - 200, O.POSTERIZE: 8 * r,
        O.SOLARIZE: 256 * r, O.SOLARIZE_ADD: 110 * r, O.COLOR: 2 * r, O.CONTRAST: 2 * r, O.BRIGHTNESS: 2 * r,
        O.SHARPNESS: 2 * r, O.SHEAR_X: 0.8 * r - 0.4, O.SHEAR_Y: 0.8 * r - 0.4, O.TRANSLATE_X: 40 * r - 20,
        O.TRANSLATE_Y: 40 * r - 20,
    }.get(op, 0.0)


def make_images(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Random images with a few structured ones mixed in (low contrast, few levels, constant)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=g)
    if b > 1:
        x[1] = torch.randint(60, 90, (c, h, w), dtype=torch.uint8, generator=g)
    if b > 2:
        x[2] = x[2] // 64 * 64
    if b > 3:
        x[3] = 77
    if b > 4:  # smooth gradient
        yy = torch.linspace(0, 255, h).view(h, 1).expand(h, w)
        xx = torch.linspace(0, 255, w).view(1, w).expand(h, w)
        x[4] = ((yy + xx) / 2).to(torch.uint8).unsqueeze(0).expand(c, h, w)
    return x


def canonical(
    images: torch.Tensor,
    ops: torch.Tensor,
    values: torch.Tensor,
    *,
    crop: Optional[torch.Tensor] = None,
    flip: Optional[torch.Tensor] = None,
    cutout: Optional[torch.Tensor] = None,
    mean: Optional[torch.Tensor] = None,
    std: Optional[torch.Tensor] = None,
    float_out: bool = False,
):
    """The canonical positional arguments of the registered ops."""
    b, c = images.shape[:2]
    return (
        images,
        ops.to(torch.int32),
        values.to(torch.float64),
        torch.zeros(b, 2, dtype=torch.int32) if crop is None else crop.to(torch.int32),
        torch.zeros(b, dtype=torch.uint8) if flip is None else flip.to(torch.uint8),
        torch.zeros(b, 4, dtype=torch.int32) if cutout is None else cutout.to(torch.int32),
        torch.zeros(c) if mean is None else mean,
        torch.ones(c) if std is None else std,
        float_out,
    )


def random_batch(rng: random.Random, b: int, c: int, h: int, w: int, k: int, seed: int = 0):
    """Random images, chains, crops, flips, cutouts, mean/std and output type."""
    images = make_images(b, c, h, w, seed)
    ops = torch.tensor([[rng.choice(range(-1, O.NUM_OPS)) for _ in range(k)] for _ in range(b)],
                       dtype=torch.int32).reshape(b, k)
    vals = torch.tensor([[random_value(int(o), rng) for o in row] for row in ops.tolist()],
                        dtype=torch.float64).reshape(b, k)
    p = rng.choice([0, 2, 4])
    g = torch.Generator().manual_seed(seed)
    crop = torch.randint(-p, p + 1, (b, 2), dtype=torch.int32, generator=g)
    flip = torch.randint(0, 2, (b,), dtype=torch.uint8, generator=g)
    cy = torch.randint(0, h, (b,), generator=g)
    cx = torch.randint(0, w, (b,), generator=g)
    half = rng.choice([0, 2, 8])
    cut = torch.stack([(cy - half).clamp(0, h), (cy + half).clamp(0, h), (cx - half).clamp(0, w),
                       (cx + half).clamp(0, w)], 1).to(torch.int32)
    float_out = rng.random() < 0.5
    mean = torch.rand(c, generator=g)
    std = torch.rand(c, generator=g) + 0.2
    return canonical(images, ops, vals, crop=crop, flip=flip, cutout=cut, mean=mean, std=std, float_out=float_out)
