from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import nn

from .norm import Normalize, make_norm


class BasicBlock(nn.Module):
    """conv3x3 -> norm -> ReLU -> conv3x3 -> norm, plus shortcut (1x1 conv + norm when the shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str) -> None:
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=bias)
        self.norm1 = make_norm(norm, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=bias)
        self.norm2 = make_norm(norm, out_ch)
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, 0, bias=bias), make_norm(norm, out_ch))
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for small images: 3x3 stem, stages of BasicBlocks, global average pool, linear head.

    Args:
        blocks: blocks per stage, e.g. (3, 3, 3) for ResNet-20.
        widths: channels per stage (before the width multiplier).
        num_classes: outputs.
        width: width multiplier (channels scale by it).
        norm: "batch" (default), "layer" (GroupNorm(1, C)) or "none".
        in_channels: input channels (3 for colour, 1 for digits).
        mean, std: optional input normalization.

    Shapes: [N, in_channels, H, W] (any H, W >= 4) -> [N, num_classes].
    """

    def __init__(
        self,
        blocks: Sequence[int],
        widths: Sequence[int],
        num_classes: int = 10,
        width: float = 1,
        norm: str = "batch",
        in_channels: int = 3,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
    ) -> None:
        super().__init__()
        if len(blocks) != len(widths):
            raise ValueError(f"blocks/widths: expected equal lengths, got {len(blocks)} and {len(widths)}")
        if width <= 0:
            raise ValueError(f"width: expected a positive multiplier, got {width}")
        w = [max(1, int(round(c * width))) for c in widths]
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=norm == "none")
        self.norm1 = make_norm(norm, w[0])
        in_ch = w[0]
        for s, (n, ch) in enumerate(zip(blocks, w)):
            layers = []
            for b in range(n):
                stride = 2 if (b == 0 and s > 0) else 1
                layers.append(BasicBlock(in_ch, ch, stride, norm))
                in_ch = ch
            self.add_module(f"layer{s + 1}", nn.Sequential(*layers))
        self.num_stages = len(blocks)
        self.fc = nn.Linear(in_ch, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm1(self.conv1(self.normalize(x))))
        for s in range(self.num_stages):
            x = getattr(self, f"layer{s + 1}")(x)
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def resnet20(num_classes: int = 10, width: float = 1, norm: str = "batch", **kw) -> CifarResNet:
    """ResNet-20 (3 stages x 3 blocks, 16/32/64 channels x width)."""
    return CifarResNet((3, 3, 3), (16, 32, 64), num_classes, width, norm, **kw)


def resnet32(num_classes: int = 10, width: float = 1, norm: str = "batch", **kw) -> CifarResNet:
    """ResNet-32 (3 stages x 5 blocks, 16/32/64 channels x width)."""
    return CifarResNet((5, 5, 5), (16, 32, 64), num_classes, width, norm, **kw)


def resnet18(num_classes: int = 10, width: float = 1, norm: str = "batch", **kw) -> CifarResNet:
    """ResNet-18, CIFAR variant (3x3 stem, 4 stages x 2 blocks, 64...512 channels x width)."""
    return CifarResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes, width, norm, **kw)
