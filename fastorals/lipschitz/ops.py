"""Fast CPU/PyTorch paths of the SLL algebra, registered as ``fastorals::`` ops.

Ops (all differentiable through ``register_autograd``; ``torch.compile`` and ``opcheck`` work):

``fastorals::lipschitz_gram_t(weight, q) -> t``
    ``t_i = sum_j |(W W^T)_ij| exp(q_j - q_i)`` without ever storing the m x m Gram matrix:
    the Gram is formed one row strip at a time and, being symmetric, only on and above the
    diagonal (about half the flops of ``W @ W.T``); ``|.| * exp(q_j - q_i)`` and the row sums
    (and the mirrored column sums) are applied to each strip while it is hot. The backward
    recomputes the strips (nothing m x m is saved) and forms ``dW = M W`` with the symmetric
    ``M_ij = sign(G_ij) (g_i r_j + g_j r_i)`` strip by strip.

``fastorals::lipschitz_residual_dense(x, weight, bias, scale) -> (y, act)``
    ``y = x - W^T (scale * ReLU(W x + b))`` as two GEMMs: the first with the bias epilogue and
    an in-place ReLU, the second with the residual folded in (``addmm(x, ., ., alpha=-1)``).
    The scaling is folded into whichever operand is smaller (the activation, or the weight:
    ``W' = diag(scale) W``). Only ``act = ReLU(W x + b)`` is saved for the backward (the mask
    is ``act > 0``); ``scale = 2 / t`` for SLL, ``2 / ||W||^2`` for CPL.

``fastorals::lipschitz_residual_conv(x, kernel, bias, scale, stride) -> (y, act)``
    The same for convolutions ("same" padding ``k // 2``, any odd ``k``, any stride; the
    transposed convolution maps back to the input size). Saves only ``act``.

Each forward op has a companion ``*_backward`` op so that the backward also runs as one
registered op under ``torch.compile``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["conv_output_padding", "gram_t", "residual_conv", "residual_dense"]

_STRIP = 256  # minimum rows per Gram strip (a strip is at most 1/4 of the rows: few, large BLAS calls)


def conv_output_padding(size: int, kernel_size: int, stride: int) -> int:
    """``output_padding`` that makes ``conv_transpose2d`` return ``size`` pixels after a "same" conv."""
    pad = kernel_size // 2
    out = (size + 2 * pad - kernel_size) // stride + 1
    return size - ((out - 1) * stride - 2 * pad + kernel_size)


# ============================================================================ Gram row sums


def _exp_weights(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``r = exp(q - max q)`` and ``1 / r = exp(max q - q)`` (no overflow of the row sums)."""
    c = q.max() if q.numel() else q.new_zeros(())
    return torch.exp(q - c), torch.exp(c - q)


def _strips(m: int) -> list[tuple[int, int]]:
    """Row strips: at least ``_STRIP`` rows, at most 4 strips. Work on/above the diagonal is
    ``(1 + 1 / strips) / 2`` of the full Gram; fewer strips mean fewer, larger BLAS calls, which
    matters when the cores are shared (every parallel region then costs a scheduler slice)."""
    step = max(_STRIP, -(-m // 4)) if m > _STRIP else m
    return [(s, min(s + step, m)) for s in range(0, m, max(step, 1))]


def gram_t_forward(weight: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Strip-wise symmetric evaluation of ``t`` (see module docstring)."""
    m = weight.shape[0]
    r, rinv = _exp_weights(q)
    u = torch.zeros(m, dtype=weight.dtype, device=weight.device)
    for s, e in _strips(m):
        strip = torch.mm(weight[s:e], weight[s:].T).abs_()  # [e-s, m-s]: diagonal block + right of it
        u[s:e] += torch.mv(strip, r[s:])
        if e < m:
            u[e:] += torch.mv(strip[:, e - s:].T, r[s:e])
    return u * rinv


def gram_t_backward(grad_t: torch.Tensor, weight: torch.Tensor, q: torch.Tensor,
                    t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dW, dq) of ``t = gram_t(W, q)``; recomputes the Gram strip by strip."""
    m = weight.shape[0]
    r, rinv = _exp_weights(q)
    gt = grad_t * rinv  # g~_i = g_i exp(-q_i) (shifted like r)
    dw = torch.zeros_like(weight)
    v = torch.zeros(m, dtype=weight.dtype, device=weight.device)  # (|G| g~)
    for s, e in _strips(m):
        g = torch.mm(weight[s:e], weight[s:].T)
        # M_ij = sign(G_ij) (g~_i r_j + r_i g~_j), symmetric
        mm = torch.outer(gt[s:e], r[s:]).addr_(r[s:e], gt[s:]).mul_(torch.sign(g))
        a = g.abs_()
        v[s:e] += torch.mv(a, gt[s:])
        if e < m:
            v[e:] += torch.mv(a[:, e - s:].T, gt[s:e])
        dw[s:e].addmm_(mm, weight[s:])
        if e < m:
            dw[e:].addmm_(mm[:, e - s:].T, weight[s:e])
    dq = r * v - grad_t * t
    return dw, dq


@torch.library.custom_op("fastorals::lipschitz_gram_t", mutates_args=())
def _gram_t_op(weight: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return gram_t_forward(weight.contiguous(), q.contiguous())


@_gram_t_op.register_fake
def _(weight, q):
    return weight.new_empty(weight.shape[0])


@torch.library.custom_op("fastorals::lipschitz_gram_t_backward", mutates_args=())
def _gram_t_backward_op(grad_t: torch.Tensor, weight: torch.Tensor, q: torch.Tensor,
                        t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return gram_t_backward(grad_t.contiguous(), weight.contiguous(), q.contiguous(), t.contiguous())


@_gram_t_backward_op.register_fake
def _(grad_t, weight, q, t):
    return torch.empty_like(weight), torch.empty_like(q)


def _gram_t_setup(ctx, inputs, output):
    weight, q = inputs
    ctx.save_for_backward(weight, q, output)


def _gram_t_bwd(ctx, grad_t):
    weight, q, t = ctx.saved_tensors
    dw, dq = torch.ops.fastorals.lipschitz_gram_t_backward(grad_t, weight, q, t)
    return dw, dq


_gram_t_op.register_autograd(_gram_t_bwd, setup_context=_gram_t_setup)


def gram_t(weight: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``t_i = sum_j |(W W^T)_ij| exp(q_j - q_i)`` (registered op, no m x m matrix kept).

    Args:
        weight: W [m, n] float.
        q: [m], same dtype and device.
    Returns:
        t [m].
    """
    return torch.ops.fastorals.lipschitz_gram_t(weight, q)


# ============================================================================ dense residual


def residual_dense_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                           scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, act)`` with ``act = ReLU(x W^T + b)``, ``y = x - (scale * act) W``; x is [B, n]."""
    if bias is not None:
        act = torch.addmm(bias, x, weight.T).relu_()
    else:
        act = torch.mm(x, weight.T).relu_()
    if x.shape[0] <= weight.shape[1]:  # fold the scale into the smaller operand
        y = torch.addmm(x, act * scale, weight, alpha=-1)
    else:
        y = torch.addmm(x, act, weight * scale[:, None], alpha=-1)
    return y, act


def residual_dense_backward(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                            act: torch.Tensor, has_bias: bool
                            ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """Gradients (dx, dW, db, dscale) of :func:`residual_dense_forward`."""
    h = torch.mm(grad_y, weight.T)  # dL/d(scaled act) = -h
    dscale = -(h * act).sum(0)
    dz = torch.where(act > 0, h * scale, torch.zeros((), dtype=h.dtype, device=h.device)).neg_()
    dx = torch.addmm(grad_y, dz, weight)
    dw = torch.mm(dz.T, x).addmm_((act * scale).T, grad_y, alpha=-1)
    db = dz.sum(0) if has_bias else None
    return dx, dw, db, dscale


@torch.library.custom_op("fastorals::lipschitz_residual_dense", mutates_args=())
def _residual_dense_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                       scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return residual_dense_forward(x.contiguous(), weight.contiguous(),
                                  None if bias is None else bias.contiguous(), scale.contiguous())


@_residual_dense_op.register_fake
def _(x, weight, bias, scale):
    return x.new_empty(x.shape), x.new_empty((x.shape[0], weight.shape[0]))


@torch.library.custom_op("fastorals::lipschitz_residual_dense_backward", mutates_args=())
def _residual_dense_backward_op(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                                act: torch.Tensor, has_bias: bool
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dw, db, ds = residual_dense_backward(grad_y.contiguous(), x.contiguous(), weight.contiguous(),
                                             scale.contiguous(), act.contiguous(), has_bias)
    if db is None:
        db = weight.new_zeros(weight.shape[0])
    return dx, dw, db, ds


@_residual_dense_backward_op.register_fake
def _(grad_y, x, weight, scale, act, has_bias):
    return (torch.empty_like(x), torch.empty_like(weight), weight.new_empty(weight.shape[0]),
            torch.empty_like(scale))


def _residual_dense_setup(ctx, inputs, output):
    x, weight, bias, scale = inputs
    _, act = output
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, weight, scale, act)


def _residual_dense_bwd(ctx, grad_y, grad_act):
    x, weight, scale, act = ctx.saved_tensors
    if grad_y is None:
        grad_y = torch.zeros_like(x)
    dx, dw, db, ds = torch.ops.fastorals.lipschitz_residual_dense_backward(
        grad_y, x, weight, scale, act, ctx.has_bias)
    return dx, dw, (db if ctx.has_bias else None), ds


_residual_dense_op.register_autograd(_residual_dense_bwd, setup_context=_residual_dense_setup)


def residual_dense(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                   scale: torch.Tensor) -> torch.Tensor:
    """``y = x - W^T (scale * ReLU(W x + b))`` for x [B, n] (registered op; saves only the activation).

    Args:
        x: [B, n].
        weight: W [m, n].
        bias: [m] or None.
        scale: [m] per-unit scale (``2 / t`` for SLL).
    Returns:
        y [B, n].
    """
    return torch.ops.fastorals.lipschitz_residual_dense(x, weight, bias, scale)[0]


# ============================================================================ conv residual


def _conv_geometry(x_shape, kernel_shape, stride: int) -> tuple[list[int], list[int]]:
    kh, kw = kernel_shape[-2:]
    pad = [kh // 2, kw // 2]
    opad = [conv_output_padding(x_shape[-2], kh, stride), conv_output_padding(x_shape[-1], kw, stride)]
    return pad, opad


def _work_layout(t: torch.Tensor) -> torch.Tensor:
    """Channels-last on the CPU: oneDNN runs these few-channel convolutions 2-3x faster in NHWC."""
    return t.contiguous(memory_format=torch.channels_last) if t.device.type == "cpu" else t.contiguous()


def _empty_work(shape, like: torch.Tensor) -> torch.Tensor:
    fmt = torch.channels_last if like.device.type == "cpu" else torch.contiguous_format
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt)


def residual_conv_forward(x: torch.Tensor, kernel: torch.Tensor, bias: Optional[torch.Tensor], scale: torch.Tensor,
                          stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, act)``, both channels-last on the CPU (every tensor of the computation shares one layout)."""
    pad, opad = _conv_geometry(x.shape, kernel.shape, stride)
    xw = _work_layout(x)
    z = F.conv2d(xw, kernel, bias, stride=stride, padding=pad).relu_()
    act = _work_layout(z)
    ct = F.conv_transpose2d(act * scale.view(1, -1, 1, 1), kernel, stride=stride, padding=pad, output_padding=opad)
    y = _empty_work(x.shape, x)
    return torch.sub(xw, _work_layout(ct), out=y), act


def residual_conv_backward(grad_y: torch.Tensor, x: torch.Tensor, kernel: torch.Tensor, scale: torch.Tensor,
                           act: torch.Tensor, stride: int, has_bias: bool
                           ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    pad, opad = _conv_geometry(x.shape, kernel.shape, stride)
    grad_y, x, act = _work_layout(grad_y), _work_layout(x), _work_layout(act)
    h = F.conv2d(grad_y, kernel, stride=stride, padding=pad)  # dL/d(scaled act) = -h
    dscale = -(h * act).sum((0, 2, 3))
    s4 = scale.view(1, -1, 1, 1)
    dz = _work_layout(torch.where(act > 0, h * s4, torch.zeros((), dtype=h.dtype, device=h.device)).neg_())
    dx = _empty_work(x.shape, x)
    torch.add(_work_layout(F.conv_transpose2d(dz, kernel, stride=stride, padding=pad, output_padding=opad)), grad_y,
              out=dx)
    conv_bwd = torch.ops.aten.convolution_backward
    args = (None, [stride, stride], pad, [1, 1], False, [0, 0], 1, [False, True, False])
    _, dk1, _ = conv_bwd(dz, x, kernel, *args)
    _, dk2, _ = conv_bwd(_work_layout(act * s4), grad_y, kernel, *args)
    db = dz.sum((0, 2, 3)) if has_bias else None
    return dx, dk1.sub_(dk2).contiguous(), db, dscale


@torch.library.custom_op("fastorals::lipschitz_residual_conv", mutates_args=())
def _residual_conv_op(x: torch.Tensor, kernel: torch.Tensor, bias: Optional[torch.Tensor], scale: torch.Tensor,
                      stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    return residual_conv_forward(x, kernel.contiguous(), None if bias is None else bias.contiguous(),
                                 scale.contiguous(), stride)


@_residual_conv_op.register_fake
def _(x, kernel, bias, scale, stride):
    kh, kw = kernel.shape[-2:]
    ho = (x.shape[-2] + 2 * (kh // 2) - kh) // stride + 1
    wo = (x.shape[-1] + 2 * (kw // 2) - kw) // stride + 1
    return _empty_work(x.shape, x), _empty_work((x.shape[0], kernel.shape[0], ho, wo), x)


@torch.library.custom_op("fastorals::lipschitz_residual_conv_backward", mutates_args=())
def _residual_conv_backward_op(grad_y: torch.Tensor, x: torch.Tensor, kernel: torch.Tensor, scale: torch.Tensor,
                               act: torch.Tensor, stride: int, has_bias: bool
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dk, db, ds = residual_conv_backward(grad_y, x, kernel.contiguous(),
                                            scale.contiguous(), act, stride, has_bias)
    if db is None:
        db = kernel.new_zeros(kernel.shape[0])
    return dx, dk, db, ds


@_residual_conv_backward_op.register_fake
def _(grad_y, x, kernel, scale, act, stride, has_bias):
    return (_empty_work(x.shape, x), kernel.new_empty(kernel.shape), kernel.new_empty(kernel.shape[0]),
            scale.new_empty(scale.shape))


def _residual_conv_setup(ctx, inputs, output):
    x, kernel, bias, scale, stride = inputs
    _, act = output
    ctx.has_bias = bias is not None
    ctx.stride = stride
    ctx.save_for_backward(x, kernel, scale, act)


def _residual_conv_bwd(ctx, grad_y, grad_act):
    x, kernel, scale, act = ctx.saved_tensors
    if grad_y is None:
        grad_y = torch.zeros_like(x)
    dx, dk, db, ds = torch.ops.fastorals.lipschitz_residual_conv_backward(
        grad_y, x, kernel, scale, act, ctx.stride, ctx.has_bias)
    return dx, dk, (db if ctx.has_bias else None), ds, None


_residual_conv_op.register_autograd(_residual_conv_bwd, setup_context=_residual_conv_setup)


def residual_conv(x: torch.Tensor, kernel: torch.Tensor, bias: Optional[torch.Tensor], scale: torch.Tensor,
                  stride: int = 1) -> torch.Tensor:
    """``y = x - conv_transpose2d(scale * ReLU(conv2d(x, K) + b), K)`` (registered op, "same" padding).

    Args:
        x: [N, c, H, W].
        kernel: K [m, c, k, k] (odd k).
        bias: [m] or None.
        scale: [m].
        stride: stride of the inner convolution.
    Returns:
        y [N, c, H, W].
    """
    return torch.ops.fastorals.lipschitz_residual_conv(x, kernel, bias, scale, stride)[0]
