"""Spectral norms of dense and convolution operators: power iteration and rigorous upper bounds.

``conv_operator_norm_bound`` is an exact computation, not an estimate: a zero-padded ("same")
convolution on an H x W image is a restriction of the circular convolution on an N x N' grid
with ``N >= H + k // 2`` (rounded up to a multiple of the stride), so its operator norm is at
most that of the circular one, and the circular (strided) convolution is block-diagonalised by
the DFT of its polyphase components: its norm is the largest singular value of the small
``m x (c s^2)`` matrices ``K^(omega)`` over the grid's frequencies.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .ops import conv_output_padding

__all__ = ["conv_operator_norm_bound", "dense_operator_norm", "power_iteration_conv", "power_iteration_dense"]


def dense_operator_norm(weight: torch.Tensor) -> torch.Tensor:
    """Exact spectral norm ``||W||_2`` (largest singular value, computed in float64).

    Args:
        weight: [m, n].
    Returns:
        0-d tensor in ``weight``'s dtype.
    """
    w = weight.detach().double()
    if w.numel() == 0:
        return weight.new_zeros(())
    return torch.linalg.matrix_norm(w, ord=2).to(weight.dtype)


def conv_operator_norm_bound(kernel: torch.Tensor, input_size: tuple[int, int], stride: int = 1) -> torch.Tensor:
    """Upper bound (tight in practice) of the norm of ``x -> conv2d(x, K, stride, padding=k//2)``.

    Args:
        kernel: K [m, c, kh, kw] (odd sizes).
        input_size: (H, W) of the images the layer sees.
        stride: the convolution's stride.
    Returns:
        0-d tensor (float64 computation, returned in ``kernel``'s dtype).
    """
    k = kernel.detach().double()
    m, c, kh, kw = k.shape
    h, w = input_size
    s = int(stride)

    def grid(size: int, ksz: int) -> int:
        n = size + ksz // 2
        return -(-n // s) * s

    nh, nw = grid(h, kh), grid(w, kw)
    ph, pw = nh // s, nw // s
    poly = k.new_zeros(m, c, s, s, ph, pw)
    for u in range(kh):
        eh = u - kh // 2
        rh, dh = eh % s, eh // s
        for v in range(kw):
            ev = v - kw // 2
            rv, dv = ev % s, ev // s
            poly[:, :, rh, rv, dh % ph, dv % pw] += k[:, :, u, v]
    spec = torch.fft.fft2(poly)  # [m, c, s, s, ph, pw]
    mats = spec.permute(4, 5, 0, 1, 2, 3).reshape(ph * pw, m, c * s * s)
    top = torch.linalg.matrix_norm(mats, ord=2).max()
    return (top * (1 + 1e-12)).to(kernel.dtype)  # 1e-12: float64 rounding of the SVD


def power_iteration_dense(weight: torch.Tensor, u: torch.Tensor, iters: int = 1) -> torch.Tensor:
    """``iters`` power-iteration steps on ``W^T W`` from ``u`` [n] (no grad); returns the new unit u."""
    with torch.no_grad():
        for _ in range(iters):
            v = _normalized(weight @ u, None)
            u = _normalized(weight.T @ v, u)
    return u


def _normalized(x: torch.Tensor, fallback: Optional[torch.Tensor]) -> torch.Tensor:
    """``x / ||x||`` for any nonzero norm (F.normalize's eps of 1e-12 would shrink vectors of
    tiny weights at every step and underestimate sigma); a zero ``x`` gives ``fallback`` (or 0)."""
    n = torch.linalg.vector_norm(x)
    keep = torch.zeros_like(x) if fallback is None else fallback
    return torch.where(n > 0, x / n.clamp_min(torch.finfo(x.dtype).tiny), keep)


def power_iteration_conv(kernel: torch.Tensor, u: torch.Tensor, stride: int = 1, iters: int = 1) -> torch.Tensor:
    """Power iteration on ``A^T A`` with ``A = conv2d(., K, stride, padding=k//2)`` from ``u`` [1, c, H, W]."""
    kh = kernel.shape[-1]
    pad = kh // 2
    op = (conv_output_padding(u.shape[-2], kh, stride), conv_output_padding(u.shape[-1], kh, stride))
    with torch.no_grad():
        for _ in range(iters):
            v = F.conv2d(u, kernel, stride=stride, padding=pad)
            v = v / v.norm().clamp_min(1e-30)
            u = F.conv_transpose2d(v, kernel, stride=stride, padding=pad, output_padding=op)
            u = u / u.norm().clamp_min(1e-30)
    return u


def _unit(shape, dtype, device, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    u = torch.randn(shape, dtype=torch.float64, generator=generator).to(dtype=dtype, device=device)
    return u / u.norm().clamp_min(1e-30)


def random_unit(shape, like: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A random unit-norm tensor of ``shape`` in ``like``'s dtype/device (seeded)."""
    return _unit(shape, like.dtype, like.device, torch.Generator().manual_seed(seed))

