"""Certification: measured Lipschitz constants, certified radii and accuracy, the offset loss.

* :func:`lipschitz_constant` measures ``sup ||J_f(x)||_2`` by power iteration on the Jacobian
  of the layer / network map (float64, jvp + vjp), at several points; with ``gates="open"``
  every ReLU gate of the residual layers is opened (their worst case).
* :func:`certified_radius`: global rule ``(top1 - top2) / (sqrt(2) L)``, or per-pair rule
  with a ``LinearNormalized`` head ``min_j (f_y - f_j) / (L ||w_y - w_j||)``.
* :func:`certified_accuracy`: fraction of inputs correctly classified with radius > eps.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, Optional, Union

import torch
from torch import nn

from .._ext import use_backend
from .functional import worst_case_gates
from .layers import LinearNormalized
from .reference import offset_cross_entropy as _offset_ce

__all__ = [
    "OffsetCrossEntropy",
    "certified_accuracy",
    "certified_radius",
    "check_finite_parameters",
    "lipschitz_constant",
    "offset_cross_entropy",
    "random_pair_ratio",
]


def check_finite_parameters(model: nn.Module) -> None:
    """Raise ``ValueError`` naming the first parameter or buffer holding NaN/inf."""
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if p.dtype.is_floating_point and not bool(torch.isfinite(p).all()):
            raise ValueError(f"model: parameter {name!r} has non-finite values (NaN or inf); no certificate holds")


def _float64_copy(module: nn.Module, train: bool) -> nn.Module:
    m = copy.deepcopy(module).double()
    m.train(train)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def lipschitz_constant(module: nn.Module, input_shape: Sequence[int], *, points: Optional[torch.Tensor] = None,
                       n_points: int = 4, n_iter: int = 500, tol: float = 1e-10, gates: str = "input",
                       scale: float = 1.0, exact_below: int = 4096, seed: int = 0) -> float:
    """Measured Lipschitz constant of ``module``: the largest ``||J(x)||_2`` found, in float64.

    At ``n_points`` random inputs (and ``points`` if given), on a float64 copy of the module in
    eval mode: when the input and output have at most ``exact_below`` entries, the Jacobian is
    formed (vectorised vector-Jacobian products) and its largest singular value computed
    exactly; otherwise power iteration ``v <- J^T J v`` (J v by double backward), stopped when
    the eigen-residual ``||J^T J v - s^2 v|| / s^2`` falls below ``tol``. For a linear map the
    result is the spectral norm; for a piecewise-linear network, the local constant at those
    points (a lower bound of the global one). ``gates="open"`` opens every ReLU gate of the
    SLL/CPL residual layers: a single such layer's constant is ``max(1, that value)`` (see
    :func:`fastorals.lipschitz.worst_case_gates`).

    Args:
        module: maps a batch [1, *input_shape] to outputs.
        input_shape: shape of one input, without the batch dimension.
        points: optional [P, *input_shape] inputs to measure at.
        n_points: random inputs (standard normal times ``scale``).
        n_iter: maximum power iterations per point.
        tol: eigen-residual that stops the power iteration.
        gates: "input" (gates set by the input) or "open".
        scale: standard deviation of the random inputs.
        exact_below: largest input/output size for the exact (full Jacobian) computation.
        seed: seed of the random inputs and start vectors.
    Returns:
        the largest spectral norm found (float).

    Example:
        >>> lipschitz_constant(SLLLinear(64, 128), (64,))   # <= 1
    """
    if gates not in ("input", "open"):
        raise ValueError(f"gates: expected 'input' or 'open', got {gates!r}")
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape: expected positive sizes without the batch dimension, got {input_shape!r}")
    check_finite_parameters(module)
    model = _float64_copy(module, train=False)
    g = torch.Generator().manual_seed(seed)
    p0 = next(model.parameters(), None)
    device = p0.device if p0 is not None else torch.device("cpu")
    xs = [torch.randn((1, *shape), generator=g, dtype=torch.float64) * scale for _ in range(n_points)]
    if points is not None:
        if tuple(points.shape[1:]) != shape:
            raise ValueError(f"points: expected [P, {', '.join(map(str, shape))}], got {tuple(points.shape)}")
        xs += [p[None].double() for p in points]
    if not xs:
        raise ValueError("n_points: expected at least one point to measure at (n_points >= 1 or points)")

    best = 0.0
    ctx = worst_case_gates if gates == "open" else contextlib.nullcontext
    with ctx(), use_backend("reference"), torch.enable_grad():
        for x in xs:
            x = x.to(device).requires_grad_(True)
            y = model(x)
            _check_finite_outputs(y)
            if x.numel() <= exact_below and y.numel() <= exact_below:
                eye = torch.eye(y.numel(), dtype=y.dtype, device=y.device).view(-1, *y.shape)
                (jac,) = torch.autograd.grad(y, x, eye, is_grads_batched=True)
                sigma = float(torch.linalg.matrix_norm(jac.reshape(y.numel(), -1), ord=2))
            else:
                sigma = _power_iteration(x, y, n_iter, tol, g)
            if not math.isfinite(sigma):  # max() would skip a NaN and report a smaller constant
                raise ValueError(f"module: its Jacobian has non-finite entries at a measuring point (sigma {sigma})")
            best = max(best, sigma)
    return best


def _check_finite_outputs(y: torch.Tensor) -> None:
    if not bool(torch.isfinite(y).all()):
        raise ValueError("module: produced NaN or inf outputs (in float64) at a measuring point; "
                         "its Lipschitz constant cannot be measured there")


def _power_iteration(x: torch.Tensor, y: torch.Tensor, n_iter: int, tol: float, g: torch.Generator) -> float:
    """Largest singular value of dy/dx by power iteration (J v through a double backward)."""
    u = torch.zeros_like(y, requires_grad=True)
    (jtu,) = torch.autograd.grad(y, x, u, create_graph=True)  # J^T u, linear in u
    v = torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)
    v = v / v.norm()
    sigma = 0.0
    for _ in range(n_iter):
        (jv,) = torch.autograd.grad(jtu, u, v, retain_graph=True)
        (w,) = torch.autograd.grad(y, x, jv, retain_graph=True)
        lam = float((w * v).sum())  # Rayleigh quotient of J^T J
        sigma = max(lam, 0.0) ** 0.5
        nw = float(w.norm())
        if nw == 0.0:
            return 0.0
        resid = float((w - lam * v).norm()) / max(abs(lam), 1e-300)
        v = (w / nw).detach()
        if resid <= tol:
            break
    return sigma


def random_pair_ratio(module: nn.Module, input_shape: Sequence[int], *, n_pairs: int = 256,
                      distances: Sequence[float] = (1e-3, 1e-1, 1.0, 10.0), seed: int = 0) -> float:
    """Largest ``||f(x) - f(y)|| / ||x - y||`` over random pairs (float64, eval mode).

    Args:
        module: the map.
        input_shape: one input's shape.
        n_pairs: pairs per distance.
        distances: scales of ``y - x`` (directions are random normal).
        seed: seed.
    Returns:
        the largest ratio (<= the Lipschitz constant).
    """
    check_finite_parameters(module)
    model = _float64_copy(module, train=False)
    p0 = next(model.parameters(), None)
    device = p0.device if p0 is not None else torch.device("cpu")
    g = torch.Generator().manual_seed(seed)
    shape = tuple(input_shape)
    worst = 0.0
    with torch.no_grad(), use_backend("reference"):
        for d in distances:
            x = torch.randn((n_pairs, *shape), generator=g, dtype=torch.float64).to(device)
            delta = torch.randn((n_pairs, *shape), generator=g, dtype=torch.float64).to(device)
            delta = delta / delta.flatten(1).norm(dim=1).view(-1, *([1] * len(shape))) * d
            fx, fxd = model(x), model(x + delta)
            _check_finite_outputs(fx)
            _check_finite_outputs(fxd)
            num = (fxd - fx).flatten(1).norm(dim=1)
            worst = max(worst, float((num / d).max()))
    return worst


# ----------------------------------------------------------------------------- radii and accuracy


def certified_radius(logits: torch.Tensor, labels: torch.Tensor, *, lipschitz: float = 1.0,
                     head: Optional[Union[LinearNormalized, torch.Tensor]] = None) -> torch.Tensor:
    """Certified l2 radius per input (0 where misclassified).

    Global rule (``head=None``): the network is ``lipschitz``-Lipschitz, every margin
    ``f_y - f_j`` is ``sqrt(2) L``-Lipschitz, so the radius is ``(f_y - max_{j != y} f_j) / (sqrt(2) L)``.
    Per-pair rule (``head`` = the ``LinearNormalized`` last layer or its normalised weight, and
    ``lipschitz`` = the constant of the network *before* the head): radius
    ``min_{j != y} (f_y - f_j) / (L ||w_y - w_j||)``.

    Args:
        logits: [N, K].
        labels: int [N].
        lipschitz: L (see above).
        head: None, a LinearNormalized module, or a [K, d] weight with unit rows.
    Returns:
        radius [N] (float, >= 0; 0 for a wrong prediction).
    """
    if logits.dim() != 2:
        raise ValueError(f"logits: expected [N, K], got {tuple(logits.shape)}")
    if labels.shape != (logits.shape[0],) or labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels: expected int64 [{logits.shape[0]}], got {labels.dtype} {tuple(labels.shape)}")
    k = logits.shape[1]
    if k < 2:
        raise ValueError(f"logits: expected at least 2 classes, got {k}")
    if bool(((labels < 0) | (labels >= k)).any()):
        raise ValueError(f"labels: expected values in [0, {k}), got min {int(labels.min())}, max {int(labels.max())}")
    if not (lipschitz > 0 and math.isfinite(lipschitz)):
        raise ValueError(f"lipschitz: expected a positive finite constant, got {lipschitz}")
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("logits: non-finite values (NaN or inf)")
    logits = logits.detach()
    correct = logits.argmax(1) == labels
    fy = logits.gather(1, labels[:, None])
    margins = fy - logits  # [N, K], f_y - f_j
    if head is None:
        denom = torch.full_like(margins, math.sqrt(2.0) * lipschitz)
    else:
        if not isinstance(head, (LinearNormalized, torch.Tensor)):
            raise TypeError(f"head: expected None, a LinearNormalized or a [K, d] weight with unit rows, "
                            f"got {type(head).__name__} (a plain Linear has no per-pair bound: use head=None)")
        w = head.normalized_weight() if isinstance(head, LinearNormalized) else head
        w = w.detach().to(logits.dtype)
        if w.dim() != 2 or w.shape[0] != k:
            raise ValueError(f"head: expected a weight [{k}, d], got {tuple(w.shape)}")
        wy = w[labels]  # [N, d]
        denom = torch.cdist(wy[:, None, :], w[None, :, :].expand(len(labels), -1, -1)).squeeze(1) * lipschitz
    ratio = margins / denom.clamp_min(1e-30)
    ratio.scatter_(1, labels[:, None], float("inf"))
    radius = ratio.min(dim=1).values.clamp_min(0)
    return torch.where(correct, radius, torch.zeros_like(radius))


def _batches(data: Any, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    if hasattr(data, "images") and hasattr(data, "labels"):
        x, y = data.images, data.labels
        for s in range(0, len(y), batch_size):
            yield x[s:s + batch_size], y[s:s + batch_size]
    elif isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        for s in range(0, len(y), batch_size):
            yield x[s:s + batch_size], y[s:s + batch_size]
    else:
        yield from data


def _find_head(model: nn.Module) -> Optional[LinearNormalized]:
    last = None
    for m in model.modules():
        if isinstance(m, LinearNormalized):
            last = m
    return last


@torch.no_grad()
def certified_accuracy(model: nn.Module, data: Any, eps_list: Sequence[float], *, rule: str = "auto",
                       lipschitz: float = 1.0, batch_size: int = 256,
                       device: Optional[torch.device] = None) -> dict[str, Any]:
    """Clean and certified accuracy of ``model`` at each radius in ``eps_list``.

    Args:
        model: maps float images in [0, 1] (uint8 inputs are divided by 255) to logits.
        data: an iterable of (x, y) batches, a ``(x, y)`` pair of tensors, or an ImageDataset.
        eps_list: l2 radii in input units (e.g. ``[36/255, 72/255, 108/255, 1.0]``).
        rule: "global" (``sqrt(2) L`` margin rule), "lln" (per-pair rule with the model's last
            ``LinearNormalized``, which must produce the logits: checked on every batch), or
            "auto" ("lln" when the model has one).
        lipschitz: L of the whole network (global) or of the part before the head (lln).
        batch_size: for tensor / dataset inputs.
        device: where to run (default: the model's).
    Returns:
        ``{"clean": float, "certified": {eps: float}, "n": int, "radii": tensor [N]}``.
    """
    if rule not in ("auto", "global", "lln"):
        raise ValueError(f"rule: expected 'auto', 'global' or 'lln', got {rule!r}")
    eps_list = [float(e) for e in eps_list]
    if any(e < 0 or not math.isfinite(e) for e in eps_list):
        raise ValueError(f"eps_list: expected non-negative finite radii, got {eps_list}")
    check_finite_parameters(model)
    head = _find_head(model)
    if rule == "lln" and head is None:
        raise ValueError("rule: 'lln' needs a LinearNormalized last layer in the model")
    use_head = head if rule in ("lln", "auto") else None
    if rule == "global" and head is not None and lipschitz == 1.0:
        warnings.warn("certified_accuracy: rule='global' with lipschitz=1 on a model with a LinearNormalized "
                      "head, whose rows have unit norm but whose Lipschitz constant can reach sqrt(num_classes): "
                      "pass the whole network's L, or use rule='lln'", UserWarning, stacklevel=2)
    head_out: list[torch.Tensor] = []
    hook = use_head.register_forward_hook(lambda m, i, o: head_out.append(o)) if use_head is not None else None
    was = model.training
    model.eval()
    dev = device or next(iter(model.parameters()), torch.empty(0)).device
    radii, correct = [], []
    try:
        for x, y in _batches(data, batch_size):
            x = x.to(dev)
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x
            y = y.to(dev).long()
            head_out.clear()
            logits = model(x)
            if use_head is not None and not (len(head_out) == 1 and head_out[0].shape == logits.shape
                                             and torch.equal(head_out[0], logits)):
                # the per-pair rule bounds the head's own outputs: layers after it (a scale, a
                # second head) would make its radii unsound
                raise ValueError(f"rule={rule!r}: the model's last LinearNormalized does not produce its logits "
                                 "(a layer follows it, or it runs more than once); pass rule='global' with the "
                                 "whole network's Lipschitz constant")
            radii.append(certified_radius(logits, y, lipschitz=lipschitz, head=use_head).cpu())
            correct.append((logits.argmax(1) == y).cpu())
    finally:
        if hook is not None:
            hook.remove()
        model.train(was)
    r = torch.cat(radii) if radii else torch.zeros(0)
    c = torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool)
    n = int(r.numel())
    return {
        "clean": float(c.float().mean()) if n else float("nan"),
        "certified": {e: (float((r > e).float().mean()) if n else float("nan")) for e in eps_list},
        "n": n,
        "radii": r,
    }


# ----------------------------------------------------------------------------- loss


def offset_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, offset: float = 1.5 * math.sqrt(2),
                         temperature: float = 0.25) -> torch.Tensor:
    """``tau * CE((z - offset * onehot(y)) / tau, y)``: the paper's loss (offset 3 sqrt(2) / 2, tau 0.25).

    Args:
        logits: [N, K].
        labels: int64 [N].
        offset: margin pushed onto the true class.
        temperature: tau.
    Returns:
        scalar loss (mean over the batch).
    """
    if logits.dim() != 2:
        raise ValueError(f"logits: expected [N, K], got {tuple(logits.shape)}")
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels: expected [{logits.shape[0]}], got {tuple(labels.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature}")
    return _offset_ce(logits, labels, offset, temperature)


class OffsetCrossEntropy(nn.Module):
    """Module form of :func:`offset_cross_entropy`."""

    def __init__(self, offset: float = 1.5 * math.sqrt(2), temperature: float = 0.25) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature: expected > 0, got {temperature}")
        self.offset = offset
        self.temperature = temperature

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return offset_cross_entropy(logits, labels, self.offset, self.temperature)

    def extra_repr(self) -> str:
        return f"offset={self.offset:.4f}, temperature={self.temperature}"

