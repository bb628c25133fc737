"""Launchers and ``torch.library`` ops of RLEL's two hot paths.

* R1 (error correction, ``fastorals::label_encoding_r1*``): mean_i sum_j relu(c|y_i - y_j| - ||z_i - z_j||_1)
  with a hand-written backward that never builds the [B, B, M] difference tensor.

  - ``cpp``: C++/OpenMP over pairs i < j (symmetry halves the work), O(B M) extra memory.
  - ``torch``: blocks of rows against all rows (``torch.cdist`` forward, sign sums in bounded
    chunks backward), O(chunk x B x M) extra memory; runs on any device.

* Fused soft-target cross-entropy + expected-value decoding (``fastorals::label_encoding_ce*``):
  scores s = z D -> softmax -> CE against softmax(-|y - l_q| / (tau step)) and sum_q l_q p_q.
  Nothing but (ce, prediction) and two log-normalizers per row is kept for the backward,
  which recomputes s.

  - ``cpp``: one GEMM (torch) + one C++ pass per row forward and backward.
  - ``torch``: the same algorithm with PyTorch ops (any device, any float dtype).
  - ``triton`` (CUDA): see :mod:`fastorals.label_encoding.triton`.

The Triton versions live in ``triton.py`` (imported lazily).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._ext import ext_topic

# elements of the largest temporary the chunked torch R1 backward may allocate
R1_CHUNK_ELEMENTS = 1 << 20


def _ext():
    mod = ext_topic("label_encoding")
    if mod is None:  # pragma: no cover - guarded by select_backend
        raise RuntimeError("fastorals._C.label_encoding is not available")
    return mod


def _np(t: Tensor):
    return t.detach().contiguous().numpy()


# ============================================================================ R1: C++


@torch.library.custom_op("fastorals::label_encoding_r1", mutates_args=())
def r1_cpp(z: Tensor, labels: Tensor, scale: float) -> Tensor:
    """R1 on CPU with the C++ kernel.  z [B, M], labels [B] (same float dtype) -> scalar."""
    B = z.shape[0]
    if B == 0:
        return z.new_zeros(())
    zT = z.detach().t().contiguous()
    total = _ext().r1_forward(zT.numpy(), _np(labels), float(scale), torch.get_num_threads())
    return torch.tensor(total / B, dtype=z.dtype)


@r1_cpp.register_fake
def _(z, labels, scale):
    return z.new_empty(())


@torch.library.custom_op("fastorals::label_encoding_r1_backward", mutates_args=())
def r1_backward_cpp(grad: Tensor, z: Tensor, labels: Tensor, scale: float) -> Tensor:
    """Gradient of R1 w.r.t. z (C++).  grad: scalar upstream gradient -> [B, M]."""
    B, M = z.shape
    out = torch.empty((B, M), dtype=z.dtype)
    if B == 0 or M == 0:
        return out.zero_()
    coef = -2.0 * float(grad) / B
    zT = z.detach().t().contiguous()
    _ext().r1_backward(zT.numpy(), _np(labels), float(scale), coef, out.numpy(), torch.get_num_threads())
    return out


@r1_backward_cpp.register_fake
def _(grad, z, labels, scale):
    return torch.empty_like(z)


def _r1_setup(ctx, inputs, output):
    z, labels, scale = inputs
    ctx.save_for_backward(z, labels)
    ctx.scale = scale


def _r1_cpp_bwd(ctx, grad):
    z, labels = ctx.saved_tensors
    return r1_backward_cpp(grad, z, labels, ctx.scale), None, None


r1_cpp.register_autograd(_r1_cpp_bwd, setup_context=_r1_setup)


# ============================================================================ R1: chunked torch


def _row_chunk(B: int, M: int) -> int:
    return max(1, min(B, R1_CHUNK_ELEMENTS // max(1, B * max(M, 1))))


@torch.library.custom_op("fastorals::label_encoding_r1_chunked", mutates_args=())
def r1_chunked(z: Tensor, labels: Tensor, scale: float) -> Tensor:
    """R1 with PyTorch ops on any device, in blocks of rows (no [B, B, M] tensor)."""
    B, M = z.shape
    if B == 0:
        return z.new_zeros(())
    total = z.new_zeros((), dtype=torch.float64 if z.dtype == torch.float64 else torch.float32)
    step = max(1, min(B, R1_CHUNK_ELEMENTS // max(B, 1)))  # forward temporaries are [chunk, B]
    for i0 in range(0, B, step):
        zi, yi = z[i0:i0 + step], labels[i0:i0 + step]
        d = torch.cdist(zi, z, p=1) if M > 0 else z.new_zeros((zi.shape[0], B))
        pre = (yi[:, None] - labels[None, :]).abs() * scale - d
        total = total + torch.relu(pre).sum(dtype=total.dtype)
    return (total / B).to(z.dtype)


@r1_chunked.register_fake
def _(z, labels, scale):
    return z.new_empty(())


@torch.library.custom_op("fastorals::label_encoding_r1_chunked_backward", mutates_args=())
def r1_chunked_backward(grad: Tensor, z: Tensor, labels: Tensor, scale: float) -> Tensor:
    """Gradient of R1 w.r.t. z with PyTorch ops, in blocks of rows."""
    B, M = z.shape
    out = torch.zeros_like(z)
    if B == 0 or M == 0:
        return out
    coef = grad.to(z.dtype) * (-2.0 / B)
    step = _row_chunk(B, M)
    for i0 in range(0, B, step):
        zi, yi = z[i0:i0 + step], labels[i0:i0 + step]
        diff = zi[:, None, :] - z[None, :, :]  # [chunk, B, M], bounded by R1_CHUNK_ELEMENTS
        d = diff.abs().sum(dim=2)
        active = ((yi[:, None] - labels[None, :]).abs() * scale - d > 0).to(z.dtype)
        out[i0:i0 + step] = torch.einsum("cb,cbm->cm", active, torch.sign(diff)) * coef
    return out


@r1_chunked_backward.register_fake
def _(grad, z, labels, scale):
    return torch.empty_like(z)


def _r1_chunked_bwd(ctx, grad):
    z, labels = ctx.saved_tensors
    return r1_chunked_backward(grad, z, labels, ctx.scale), None, None


r1_chunked.register_autograd(_r1_chunked_bwd, setup_context=_r1_setup)


# ============================================================================ fused CE: torch algebra


_LEVELS_CACHE: dict[tuple, Tensor] = {}


def _levels(lo: float, step: float, Q: int, like: Tensor) -> Tensor:
    """lo + step * arange(Q) in like's dtype/device (the reference's expression), cached per grid."""
    key = (lo, step, Q, like.dtype, like.device)
    lv = _LEVELS_CACHE.get(key)
    if lv is None:
        if len(_LEVELS_CACHE) > 64:
            _LEVELS_CACHE.clear()
        lv = _LEVELS_CACHE[key] = lo + step * torch.arange(Q, dtype=like.dtype, device=like.device)
    return lv


# Softmax weights below e^-60 are set to e^-60 rather than computed: in a sum whose largest term
# is 1 they are far below float64 resolution, and it keeps float32 products out of the denormal
# range, whose arithmetic is ~10-100x slower on CPUs (torch.exp/logsumexp hit it for the far
# levels of every soft target).
_EXP_FLOOR = -60.0


def _exp_shifted(x: Tensor, shift: Tensor) -> Tensor:
    return torch.exp((x - shift[:, None]).clamp_(min=_EXP_FLOOR))


def ce_rows_torch(s: Tensor, labels: Tensor, lo: float, step: float, inv_ts: float
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(ce, prediction, lse(s), lse(targets)) from scores s [B, Q] with PyTorch ops."""
    lv = _levels(lo, step, s.shape[1], s)
    a = -(labels[:, None] - lv[None, :]).abs() * inv_ts
    smax = s.amax(dim=1)
    amax = a.amax(dim=1)
    e = _exp_shifted(s, smax)
    t = _exp_shifted(a, amax)
    se, sa = e.sum(dim=1), t.sum(dim=1)
    lse = smax + torch.log(se)
    lsea = amax + torch.log(sa)
    ce = lse - (t * s).sum(dim=1) / sa
    pred = (e * lv).sum(dim=1) / se
    return ce, pred, lse, lsea


def ce_grad_scores_torch(s: Tensor, labels: Tensor, lo: float, step: float, inv_ts: float, lse: Tensor,
                         lsea: Tensor, pred: Tensor, gce: Tensor, gpred: Tensor) -> Tensor:
    """d(sum gce*ce + gpred*pred)/ds with PyTorch ops.  -> [B, Q]."""
    lv = _levels(lo, step, s.shape[1], s)
    p = _exp_shifted(s, lse)
    t = _exp_shifted(-(labels[:, None] - lv[None, :]).abs() * inv_ts, lsea)
    return gce[:, None] * (p - t) + gpred[:, None] * p * (lv[None, :] - pred[:, None])


def _grad_or_zeros(g: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else g.contiguous()


@torch.library.custom_op("fastorals::label_encoding_ce_torch", mutates_args=())
def ce_torch(z: Tensor, codes: Tensor, labels: Tensor, lo: float, step: float, inv_ts: float
             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused soft-target CE + expected value (PyTorch ops).  -> ce, prediction, lse, lse_target [B]."""
    return ce_rows_torch(z @ codes, labels, lo, step, inv_ts)


@ce_torch.register_fake
def _(z, codes, labels, lo, step, inv_ts):
    B = z.shape[0]
    return tuple(z.new_empty((B,)) for _ in range(4))


@torch.library.custom_op("fastorals::label_encoding_ce_torch_backward", mutates_args=())
def ce_torch_backward(gce: Tensor, gpred: Tensor, z: Tensor, codes: Tensor, labels: Tensor, lse: Tensor,
                      lsea: Tensor, pred: Tensor, lo: float, step: float, inv_ts: float
                      ) -> tuple[Tensor, Tensor]:
    ds = ce_grad_scores_torch(z @ codes, labels, lo, step, inv_ts, lse, lsea, pred, gce, gpred)
    return ds @ codes.T, z.T @ ds


@ce_torch_backward.register_fake
def _(gce, gpred, z, codes, labels, lse, lsea, pred, lo, step, inv_ts):
    return torch.empty_like(z), torch.empty_like(codes)


def _ce_setup(ctx, inputs, output):
    z, codes, labels, lo, step, inv_ts = inputs
    _, pred, lse, lsea = output
    ctx.save_for_backward(z, codes, labels, lse, lsea, pred)
    ctx.params = (lo, step, inv_ts)
    ctx.set_materialize_grads(False)


def _ce_bwd_with(backward_op):
    def bwd(ctx, gce, gpred, _glse, _glsea):
        z, codes, labels, lse, lsea, pred = ctx.saved_tensors
        if gce is None and gpred is None:
            return None, None, None, None, None, None
        gce = _grad_or_zeros(gce, lse)
        gpred = _grad_or_zeros(gpred, lse)
        dz, dcodes = backward_op(gce, gpred, z, codes, labels, lse, lsea, pred, *ctx.params)
        return dz, dcodes, None, None, None, None

    return bwd


ce_torch.register_autograd(_ce_bwd_with(ce_torch_backward), setup_context=_ce_setup)


# ============================================================================ fused CE: C++ rows


@torch.library.custom_op("fastorals::label_encoding_ce", mutates_args=())
def ce_cpp(z: Tensor, codes: Tensor, labels: Tensor, lo: float, step: float, inv_ts: float
           ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused soft-target CE + expected value on CPU: GEMM + one C++ pass per row."""
    B = z.shape[0]
    s = torch.mm(z.detach(), codes.detach())
    outs = [torch.empty((B,), dtype=z.dtype) for _ in range(4)]
    if B > 0:
        lv = _levels(lo, step, codes.shape[1], s)
        _ext().ce_forward(s.numpy(), lv.numpy(), _np(labels), lo, step, inv_ts, *(o.numpy() for o in outs),
                          torch.get_num_threads())
    return tuple(outs)


@ce_cpp.register_fake
def _(z, codes, labels, lo, step, inv_ts):
    B = z.shape[0]
    return tuple(z.new_empty((B,)) for _ in range(4))


@torch.library.custom_op("fastorals::label_encoding_ce_backward", mutates_args=())
def ce_cpp_backward(gce: Tensor, gpred: Tensor, z: Tensor, codes: Tensor, labels: Tensor, lse: Tensor,
                    lsea: Tensor, pred: Tensor, lo: float, step: float, inv_ts: float
                    ) -> tuple[Tensor, Tensor]:
    z, codes = z.detach(), codes.detach()
    s = torch.mm(z, codes)  # recomputed, then overwritten in place by ds
    if z.shape[0] > 0:
        lv = _levels(lo, step, codes.shape[1], s)
        _ext().ce_backward(s.numpy(), lv.numpy(), _np(labels), inv_ts, _np(lse), _np(lsea), _np(pred), _np(gce),
                           _np(gpred), torch.get_num_threads())
    return torch.mm(s, codes.t()), torch.mm(z.t(), s)


@ce_cpp_backward.register_fake
def _(gce, gpred, z, codes, labels, lse, lsea, pred, lo, step, inv_ts):
    return torch.empty_like(z), torch.empty_like(codes)


ce_cpp.register_autograd(_ce_bwd_with(ce_cpp_backward), setup_context=_ce_setup)
