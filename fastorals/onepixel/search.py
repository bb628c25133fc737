"""Public API of the One-Pixel Shortcut: search, apply, and on-the-fly wrappers."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch.utils.data import Dataset

from .. import _ext
from . import ops, reference
from .pattern import MAX_CHANNELS, ShortcutPattern, colour_table, units

IMPLEMENTED = ("triton", "cpp", "torch", "reference")


def _check_inputs(
    images: torch.Tensor, labels: torch.Tensor, num_classes: Optional[int]
) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images: expected a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images: expected 4 dimensions [N, C, H, W], got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.dtype.is_floating_point:
        raise TypeError(f"images: expected uint8 in [0, 255] or float in [0, 1], got {images.dtype}")
    N, C, H, W = images.shape
    if N == 0 or H == 0 or W == 0 or C == 0:
        raise ValueError(f"images: expected a non-empty batch, got shape {tuple(images.shape)}")
    if C > MAX_CHANNELS:
        raise ValueError(f"images: at most {MAX_CHANNELS} channels (2^C colours per pixel), got C={C}")
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"labels: expected an integer tensor, got {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != N:
        raise ValueError(f"labels: expected shape [{N}] (one per image), got {tuple(labels.shape)}")
    labels = labels.to(device=images.device, dtype=torch.int64)
    lo, hi = int(labels.min()), int(labels.max())
    if num_classes is None:
        num_classes = hi + 1
    elif not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels: expected values in [0, num_classes={num_classes}), got [{lo}, {hi}]")
    counts = torch.bincount(labels, minlength=num_classes)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        raise ValueError(
            f"labels: class(es) {empty[:10]} of num_classes={num_classes} have no images; every class needs "
            "at least one image to get a shortcut (pass the right num_classes or drop the empty classes)"
        )
    return images, labels, num_classes, counts


def _check_values(stats: torch.Tensor) -> None:
    """Raise unless float images are finite and in [0, 1]; stats = (min, max, number of bad values)."""
    lo, hi, bad = (float(v) for v in stats)
    if bad > 0:
        if lo != lo or hi != hi or lo == float("-inf") or hi == float("inf"):
            raise ValueError(f"images: {int(bad)} values are NaN or inf; expected finite float values in [0, 1]")
        raise ValueError(
            f"images: float images must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}] "
            f"({int(bad)} outside, NaN or inf; divide uint8 data by 255, or pass the uint8 tensor itself)"
        )


def search_shortcut(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: Optional[int] = None,
    sparsity: int = 1,
) -> ShortcutPattern:
    """Find each class's One-Pixel Shortcut (Wu et al., ICLR 2023).

    For every class (in order), every pixel position and every colour with each channel at
    its minimum or maximum, the score is mean/std of the deviation |colour - x| over the
    class's images and channels; the best (position, colour) not taken by an earlier class
    wins. Exact closed form: one pass over the data for per-class S1 = sum x and S2 = sum x^2,
    summed exactly in integers (floats on a 2^-20 grid), so every backend returns the same
    pixels, ties included (lowest position, then colour index).

    Args:
        images: uint8 [N, C, H, W] in [0, 255] or float [N, C, H, W] in [0, 1]; any C <= 12, H, W.
            Non-contiguous inputs are copied once.
        labels: integer [N] in [0, num_classes).
        num_classes: default ``labels.max() + 1``; every class must have images.
        sparsity: pixels per class (distinct positions), default 1.

    Returns:
        ShortcutPattern with positions [K, s, 2], colours [K, s, C] in {0, 1}, scores [K, s].

    Backends: "cpp" (CPU, reads uint8/float directly, OpenMP), "triton" (CUDA), "torch", "reference".

    Example:
        >>> x, y = fastorals.data.synthetic_images(50_000)
        >>> pattern = search_shortcut(x, y)              # ~0.1 s on 2 cores
        >>> x_ops = apply_shortcut(x, y, pattern)
    """
    images, labels, K, counts = _check_inputs(images, labels, num_classes)
    N, C, H, W = images.shape
    if not isinstance(sparsity, int) or isinstance(sparsity, bool) or not 1 <= sparsity <= H * W:
        raise ValueError(f"sparsity: expected an int in [1, H*W={H * W}], got {sparsity!r}")
    if images.dtype in (torch.float16, torch.bfloat16):
        images = images.float()  # exact
    u = units(images.dtype)
    if images.dtype != torch.uint8 and int(counts.max()) * C >= 2**62 // u**2:
        raise ValueError(f"images: a class of {int(counts.max())} float images is too large for exact scoring; "
                         "pass uint8 images (exact for any size)")
    backend = _ext.select_backend("onepixel.search_shortcut", images.device, IMPLEMENTED)
    if backend == "reference":
        _check_values(ops.value_stats(images))
        return reference.search_shortcut(images, labels, K, sparsity)
    if backend == "triton":
        _check_values(ops.value_stats(images))
        from .triton import class_sums_triton

        s1, s2 = class_sums_triton(images, labels, counts, K, int(counts.max()))
    else:
        fn = ops.class_sums_cpp if backend == "cpp" else ops.class_sums_torch
        s1, s2, stats = fn(images, labels, K)
        _check_values(stats)
    scores = ops.scores_from_sums(s1, s2, counts, u)
    pos, col, val = ops.select(scores, sparsity)
    positions = torch.stack([pos // W, pos % W], dim=-1)
    colours = colour_table(C)[col]
    return ShortcutPattern(positions.cpu(), colours.cpu(), val.cpu(), (C, H, W))


def _check_pattern_fits(images: torch.Tensor, labels: torch.Tensor, pattern: ShortcutPattern) -> torch.Tensor:
    if not isinstance(pattern, ShortcutPattern):
        raise TypeError(f"pattern: expected a ShortcutPattern, got {type(pattern).__name__}")
    if images.dim() != 4 or tuple(images.shape[1:]) != tuple(pattern.image_shape):
        raise ValueError(f"images: expected [N, {', '.join(map(str, pattern.image_shape))}] to match the pattern, "
                         f"got {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.dtype.is_floating_point:
        raise TypeError(f"images: expected uint8 or float, got {images.dtype}")
    labels = torch.as_tensor(labels, device=images.device)
    if labels.dtype.is_floating_point or labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels: expected integer shape [{images.shape[0]}], got {labels.dtype} {tuple(labels.shape)}")
    labels = labels.long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= pattern.num_classes):
        raise ValueError(f"labels: expected values in [0, {pattern.num_classes}) (the pattern's classes), "
                         f"got [{int(labels.min())}, {int(labels.max())}]")
    return labels


def apply_shortcut(
    images: torch.Tensor, labels: torch.Tensor, pattern: ShortcutPattern, *, inplace: bool = False
) -> torch.Tensor:
    """Set each image's class pixel(s) to the class colour (0/255 for uint8, 0/1 for floats).

    Args:
        images: uint8 or float [N, C, H, W] with (C, H, W) = ``pattern.image_shape``.
        labels: integer [N] class of each image.
        pattern: from :func:`search_shortcut`.
        inplace: modify ``images`` instead of returning a copy.

    Returns:
        The perturbed images, same dtype and device (uint8 round trip is exact).
    """
    labels = _check_pattern_fits(images, labels, pattern)
    out = images if inplace else images.clone()
    if images.shape[0] == 0:
        return out
    pos = pattern.positions.to(images.device)
    vals = pattern.color_values(images.dtype).to(images.device)
    n = torch.arange(images.shape[0], device=images.device)
    for s in range(pattern.sparsity):
        out[n, :, pos[labels, s, 0], pos[labels, s, 1]] = vals[labels, s]
    return out


class ShortcutTransform:
    """Batch transform ``(x, y) -> x`` applying a pattern on the fly (e.g. ``TensorLoader(transform=...)``)."""

    def __init__(self, pattern: ShortcutPattern) -> None:
        pattern.validate()
        self.pattern = pattern

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return apply_shortcut(images, labels, self.pattern)


class ShortcutDataset(Dataset):
    """Wraps a map-style dataset of ``(image [C, H, W], label)`` and applies the shortcut on the fly.

    The wrapped data is never modified; the perturbation happens in ``__getitem__`` (before any
    transform given here, e.g. augmentation, as when poisoned data is stored and then augmented).

    Example:
        >>> ds = ShortcutDataset(train_set, pattern, transform=my_augmentation)
        >>> image, label = ds[0]
    """

    def __init__(self, dataset: Any, pattern: ShortcutPattern, transform: Optional[Any] = None) -> None:
        pattern.validate()
        self.dataset, self.pattern, self.transform = dataset, pattern, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        image, label = self.dataset[i]
        x = apply_shortcut(torch.as_tensor(image).unsqueeze(0), torch.tensor([int(label)]), self.pattern)[0]
        if self.transform is not None:
            x = self.transform(x)
        return x, label
