"""One-Pixel Shortcut search written the way the paper describes it — slow, obvious, the oracle.

For each class k in order, for every pixel position p and every colour delta in {0, 1}^C:
the deviation d = |delta - x_n[:, p]| over all images n of class k and all C channels;
score(p, delta) = mean(d) / std(d) (population std). A (position, colour) pair chosen by an
earlier class is excluded; the best remaining pair wins (``sparsity`` pairs per class, at
distinct positions). Ties go to the lowest position, then the lowest colour index.

Deviations are summed exactly in integer units (see ``pattern.units``): d = |255 delta - x|
for uint8, d = |2^20 delta - floor(2^20 x)| for floats in [0, 1].
"""

from __future__ import annotations

import torch

from .pattern import ShortcutPattern, colour_table, quantize, scores_from_deviation_sums, units


def class_scores(images: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """float64 [H*W, 2^C]: the score of every (position, colour) for class ``k``, from explicit deviations."""
    N, C, H, W = images.shape
    xk = quantize(images[labels == k].reshape(-1, C, H * W))
    u = units(images.dtype)
    colours = colour_table(C)
    out = torch.empty(H * W, colours.shape[0], dtype=torch.float64)
    m = xk.shape[0] * C
    for j, delta in enumerate(colours):
        target = (delta.to(torch.int64) * u).view(1, C, 1)
        d = (target - xk).abs()  # [N_k, C, P]: the deviation of every value at every position
        out[:, j] = scores_from_deviation_sums(d.sum(dim=(0, 1)), (d * d).sum(dim=(0, 1)), float(m))
    return out


def search_shortcut(images: torch.Tensor, labels: torch.Tensor, num_classes: int, sparsity: int = 1) -> ShortcutPattern:
    """Reference search (inputs already validated by the public API)."""
    N, C, H, W = images.shape
    images, labels = images.cpu(), labels.cpu()
    colours = colour_table(C)
    used: set[tuple[int, int]] = set()  # (position, colour) pairs taken by earlier classes
    positions = torch.zeros(num_classes, sparsity, 2, dtype=torch.int64)
    chosen_colours = torch.zeros(num_classes, sparsity, C, dtype=torch.uint8)
    chosen_scores = torch.zeros(num_classes, sparsity, dtype=torch.float64)
    for k in range(num_classes):
        scores = class_scores(images, labels, k).tolist()  # plain floats: [position][colour]
        taken_here: set[int] = set()
        picked: list[tuple[int, int]] = []
        for s in range(sparsity):
            free = [(p, j) for p in range(H * W) if p not in taken_here
                    for j in range(colours.shape[0]) if (p, j) not in used]
            if not free:
                raise ValueError(
                    f"sparsity: class {k} has no free (position, colour) pair left for pixel {s + 1} "
                    f"({H}x{W} image, {colours.shape[0]} colours, {num_classes} classes)"
                )
            best = max(scores[p][j] for p, j in free)
            best_idx = next((p, j) for p, j in free if scores[p][j] == best)
            p, j = best_idx
            taken_here.add(p)
            picked.append(best_idx)
            positions[k, s] = torch.tensor([p // W, p % W])
            chosen_colours[k, s] = colours[j]
            chosen_scores[k, s] = scores[best_idx[0]][best_idx[1]]
        used.update(picked)
    return ShortcutPattern(positions, chosen_colours, chosen_scores, (C, H, W))


def apply_shortcut(images: torch.Tensor, labels: torch.Tensor, pattern: ShortcutPattern) -> torch.Tensor:
    """Reference apply: a copy where each image's class pixels are set to the class colour."""
    out = images.clone()
    values = pattern.color_values(images.dtype)
    for n in range(images.shape[0]):
        k = int(labels[n])
        for s in range(pattern.sparsity):
            r, c = pattern.positions[k, s].tolist()
            out[n, :, r, c] = values[k, s]
    return out
