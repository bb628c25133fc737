"""One-Pixel Shortcut (Wu, Chen, Xie, Huang, ICLR 2023): unlearnable examples by perturbing one pixel.

Example:
    >>> from fastorals import data, onepixel
    >>> x, y = data.synthetic_images(50_000)
    >>> pattern = onepixel.search_shortcut(x, y)       # one pass over the data
    >>> x_ops = onepixel.apply_shortcut(x, y, pattern)  # train on this: the model learns the pixel
"""

from .noise import error_minimizing_noise, ops_plus_em
from .pattern import ShortcutPattern, colour_table, scores_from_deviation_sums
from .search import ShortcutDataset, ShortcutTransform, apply_shortcut, search_shortcut

__all__ = [
    "ShortcutDataset",
    "ShortcutPattern",
    "ShortcutTransform",
    "apply_shortcut",
    "colour_table",
    "error_minimizing_noise",
    "ops_plus_em",
    "scores_from_deviation_sums",
    "search_shortcut",
]
