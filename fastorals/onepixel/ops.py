"""Launchers and ``torch.library`` ops of the OPS search.

``fastorals::onepixel_class_sums``     C++ kernel (CPU): per-class S1 = sum x, S2 = sum x^2
``fastorals::onepixel_class_sums_triton``  Triton kernel (GPU): the reduction (the score runs in PyTorch, see triton.py)

``scores_from_sums`` (plain PyTorch, traceable) turns sums into scores [K, H*W, 2^C] and
``select`` is the exclusion-aware argmax shared by every backend.

All take validated inputs (the public API in search.py validates).
"""

from __future__ import annotations

import torch

from .. import _ext
from .pattern import FLOAT_SCALE, colour_table, quantize, scores_from_deviation_sums

_CHUNK = 4096  # images per step of the PyTorch sums (bounds the int64/float64 copy)


@torch.library.custom_op("fastorals::onepixel_class_sums", mutates_args=(), device_types="cpu")
def class_sums_cpp(images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """C++ launcher. images uint8/float32/float64 [N, C, H, W], labels int64 [N].

    Returns (s1, s2, stats): s1, s2 int64 [K, C, H*W], the exact sums of the quantized values
    (``pattern.quantize``) and of their squares; stats float64 [3] = (min, max, number of values
    that are NaN or outside [0, 1]) — (0, 255, 0) for uint8.
    """
    C = _ext.ext_topic("onepixel")
    if C is None:
        raise _ext.BackendUnavailableError(f"onepixel C++ kernels unavailable ({_ext.EXT_ERROR})")
    images = images.contiguous()
    labels = labels.contiguous()
    N, Ch, H, W = images.shape
    s1 = torch.empty(num_classes, Ch, H * W, dtype=torch.int64)
    s2 = torch.empty(num_classes, Ch, H * W, dtype=torch.int64)
    threads = torch.get_num_threads()
    if images.dtype == torch.uint8:
        C.class_sums_u8(images.numpy(), labels.numpy(), s1.numpy(), s2.numpy(), num_classes, threads)
        stats = torch.tensor([0.0, 255.0, 0.0], dtype=torch.float64)
    else:
        fn = C.class_sums_f32 if images.dtype == torch.float32 else C.class_sums_f64
        lo, hi, bad = fn(images.numpy(), labels.numpy(), s1.numpy(), s2.numpy(), num_classes, threads, FLOAT_SCALE)
        stats = torch.tensor([lo, hi, float(bad)], dtype=torch.float64)
    return s1, s2, stats


@class_sums_cpp.register_fake
def _(images: torch.Tensor, labels: torch.Tensor, num_classes: int):
    _, Ch, H, W = images.shape
    return (images.new_empty(num_classes, Ch, H * W, dtype=torch.int64),
            images.new_empty(num_classes, Ch, H * W, dtype=torch.int64),
            images.new_empty(3, dtype=torch.float64))


def value_stats(images: torch.Tensor) -> torch.Tensor:
    """float64 [3]: (min, max, number of values that are NaN or outside [0, 1]) of float images."""
    if images.dtype == torch.uint8:
        return torch.tensor([0.0, 255.0, 0.0], dtype=torch.float64)
    finite = images[~torch.isnan(images)]
    lo, hi = torch.aminmax(finite) if finite.numel() else (torch.tensor(float("nan")),) * 2
    bad = int((~((images >= 0) & (images <= 1))).sum())
    return torch.tensor([float(lo), float(hi), float(bad)], dtype=torch.float64)


def class_sums_torch(images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same exact sums with PyTorch ops (any device), in chunks of images."""
    N, Ch, H, W = images.shape
    stats = value_stats(images)
    s1 = torch.zeros(num_classes, Ch * H * W, dtype=torch.int64, device=images.device)
    s2 = torch.zeros_like(s1)
    if stats[2] > 0:  # invalid values: the caller raises; don't convert NaN to integers
        return s1.view(num_classes, Ch, H * W), s2.view(num_classes, Ch, H * W), stats
    for i in range(0, N, _CHUNK):
        x = quantize(images[i : i + _CHUNK].reshape(-1, Ch * H * W))
        y = labels[i : i + _CHUNK]
        s1.index_add_(0, y, x)
        s2.index_add_(0, y, x * x)
    return s1.view(num_classes, Ch, H * W), s2.view(num_classes, Ch, H * W), stats


def scores_from_sums(s1: torch.Tensor, s2: torch.Tensor, counts: torch.Tensor, u: int) -> torch.Tensor:
    """Closed form: score of every (class, position, colour) from exact S1, S2 [K, C, P] and counts [K].

    Each channel of a colour is 0 or u (u = 255 for uint8, 2^20 for floats), so |delta - x| is x
    or (u - x): sum d = sum_c (delta_c ? u n_k - S1_c : S1_c) and
    sum d^2 = sum_c (delta_c ? u^2 n_k - 2u S1_c + S2_c : S2_c), all exact in int64.

    Returns:
        float64 [K, P, 2^C].
    """
    K, C, P = s1.shape
    n = counts.to(torch.int64).view(K, 1, 1)
    a1, a2 = s1, s2  # delta_c = 0
    b1 = u * n - s1  # delta_c = 1
    b2 = (u * u) * n - (2 * u) * s1 + s2
    table = colour_table(C).to(s1.device)  # [J, C]
    sd = a1.sum(1).unsqueeze(-1).clone()  # [K, P, 1]
    sd2 = a2.sum(1).unsqueeze(-1).clone()
    for c in range(C):
        bit = table[:, c].to(s1.dtype).view(1, 1, -1)  # [1, 1, J]
        sd = sd + bit * (b1[:, c] - a1[:, c]).unsqueeze(-1)
        sd2 = sd2 + bit * (b2[:, c] - a2[:, c]).unsqueeze(-1)
    m = (counts.to(torch.float64) * C).view(K, 1, 1)
    return scores_from_deviation_sums(sd, sd2, m)


def select(scores: torch.Tensor, sparsity: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy, exclusion-aware argmax in class order.

    Args:
        scores: float64 [K, P, J].
        sparsity: pairs per class (distinct positions within a class).

    Returns:
        (position index [K, s], colour index [K, s], score [K, s]).
    """
    K, P, J = scores.shape
    used = torch.zeros(P, J, dtype=torch.bool, device=scores.device)
    pos = torch.empty(K, sparsity, dtype=torch.int64)
    col = torch.empty(K, sparsity, dtype=torch.int64)
    val = torch.empty(K, sparsity, dtype=torch.float64)
    neg = torch.tensor(float("-inf"), dtype=torch.float64, device=scores.device)
    for k in range(K):
        free = ~used
        sc = scores[k]
        picked = torch.zeros_like(used)
        for s in range(sparsity):
            if not bool(free.any()):
                raise ValueError(
                    f"sparsity: class {k} has no free (position, colour) pair left for pixel {s + 1} "
                    f"({P} positions, {J} colours, {K} classes)"
                )
            masked = torch.where(free, sc, neg)
            tied = (masked == masked.max()) & free
            idx = int(torch.argmax(tied.flatten().to(torch.uint8)))  # first True: lowest position, then colour
            p, j = divmod(idx, J)
            pos[k, s], col[k, s], val[k, s] = p, j, sc[p, j]
            free[p, :] = False  # one colour per position within a class
            picked[p, j] = True
        used |= picked
    return pos, col, val
