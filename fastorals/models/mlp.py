from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import nn

from .norm import Normalize, make_norm


class MLP(nn.Module):
    """Flatten -> [Linear -> norm -> ReLU] per hidden layer -> Linear.

    Args:
        in_features: flattened input size (e.g. 3*32*32).
        num_classes: outputs.
        hidden: widths of the hidden layers.
        norm: "none" (default), "batch" or "layer".
        mean, std: optional per-channel input normalization (inputs [N, C, H, W]).

    Shapes: input [N, ...] with prod(...) == in_features -> logits [N, num_classes].

    Example:
        >>> model = MLP(3 * 32 * 32, 10, hidden=(512, 512, 512))
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (512, 512),
        norm: str = "none",
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
    ) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 1:
            raise ValueError(f"in_features/num_classes: expected >= 1, got {in_features}/{num_classes}")
        self.normalize = Normalize(mean, std)
        widths = [in_features, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.norms = nn.ModuleList(make_norm(norm, w, dim=1) for w in hidden)
        self.head = nn.Linear(widths[-1], num_classes)
        self.in_features = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() > 2:
            x = self.normalize(x)
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise ValueError(f"x: expected {self.in_features} features per sample, got {x.shape[1]}")
        for layer, norm in zip(self.layers, self.norms):
            x = torch.relu(norm(layer(x)))
        return self.head(x)
