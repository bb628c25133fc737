"""The quantized label grid shared by every head: Q levels spanning [lo, hi]."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Union

import torch

RangeLike = Union[Sequence[float], tuple[float, float]]


def _finite_number(x: object, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        if isinstance(x, torch.Tensor) and x.numel() == 1:
            x = x.item()
        else:
            raise TypeError(f"{name}: expected a number, got {type(x).__name__}")
    v = float(x)  # type: ignore[arg-type]
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {v}")
    return v


@dataclass(frozen=True)
class LabelGrid:
    """Levels l_q = lo + q * step, q = 0 ... Q-1, step = (hi - lo) / (Q - 1).

    Args:
        lo, hi: the label range (lo < hi); labels must lie in [lo, hi].
        num_levels: Q >= 2.

    Example:
        >>> g = LabelGrid.make((-75, 75), 151)   # one level per degree
        >>> g.step, g.nearest(torch.tensor([0.4, -75.0]))
        (1.0, tensor([75, 0]))
    """

    lo: float
    hi: float
    num_levels: int

    @staticmethod
    def make(label_range: RangeLike, num_levels: int) -> LabelGrid:
        """Validated grid from ``label_range=(lo, hi)`` and ``num_levels``."""
        if isinstance(label_range, (str, bytes)) or not hasattr(label_range, "__len__") or len(label_range) != 2:
            raise ValueError(f"label_range: expected (lo, hi), got {label_range!r}")
        lo = _finite_number(label_range[0], "label_range")
        hi = _finite_number(label_range[1], "label_range")
        if not hi > lo:
            raise ValueError(f"label_range: expected lo < hi, got ({lo}, {hi})")
        if isinstance(num_levels, bool) or not isinstance(num_levels, int):
            raise TypeError(f"num_levels: expected an int, got {type(num_levels).__name__}")
        if num_levels < 2:
            raise ValueError(f"num_levels: expected at least 2 levels, got {num_levels}")
        return LabelGrid(lo, hi, int(num_levels))

    @property
    def step(self) -> float:
        return (self.hi - self.lo) / (self.num_levels - 1)

    @property
    def label_range(self) -> tuple[float, float]:
        return (self.lo, self.hi)

    def levels(self, dtype: torch.dtype = torch.float32, device: Optional[torch.device] = None) -> torch.Tensor:
        """[Q] level values."""
        return self.lo + self.step * torch.arange(self.num_levels, dtype=dtype, device=device)

    def nearest(self, labels: torch.Tensor) -> torch.Tensor:
        """Index of the level nearest to each label (int64 [B])."""
        idx = torch.round((labels.to(torch.float64) - self.lo) / self.step)
        return idx.clamp_(0, self.num_levels - 1).to(torch.int64)

    def check_labels(self, labels: torch.Tensor, name: str = "labels") -> None:
        """Raise ValueError unless every label is a number in [lo, hi] (a device sync on CUDA)."""
        if labels.numel() == 0:
            return
        lo_v, hi_v = torch.aminmax(labels.detach())
        lo_f, hi_f = float(lo_v), float(hi_v)
        if math.isnan(lo_f) or math.isnan(hi_f):
            raise ValueError(f"{name}: expected finite labels, got NaN")
        # a relative slack of a few ulps accepts labels produced by float arithmetic on the bounds
        slack = 1e-6 * max(abs(self.lo), abs(self.hi), self.hi - self.lo)
        if lo_f < self.lo - slack or hi_f > self.hi + slack:
            raise ValueError(
                f"{name}: expected values inside label_range [{self.lo:g}, {self.hi:g}], got values in "
                f"[{lo_f:g}, {hi_f:g}] (widen label_range or clip the labels)"
            )
