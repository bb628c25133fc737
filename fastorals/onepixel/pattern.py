"""The result of a One-Pixel Shortcut search and the scoring rule shared by every backend."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Union

import torch

from .._io import atomic_write

MAX_CHANNELS = 12  # 2^C colours per position

# Deviations are summed exactly, in integers, on every backend: uint8 values in units of
# 1/255 (d = |255 delta - x|), float values on a grid of 2^-20 (x_q = floor(x * 2^20), about
# 1e-6, far finer than any image format). Every backend therefore computes bit-identical
# scores and picks the same pixels, ties included (ties go to the lowest position, then the
# lowest colour index).
FLOAT_SCALE = 2**20


def units(dtype: torch.dtype) -> int:
    """Integer units of one full deviation for images of ``dtype`` (255 for uint8, 2^20 for floats)."""
    return 255 if dtype == torch.uint8 else FLOAT_SCALE


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Images as exact integers (int64) in the scoring units: uint8 as is, floats as floor(x * 2^20)."""
    if x.dtype == torch.uint8:
        return x.to(torch.int64)
    return torch.floor(x.to(torch.float64) * FLOAT_SCALE).to(torch.int64)


@dataclass
class ShortcutPattern:
    """Per-class one-pixel (or few-pixel) shortcuts.

    Attributes:
        positions: int64 [K, s, 2] (row, col) of the chosen pixels of each class.
        colors: uint8 [K, s, C] in {0, 1}: the colour (all channels at their min or max).
        scores: float64 [K, s] mean/std of the deviation at the chosen pixel (inf when the
            deviation is constant and non-zero).
        image_shape: (C, H, W) the pattern was searched on.

    ``s`` is the sparsity (pixels per class).

    Example:
        >>> pattern = search_shortcut(images, labels)
        >>> pattern.positions[3, 0], pattern.colors[3, 0]     # class 3's pixel and colour
        >>> pattern.save("ops.json"); ShortcutPattern.load("ops.json")
    """

    positions: torch.Tensor
    colors: torch.Tensor
    scores: torch.Tensor
    image_shape: tuple[int, int, int]

    @property
    def num_classes(self) -> int:
        return int(self.positions.shape[0])

    @property
    def sparsity(self) -> int:
        return int(self.positions.shape[1])

    def color_values(self, dtype: torch.dtype) -> torch.Tensor:
        """Colours [K, s, C] in the value range of ``dtype`` (0/255 for uint8, 0/1 for floats)."""
        scale = 255 if dtype == torch.uint8 else 1
        return (self.colors.to(torch.int64) * scale).to(dtype)

    def to_dict(self) -> dict:
        return {
            "positions": self.positions.tolist(),
            "colors": self.colors.tolist(),
            "scores": [[None if not torch.isfinite(v) else float(v) for v in row] for row in self.scores],
            "image_shape": list(self.image_shape),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ShortcutPattern:
        """A pattern from :meth:`to_dict`'s layout; a malformed document raises ``ValueError``
        naming the field (integers stay integers: 1.7 is refused, not cut to 1)."""
        if not isinstance(d, dict):
            raise ValueError(f"pattern: expected a JSON object, got {type(d).__name__}")
        missing = [k for k in ("positions", "colors", "scores", "image_shape") if k not in d]
        if missing:
            raise ValueError(f"pattern: missing fields {missing}")
        try:
            scores = torch.tensor([[float("inf") if v is None else v for v in row] for row in d["scores"]],
                                  dtype=torch.float64)
            pos, col = torch.tensor(d["positions"]), torch.tensor(d["colors"])
            shape = tuple(d["image_shape"])
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"pattern: malformed field ({exc})") from None
        for name, t, hi in (("positions", pos, None), ("colors", col, 1)):
            if t.numel() and (t.dtype.is_floating_point or t.dtype == torch.bool):
                raise ValueError(f"pattern: {name} must be integers, got {t.dtype}")
            if t.numel() and (int(t.min()) < 0 or (hi is not None and int(t.max()) > hi)):
                raise ValueError(f"pattern: {name} out of range (min {int(t.min())}, max {int(t.max())})")
        if len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape):
            raise ValueError(f"pattern: image_shape must be three positive ints (C, H, W), got {d['image_shape']!r}")
        p = cls(pos.to(torch.int64), col.to(torch.uint8), scores, shape)
        p.validate()
        return p

    def save(self, path: Union[str, os.PathLike[str]]) -> None:
        """Write as JSON (safe to share: no pickle)."""
        doc = self.to_dict()
        atomic_write(path, lambda f: json.dump(doc, f), text=True)

    @classmethod
    def load(cls, path: Union[str, os.PathLike[str]]) -> ShortcutPattern:
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def validate(self) -> None:
        C, H, W = self.image_shape
        K, s = self.positions.shape[:2]
        if self.positions.shape != (K, s, 2) or self.colors.shape != (K, s, C) or self.scores.shape != (K, s):
            raise ValueError(
                f"pattern: inconsistent shapes positions {tuple(self.positions.shape)}, colors "
                f"{tuple(self.colors.shape)}, scores {tuple(self.scores.shape)} for image shape {self.image_shape}"
            )
        if K and ((self.positions[..., 0] < 0).any() or (self.positions[..., 0] >= H).any()
                  or (self.positions[..., 1] < 0).any() or (self.positions[..., 1] >= W).any()):
            raise ValueError(f"pattern: positions outside a {H}x{W} image")
        if K and (self.colors > 1).any():
            raise ValueError("pattern: colors must be 0 or 1 per channel")
        if K and s > 1:
            flat = (self.positions[..., 0] * W + self.positions[..., 1]).sort(1).values
            if bool((flat[:, 1:] == flat[:, :-1]).any()):
                raise ValueError("pattern: a class lists one pixel position twice")


def colour_table(C: int) -> torch.Tensor:
    """All 2^C colours as uint8 [2^C, C]; colour j has channel c = bit (C-1-c) of j (0 = black, 2^C-1 = white)."""
    j = torch.arange(2**C).view(-1, 1)
    shifts = torch.arange(C - 1, -1, -1).view(1, -1)
    return ((j >> shifts) & 1).to(torch.uint8)


def scores_from_deviation_sums(sum_d: torch.Tensor, sum_d2: torch.Tensor, m: Union[torch.Tensor, float]) -> torch.Tensor:
    """mean/std of a deviation from its exact integer sums (returns float64).

    ``score = mean / std`` with ``mean = sum_d / m`` and population ``std``; computed as
    ``sqrt(sum_d^2 / (m * sum_d2 - sum_d^2))``. A constant non-zero deviation scores +inf, a zero
    deviation scores 0. Every backend calls this same function on the same integer sums
    (elementwise only), so scores are bit-identical across backends.
    """
    sd = sum_d.to(torch.float64)
    sd2 = sum_d2.to(torch.float64)
    num = sd * sd
    den = m * sd2 - num
    score = torch.sqrt(num / den)
    score = torch.where(den > 0, score, torch.where(sd > 0, torch.full_like(sd, float("inf")), torch.zeros_like(sd)))
    return score


