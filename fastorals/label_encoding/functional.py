"""Functional API of RLEL: the fused soft-target cross-entropy, R1, R2, the loss and decoding.

Every function validates its arguments, then dispatches to the fastest backend available for
the tensors' device and dtype (``"triton"`` on CUDA, ``"cpp"`` on CPU with the extension,
``"torch"`` otherwise, ``"reference"`` on request); ``fastorals.use_backend(...)`` or
``FASTORALS_BACKEND`` force one.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .._ext import select_backend, use_backend
from . import ops, reference
from .grid import LabelGrid, RangeLike

_CPP_DTYPES = (torch.float32, torch.float64)
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class RLELTerms(NamedTuple):
    """The RLEL loss and its parts (all scalars except ``prediction`` [B])."""

    loss: Tensor
    ce: Tensor
    r1: Tensor
    r2: Tensor
    prediction: Tensor


# ----------------------------------------------------------------------------- validation


def _check_float_tensor(x: object, name: str, ndim: int) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    if x.dim() != ndim:
        shape = "[B, M]" if ndim == 2 and name == "z" else ("[M, Q]" if ndim == 2 else "[B]")
        raise ValueError(f"{name}: expected a {ndim}-D tensor {shape}, got shape {tuple(x.shape)}")
    return x


def _check_labels(labels: object, z: Tensor, grid: Optional[LabelGrid], validate: bool) -> Tensor:
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels: expected a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dim() != 1 or labels.shape[0] != z.shape[0]:
        raise ValueError(f"labels: expected shape [{z.shape[0]}] (one label per row of z), got {tuple(labels.shape)}")
    if labels.device != z.device:
        raise ValueError(f"labels: expected device {z.device} (that of z), got {labels.device}")
    if labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"labels: expected real-valued labels, got {labels.dtype}")
    # at least float32: half labels would move by up to 14 levels on a (0, 5000) range before the
    # targets are built
    labels = labels.detach().to(torch.promote_types(z.dtype, torch.float32))
    if validate:
        if grid is not None:
            grid.check_labels(labels)
        elif labels.numel() and bool(torch.isnan(labels).any()):
            raise ValueError("labels: expected finite labels, got NaN")
    return labels


def _check_codes(codes: object, z: Tensor) -> Tensor:
    codes = _check_float_tensor(codes, "codes", 2)
    if codes.shape[0] != z.shape[1]:
        raise ValueError(f"codes: expected [M={z.shape[1]}, Q] (M = bits of z), got shape {tuple(codes.shape)}")
    if codes.shape[1] < 2:
        raise ValueError(f"codes: expected at least 2 levels (columns), got shape {tuple(codes.shape)}")
    if codes.device != z.device:
        raise ValueError(f"codes: expected device {z.device} (that of z), got {codes.device}")
    if codes.dtype != z.dtype:
        raise TypeError(f"codes: expected dtype {z.dtype} (that of z), got {codes.dtype}")
    return codes


def _positive(x: float, name: str, allow_zero: bool = False) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(x).__name__}")
    v = float(x)
    if not (v >= 0 if allow_zero else v > 0) or v != v or v == float("inf"):
        raise ValueError(f"{name}: expected a finite {'non-negative' if allow_zero else 'positive'} number, got {x}")
    return v


def _reduce(x: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return x.mean() if x.numel() else x.sum()
    if reduction == "sum":
        return x.sum()
    if reduction == "none":
        return x
    raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")


# ----------------------------------------------------------------------------- fused CE + decode


def _ce_backends(z: Tensor) -> list[str]:
    impl = ["reference", "torch"]
    if z.dtype in _CPP_DTYPES:
        impl.append("cpp")
    if z.dtype in _TRITON_DTYPES:
        impl.append("triton")
    return impl


_HALF = (torch.float16, torch.bfloat16)


def _ce_dispatch(z: Tensor, codes: Tensor, labels: Tensor, grid: LabelGrid, temperature: float
                 ) -> tuple[Tensor, Tensor]:
    backend = select_backend("encoded_cross_entropy", z.device, _ce_backends(z))
    if z.dtype in _HALF and backend != "triton":  # Triton reads half and computes in float32 itself;
        # the PyTorch paths would sum exp * level past float16's 65504 (inf predictions)
        ce, pred = _ce_dispatch(z.float(), codes.float(), labels, grid, temperature)
        return ce.to(z.dtype), pred.to(z.dtype)
    lo, step = grid.lo, grid.step
    inv_ts = 1.0 / (temperature * step)
    if backend == "reference":
        return reference.soft_target_ce(z, codes, labels, lo, step, temperature)
    if backend == "cpp":
        ce, pred, _, _ = ops.ce_cpp(z, codes, labels, lo, step, inv_ts)
    elif backend == "triton":
        from . import triton as tri

        ce, pred, _, _ = tri.ce_triton(z, codes, labels, lo, step, inv_ts)
        ce, pred = ce.to(z.dtype), pred.to(z.dtype)
    else:
        ce, pred, _, _ = ops.ce_torch(z, codes, labels, lo, step, inv_ts)
    return ce, pred


def encoded_cross_entropy(
    z: Tensor,
    codes: Tensor,
    labels: Tensor,
    label_range: RangeLike,
    *,
    temperature: float = 1.0,
    reduction: str = "mean",
    validate: bool = True,
) -> tuple[Tensor, Tensor]:
    """Soft-target cross-entropy of softmax(z D) and the expected-value prediction, fused.

    The Q levels l_q = lo + q (hi - lo) / (Q - 1) span ``label_range``; the target of a label y is
    softmax_q(-|y - l_q| / (temperature * step)). The prediction is sum_q l_q softmax(z D)_q.
    The fast paths never hold the [B, Q] scores, probabilities or targets for the backward.

    Args:
        z: [B, M] encoded outputs (real-valued bits).
        codes: [M, Q] code matrix D (column q: the code of level q); same dtype/device as z.
        labels: [B] targets in ``label_range`` (not differentiated).
        label_range: (lo, hi), the values of the first and last level.
        temperature: softness of the target in level steps (1: the paper's exp(-|y - l_q|)
            for unit-spaced levels).
        reduction: "mean" | "sum" | "none" for the cross-entropy.
        validate: check that labels lie in ``label_range`` (a device sync on CUDA).

    Returns:
        (loss, prediction): loss is a scalar (or [B] with reduction="none"); prediction [B] is
        differentiable as well.

    Example:
        >>> z, D = torch.randn(8, 16, requires_grad=True), torch.rand(16, 151, requires_grad=True)
        >>> y = torch.empty(8).uniform_(-75, 75)
        >>> loss, pred = encoded_cross_entropy(z, D, y, (-75, 75))
        >>> loss.backward()
    """
    z = _check_float_tensor(z, "z", 2)
    codes = _check_codes(codes, z)
    grid = LabelGrid.make(label_range, codes.shape[1])
    labels = _check_labels(labels, z, grid, validate)
    temperature = _positive(temperature, "temperature")
    ce, pred = _ce_dispatch(z, codes, labels, grid, temperature)
    return _reduce(ce, reduction), pred


# ----------------------------------------------------------------------------- R1, R2


def _r1_backends(z: Tensor) -> list[str]:
    impl = ["reference", "torch"]
    if z.dtype in _CPP_DTYPES:
        impl.append("cpp")
    if z.dtype in _TRITON_DTYPES:
        impl.append("triton")
    return impl


def error_correction_penalty(
    z: Tensor,
    labels: Tensor,
    *,
    margin: float = 2.0,
    label_step: float = 1.0,
    validate: bool = True,
) -> Tensor:
    """R1 = mean_i sum_j relu(margin |y_i - y_j| / label_step - ||z_i - z_j||_1).

    Pushes the encodings of far-apart *labels* at least ``margin`` L1 units apart per level
    step, the error-correction property of a label encoding. Memory: O(B M) on CPU (C++) and
    GPU (Triton), O(chunk B M) on the PyTorch path; never the [B, B, M] difference tensor.
    Note the inner sum over j: the value grows with the batch size B.

    Args:
        z: [B, M] encoded outputs.
        labels: [B] targets (not differentiated).
        margin: code distance per level step (2 in the paper).
        label_step: label units per level (``LabelGrid.step``); 1 reproduces the paper for
            unit-spaced levels.
        validate: check labels for NaN.

    Returns:
        Scalar tensor (dtype of z).

    Example:
        >>> r1 = error_correction_penalty(z, y, label_step=1.0)
    """
    z = _check_float_tensor(z, "z", 2)
    labels = _check_labels(labels, z, None, validate)
    margin = _positive(margin, "margin", allow_zero=True)
    label_step = _positive(label_step, "label_step")
    scale = margin / label_step
    backend = select_backend("error_correction_penalty", z.device, _r1_backends(z))
    if z.dtype in _HALF and backend != "triton":  # torch.cdist has no half kernel on the CPU
        with use_backend(backend):
            return error_correction_penalty(z.float(), labels, margin=margin, label_step=label_step,
                                            validate=False).to(z.dtype)
    if backend == "reference":
        return reference.error_correction_penalty(z, labels, margin, label_step)
    if backend == "cpp":
        return ops.r1_cpp(z, labels, scale)
    if backend == "triton":
        from . import triton as tri

        return tri.r1_triton(z, labels, scale).to(z.dtype)
    return ops.r1_chunked(z, labels, scale)


def bit_transition_penalty(codes: Tensor) -> Tensor:
    """R2 = sum_k [D_{k,0}^2 + sum_q (D_{k,q+1} - D_{k,q})^2 + D_{k,Q-1}^2] (each bit smooth in the label).

    Args:
        codes: [M, Q] code matrix.

    Returns:
        Scalar tensor.
    """
    codes = _check_float_tensor(codes, "codes", 2)
    return reference.bit_transition_penalty(codes)


# ----------------------------------------------------------------------------- loss


def rlel_loss(
    z: Tensor,
    codes: Tensor,
    labels: Tensor,
    label_range: RangeLike,
    *,
    alpha: float = 1e-4,
    beta: float = 1e-4,
    temperature: float = 1.0,
    margin: float = 2.0,
    return_terms: bool = False,
    validate: bool = True,
) -> Tensor | RLELTerms:
    """RLEL loss: mean soft-target CE + alpha R1 + beta R2 (Shah & Aamodt, ICLR 2023).

    Args:
        z: [B, M] encoded outputs of the network.
        codes: [M, Q] learned code matrix D.
        labels: [B] targets in ``label_range``.
        label_range: (lo, hi) spanned by the Q levels.
        alpha: weight of R1 (error correction; its inner sum over the batch makes it grow with
            B: scale alpha by 1/B to carry a setting across batch sizes).
        beta: weight of R2 (bit transitions).
        temperature: soft-target temperature in level steps.
        margin: R1 code distance per level step.
        return_terms: return :class:`RLELTerms` (loss, ce, r1, r2, prediction) instead of the loss.
        validate: check that labels lie in ``label_range``.

    Returns:
        Scalar loss, or RLELTerms.

    Example:
        >>> loss = rlel_loss(z, D, y, (-75, 75), alpha=1e-4, beta=1e-4)
        >>> loss.backward()
    """
    z = _check_float_tensor(z, "z", 2)
    codes = _check_codes(codes, z)
    grid = LabelGrid.make(label_range, codes.shape[1])
    labels = _check_labels(labels, z, grid, validate)
    alpha = _positive(alpha, "alpha", allow_zero=True)
    beta = _positive(beta, "beta", allow_zero=True)
    temperature = _positive(temperature, "temperature")
    margin = _positive(margin, "margin", allow_zero=True)
    ce, pred = _ce_dispatch(z, codes, labels, grid, temperature)
    ce = _reduce(ce, "mean")
    r1 = error_correction_penalty(z, labels, margin=margin, label_step=grid.step, validate=False) \
        if alpha > 0 else z.new_zeros(())
    r2 = reference.bit_transition_penalty(codes) if beta > 0 else codes.new_zeros(())
    loss = ce + alpha * r1 + beta * r2
    if return_terms:
        return RLELTerms(loss, ce.detach(), r1.detach(), r2.detach(), pred)
    return loss


# ----------------------------------------------------------------------------- decoding


def decode(z: Tensor, codes: Tensor, label_range: RangeLike, mode: str = "expected") -> Tensor:
    """Predicted labels from encoded outputs: expected value (default) or argmax level.

    Args:
        z: [B, M] encoded outputs.
        codes: [M, Q] code matrix.
        label_range: (lo, hi) of the Q levels.
        mode: "expected" (sum_q l_q softmax(z D)_q, differentiable) or "argmax" (the level with
            the highest correlation).

    Returns:
        [B] predictions (dtype of z).
    """
    z = _check_float_tensor(z, "z", 2)
    codes = _check_codes(codes, z)
    grid = LabelGrid.make(label_range, codes.shape[1])
    scores = z @ codes
    if mode == "expected":
        return reference.expected_decode(scores, grid.lo, grid.step)
    if mode == "argmax":  # a row with NaN scores has no level: NaN, as "expected" gives, not the lowest label
        pred = reference.argmax_decode(scores, grid.lo, grid.step)
        return torch.where(torch.isnan(scores).any(1), float("nan"), pred)
    raise ValueError(f"mode: expected 'expected' or 'argmax', got {mode!r}")
