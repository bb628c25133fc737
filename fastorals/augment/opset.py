"""The augmentation op table: ids, names, value domains and the two magnitude mappings.

Every op takes one real *value* in the unit PIL uses for it (degrees, pixels, an enhance
factor, a bit count...). Op ids are stable and follow the order of the op list of the CUDA
paper's code (``augment_list``), so a chain written as ids means the same thing everywhere.

==  ============  ==================================  ========  ===========================
id  name          value (PIL unit)                    identity  signed (``signs`` flip it)
==  ============  ==================================  ========  ===========================
0   Flip          ignored (``ImageOps.flip``, up-down)  --        no
1   Mirror        ignored (``ImageOps.mirror``)        --        no
2   EdgeEnhance   ignored (``ImageFilter.EDGE_ENHANCE``) --      no
3   Detail        ignored (``ImageFilter.DETAIL``)     --        no
4   Smooth        ignored (``ImageFilter.SMOOTH``)     --        no
5   AutoContrast  ignored (``ImageOps.autocontrast``)  --        no
6   Equalize      ignored (``ImageOps.equalize``)      --        no
7   Invert        ignored (``ImageOps.invert``)        --        no
8   GaussianBlur  radius (``ImageFilter.GaussianBlur``) 0        no
9   ResizeCrop    zoom: Lanczos resize, centre crop   1         no
10  Rotate        degrees (``Image.rotate``, nearest)  0         yes
11  Posterize     bits, ``max(1, floor(v))``          8         no
12  Solarize      threshold                           256       no
13  SolarizeAdd   added value, then solarize at 128   0         no
14  Color         factor (``ImageEnhance.Color``)      1         yes
15  Contrast      factor (``ImageEnhance.Contrast``)   1         yes
16  Brightness    factor (``ImageEnhance.Brightness``) 1         yes
17  Sharpness     factor (``ImageEnhance.Sharpness``)  1         yes
18  ShearX        shear (affine ``(1, v, 0, 0, 1, 0)``) 0        yes
19  ShearY        shear (affine ``(1, 0, 0, v, 1, 0)``) 0        yes
20  TranslateX    pixels (affine ``(1, 0, v, 0, 1, 0)``) 0       yes
21  TranslateY    pixels (affine ``(1, 0, 0, 0, 1, v)``) 0       yes
==  ============  ==================================  ========  ===========================

Id ``-1`` (:data:`NONE`) pads chains of different lengths and does nothing.

A sign of -1 maps a value ``v`` of a signed op to ``2 * identity - v`` (``-v`` for the
geometric ops, ``2 - v`` for the enhance factors); unsigned ops ignore signs.

Magnitude mappings (level ``s`` in ``[0, max_level]`` to a value):

* ``"monotone"`` (default): ``v = identity + (s / max_level) * (strongest - identity)``,
  so the distance from the identity grows with the level for every op.
* ``"official"``: the mapping of the paper's code, ``v = lo + (s / 30) * (hi - lo)`` with its
  ``(lo, hi)`` per op. For Posterize, Solarize and the four enhance ops this makes LOW levels
  the strongest (level 0 posterizes to 1 bit and solarizes every pixel; Color at level 0 is
  factor 0.1), and every increasing op only reaches a third of its range at level 10.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import torch

from .._args import as_int

NONE = -1

OP_NAMES: tuple[str, ...] = (
    "Flip",
    "Mirror",
    "EdgeEnhance",
    "Detail",
    "Smooth",
    "AutoContrast",
    "Equalize",
    "Invert",
    "GaussianBlur",
    "ResizeCrop",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
)
NUM_OPS = len(OP_NAMES)
OP_IDS: dict[str, int] = {n: i for i, n in enumerate(OP_NAMES)}

(FLIP, MIRROR, EDGE_ENHANCE, DETAIL, SMOOTH, AUTOCONTRAST, EQUALIZE, INVERT, GAUSSIAN_BLUR,
 RESIZE_CROP, ROTATE, POSTERIZE, SOLARIZE, SOLARIZE_ADD, COLOR, CONTRAST, BRIGHTNESS, SHARPNESS,
 SHEAR_X, SHEAR_Y, TRANSLATE_X, TRANSLATE_Y) = range(NUM_OPS)

_TAKES_VALUE = frozenset(range(GAUSSIAN_BLUR, NUM_OPS))
SIGNED_OPS = frozenset({ROTATE, COLOR, CONTRAST, BRIGHTNESS, SHARPNESS, SHEAR_X, SHEAR_Y, TRANSLATE_X, TRANSLATE_Y})
GEOMETRIC_OPS = frozenset({FLIP, MIRROR, RESIZE_CROP, ROTATE, SHEAR_X, SHEAR_Y, TRANSLATE_X, TRANSLATE_Y})
FILTER_OPS = frozenset({EDGE_ENHANCE, DETAIL, SMOOTH, GAUSSIAN_BLUR, SHARPNESS})
POINTWISE_OPS = frozenset(range(NUM_OPS)) - GEOMETRIC_OPS - FILTER_OPS

# Value each op is the identity at (None: the op has no value).
IDENTITY: tuple[float | None, ...] = tuple(
    {GAUSSIAN_BLUR: 0.0, RESIZE_CROP: 1.0, ROTATE: 0.0, POSTERIZE: 8.0, SOLARIZE: 256.0, SOLARIZE_ADD: 0.0,
     COLOR: 1.0, CONTRAST: 1.0, BRIGHTNESS: 1.0, SHARPNESS: 1.0, SHEAR_X: 0.0, SHEAR_Y: 0.0,
     TRANSLATE_X: 0.0, TRANSLATE_Y: 0.0}.get(i)
    for i in range(NUM_OPS)
)

# Values accepted by the kernels (checked by the API): (low, high), inclusive.
DOMAIN: tuple[tuple[float, float], ...] = tuple(
    {GAUSSIAN_BLUR: (0.0, 1024.0), RESIZE_CROP: (1.0, 16.0), ROTATE: (-1e6, 1e6), POSTERIZE: (0.0, 8.0),
     SOLARIZE: (-1e6, 1e6), SOLARIZE_ADD: (-1e6, 1e6), COLOR: (-1e6, 1e6), CONTRAST: (-1e6, 1e6),
     BRIGHTNESS: (-1e6, 1e6), SHARPNESS: (-1e6, 1e6), SHEAR_X: (-100.0, 100.0), SHEAR_Y: (-100.0, 100.0),
     TRANSLATE_X: (-1e6, 1e6), TRANSLATE_Y: (-1e6, 1e6)}.get(i, (-math.inf, math.inf))
    for i in range(NUM_OPS)
)

# The paper's code: (lo, hi) of augment_list; v = lo + (level / max_d) * (hi - lo), max_d = 30.
OFFICIAL_RANGES: tuple[tuple[float, float], ...] = (
    (0, 1), (0, 1), (0, 1), (0, 1), (0, 1), (0, 1), (0, 1), (0, 1),
    (0, 2),        # GaussianBlur radius
    (1, 1.5),      # ResizeCrop zoom
    (0, 30),       # Rotate degrees
    (0, 4),        # Posterize bits (then max(1, int(v)))
    (0, 256),      # Solarize threshold
    (0, 110),      # SolarizeAdd addition
    (0.1, 1.9), (0.1, 1.9), (0.1, 1.9), (0.1, 1.9),  # Color, Contrast, Brightness, Sharpness
    (0.0, 0.3), (0.0, 0.3),  # ShearX/Y
    (0.0, 100), (0.0, 100),  # TranslateX/Y, absolute pixels
)

# Monotone mapping: value at the strongest level. Translate is a fraction of the image side.
MONOTONE_STRONGEST: dict[str, float] = {
    "GaussianBlur": 2.0,
    "ResizeCrop": 1.5,
    "Rotate": 30.0,
    "Posterize": 4.0,
    "Solarize": 0.0,
    "SolarizeAdd": 110.0,
    "Color": 1.9,
    "Contrast": 1.9,
    "Brightness": 1.9,
    "Sharpness": 1.9,
    "ShearX": 0.3,
    "ShearY": 0.3,
    "TranslateX": 0.45,
    "TranslateY": 0.45,
}

OpLike = Union[int, str]


def op_id(op: OpLike) -> int:
    """The id of an op given by name (case-insensitive) or id.

    Raises:
        ValueError: unknown name or id.
    """
    op = as_int(op)  # NumPy integers and 0-dim integer tensors too
    if isinstance(op, bool):
        raise TypeError(f"op: expected an op name or id, got {op!r}")
    if isinstance(op, int):
        if not 0 <= op < NUM_OPS:
            raise ValueError(f"op: unknown op id {op}, expected 0..{NUM_OPS - 1}")
        return op
    if isinstance(op, str):
        for name, i in OP_IDS.items():
            if name.lower() == op.lower():
                return i
        raise ValueError(f"op: unknown op name {op!r}, expected one of {', '.join(OP_NAMES)}")
    raise TypeError(f"op: expected an op name or id, got {type(op).__name__}")


def op_ids(ops: Sequence[OpLike] | None) -> list[int]:
    """Ids of a list of ops (default: all 22), order kept; ops are drawn uniformly from this set,
    so a repeated op is refused rather than silently counted once."""
    if ops is None:
        return list(range(NUM_OPS))
    if isinstance(ops, (str, int)):
        raise TypeError("ops: expected a sequence of op names or ids")
    out: list[int] = []
    for o in ops:
        i = op_id(o)
        if i in out:
            raise ValueError(f"ops: {OP_NAMES[i]} is listed twice; ops are drawn uniformly from a set of distinct ops")
        out.append(i)
    if not out:
        raise ValueError("ops: expected at least one op")
    return out


@dataclass(frozen=True)
class _Tables:
    identity: torch.Tensor   # float64 [NUM_OPS] (0 for value-less ops)
    signed: torch.Tensor     # bool [NUM_OPS]
    lo: torch.Tensor         # float64 [NUM_OPS] domain
    hi: torch.Tensor


_TABLES: dict[torch.device, _Tables] = {}


def tables(device: torch.device) -> _Tables:
    """Per-op lookup tensors on ``device`` (cached)."""
    t = _TABLES.get(device)
    if t is None:
        ident = torch.tensor([v if v is not None else 0.0 for v in IDENTITY], dtype=torch.float64)
        signed = torch.tensor([i in SIGNED_OPS for i in range(NUM_OPS)])
        lo = torch.tensor([d[0] for d in DOMAIN], dtype=torch.float64)
        hi = torch.tensor([d[1] for d in DOMAIN], dtype=torch.float64)
        t = _Tables(ident.to(device), signed.to(device), lo.to(device), hi.to(device))
        _TABLES[device] = t
    return t


def signed_values(ops: torch.Tensor, magnitudes: torch.Tensor, signs: torch.Tensor | None) -> torch.Tensor:
    """Values the kernels apply: ``2 * identity - v`` where the op is signed and the sign is -1.

    Args:
        ops: int [B, K] op ids (-1 pads).
        magnitudes: float64 [B, K] values on the positive side of each op's identity.
        signs: [B, K] of +1/-1, or None (all +1).
    Returns:
        float64 [B, K].
    """
    if signs is None:
        return magnitudes
    t = tables(ops.device)
    idx = ops.long().clamp(min=0)
    flip = t.signed[idx] & (ops >= 0) & (signs < 0)
    return torch.where(flip, 2.0 * t.identity[idx] - magnitudes, magnitudes)


def takes_value(op: int) -> bool:
    """Whether the op reads its value (False for the eight value-less ops)."""
    return op in _TAKES_VALUE
