"""Drop-in 1-Lipschitz ``nn.Module`` layers: SLL, AOL, CPL, and the pieces of the SLL networks.

Every parametrised layer here is 1-Lipschitz in the l2 norm for *every* value of its
parameters (SLL, AOL; CPL whenever its norm estimate bounds ``||W||_2``, which holds exactly in
eval mode). In eval mode the normaliser (``t``, ``d`` or ``sigma``) is cached and folded into
the weight; the cache is invalidated when a parameter changes (optimizer steps,
``load_state_dict``, ``.to()``: the tensors' version counters, data pointers, dtypes). In eval
mode a layer is a fixed function of its input: gradients reach the input (for attacks) but
not the parameters; switch to ``.train()`` to train.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import functional as LF
from . import reference as ref
from .ops import conv_output_padding
from .spectral import (
    conv_operator_norm_bound,
    dense_operator_norm,
    power_iteration_conv,
    power_iteration_dense,
)

__all__ = [
    "AOLConv2d",
    "AOLLinear",
    "CPLConv2d",
    "CPLLinear",
    "GroupSort",
    "LinearNormalized",
    "LipschitzAvgPool2d",
    "MaxMin",
    "MeanShift",
    "PaddingChannels",
    "PoolingLinear",
    "ResidualExport",
    "SLLConv2d",
    "SLLLinear",
]


def _check_positive(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


def _check_odd(kernel_size: Any) -> int:
    _check_positive("kernel_size", kernel_size)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size: expected an odd size ('same' padding keeps H x W), got {kernel_size}")
    return kernel_size


class _Cached(nn.Module):
    """Eval-mode cache of a value derived from the parameters, keyed on their version counters."""

    cache_eval: bool = True

    def _key(self, *extra: Any) -> tuple:
        return tuple((p._version, p.data_ptr(), p.dtype, p.device, tuple(p.shape)) for p in self.parameters()) + extra

    def _cached(self, compute, *extra: Any):
        if torch._C._are_functorch_transforms_active():  # jacrev/jvp/...: values would be wrapped for this level
            with torch.no_grad():
                return compute()
        key = self._key(*extra)
        cache = self.__dict__.get("_eval_cache")
        if cache is not None and cache[0] == key:
            return cache[1]
        # a normal tensor even under inference_mode: a later autograd pass (an attack) may save it
        with torch.inference_mode(False), torch.no_grad():
            value = compute()
        self.__dict__["_eval_cache"] = (key, value)
        return value

    def invalidate_cache(self) -> None:
        """Drop the eval-mode cache (needed only after writing through ``param.data``)."""
        self.__dict__.pop("_eval_cache", None)

    def _use_cache(self) -> bool:
        return self.cache_eval and not self.training and not torch.jit.is_scripting()


class ResidualExport(nn.Module):
    """``x + inner(x)`` over plain torch layers: what SLL/CPL layers export to (ONNX-friendly)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(x)


# ============================================================================ SLL


class SLLLinear(_Cached):
    """SDP-based Lipschitz dense layer: ``h(x) = x - 2 W^T diag(1/t) ReLU(W x + b)``.

    ``t_i = sum_j |(W W^T)_ij| exp(q_j - q_i)``; 1-Lipschitz for every W, b, q (no epsilon).

    Args:
        features: n, the input and output width.
        inner_features: m, the width of the hidden ReLU (default n).
        bias: learn b.
        cache_eval: cache ``t`` (folded into ``W' = 2 diag(1/t) W``) in eval mode.

    Shape:
        x [..., n] -> [..., n].

    Example:
        >>> layer = SLLLinear(1024, 2048)
        >>> y = layer(torch.randn(64, 1024))
    """

    def __init__(self, features: int, inner_features: Optional[int] = None, bias: bool = True, *,
                 cache_eval: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.features = _check_positive("features", features)
        self.inner_features = _check_positive("inner_features", inner_features if inner_features is not None
                                              else features)
        fk = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.inner_features, self.features, **fk))
        self.bias = nn.Parameter(torch.empty(self.inner_features, **fk)) if bias else None
        self.q = nn.Parameter(torch.empty(self.inner_features, **fk))
        self.cache_eval = cache_eval
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.weight)
        if self.bias is not None:
            bound = 1 / math.sqrt(self.features)
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.normal_(self.q)

    def compute_t(self) -> torch.Tensor:
        """``t`` [m] (differentiable)."""
        return LF.sll_t(self.weight, self.q)

    def scale(self) -> torch.Tensor:
        """``2 / t`` [m] (``1/0 := 0``)."""
        return 2.0 * ref.safe_inv(self.compute_t())

    def folded_weight(self) -> torch.Tensor:
        """``W' = 2 diag(1/t) W`` [m, n] (cached in eval mode)."""
        if self._use_cache():
            return self._cached(lambda: self.scale()[:, None] * self.weight)
        return self.scale()[:, None] * self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_cache():
            wf = self.folded_weight()
            w = self.weight.detach()
            b = self.bias.detach() if self.bias is not None else None
            LF._check_dense(x, w, b, None, "")
            shape = x.shape
            x2 = x.reshape(-1, shape[-1])
            z = LF._gate(F.linear(x2, w, b))
            return torch.addmm(x2, z, wf.to(x.dtype), alpha=-1).reshape(shape)
        return LF.sll_linear(x, self.weight, self.bias, self.q)

    @torch.no_grad()
    def export(self) -> ResidualExport:
        """Plain layers ``x + Linear(m->n, -W'^T)(ReLU(Linear(n->m, W, b)(x)))``."""
        scale = 2.0 * ref.safe_inv(ref.sll_dense_t(self.weight.double(), self.q.double())).to(self.weight.dtype)
        return _export_dense(self.weight, self.bias, scale)

    def extra_repr(self) -> str:
        return f"features={self.features}, inner_features={self.inner_features}, bias={self.bias is not None}"


def _export_dense(weight: torch.Tensor, bias: Optional[torch.Tensor], scale: torch.Tensor) -> ResidualExport:
    m, n = weight.shape
    first = nn.Linear(n, m, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    first.weight.copy_(weight)
    if bias is not None:
        first.bias.copy_(bias)
    second = nn.Linear(m, n, bias=False, device=weight.device, dtype=weight.dtype)
    second.weight.copy_(-(scale[:, None] * weight).T)
    return ResidualExport(nn.Sequential(first, nn.ReLU(), second))


def _export_conv(kernel: torch.Tensor, bias: Optional[torch.Tensor], scale: torch.Tensor, stride: int,
                 input_size: Optional[tuple[int, int]]) -> ResidualExport:
    m, c, k, _ = kernel.shape
    if stride > 1 and input_size is None:
        raise ValueError("input_size: a strided layer exports with a fixed output_padding; pass input_size=(H, W)")
    op = (0, 0) if stride == 1 else tuple(conv_output_padding(s, k, stride) for s in input_size)
    conv = nn.Conv2d(c, m, k, stride=stride, padding=k // 2, bias=bias is not None,
                     device=kernel.device, dtype=kernel.dtype)
    conv.weight.copy_(kernel)
    if bias is not None:
        conv.bias.copy_(bias)
    tconv = nn.ConvTranspose2d(m, c, k, stride=stride, padding=k // 2, output_padding=op, bias=False,
                               device=kernel.device, dtype=kernel.dtype)
    tconv.weight.copy_(-(scale.view(-1, 1, 1, 1) * kernel))
    return ResidualExport(nn.Sequential(conv, nn.ReLU(), tconv))


class SLLConv2d(_Cached):
    """SDP-based Lipschitz convolution ``h(x) = x - 2 conv_transpose2d(ReLU(conv2d(x, K) + b) / t, K)``.

    Any odd kernel size with "same" padding, any stride (the inner convolution is strided, the
    transposed one maps back to H x W; ``t`` then sums only the Gram shifts that are multiples
    of the stride, a tighter valid bound).

    Args:
        channels: c, the input and output channels.
        inner_channels: m, channels of the hidden ReLU (default c; the paper's models use 5).
        kernel_size: odd k.
        stride: stride of the inner convolution.
        bias: learn b.
        cache_eval: cache ``t`` in eval mode.

    Shape:
        [N, c, H, W] -> [N, c, H, W].

    Example:
        >>> layer = SLLConv2d(45, 5, kernel_size=3)
        >>> y = layer(torch.randn(8, 45, 32, 32))
    """

    def __init__(self, channels: int, inner_channels: Optional[int] = None, kernel_size: int = 3, stride: int = 1,
                 bias: bool = True, *, cache_eval: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.channels = _check_positive("channels", channels)
        self.inner_channels = _check_positive("inner_channels", inner_channels if inner_channels is not None
                                              else channels)
        self.kernel_size = _check_odd(kernel_size)
        self.stride = _check_positive("stride", stride)
        fk = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.inner_channels, self.channels, kernel_size, kernel_size, **fk))
        self.bias = nn.Parameter(torch.empty(self.inner_channels, **fk)) if bias else None
        self.q = nn.Parameter(torch.empty(self.inner_channels, **fk))
        self.cache_eval = cache_eval
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.weight)
        if self.bias is not None:
            bound = 1 / math.sqrt(self.channels * self.kernel_size**2)
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.normal_(self.q)

    def compute_t(self) -> torch.Tensor:
        return LF.sll_conv_t(self.weight, self.q, self.stride)

    def scale(self) -> torch.Tensor:
        return 2.0 * ref.safe_inv(self.compute_t())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_cache():
            w = self.weight.detach()
            b = self.bias.detach() if self.bias is not None else None
            LF._check_conv(x, w, b, None, "", self.stride)
            scale = self._cached(self.scale).to(x.dtype)
            return LF._residual_conv(x, w, b, scale, self.stride, "reference")
        return LF.sll_conv2d(x, self.weight, self.bias, self.q, self.stride)

    @torch.no_grad()
    def export(self, input_size: Optional[tuple[int, int]] = None) -> ResidualExport:
        """Plain ``x + ConvTranspose2d(ReLU(Conv2d(x)))`` (strided layers need ``input_size``)."""
        scale = 2.0 * ref.safe_inv(ref.sll_conv_t(self.weight.double(), self.q.double(), self.stride))
        return _export_conv(self.weight, self.bias, scale.to(self.weight.dtype), self.stride, input_size)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, inner_channels={self.inner_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, bias={self.bias is not None}")


# ============================================================================ AOL


class AOLLinear(_Cached):
    """Almost-orthogonal dense layer (Prach & Lampert 2022): ``y = W diag(d) x + b``.

    ``d_j = (sum_k |W^T W|_jk)^{-1/2}`` (0 for a zero column); 1-Lipschitz for every W.

    Args:
        in_features, out_features: sizes.
        bias: learn b.
        cache_eval: cache the rescaled weight in eval mode.

    Shape:
        [..., in] -> [..., out].

    Example:
        >>> y = AOLLinear(256, 128)(torch.randn(4, 256))
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, cache_eval: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.in_features = _check_positive("in_features", in_features)
        self.out_features = _check_positive("out_features", out_features)
        fk = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **fk))
        self.bias = nn.Parameter(torch.zeros(out_features, **fk)) if bias else None
        self.cache_eval = cache_eval
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.orthogonal_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def rescaled_weight(self) -> torch.Tensor:
        """``W diag(d)`` [out, in]."""
        return self.weight * LF.aol_scale(self.weight)[None, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_cache():
            w = self._cached(self.rescaled_weight)
            b = self.bias.detach() if self.bias is not None else None
            if x.dim() < 1 or x.shape[-1] != self.in_features:
                raise ValueError(f"x: expected [..., {self.in_features}], got {tuple(x.shape)}")
            return F.linear(x, w.to(x.dtype), b)
        return LF.aol_linear(x, self.weight, self.bias)

    @torch.no_grad()
    def export(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the rescaled weight."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        d = ref.aol_dense_scale(self.weight.double()).to(self.weight.dtype)
        lin.weight.copy_(self.weight * d[None, :])
        if self.bias is not None:
            lin.bias.copy_(self.bias)
        return lin

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class AOLConv2d(_Cached):
    """Almost-orthogonal convolution: ``conv2d(x, K diag(d)) + b``, "same" padding, any stride.

    ``d_j = (sum_{k,uv} |(K^T K)_jk,uv|)^{-1/2}`` over input channels; 1-Lipschitz for every K.

    Args:
        in_channels, out_channels: channels.
        kernel_size: odd k.
        stride: positive int.
        bias: learn b.
        cache_eval: cache the rescaled kernel in eval mode.

    Shape:
        [N, in, H, W] -> [N, out, ceil(H / stride), ceil(W / stride)].

    Example:
        >>> y = AOLConv2d(16, 32, 3)(torch.randn(2, 16, 8, 8))
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, bias: bool = True,
                 *, cache_eval: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.in_channels = _check_positive("in_channels", in_channels)
        self.out_channels = _check_positive("out_channels", out_channels)
        self.kernel_size = _check_odd(kernel_size)
        self.stride = _check_positive("stride", stride)
        fk = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size, **fk))
        self.bias = nn.Parameter(torch.zeros(out_channels, **fk)) if bias else None
        self.cache_eval = cache_eval
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.in_channels == self.out_channels:
                nn.init.dirac_(self.weight)  # AOL rescaling of the identity is the identity
                self.weight.add_(torch.randn_like(self.weight) * 0.01)
            else:
                self.weight.zero_()
                centre = torch.empty(self.out_channels, self.in_channels, dtype=self.weight.dtype)
                nn.init.orthogonal_(centre)
                self.weight[:, :, self.kernel_size // 2, self.kernel_size // 2] = centre.to(self.weight.device)
                self.weight.add_(torch.randn_like(self.weight) * 0.01)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def rescaled_weight(self) -> torch.Tensor:
        return self.weight * LF.aol_conv_scale(self.weight).view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_cache():
            w = self._cached(self.rescaled_weight)
            b = self.bias.detach() if self.bias is not None else None
            LF._check_conv(x, w, b, None, "", self.stride)
            return F.conv2d(x, w.to(x.dtype), b, stride=self.stride, padding=self.kernel_size // 2)
        return LF.aol_conv2d(x, self.weight, self.bias, self.stride)

    @torch.no_grad()
    def export(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` with the rescaled kernel."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                         padding=self.kernel_size // 2, bias=self.bias is not None,
                         device=self.weight.device, dtype=self.weight.dtype)
        d = ref.aol_conv_scale(self.weight.double()).to(self.weight.dtype)
        conv.weight.copy_(self.weight * d.view(1, -1, 1, 1))
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, bias={self.bias is not None}")


# ============================================================================ CPL


class CPLLinear(_Cached):
    """Convex potential layer (Meunier et al. 2022): ``h(x) = x - (2 / ||W||^2) W^T ReLU(W x + b)``.

    Training: ``||W||_2`` by power iteration with a persistent vector ``u`` (``power_iterations``
    steps per forward, gradient through ``||W u||``). Eval: the exact spectral norm (SVD,
    float64), cached, so the evaluated layer is provably 1-Lipschitz.

    Args:
        features: n.
        inner_features: m (default n).
        bias: learn b.
        power_iterations: power-iteration steps per training forward.

    Shape:
        [..., n] -> [..., n].

    Example:
        >>> y = CPLLinear(128)(torch.randn(4, 128))
    """

    def __init__(self, features: int, inner_features: Optional[int] = None, bias: bool = True, *,
                 power_iterations: int = 1, cache_eval: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.features = _check_positive("features", features)
        self.inner_features = _check_positive("inner_features", inner_features if inner_features is not None
                                              else features)
        self.power_iterations = _check_positive("power_iterations", power_iterations)
        fk = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.inner_features, self.features, **fk))
        self.bias = nn.Parameter(torch.empty(self.inner_features, **fk)) if bias else None
        self.register_buffer("u", torch.empty(self.features, **fk))
        self.cache_eval = cache_eval
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.weight)
        if self.bias is not None:
            bound = 1 / math.sqrt(self.features)
            nn.init.uniform_(self.bias, -bound, bound)
        with torch.no_grad():
            self.u.copy_(F.normalize(torch.randn_like(self.u), dim=0))
            self.u.copy_(power_iteration_dense(self.weight, self.u, 50))

    def sigma(self) -> torch.Tensor:
        """Spectral-norm estimate: exact in eval mode, power iteration (one step per call) in training."""
        if not self.training:
            return dense_operator_norm(self.weight)
        u = power_iteration_dense(self.weight, self.u, self.power_iterations)
        with torch.no_grad():
            self.u.copy_(u)
        return torch.linalg.vector_norm(self.weight @ u)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_cache():
            sigma = self._cached(self.sigma)
            w = self.weight.detach()
            b = self.bias.detach() if self.bias is not None else None
            LF._check_dense(x, w, b, None, "")
            shape = x.shape
            x2 = x.reshape(-1, shape[-1])
            z = LF._gate(F.linear(x2, w, b))
            return torch.addmm(x2, z, w * LF.cpl_scale(sigma, 1), alpha=-1).reshape(shape)
        return LF.cpl_linear(x, self.weight, self.bias, self.sigma())

    @torch.no_grad()
    def export(self) -> ResidualExport:
        sigma = dense_operator_norm(self.weight)
        return _export_dense(self.weight, self.bias, LF.cpl_scale(sigma, self.inner_features))

    def extra_repr(self) -> str:
        return (f"features={self.features}, inner_features={self.inner_features}, bias={self.bias is not None}, "
                f"power_iterations={self.power_iterations}")


class CPLConv2d(_Cached):
    """Convex potential convolution ``h(x) = x - (2 / sigma^2) conv_transpose2d(ReLU(conv2d(x, K) + b), K)``.

    ``sigma`` is the operator norm of ``conv2d(., K)`` on the layer's input size. Training:
    power iteration with a persistent vector ``u`` [1, c, H, W] (allocated at the first
    forward, re-allocated when the input size changes). Eval (cached): ``eval_norm="bound"``
    (default) uses the exact norm of the circular embedding, a rigorous upper bound (the layer is
    provably 1-Lipschitz); ``eval_norm="power"`` runs ``eval_iterations`` power steps instead.

    Args:
        channels: c.
        inner_channels: m (default c).
        kernel_size: odd k.
        stride: positive int.
        bias: learn b.
        power_iterations: steps per training forward.
        eval_norm: "bound" or "power".
        eval_iterations: power steps in eval mode when ``eval_norm="power"``.

    Shape:
        [N, c, H, W] -> [N, c, H, W].

    Example:
        >>> y = CPLConv2d(16, kernel_size=3)(torch.randn(2, 16, 8, 8))
    """

    def __init__(self, channels: int, inner_channels: Optional[int] = None, kernel_size: int = 3, stride: int = 1,
                 bias: bool = True, *, power_iterations: int = 1, eval_norm: str = "bound",
                 eval_iterations: int = 200, cache_eval: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.channels = _check_positive("channels", channels)
        self.inner_channels = _check_positive("inner_channels", inner_channels if inner_channels is not None
                                              else channels)
        self.kernel_size = _check_odd(kernel_size)
        self.stride = _check_positive("stride", stride)
        self.power_iterations = _check_positive("power_iterations", power_iterations)
        if eval_norm not in ("bound", "power"):
            raise ValueError(f"eval_norm: expected 'bound' or 'power', got {eval_norm!r}")
        self.eval_norm = eval_norm
        self.eval_iterations = _check_positive("eval_iterations", eval_iterations)
        fk = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.inner_channels, self.channels, kernel_size, kernel_size, **fk))
        self.bias = nn.Parameter(torch.empty(self.inner_channels, **fk)) if bias else None
        self.register_buffer("u", torch.empty(0, **fk))
        self.cache_eval = cache_eval
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.weight)
        if self.bias is not None:
            bound = 1 / math.sqrt(self.channels * self.kernel_size**2)
            nn.init.uniform_(self.bias, -bound, bound)
        self.u = torch.empty(0, dtype=self.weight.dtype, device=self.weight.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        u = state_dict.get(prefix + "u")
        if u is not None and u.shape != self.u.shape:  # the vector's shape follows the input size
            self.u = torch.empty(u.shape, dtype=self.u.dtype, device=self.u.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _vector(self, size: tuple[int, int]) -> torch.Tensor:
        if self.u.dim() != 4 or tuple(self.u.shape[-2:]) != tuple(size):
            g = torch.Generator().manual_seed(0)
            u = torch.randn(1, self.channels, *size, generator=g, dtype=torch.float64)
            u = (u / u.norm()).to(self.weight.dtype).to(self.weight.device)
            self.u = power_iteration_conv(self.weight.detach(), u, self.stride, 50)
        return self.u

    def sigma(self, input_size: tuple[int, int]) -> torch.Tensor:
        """Operator-norm estimate of ``conv2d(., K)`` on ``input_size`` images (see class docstring)."""
        if not self.training:
            if self.eval_norm == "bound":
                return conv_operator_norm_bound(self.weight, input_size, self.stride)
            u = power_iteration_conv(self.weight.detach(), self._vector(input_size), self.stride, self.eval_iterations)
            return F.conv2d(u, self.weight, stride=self.stride, padding=self.kernel_size // 2).norm()
        u = power_iteration_conv(self.weight.detach(), self._vector(input_size), self.stride, self.power_iterations)
        with torch.no_grad():
            self.u = u
        return F.conv2d(u, self.weight, stride=self.stride, padding=self.kernel_size // 2).norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        LF._check_conv(x, self.weight, self.bias, None, "", self.stride)
        size = (x.shape[-2], x.shape[-1])
        if self._use_cache():
            sigma = self._cached(lambda: self.sigma(size), size, self.eval_norm)
            w = self.weight.detach()
            b = self.bias.detach() if self.bias is not None else None
            scale = LF.cpl_scale(sigma, self.inner_channels).to(x.dtype)
            return LF._residual_conv(x, w, b, scale, self.stride, "reference")
        return LF.cpl_conv2d(x, self.weight, self.bias, self.sigma(size), self.stride)

    @torch.no_grad()
    def export(self, input_size: tuple[int, int]) -> ResidualExport:
        """Plain layers for ``input_size`` images (sigma depends on the input size)."""
        was = self.training
        self.eval()
        sigma = self.sigma(tuple(input_size))
        self.train(was)
        return _export_conv(self.weight, self.bias, LF.cpl_scale(sigma, self.inner_channels), self.stride,
                            tuple(input_size))

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, inner_channels={self.inner_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, bias={self.bias is not None}, eval_norm={self.eval_norm!r}")


# ============================================================================ heads, padding, pooling


class LinearNormalized(nn.Linear):
    """Last layer with l2-normalised rows: ``y = (W / ||W_i||) x + b``.

    Each logit is 1-Lipschitz and the margin ``y_i - y_j`` is ``||w_i - w_j||``-Lipschitz, which
    :func:`fastorals.lipschitz.certified_radius` uses for its per-pair (LLN) certificate.

    Example:
        >>> head = LinearNormalized(2880, 10)
    """

    def normalized_weight(self) -> torch.Tensor:
        return F.normalize(self.weight, p=2, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected [..., {self.in_features}], got {tuple(x.shape)}")
        return F.linear(x, self.normalized_weight(), self.bias)

    @torch.no_grad()
    def export(self) -> nn.Linear:
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        lin.weight.copy_(self.normalized_weight())
        if self.bias is not None:
            lin.bias.copy_(self.bias)
        return lin


class PaddingChannels(nn.Module):
    """Grow the channel count: zero padding (isometry) or ``clone`` (repeat / sqrt(r), an isometry).

    Args:
        out_channels: channels after padding.
        in_channels: channels of the input (3 for images).
        mode: "zero" or "clone" (``out_channels`` must then be a multiple of ``in_channels``).

    Example:
        >>> y = PaddingChannels(45, 3)(torch.rand(2, 3, 32, 32))   # [2, 45, 32, 32]
    """

    def __init__(self, out_channels: int, in_channels: int = 3, mode: str = "zero") -> None:
        super().__init__()
        self.out_channels = _check_positive("out_channels", out_channels)
        self.in_channels = _check_positive("in_channels", in_channels)
        if out_channels < in_channels:
            raise ValueError(f"out_channels: expected >= in_channels ({in_channels}), got {out_channels}")
        if mode not in ("zero", "clone"):
            raise ValueError(f"mode: expected 'zero' or 'clone', got {mode!r}")
        if mode == "clone" and out_channels % in_channels:
            raise ValueError(f"out_channels: mode 'clone' needs a multiple of in_channels ({in_channels}), "
                             f"got {out_channels}")
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"x: expected [N, {self.in_channels}, ...], got {tuple(x.shape)}")
        if self.mode == "clone":
            r = self.out_channels // self.in_channels
            return x.repeat(1, r, *([1] * (x.dim() - 2))) / math.sqrt(r)
        pad = [0, 0] * (x.dim() - 2) + [0, self.out_channels - self.in_channels]
        return F.pad(x, pad)

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, in_channels={self.in_channels}, mode={self.mode!r}"


class LipschitzAvgPool2d(nn.Module):
    """1-Lipschitz average pooling: window sums divided by ``k`` (not ``k^2``) for a k x k window.

    ``nn.AvgPool2d(k, divisor_override=k)`` of the SLL models. With ``kernel_size=None``: global
    pooling, sums divided by ``sqrt(H W)``.

    Shape:
        [N, C, H, W] -> [N, C, H // k, W // k] (global: [N, C, 1, 1]).
    """

    def __init__(self, kernel_size: Optional[int] = 4) -> None:
        super().__init__()
        self.kernel_size = None if kernel_size is None else _check_positive("kernel_size", kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"x: expected [N, C, H, W], got {tuple(x.shape)}")
        if self.kernel_size is None:
            return x.sum(dim=(2, 3), keepdim=True) / math.sqrt(x.shape[-2] * x.shape[-1])
        k = self.kernel_size
        return F.avg_pool2d(x, k, divisor_override=k)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


class PoolingLinear(nn.Module):
    """Reduce features from ``in_features`` to ``out_features`` 1-Lipschitz-ly.

    ``agg="mean"``: sqrt(k) * mean over groups of ``k = in // out`` features; ``"max"``: max over
    each group; ``"trunc"``: keep the first ``out_features``.
    """

    def __init__(self, in_features: int, out_features: int, agg: str = "mean") -> None:
        super().__init__()
        self.in_features = _check_positive("in_features", in_features)
        self.out_features = _check_positive("out_features", out_features)
        if out_features > in_features:
            raise ValueError(f"out_features: expected <= in_features ({in_features}), got {out_features}")
        if agg not in ("mean", "max", "trunc"):
            raise ValueError(f"agg: expected 'mean', 'max' or 'trunc', got {agg!r}")
        self.agg = agg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x: expected [N, {self.in_features}], got {tuple(x.shape)}")
        if self.agg == "trunc":
            return x[:, : self.out_features]
        k = self.in_features // self.out_features
        g = x[:, : self.out_features * k].reshape(x.shape[0], self.out_features, k)
        if self.agg == "mean":
            return math.sqrt(k) * g.mean(dim=2)
        return g.amax(dim=2)


class MaxMin(nn.Module):
    """MaxMin activation: channels split in two halves (a, b) -> (max(a, b), min(a, b)). 1-Lipschitz."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[self.dim] % 2:
            raise ValueError(f"x: MaxMin needs an even size along dim {self.dim}, got {x.shape[self.dim]}")
        a, b = x.chunk(2, dim=self.dim)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=self.dim)


class GroupSort(nn.Module):
    """GroupSort activation: sort consecutive groups of ``group_size`` channels (descending). 1-Lipschitz.

    ``group_size=2`` is MaxMin on adjacent pairs; ``group_size`` equal to the width is FullSort.
    """

    def __init__(self, group_size: int = 2, dim: int = 1) -> None:
        super().__init__()
        self.group_size = _check_positive("group_size", group_size)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.dim % x.dim()
        c = x.shape[d]
        if c % self.group_size:
            raise ValueError(f"x: size {c} along dim {d} is not a multiple of group_size={self.group_size}")
        g = x.unflatten(d, (c // self.group_size, self.group_size))
        return g.sort(dim=d + 1, descending=True).values.flatten(d, d + 1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, dim={self.dim}"


class MeanShift(nn.Module):
    """Subtract a per-channel mean (an isometry up to translation: certificates stay in pixel units)."""

    def __init__(self, mean: tuple[float, ...] = (0.4914, 0.4822, 0.4465)) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(f"x: expected [N, {self.mean.shape[1]}, H, W], got {tuple(x.shape)}")
        return x - self.mean.to(x.dtype)
