"""scikit-learn's bundled 8x8 handwritten digits as an :class:`ImageDataset` (no download)."""

from __future__ import annotations

import torch

from .dataset import ImageDataset


def load_digits() -> ImageDataset:
    """The 1,797 digits of ``sklearn.datasets.load_digits``.

    Returns:
        ImageDataset with images uint8 [1797, 1, 8, 8] (0..16 scaled to 0..255), labels int64 [1797].

    Raises:
        ImportError: scikit-learn is not installed (``pip install fastorals[data]``).
    """
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as exc:  # optional dependency
        raise ImportError("load_digits needs scikit-learn: pip install scikit-learn") from exc
    d = _sk_load_digits()
    images = torch.from_numpy(d.images).float().mul_(255.0 / 16.0).round_().clamp_(0, 255).to(torch.uint8)
    return ImageDataset(images.unsqueeze(1).contiguous(), torch.from_numpy(d.target).long(), [str(i) for i in range(10)])
