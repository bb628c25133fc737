"""Per-image PIL reference: the definition of every op's pixels, and the official pipeline.

This is what the CUDA paper's code does to one image in a DataLoader worker: random crop with
zero padding, horizontal flip, the sample's chain of PIL ops, ``ToTensor``, Cutout, Normalize.
Here every random draw is an explicit argument, so the fast kernels can be checked against it
bit for bit. It is slow (one PIL call per op per image) and obviously correct.

Differences from the paper's code, on purpose:

* ``ResizeCrop`` crops exactly ``W x H`` from the resized image at ``(W'//2 - W//2, H'//2 - H//2)``;
  the paper's code crops ``2*(W//2)`` columns, one short on odd sizes (same result on even sizes).
* ``Posterize`` uses ``max(1, floor(v))`` bits capped at 8 (Pillow rejects other bit counts).
* ``ResizeCrop`` keeps the resized size at least 1 pixel.

``ToTensor`` and ``Normalize`` are computed as torchvision does, in float32:
``(x / 255 - mean) / std``; Cutout zeroes its box after ``ToTensor`` (so the box becomes
``-mean / std`` after normalizing), as in the paper's code.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from . import opset as O

__all__ = ["apply_op", "augment_batch", "augment_image", "from_pil", "to_pil"]


def to_pil(image: torch.Tensor) -> Image.Image:
    """uint8 [C, H, W] (C = 1 or 3) to a PIL image of mode L or RGB."""
    arr = image.detach().cpu().numpy()
    if arr.shape[0] == 1:
        return Image.fromarray(np.ascontiguousarray(arr[0]))  # 2-D uint8: mode L
    return Image.fromarray(np.ascontiguousarray(arr.transpose(1, 2, 0)))  # H x W x 3 uint8: RGB


def from_pil(img: Image.Image) -> torch.Tensor:
    """A PIL image of mode L or RGB to uint8 [C, H, W]."""
    arr = np.array(img)  # a writable copy
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def resize_crop_size(size: int, zoom: float) -> int:
    """Side of the resized image for ``ResizeCrop``: ``int(size * zoom)``, at least 1."""
    return max(1, int(size * zoom))


def posterize_bits(v: float) -> int:
    """Bits kept by ``Posterize`` for value ``v``: ``max(1, floor(v))``, at most 8."""
    return int(min(max(math.floor(v), 1), 8))


def _affine(img: Image.Image, matrix: tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=Image.Resampling.NEAREST)


def apply_op(img: Image.Image, op: int, v: float) -> Image.Image:
    """Apply op ``op`` with value ``v`` (see :mod:`fastorals.augment.opset`) to a PIL image."""
    if op == O.FLIP:
        return ImageOps.flip(img)
    if op == O.MIRROR:
        return ImageOps.mirror(img)
    if op == O.EDGE_ENHANCE:
        return img.filter(ImageFilter.EDGE_ENHANCE)
    if op == O.DETAIL:
        return img.filter(ImageFilter.DETAIL)
    if op == O.SMOOTH:
        return img.filter(ImageFilter.SMOOTH)
    if op == O.AUTOCONTRAST:
        return ImageOps.autocontrast(img)
    if op == O.EQUALIZE:
        return ImageOps.equalize(img)
    if op == O.INVERT:
        return ImageOps.invert(img)
    if op == O.GAUSSIAN_BLUR:
        return img.filter(ImageFilter.GaussianBlur(v))
    if op == O.RESIZE_CROP:
        w, h = img.size
        w2, h2 = resize_crop_size(w, v), resize_crop_size(h, v)
        enlarged = img.resize((w2, h2), Image.Resampling.LANCZOS)
        left, top = w2 // 2 - w // 2, h2 // 2 - h // 2
        return enlarged.crop((left, top, left + w, top + h))
    if op == O.ROTATE:
        return img.rotate(v)
    if op == O.POSTERIZE:
        return ImageOps.posterize(img, posterize_bits(v))
    if op == O.SOLARIZE:
        return ImageOps.solarize(img, v)
    if op == O.SOLARIZE_ADD:
        arr = np.asarray(img).astype(np.int64) + v
        arr = np.clip(arr, 0, 255).astype(np.uint8)
        return ImageOps.solarize(Image.fromarray(arr), 128)
    if op == O.COLOR:
        return ImageEnhance.Color(img).enhance(v)
    if op == O.CONTRAST:
        return ImageEnhance.Contrast(img).enhance(v)
    if op == O.BRIGHTNESS:
        return ImageEnhance.Brightness(img).enhance(v)
    if op == O.SHARPNESS:
        return ImageEnhance.Sharpness(img).enhance(v)
    if op == O.SHEAR_X:
        return _affine(img, (1, v, 0, 0, 1, 0))
    if op == O.SHEAR_Y:
        return _affine(img, (1, 0, 0, v, 1, 0))
    if op == O.TRANSLATE_X:
        return _affine(img, (1, 0, v, 0, 1, 0))
    if op == O.TRANSLATE_Y:
        return _affine(img, (1, 0, 0, 0, 1, v))
    if op == O.NONE:
        return img
    raise ValueError(f"op: unknown op id {op}")


def augment_image(
    image: torch.Tensor,
    ops: list[int],
    values: list[float],
    *,
    crop: tuple[int, int] = (0, 0),
    flip: bool = False,
    cutout: tuple[int, int, int, int] = (0, 0, 0, 0),
    mean: Optional[torch.Tensor] = None,
    std: Optional[torch.Tensor] = None,
    float_out: bool = False,
) -> torch.Tensor:
    """One image through the official pipeline with explicit random draws.

    Args:
        image: uint8 [C, H, W], C = 1 or 3.
        ops, values: the chain (op ids, final signed values); id -1 is skipped.
        crop: (dy, dx): output pixel (y, x) is input pixel (y + dy, x + dx), zero outside
            (``RandomCrop(size, padding=p)`` draws dy, dx in [-p, p]).
        flip: mirror left-right after the crop (``RandomHorizontalFlip``).
        cutout: (y1, y2, x1, x2) box set to 0 after ``ToTensor`` (empty when y1 >= y2 or x1 >= x2).
        mean, std: float32 [C] for Normalize (None: no normalization).
        float_out: return float32 ``ToTensor`` (+ Normalize) output instead of uint8.
    Returns:
        uint8 or float32 [C, H, W].
    """
    c, h, w = image.shape
    img = to_pil(image)
    side = max(h, w)  # past the side every offset is an all-padding crop (and PIL's int32 box overflows)
    dy, dx = (min(max(int(t), -side), side) for t in crop)
    if dy or dx:
        img = img.crop((dx, dy, dx + w, dy + h))  # PIL fills outside the image with 0
    if flip:
        img = ImageOps.mirror(img)
    for op, v in zip(ops, values):
        if int(op) == O.NONE:
            continue
        img = apply_op(img, int(op), float(v))
    out = from_pil(img)
    # the box clipped to the image (Python slicing would wrap a negative edge around)
    y1, y2 = (min(max(int(t), 0), h) for t in cutout[:2])
    x1, x2 = (min(max(int(t), 0), w) for t in cutout[2:])
    if not float_out:
        out = out.clone()
        if y1 < y2 and x1 < x2:
            out[:, y1:y2, x1:x2] = 0
        return out
    x = out.to(torch.float32).div(255)
    if y1 < y2 and x1 < x2:
        x[:, y1:y2, x1:x2] = 0.0
    if mean is not None:
        x = x.sub(mean.to(torch.float32).view(c, 1, 1)).div(std.to(torch.float32).view(c, 1, 1))
    return x


def augment_batch(
    images: torch.Tensor,
    ops: torch.Tensor,
    values: torch.Tensor,
    crop: torch.Tensor,
    flip: torch.Tensor,
    cutout: torch.Tensor,
    mean: Optional[torch.Tensor],
    std: Optional[torch.Tensor],
    float_out: bool,
) -> torch.Tensor:
    """:func:`augment_image` for every sample of a batch (same arguments, with a batch dim)."""
    dev = images.device
    images, ops, values = images.cpu(), ops.cpu(), values.cpu()
    crop, flip, cutout = crop.cpu(), flip.cpu(), cutout.cpu()
    ops_l, val_l = ops.tolist(), values.tolist()
    crop_l, flip_l, cut_l = crop.tolist(), flip.tolist(), cutout.tolist()
    outs = [
        augment_image(images[i], ops_l[i], val_l[i], crop=tuple(crop_l[i]), flip=bool(flip_l[i]),
                      cutout=tuple(cut_l[i]), mean=None if mean is None else mean.cpu(),
                      std=None if std is None else std.cpu(), float_out=float_out)
        for i in range(images.shape[0])
    ]
    if not outs:
        return torch.empty(images.shape, dtype=torch.float32 if float_out else torch.uint8, device=dev)
    return torch.stack(outs).to(dev)
