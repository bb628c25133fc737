"""Launchers and ``torch.library`` registration of the augmentation kernels.

``fastorals::augment_apply`` (C++, CPU) and ``fastorals::augment_apply_triton`` (Triton, CUDA or
the interpreter) take the same canonical arguments, already checked by :mod:`.api`:

=========  ================  ===================================================
images     uint8 [B, C, H, W]  C = 1 or 3, contiguous
ops        int32 [B, K]      op ids, -1 = none
values     float64 [B, K]    final (signed) op values
crop       int32 [B, 2]      (dy, dx): output (y, x) reads input (y + dy, x + dx), 0 outside
flip       uint8 [B]         mirror left-right after the crop
cutout     int32 [B, 4]      (y1, y2, x1, x2) box zeroed after ToTensor; empty if y1 >= y2
mean, std  float32 [C]       Normalize (0 and 1 for none)
float_out  bool              float32 ``(x / 255 - mean) / std`` output instead of uint8
=========  ================  ===================================================

Neither op is differentiable (the input is uint8).
"""

from __future__ import annotations

import torch

from .._ext import BackendUnavailableError, ext_topic

__all__ = ["augment_apply", "augment_apply_cpp", "augment_apply_reference"]


def augment_apply_cpp(
    images: torch.Tensor,
    ops: torch.Tensor,
    values: torch.Tensor,
    crop: torch.Tensor,
    flip: torch.Tensor,
    cutout: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    float_out: bool,
) -> torch.Tensor:
    """Launcher of the C++ kernel (canonical CPU arguments, see the module docstring)."""
    mod = ext_topic("augment")
    if mod is None:
        raise BackendUnavailableError("augment: the C++ extension (fastorals._C.augment) is not available")
    images = images.contiguous()
    out = torch.empty(images.shape, dtype=torch.float32 if float_out else torch.uint8)
    mod.apply_chains(
        images.numpy(), ops.contiguous().numpy(), values.contiguous().numpy(), crop.contiguous().numpy(),
        flip.contiguous().numpy(), cutout.contiguous().numpy(), mean.contiguous().numpy(),
        std.contiguous().numpy(), out.numpy(), torch.get_num_threads(),
    )
    return out


@torch.library.custom_op("fastorals::augment_apply", mutates_args=(), device_types="cpu")
def augment_apply(
    images: torch.Tensor,
    ops: torch.Tensor,
    values: torch.Tensor,
    crop: torch.Tensor,
    flip: torch.Tensor,
    cutout: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    float_out: bool,
) -> torch.Tensor:
    """``fastorals::augment_apply``: the C++ kernel as a registered op (CPU tensors)."""
    return augment_apply_cpp(images, ops, values, crop, flip, cutout, mean, std, float_out)


@augment_apply.register_fake
def _augment_apply_fake(images, ops, values, crop, flip, cutout, mean, std, float_out):
    return images.new_empty(images.shape, dtype=torch.float32 if float_out else torch.uint8)


def augment_apply_reference(
    images: torch.Tensor,
    ops: torch.Tensor,
    values: torch.Tensor,
    crop: torch.Tensor,
    flip: torch.Tensor,
    cutout: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    float_out: bool,
) -> torch.Tensor:
    """The per-image PIL reference with the canonical arguments."""
    from . import reference

    return reference.augment_batch(images, ops, values, crop, flip, cutout, mean, std, float_out)
