"""Normalization choices and the in-model input normalization."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import nn

NORMS = ("batch", "layer", "none")


def make_norm(kind: str, channels: int, dim: int = 2) -> nn.Module:
    """A norm layer over ``channels``.

    ``"batch"``: BatchNorm1d/2d. ``"layer"``: LayerNorm for features (dim=1) or GroupNorm(1, C)
    for feature maps (dim=2: normalizes over channels and space, per-channel affine —
    permutation-equivariant over channels). ``"none"``: Identity.
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels) if dim == 2 else nn.BatchNorm1d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels) if dim == 2 else nn.LayerNorm(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm: expected one of {NORMS}, got {kind!r}")


class Normalize(nn.Module):
    """(x - mean) / std per channel; buffers are non-persistent (not in the state dict)."""

    def __init__(self, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        self.enabled = mean is not None or std is not None
        m = torch.tensor(list(mean) if mean is not None else [0.0], dtype=torch.float32)
        s = torch.tensor(list(std) if std is not None else [1.0], dtype=torch.float32)
        if (s <= 0).any():
            raise ValueError(f"std: expected positive values, got {s.tolist()}")
        self.register_buffer("mean", m.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", s.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if x.dim() == 2:
            return (x - self.mean.flatten()) / self.std.flatten()
        return (x - self.mean) / self.std
