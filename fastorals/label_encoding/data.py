"""Offline regression data: a procedural image set (angle of a rendered shape) and tabular sets.

``rotated_shapes``
    CIFAR-sized colour images of one oriented shape (half-disk, crescent, bar or pair of dots)
    rotated by a continuous angle in [-75, 75] degrees (the label), drawn with a random texture,
    colour, scale and position over a smooth random background with clutter ellipses, a
    randomly rotated distractor shape and sensor noise. The bar and the dot pair repeat every
    180 degrees, the others every 360: within the 150-degree range every angle is unambiguous.
    Deterministic per seed, rendered in vectorized chunks (about 10k images/s on 2 cores).

``load_tabular``
    "diabetes" (scikit-learn's bundled 442-patient set, 10 features, disease progression
    25...346) and "friedman1" (scikit-learn's procedural Friedman #1 benchmark). Features are
    standardized with training statistics.

Example:
    >>> splits = rotated_shape_splits(8000, 2000, seed=0)
    >>> splits.train.inputs.shape, splits.train.targets[:3], splits.label_range
    (torch.Size([8000, 3, 32, 32]), tensor([ 12.3, -60.2,  41.0]), (-75.0, 75.0))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch

from ..data.loader import TensorLoader
from ..data.synthetic import _background, _clutter, _grid, _local, _paint, _shape_mask, _uniform
from .grid import LabelGrid

# (shape id in fastorals.data.synthetic, name): shapes whose orientation is unique over 150 degrees
ORIENTED_SHAPES = {6: "half-disk", 8: "crescent", 5: "bar", 9: "two-dots"}
_CHUNK = 2048


@dataclass
class RegressionSet:
    """Inputs with real-valued targets.

    Attributes:
        inputs: uint8 images [N, 3, H, W] or float features [N, F].
        targets: float32 [N].
        label_range: (lo, hi) containing every target.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    label_range: tuple[float, float]

    def __post_init__(self) -> None:
        if self.inputs.shape[0] != self.targets.shape[0]:
            raise ValueError(f"targets: {self.targets.shape[0]} targets for {self.inputs.shape[0]} inputs")
        LabelGrid.make(self.label_range, 2)

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def subset(self, index: Union[torch.Tensor, slice]) -> RegressionSet:
        return RegressionSet(self.inputs[index], self.targets[index], self.label_range)

    def loader(self, batch_size: int = 128, *, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
               device: Optional[Union[str, torch.device]] = None) -> TensorLoader:
        """A :class:`fastorals.data.TensorLoader` over (inputs, targets)."""
        return TensorLoader(self.inputs, self.targets, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                            device=device)


@dataclass
class RegressionSplits:
    """Train and test :class:`RegressionSet` sharing a label range."""

    train: RegressionSet
    test: RegressionSet
    name: str = ""

    @property
    def label_range(self) -> tuple[float, float]:
        return self.train.label_range


def _render(angles_deg: torch.Tensor, size: int, g: torch.Generator, clutter: bool, noise: float) -> torch.Tensor:
    """float [B, 3, size, size] in [0, 1]: one oriented shape rotated by ``angles_deg``."""
    B = angles_deg.shape[0]
    U = _uniform(g)
    gx, gy = _grid(B, size)
    img = _background(U, gx, gy, wave_along_y=True)
    if clutter:
        img = _clutter(img, U, g, gx, gy, ellipse_radius=0.22, ellipse_alpha=0.7, distractor_scale=(0.15, 0.28),
                       distractor_offset=0.8, distractor_alpha=(0.4, 0.9))
    # the object: rotated by the label
    ids = torch.tensor(list(ORIENTED_SHAPES))
    sid = ids[torch.randint(0, len(ids), (B,), generator=g)]
    theta = angles_deg.float() * (math.pi / 180.0)
    scale = U(B, lo=0.45, hi=0.72)
    ox, oy = U(B, lo=-0.2, hi=0.2), U(B, lo=-0.2, hi=0.2)
    lx, ly = _local(gx, gy, theta, scale, ox, oy)
    mask = _shape_mask(sid, lx, ly)
    hue = U(B)
    sat, val = U(B, lo=0.45, hi=1.0), U(B, lo=0.5, hi=1.0)
    img = _paint(img, U, mask, lambda: torch.randint(0, 10, (B,), generator=g), lx, ly, hue, sat, val, freq=(2.0, 4.0))
    img = img * U(B, lo=0.8, hi=1.15).view(-1, 1, 1, 1)
    if noise > 0:
        img = img + torch.randn(img.shape, generator=g) * (noise * U(B, lo=0.5, hi=1.5)).view(-1, 1, 1, 1)
    return img.clamp_(0.0, 1.0)


def rotated_shapes(
    n: int,
    size: int = 32,
    seed: int = 0,
    *,
    angle_range: tuple[float, float] = (-75.0, 75.0),
    clutter: bool = True,
    noise: float = 0.05,
) -> RegressionSet:
    """Procedural angle-regression images (see the module docstring).

    Args:
        n: number of images.
        size: side length (>= 8).
        seed: the same seed gives the same images and angles on every machine.
        angle_range: (lo, hi) in degrees, within (-90, 90) so every angle stays unambiguous.
        clutter: background ellipses and a distractor shape.
        noise: standard deviation of the pixel noise (x U[0.5, 1.5] per image).

    Returns:
        RegressionSet with inputs uint8 [n, 3, size, size], targets float32 [n] (degrees).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected a non-negative int, got {n!r}")
    if size < 8:
        raise ValueError(f"size: expected at least 8 pixels, got {size}")
    lo, hi = LabelGrid.make(angle_range, 2).label_range
    if lo <= -90 or hi >= 90:
        raise ValueError(f"angle_range: expected a range inside (-90, 90) degrees, got ({lo}, {hi})")
    if not noise >= 0:
        raise ValueError(f"noise: expected >= 0, got {noise}")
    g = torch.Generator().manual_seed(int(seed))
    angles = (torch.rand(n, generator=g, dtype=torch.float64) * (hi - lo) + lo).to(torch.float32)
    angles.clamp_(lo, hi)
    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        gc = torch.Generator().manual_seed(int(seed) * 1_000_003 + 7919 + start // _CHUNK)
        images[sl] = _render(angles[sl], size, gc, clutter, noise).mul_(255.0).round_().to(torch.uint8)
    return RegressionSet(images, angles, (lo, hi))


def rotated_shape_splits(n_train: int, n_test: int, size: int = 32, seed: int = 0, **kwargs) -> RegressionSplits:
    """Train and test sets of :func:`rotated_shapes` from disjoint seeds."""
    train = rotated_shapes(n_train, size, seed=2 * seed, **kwargs)
    test = rotated_shapes(n_test, size, seed=2 * seed + 1, **kwargs)
    return RegressionSplits(train, test, "rotated-shapes")


TABULAR = ("diabetes", "friedman1")


def load_tabular(name: str = "diabetes", test_fraction: float = 0.2, seed: int = 0,
                 n_samples: int = 2000) -> RegressionSplits:
    """A tabular regression set from scikit-learn, split and standardized (no download).

    Args:
        name: "diabetes" (bundled, 442 x 10) or "friedman1" (procedural, ``n_samples`` x 10, noise 1).
        test_fraction: share of the test split.
        seed: split (and, for friedman1, generation) seed.

    Returns:
        RegressionSplits with float32 features [N, 10] and float32 targets; ``label_range`` is the
        range of all targets of the set.
    """
    try:
        from sklearn import datasets
    except ImportError as exc:  # pragma: no cover
        raise ImportError("load_tabular needs scikit-learn (pip install scikit-learn)") from exc
    if name == "diabetes":
        x, y = datasets.load_diabetes(return_X_y=True)
    elif name == "friedman1":
        x, y = datasets.make_friedman1(n_samples=n_samples, n_features=10, noise=1.0, random_state=seed)
    else:
        raise ValueError(f"name: expected one of {TABULAR}, got {name!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected a value in (0, 1), got {test_fraction}")
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.float32)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    te, tr = perm[:n_test], perm[n_test:]
    mean, std = x[tr].mean(0), x[tr].std(0).clamp_min(1e-8)
    x = (x - mean) / std
    label_range = (float(y.min()), float(y.max()))
    return RegressionSplits(RegressionSet(x[tr], y[tr], label_range), RegressionSet(x[te], y[te], label_range), name)
