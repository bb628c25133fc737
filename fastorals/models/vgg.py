from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import torch
from torch import nn

from .norm import Normalize, make_norm

CONFIGS: dict[str, list[Union[int, str]]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG for small images: conv3x3 -> norm -> ReLU blocks with max-pools, global average pool,
    then ``classifier`` = [Linear -> ReLU] per hidden width -> Linear.

    Max-pools are skipped once the feature map is 1x1, so small inputs (e.g. 8x8 digits) work.

    Shapes: [N, in_channels, H, W] -> [N, num_classes].
    """

    def __init__(
        self,
        config: Sequence[Union[int, str]],
        num_classes: int = 10,
        width: float = 1,
        norm: str = "batch",
        in_channels: int = 3,
        classifier_hidden: Sequence[int] = (512,),
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
    ) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width: expected a positive multiplier, got {width}")
        self.normalize = Normalize(mean, std)
        layers: list[nn.Module] = []
        ch = in_channels
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                out = max(1, int(round(int(v) * width)))
                layers += [nn.Conv2d(ch, out, 3, 1, 1, bias=norm == "none"), make_norm(norm, out), nn.ReLU()]
                ch = out
        self.features = nn.Sequential(*layers)
        widths = [ch, *[max(1, int(round(h * width))) for h in classifier_hidden]]
        cls: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            cls += [nn.Linear(a, b), nn.ReLU()]
        cls.append(nn.Linear(widths[-1], num_classes))
        self.classifier = nn.Sequential(*cls)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d) and x.shape[-1] == 1 and x.shape[-2] == 1:
                continue
            x = layer(x)
        return self.classifier(x.mean(dim=(2, 3)))


def vgg11(num_classes: int = 10, width: float = 1, norm: str = "batch", **kw) -> VGG:
    return VGG(CONFIGS["vgg11"], num_classes, width, norm, **kw)


def vgg16(num_classes: int = 10, width: float = 1, norm: str = "batch", **kw) -> VGG:
    return VGG(CONFIGS["vgg16"], num_classes, width, norm, **kw)
