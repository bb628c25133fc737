"""Functional API of the 1-Lipschitz layers: argument checks, backend choice, the fast paths.

Backends (``fastorals.use_backend`` / ``FASTORALS_BACKEND``):

* ``"torch"``: the registered ``fastorals::lipschitz_*`` ops of :mod:`fastorals.lipschitz.ops`
  (CPU and CUDA; the default on CPU).
* ``"triton"``: fused Triton kernels for the dense layer and the Gram row sums (CUDA, or the CPU
  under ``TRITON_INTERPRET=1`` when asked for explicitly; the default on CUDA).
* ``"reference"``: :mod:`fastorals.lipschitz.reference`, the formulas with autograd.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Optional

import torch
import torch.nn.functional as F

from .._ext import select_backend
from . import ops
from . import reference as ref

__all__ = [
    "aol_conv2d",
    "aol_linear",
    "cpl_conv2d",
    "cpl_linear",
    "gates_open",
    "sll_conv2d",
    "sll_conv_t",
    "sll_linear",
    "sll_t",
    "worst_case_gates",
]

_DENSE_IMPL = ("triton", "torch", "reference")
_CONV_IMPL = ("torch", "reference")

# ----------------------------------------------------------------------------- gates


_gates = threading.local()


def gates_open() -> bool:
    """True inside :func:`worst_case_gates` (every ReLU gate of the residual layers is open)."""
    return bool(getattr(_gates, "open", 0))


@contextlib.contextmanager
def worst_case_gates() -> Iterator[None]:
    """Replace the ReLU of every SLL/CPL residual layer by the identity (all gates open).

    For ``h(x) = x - W^T diag(s) D(x) W x`` with gates ``D`` in [0, 1] and ``A = diag(s/2)^{1/2} W``,
    every Jacobian ``I - 2 A^T D A`` has its eigenvalues in ``[1 - 2 ||A||^2, 1]``, so the layer's
    Lipschitz constant is ``max(1, ||J_open||)`` where ``J_open`` is the Jacobian with every gate
    open (``D = I``): measuring the layer under this context certifies it when the result is
    <= 1. Layers then run their plain-PyTorch path (forward-mode AD works, e.g. for
    :func:`fastorals.lipschitz.lipschitz_constant`).
    """
    _gates.open = getattr(_gates, "open", 0) + 1
    try:
        yield
    finally:
        _gates.open -= 1


def _gate(z: torch.Tensor) -> torch.Tensor:
    return z if gates_open() else torch.relu(z)


# ----------------------------------------------------------------------------- checks


def _check_float(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating point tensor, got {t.dtype}")


def _check_same(name: str, t: Optional[torch.Tensor], like: torch.Tensor) -> None:
    if t is None:
        return
    _check_float(name, t)
    if t.device != like.device:
        raise ValueError(f"{name}: expected a tensor on {like.device}, got {t.device}")
    if t.dtype != like.dtype:
        raise TypeError(f"{name}: expected dtype {like.dtype} (like the input), got {t.dtype}")


def _check_dense(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 vec: Optional[torch.Tensor], vec_name: str) -> None:
    _check_float("x", x)
    _check_same("weight", weight, x)
    if weight.dim() != 2:
        raise ValueError(f"weight: expected a matrix [inner, features], got shape {tuple(weight.shape)}")
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x: expected [..., {weight.shape[1]}] (features = weight.shape[1]), got {tuple(x.shape)}")
    m = weight.shape[0]
    if bias is not None:
        _check_same("bias", bias, x)
        if bias.shape != (m,):
            raise ValueError(f"bias: expected shape ({m},), got {tuple(bias.shape)}")
    if vec is not None:
        _check_same(vec_name, vec, x)
        if vec.shape != (m,):
            raise ValueError(f"{vec_name}: expected shape ({m},), got {tuple(vec.shape)}")


def _check_conv(x: torch.Tensor, kernel: torch.Tensor, bias: Optional[torch.Tensor], vec: Optional[torch.Tensor],
                vec_name: str, stride: int, residual: bool = True) -> None:
    _check_float("x", x)
    _check_same("weight", kernel, x)
    _check_kernel(kernel)
    if x.dim() != 4:
        raise ValueError(f"x: expected a 4-d batch [N, C, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] != kernel.shape[1]:
        raise ValueError(f"x: expected {kernel.shape[1]} channels (weight.shape[1]), got {x.shape[1]} channels")
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        raise ValueError(f"stride: expected a positive int, got {stride!r}")
    m = kernel.shape[0]
    if bias is not None:
        _check_same("bias", bias, x)
        if bias.shape != (m,):
            raise ValueError(f"bias: expected shape ({m},), got {tuple(bias.shape)}")
    if vec is not None:
        _check_same(vec_name, vec, x)
        if vec.shape != (m,):
            raise ValueError(f"{vec_name}: expected shape ({m},), got {tuple(vec.shape)}")


def _check_kernel(kernel: torch.Tensor) -> None:
    if not isinstance(kernel, torch.Tensor) or kernel.dim() != 4:
        raise ValueError(f"weight: expected a kernel [out, in, k, k], got {getattr(kernel, 'shape', kernel)!r}")
    kh, kw = kernel.shape[-2:]
    if kh % 2 == 0 or kw % 2 == 0 or kh != kw:  # the padding k // 2 is taken from the last axis
        raise ValueError(f"kernel_size: expected a square, odd kernel k x k ('same' padding), got {kh}x{kw}")


def _backend(op: str, device: torch.device, implemented=_DENSE_IMPL, dtype: Optional[torch.dtype] = None) -> str:
    if gates_open():
        return "reference"
    backend = select_backend(op, device, implemented)
    if backend == "triton" and dtype == torch.float64:
        return "torch"  # the Triton kernels cover float32/float16/bfloat16; float64 runs the PyTorch ops
    return backend


# ----------------------------------------------------------------------------- dense SLL


def sll_t(weight: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The SLL normaliser ``t_i = sum_j |(W W^T)_ij| exp(q_j - q_i)`` (the m x m Gram is never stored).

    Args:
        weight: W [m, n].
        q: [m].
    Returns:
        t [m], differentiable in W and q.

    Example:
        >>> t = sll_t(torch.randn(2048, 1024), torch.zeros(2048))
    """
    _check_float("weight", weight)
    if weight.dim() != 2:
        raise ValueError(f"weight: expected a matrix [inner, features], got shape {tuple(weight.shape)}")
    _check_same("q", q, weight)
    if q.shape != (weight.shape[0],):
        raise ValueError(f"q: expected shape ({weight.shape[0]},), got {tuple(q.shape)}")
    backend = _backend("lipschitz.sll_t", weight.device, dtype=weight.dtype)
    if backend == "reference":
        return ref.sll_dense_t(weight, q)
    if backend == "triton":
        from . import triton as tr

        return tr.gram_t(weight, q)
    return ops.gram_t(weight, q)


def _residual_dense(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], scale: torch.Tensor,
                    backend: str) -> torch.Tensor:
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if backend == "reference":
        y = x2 - F.linear(scale * _gate(F.linear(x2, weight, bias)), weight.T)
    elif backend == "triton":
        from . import triton as tr

        y = tr.residual_dense(x2, weight, bias, scale)
    else:
        y = ops.residual_dense(x2, weight, bias, scale)
    return y.reshape(shape)


def sll_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], q: torch.Tensor) -> torch.Tensor:
    """SLL dense layer ``h(x) = x - 2 W^T diag(1/t) ReLU(W x + b)`` (1-Lipschitz for every W, b, q).

    Args:
        x: [..., n].
        weight: W [m, n].
        bias: b [m] or None.
        q: [m].
    Returns:
        [..., n].

    Example:
        >>> y = sll_linear(torch.randn(64, 1024), torch.randn(2048, 1024) * 0.03, None, torch.zeros(2048))
    """
    _check_dense(x, weight, bias, q, "q")
    backend = _backend("lipschitz.sll_linear", x.device, dtype=x.dtype)
    if backend == "reference":
        t = ref.sll_dense_t(weight, q)
    elif backend == "triton":
        from . import triton as tr

        t = tr.gram_t(weight, q)
    else:
        t = ops.gram_t(weight, q)
    return _residual_dense(x, weight, bias, 2.0 * ref.safe_inv(t), backend)


def cpl_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
               sigma: torch.Tensor) -> torch.Tensor:
    """CPL dense layer ``h(x) = x - (2 / sigma^2) W^T ReLU(W x + b)`` (1-Lipschitz when sigma >= ||W||_2).

    Args:
        x: [..., n].
        weight: W [m, n].
        bias: [m] or None.
        sigma: scalar tensor (or number), an upper bound of the spectral norm of W.
    Returns:
        [..., n].
    """
    _check_dense(x, weight, bias, None, "")
    backend = _backend("lipschitz.cpl_linear", x.device, dtype=x.dtype)
    scale = cpl_scale(_sigma(sigma, weight), weight.shape[0])
    return _residual_dense(x, weight, bias, scale, backend)


def _sigma(sigma: Any, weight: torch.Tensor) -> torch.Tensor:
    """A Python number as a tensor beside ``weight``; tensors pass through."""
    if isinstance(sigma, torch.Tensor):
        return sigma
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
        raise TypeError(f"sigma: expected a scalar tensor or number, got {type(sigma).__name__}")
    return torch.tensor(float(sigma), dtype=weight.dtype, device=weight.device)


def cpl_scale(sigma: torch.Tensor, n: int) -> torch.Tensor:
    """CPL's ``2 / sigma^2`` as [n] (``sigma = 0``, all-zero weights, gives 0: the layer is then
    the identity, as ``W = 0`` makes it), with finite gradients at 0."""
    s = sigma
    if s.numel() != 1:
        raise ValueError(f"sigma: expected a scalar (the operator norm bound), got shape {tuple(s.shape)}")
    s = s.reshape(())
    pos = s > 0
    den = torch.where(pos, s, torch.ones_like(s))
    return torch.where(pos, 2.0 / (den * den), torch.zeros_like(s)).expand(n)


def aol_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """AOL dense layer ``x -> W diag(d) x + b``, ``d_j = (sum_k |W^T W|_jk)^{-1/2}``.

    Args:
        x: [..., in].
        weight: W [out, in].
        bias: [out] or None.
    Returns:
        [..., out].
    """
    _check_float("x", x)
    _check_same("weight", weight, x)
    if weight.dim() != 2:
        raise ValueError(f"weight: expected a matrix [out, in], got shape {tuple(weight.shape)}")
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x: expected [..., {weight.shape[1]}] (in features = weight.shape[1]), got {tuple(x.shape)}")
    if bias is not None:
        _check_same("bias", bias, x)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias: expected shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    return F.linear(x, weight * aol_scale(weight)[None, :], bias)


def aol_scale(weight: torch.Tensor) -> torch.Tensor:
    """AOL column scaling ``d`` of a dense weight [out, in] (the in x in Gram is formed strip-wise)."""
    backend = _backend("lipschitz.aol_scale", weight.device, dtype=weight.dtype)
    if backend == "reference":
        return ref.aol_dense_scale(weight)
    wt = weight.T
    zero = weight.new_zeros(wt.shape[0])
    if backend == "triton":
        from . import triton as tr

        s = tr.gram_t(wt, zero)
    else:
        s = ops.gram_t(wt, zero)
    return torch.where(s > 0, torch.rsqrt(torch.where(s > 0, s, torch.ones_like(s))), torch.zeros_like(s))


# ----------------------------------------------------------------------------- convolutions


def sll_conv_t(kernel: torch.Tensor, q: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """SLL convolution normaliser ``t_i = sum_{j,uv} |G_ij,uv| exp(q_j - q_i)`` (stride-aware).

    Args:
        kernel: K [m, c, k, k].
        q: [m].
        stride: the layer's stride (only shifts that are multiples of it enter the sum).
    Returns:
        t [m].
    """
    _check_kernel(kernel)
    return ref.sll_conv_t(kernel, q, stride)


def _residual_conv(x: torch.Tensor, kernel: torch.Tensor, bias: Optional[torch.Tensor], scale: torch.Tensor,
                   stride: int, backend: str) -> torch.Tensor:
    if backend == "reference":
        k = kernel.shape[-1]
        pad = k // 2
        z = F.conv2d(x, kernel, bias, stride=stride, padding=pad)
        a = scale.view(1, -1, 1, 1) * _gate(z)
        op = (ops.conv_output_padding(x.shape[-2], k, stride), ops.conv_output_padding(x.shape[-1], k, stride))
        return x - F.conv_transpose2d(a, kernel, stride=stride, padding=pad, output_padding=op)
    return ops.residual_conv(x, kernel, bias, scale, stride)


def sll_conv2d(x: torch.Tensor, kernel: torch.Tensor, bias: Optional[torch.Tensor], q: torch.Tensor,
               stride: int = 1) -> torch.Tensor:
    """SLL convolution ``h(x) = x - 2 conv_transpose2d(ReLU(conv2d(x, K) + b) / t, K)``.

    "Same" padding ``k // 2`` for any odd k; with ``stride > 1`` the inner convolution is strided
    and the transposed one maps back to the input size (still 1-Lipschitz).

    Args:
        x: [N, c, H, W].
        kernel: K [m, c, k, k].
        bias: [m] or None.
        q: [m].
        stride: positive int.
    Returns:
        [N, c, H, W].

    Example:
        >>> y = sll_conv2d(torch.randn(8, 45, 32, 32), torch.randn(5, 45, 3, 3) * 0.1, None, torch.zeros(5))
    """
    _check_conv(x, kernel, bias, q, "q", stride)
    backend = _backend("lipschitz.sll_conv2d", x.device, _CONV_IMPL)
    t = ref.sll_conv_t(kernel, q, stride)
    return _residual_conv(x, kernel, bias, 2.0 * ref.safe_inv(t), stride, backend)


def cpl_conv2d(x: torch.Tensor, kernel: torch.Tensor, bias: Optional[torch.Tensor], sigma: torch.Tensor,
               stride: int = 1) -> torch.Tensor:
    """CPL convolution ``h(x) = x - (2 / sigma^2) conv_transpose2d(ReLU(conv2d(x, K) + b), K)``.

    Args:
        x: [N, c, H, W].
        kernel: K [m, c, k, k].
        bias: [m] or None.
        sigma: scalar tensor (or number), an upper bound of the operator norm of ``conv2d(., K)``.
        stride: positive int.
    Returns:
        [N, c, H, W].
    """
    _check_conv(x, kernel, bias, None, "", stride)
    backend = _backend("lipschitz.cpl_conv2d", x.device, _CONV_IMPL)
    scale = cpl_scale(_sigma(sigma, kernel), kernel.shape[0])
    return _residual_conv(x, kernel, bias, scale, stride, backend)


def aol_conv_scale(kernel: torch.Tensor) -> torch.Tensor:
    """AOL input-channel scaling of a kernel [out, in, k, k] (see :func:`reference.aol_conv_scale`)."""
    _check_kernel(kernel)
    return ref.aol_conv_scale(kernel)


def aol_conv2d(x: torch.Tensor, kernel: torch.Tensor, bias: Optional[torch.Tensor], stride: int = 1) -> torch.Tensor:
    """AOL convolution ``conv2d(x, K diag(d), b)`` with "same" padding (1-Lipschitz).

    Args:
        x: [N, in, H, W].
        kernel: K [out, in, k, k], odd k.
        bias: [out] or None.
        stride: positive int.
    Returns:
        [N, out, ceil(H / stride), ceil(W / stride)].
    """
    _check_conv(x, kernel, bias, None, "", stride)
    d = aol_conv_scale(kernel)
    k = kernel.shape[-1]
    return F.conv2d(x, kernel * d.view(1, -1, 1, 1), bias, stride=stride, padding=k // 2)
