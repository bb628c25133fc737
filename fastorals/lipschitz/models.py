"""The paper's SLL networks (S / M / L / XL), export to plain layers, official checkpoint loading.

Layout (as in the paper's code, so parameter names line up): ``model`` is an ``nn.Sequential`` of
``PaddingChannels(w, 3)``, ``n_conv`` x ``SLLConv2d(w, 5, 3)``, ``LipschitzAvgPool2d(4)``,
``Flatten``, ``n_dense`` x ``SLLLinear(w * (H/4) * (W/4), 2048)``, ``LinearNormalized(., classes)``;
an optional ``MeanShift`` runs first (inputs are only mean-shifted, so certified radii stay in
pixel units).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from typing import Any, Optional, Union

import torch
from torch import nn

from .layers import (
    AOLConv2d,
    AOLLinear,
    CPLConv2d,
    CPLLinear,
    LinearNormalized,
    LipschitzAvgPool2d,
    MeanShift,
    PaddingChannels,
    SLLConv2d,
    SLLLinear,
)

__all__ = [
    "SLL_CONFIGS",
    "SLLNetwork",
    "convert_official_state_dict",
    "export_model",
    "load_official_checkpoint",
    "sll_large",
    "sll_medium",
    "sll_small",
    "sll_xlarge",
]

# (n_conv, n_dense, width, dense_inner)
SLL_CONFIGS: dict[str, tuple[int, int, int, int]] = {
    "small": (20, 7, 45, 2048),
    "medium": (30, 10, 60, 2048),
    "large": (50, 10, 90, 2048),
    "xlarge": (70, 15, 120, 2048),
}

CIFAR10_MEAN = (0.4913, 0.4821, 0.4465)


class SLLNetwork(nn.Module):
    """A 1-Lipschitz SLL network for images (the LinearNormalized head gives per-pair certificates).

    Args:
        num_classes: outputs.
        n_conv: number of ``SLLConv2d`` layers.
        n_dense: number of ``SLLLinear`` layers.
        width: channels of the convolutional trunk.
        dense_inner: inner width of the dense layers.
        conv_inner: inner channels of the conv layers (the paper: 5).
        kernel_size: odd conv kernel size.
        image_size: input side length (the pooling divides it by 4).
        in_channels: input channels.
        mean: per-channel mean subtracted first (None: no shift).

    Shape:
        [N, in_channels, image_size, image_size] -> [N, num_classes].

    Example:
        >>> net = SLLNetwork(10, n_conv=4, n_dense=2, width=16, dense_inner=256)
        >>> logits = net(torch.rand(8, 3, 32, 32))
    """

    def __init__(self, num_classes: int, n_conv: int, n_dense: int, width: int, dense_inner: int = 2048,
                 conv_inner: int = 5, kernel_size: int = 3, image_size: int = 32, in_channels: int = 3,
                 mean: Optional[tuple[float, ...]] = CIFAR10_MEAN) -> None:
        super().__init__()
        for name, v in (("num_classes", num_classes), ("width", width), ("dense_inner", dense_inner),
                        ("conv_inner", conv_inner), ("image_size", image_size), ("in_channels", in_channels)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        for name, v in (("n_conv", n_conv), ("n_dense", n_dense)):
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}: expected a non-negative int, got {v!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes: expected at least 2, got {num_classes}")
        if image_size % 4:
            raise ValueError(f"image_size: expected a multiple of 4 (4x4 pooling), got {image_size}")
        if mean is not None and len(mean) != in_channels:
            raise ValueError(f"mean: expected {in_channels} values (one per input channel), got {len(mean)}")
        self.num_classes = num_classes
        self.image_size = image_size
        self.in_channels = in_channels
        self.shift = MeanShift(mean) if mean is not None else nn.Identity()
        feats = width * (image_size // 4) ** 2
        layers: list[nn.Module] = [PaddingChannels(width, in_channels, "zero")]
        layers += [SLLConv2d(width, conv_inner, kernel_size) for _ in range(n_conv)]
        layers += [LipschitzAvgPool2d(4), nn.Flatten()]
        layers += [SLLLinear(feats, dense_inner) for _ in range(n_dense)]
        layers.append(LinearNormalized(feats, num_classes))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels or tuple(x.shape[-2:]) != (self.image_size,) * 2:
            raise ValueError(f"x: expected [N, {self.in_channels}, {self.image_size}, {self.image_size}], "
                             f"got {tuple(x.shape)}")
        h = self.model[0](self.shift(x))
        if h.device.type == "cpu":  # oneDNN runs the few-channel convolutions 2-3x faster in NHWC
            h = h.contiguous(memory_format=torch.channels_last)
        return self.model[1:](h)

    @property
    def head(self) -> LinearNormalized:
        return self.model[-1]


def _build(name: str, num_classes: int, **kw: Any) -> SLLNetwork:
    n_conv, n_dense, width, inner = SLL_CONFIGS[name]
    return SLLNetwork(num_classes, n_conv, n_dense, width, inner, **kw)


def sll_small(num_classes: int = 10, **kw: Any) -> SLLNetwork:
    """SLL Small: 20 conv layers (width 45), 7 dense layers (inner 2048). ``kw`` go to :class:`SLLNetwork`."""
    return _build("small", num_classes, **kw)


def sll_medium(num_classes: int = 10, **kw: Any) -> SLLNetwork:
    """SLL Medium: 30 conv layers (width 60), 10 dense layers (inner 2048)."""
    return _build("medium", num_classes, **kw)


def sll_large(num_classes: int = 10, **kw: Any) -> SLLNetwork:
    """SLL Large: 50 conv layers (width 90), 10 dense layers (inner 2048)."""
    return _build("large", num_classes, **kw)


def sll_xlarge(num_classes: int = 10, **kw: Any) -> SLLNetwork:
    """SLL X-Large: 70 conv layers (width 120), 15 dense layers (inner 2048)."""
    return _build("xlarge", num_classes, **kw)


# ----------------------------------------------------------------------------- export

_EXPORTABLE = (SLLLinear, SLLConv2d, AOLLinear, AOLConv2d, CPLLinear, LinearNormalized)


def export_model(model: nn.Module, input_size: Optional[tuple[int, ...]] = None) -> nn.Module:
    """A copy of ``model`` in eval mode with every fastorals layer replaced by plain torch layers.

    SLL/CPL layers become ``x + ConvTranspose/Linear(ReLU(Conv/Linear(x)))`` blocks, AOL layers
    and ``LinearNormalized`` plain ``Conv2d`` / ``Linear``. The result is made of plain torch
    ops (``torch.onnx.export``, ``torch.export`` work on it); containers such as
    ``SLLNetwork`` and parameter-free helpers (``MeanShift``, ``PaddingChannels``,
    ``LipschitzAvgPool2d``) keep their classes, so unpickling it still imports fastorals.

    Args:
        model: any module tree.
        input_size: [N, C, H, W] (or (C, H, W)) of the model's input; needed only for strided
            layers and ``CPLConv2d`` (their exported form depends on the spatial size).
    Returns:
        the exported copy (the original is untouched).
    """
    model = copy.deepcopy(model).eval()
    sizes: dict[int, tuple[int, int]] = {}
    if input_size is not None:
        hooks = [m.register_forward_pre_hook(lambda mod, args: sizes.__setitem__(id(mod), tuple(args[0].shape[-2:])))
                 for m in model.modules() if isinstance(m, (SLLConv2d, CPLConv2d))]
        shape = tuple(input_size) if len(input_size) == 4 else (1, *input_size)
        p = next(model.parameters(), None)
        with torch.no_grad():
            model(torch.zeros(shape, dtype=p.dtype if p is not None else torch.float32,
                              device=p.device if p is not None else None))
        for h in hooks:
            h.remove()

    def convert(mod: nn.Module) -> nn.Module:
        if isinstance(mod, CPLConv2d):
            if id(mod) not in sizes:
                raise ValueError("input_size: CPLConv2d exports depend on the image size; pass input_size")
            return mod.export(sizes[id(mod)])
        if isinstance(mod, SLLConv2d):
            return mod.export(sizes.get(id(mod)))
        if isinstance(mod, _EXPORTABLE):
            return mod.export()
        for name, child in list(mod.named_children()):
            setattr(mod, name, convert(child))
        return mod

    return convert(model)


# ----------------------------------------------------------------------------- official checkpoints

_PREFIXES = ("module.", "model.")


def convert_official_state_dict(state: Mapping[str, torch.Tensor], conv_q: str = "as_trained"
                                ) -> dict[str, torch.Tensor]:
    """Map a state dict of the paper's code onto :class:`SLLNetwork` names.

    Handles the ``DataParallel`` / ``NormalizedModel`` prefixes (``module.model.model.3.kernel``),
    the conv parameter name ``kernel`` (here ``weight``), biases stored as ``[1, m, 1, 1]`` /
    ``[1, m]`` (here ``[m]``), and drops entries the layers do not have (``alpha``, the
    normaliser's buffers).

    The released convolution multiplies the Gram by ``exp(-q_i)`` and ``exp(q_i)`` along the
    same axis, so its ``q`` cancels and the trained network used ``q = 0``. With
    ``conv_q="as_trained"`` (default) the conv ``q`` are loaded as zeros, which reproduces the
    trained function exactly; ``conv_q="keep"`` loads the stored values (a different, still
    1-Lipschitz network).

    Args:
        state: the official ``model_state_dict``.
        conv_q: "as_trained" or "keep".
    Returns:
        a dict loadable with ``SLLNetwork.load_state_dict``.
    """
    if conv_q not in ("as_trained", "keep"):
        raise ValueError(f"conv_q: expected 'as_trained' or 'keep', got {conv_q!r}")
    if not isinstance(state, Mapping):
        raise TypeError(f"state: expected a mapping of parameter names to tensors, got {type(state).__name__}")
    out: dict[str, torch.Tensor] = {}
    conv_layers = set()
    for key in state:
        hit = re.search(r"model\.(\d+)\.kernel$", key)
        if hit:
            conv_layers.add(hit.group(1))
    for key, value in state.items():
        if "alpha" in key or not isinstance(value, torch.Tensor):
            continue
        k = key
        while k.startswith(_PREFIXES) and not re.match(r"model\.\d+\.", k):
            k = k[k.index(".") + 1:]
        m = re.match(r"model\.(\d+)\.(kernel|weight|bias|q)$", k)
        if m is None:
            continue
        idx, name = m.groups()
        if name == "kernel":
            name = "weight"
        if name == "bias" and value.dim() > 1:
            value = value.reshape(-1)
        if name == "q" and idx in conv_layers and conv_q == "as_trained":
            value = torch.zeros_like(value)
        out[f"model.{idx}.{name}"] = value
    if not out:
        raise ValueError("state: no SLL parameters found (expected keys like 'model.1.kernel' or "
                         "'module.model.model.1.kernel')")
    return out


def load_official_checkpoint(model: SLLNetwork, path_or_state: Union[str, os.PathLike, Mapping[str, Any]],
                             strict: bool = True, conv_q: str = "as_trained") -> SLLNetwork:
    """Load a checkpoint of the paper's code (``model.ckpt-*.pth`` or its ``model_state_dict``).

    The file is read with ``torch.load(weights_only=True)``.

    Args:
        model: an :class:`SLLNetwork` with the checkpoint's configuration (e.g. ``sll_small(10)``).
        path_or_state: a path, or an already loaded dict.
        strict: require every parameter of the model.
        conv_q: see :func:`convert_official_state_dict`.
    Returns:
        ``model``, loaded.
    """
    if isinstance(path_or_state, (str, os.PathLike)):
        state = torch.load(path_or_state, map_location="cpu", weights_only=True)
    else:
        state = path_or_state
    if isinstance(state, Mapping) and "model_state_dict" in state:
        state = state["model_state_dict"]
    converted = convert_official_state_dict(state, conv_q)
    ours = model.state_dict()
    for k, v in converted.items():
        if k in ours and ours[k].shape != v.shape:
            raise ValueError(f"path_or_state: parameter {k} has shape {tuple(v.shape)} but the model expects "
                             f"{tuple(ours[k].shape)} (wrong configuration?)")
    missing = [k for k in ours if k not in converted and not k.startswith("shift.")]
    if strict and missing:
        raise ValueError(f"path_or_state: checkpoint lacks {len(missing)} parameters, e.g. {missing[:3]}")
    model.load_state_dict({**ours, **converted}, strict=True)
    return model
