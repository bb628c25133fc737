"""The paper's formulas in plain PyTorch: slow, obvious, the oracle of every test and the fallback.

SDP-based Lipschitz layers (SLL), Araujo et al., ICLR 2023, and the layers the paper unifies
(AOL, Prach & Lampert 2022; CPL, Meunier et al. 2022). Notation (dense case):

* ``W`` in R^{m x n} (m = inner width, n = features), ``b`` in R^m, ``q`` in R^m.
* ``t_i = sum_j |(W W^T)_ij| exp(q_j - q_i)``                 (weighted Gershgorin bound, T >= W W^T)
* ``h(x) = x - 2 W^T diag(1/t) ReLU(W x + b)``                 (1/0 := 0; no epsilon anywhere)

Convolution: ``K`` in R^{m x c x k x k}; ``G = conv2d(K, K, padding=k-1)`` (m x m x (2k-1)^2);
``t_i = sum_{j,uv} |G_ij,uv| exp(q_j - q_i)`` over the shifts ``uv`` that are multiples of the
stride (with stride 1: all shifts), ``h(x) = x - 2 conv_transpose2d(ReLU(conv2d(x, K) + b) / t, K)``
with "same" padding ``k // 2``.

Everything here follows the formulas literally (the Gram matrix is materialised, autograd does
the backward); ``fastorals.lipschitz.ops`` holds the fast versions of the same math.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = [
    "aol_conv_scale",
    "aol_dense_scale",
    "conv_gram",
    "conv_output_padding",
    "cpl_conv",
    "cpl_dense",
    "offset_cross_entropy",
    "safe_inv",
    "sll_conv",
    "sll_conv_t",
    "sll_dense",
    "sll_dense_t",
]


def safe_inv(t: torch.Tensor) -> torch.Tensor:
    """``1 / t`` with ``1 / 0 := 0`` (a zero row of W contributes nothing)."""
    return torch.where(t > 0, 1.0 / torch.where(t > 0, t, torch.ones_like(t)), torch.zeros_like(t))


# ----------------------------------------------------------------------------- dense SLL


def sll_dense_t(weight: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``t_i = sum_j |(W W^T)_ij| exp(q_j - q_i)``.

    Args:
        weight: W [m, n].
        q: [m].
    Returns:
        t [m] (non-negative).
    """
    gram = weight @ weight.T
    return (gram.abs() * torch.exp(q[None, :] - q[:, None])).sum(dim=1)


def sll_dense(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], q: torch.Tensor) -> torch.Tensor:
    """The SLL dense layer ``h(x) = x - 2 W^T diag(1/t) ReLU(W x + b)``.

    Args:
        x: [..., n].
        weight: W [m, n].
        bias: b [m] or None.
        q: [m].
    Returns:
        [..., n].
    """
    t = sll_dense_t(weight, q)
    z = F.linear(x, weight, bias)
    return x - 2.0 * F.linear(safe_inv(t) * torch.relu(z), weight.T)


def cpl_dense(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], sigma: torch.Tensor) -> torch.Tensor:
    """CPL dense layer ``h(x) = x - (2 / sigma^2) W^T ReLU(W x + b)`` with ``sigma = ||W||_2``."""
    z = F.linear(x, weight, bias)
    return x - (2.0 / sigma**2) * F.linear(torch.relu(z), weight.T)


def aol_dense_scale(weight: torch.Tensor) -> torch.Tensor:
    """AOL column scaling ``d_j = (sum_k |W^T W|_jk)^{-1/2}`` (0 for a zero column).

    Args:
        weight: W [out, in].
    Returns:
        d [in]; the 1-Lipschitz layer is ``x -> (W diag(d)) x + b``.
    """
    s = (weight.T @ weight).abs().sum(dim=1)
    return torch.where(s > 0, torch.rsqrt(torch.where(s > 0, s, torch.ones_like(s))), torch.zeros_like(s))


# ----------------------------------------------------------------------------- convolutions


def conv_gram(kernel: torch.Tensor) -> torch.Tensor:
    """All cross-correlations of the kernel's filters: ``conv2d(K, K, padding=k-1)``.

    Args:
        kernel: K [m, c, kh, kw].
    Returns:
        G [m, m, 2kh-1, 2kw-1]; ``G[i, j, u, v]`` is the inner product of filter i with filter j
        shifted by ``(u - kh + 1, v - kw + 1)``.
    """
    kh, kw = kernel.shape[-2:]
    return F.conv2d(kernel, kernel, padding=(kh - 1, kw - 1))


def _stride_taps(size: int, stride: int) -> slice:
    """Indices of the Gram's shifts that are multiples of ``stride`` (the centre is ``size - 1``)."""
    return slice((size - 1) % stride, 2 * size - 1, stride)


def sll_conv_t(kernel: torch.Tensor, q: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """``t_i = sum_{j, uv} |G_ij,uv| exp(q_j - q_i)`` over the shifts that are multiples of ``stride``.

    A strided convolution only pairs outputs whose positions differ by multiples of the stride,
    so its Gram operator is a principal sub-matrix of the stride-1 one: the smaller sum is
    still a valid (and tighter) bound.

    Args:
        kernel: K [m, c, k, k].
        q: [m].
        stride: the layer's stride.
    Returns:
        t [m].
    """
    kh, kw = kernel.shape[-2:]
    g = conv_gram(kernel)[:, :, _stride_taps(kh, stride), _stride_taps(kw, stride)]
    return (g.abs().sum(dim=(2, 3)) * torch.exp(q[None, :] - q[:, None])).sum(dim=1)


def conv_output_padding(size: int, kernel_size: int, stride: int) -> int:
    """``output_padding`` that makes ``conv_transpose2d`` return ``size`` pixels after a "same" conv."""
    pad = kernel_size // 2
    out = (size + 2 * pad - kernel_size) // stride + 1
    return size - ((out - 1) * stride - 2 * pad + kernel_size)


def _residual_conv(x: torch.Tensor, kernel: torch.Tensor, bias: Optional[torch.Tensor], scale: torch.Tensor,
                   stride: int) -> torch.Tensor:
    k = kernel.shape[-1]
    pad = k // 2
    z = F.conv2d(x, kernel, bias, stride=stride, padding=pad)
    a = scale.view(1, -1, 1, 1) * torch.relu(z)
    op = (conv_output_padding(x.shape[-2], k, stride), conv_output_padding(x.shape[-1], k, stride))
    return x - F.conv_transpose2d(a, kernel, stride=stride, padding=pad, output_padding=op)


def sll_conv(x: torch.Tensor, kernel: torch.Tensor, bias: Optional[torch.Tensor], q: torch.Tensor,
             stride: int = 1) -> torch.Tensor:
    """The SLL convolution ``h(x) = x - 2 conv_transpose2d(ReLU(conv2d(x, K) + b) / t, K)``.

    Args:
        x: [N, c, H, W].
        kernel: K [m, c, k, k], k odd.
        bias: b [m] or None.
        q: [m].
        stride: stride of the inner convolution (the transposed one maps back to H x W).
    Returns:
        [N, c, H, W].
    """
    t = sll_conv_t(kernel, q, stride)
    return _residual_conv(x, kernel, bias, 2.0 * safe_inv(t), stride)


def cpl_conv(x: torch.Tensor, kernel: torch.Tensor, bias: Optional[torch.Tensor], sigma: torch.Tensor,
             stride: int = 1) -> torch.Tensor:
    """CPL convolution ``h(x) = x - (2 / sigma^2) conv_transpose2d(ReLU(conv2d(x, K) + b), K)``."""
    scale = (2.0 / sigma**2).expand(kernel.shape[0])
    return _residual_conv(x, kernel, bias, scale, stride)


def aol_conv_scale(kernel: torch.Tensor) -> torch.Tensor:
    """AOL input-channel scaling for a convolution: ``d_j = (sum_{k,uv} |(K^T K)_jk,uv|)^{-1/2}``.

    Args:
        kernel: K [out, in, k, k].
    Returns:
        d [in]; the 1-Lipschitz layer is ``conv2d(x, K * d[None, :, None, None]) + b``.
    """
    kt = kernel.transpose(0, 1)
    s = conv_gram(kt).abs().sum(dim=(1, 2, 3))
    return torch.where(s > 0, torch.rsqrt(torch.where(s > 0, s, torch.ones_like(s))), torch.zeros_like(s))


# ----------------------------------------------------------------------------- loss


def offset_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, offset: float = 1.5 * math.sqrt(2),
                         temperature: float = 0.25) -> torch.Tensor:
    """``tau * CE((z - offset * onehot(y)) / tau, y)``, the paper's training loss."""
    onehot = F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    return temperature * F.cross_entropy((logits - offset * onehot) / temperature, labels)
