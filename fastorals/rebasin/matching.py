"""Weight matching (coordinate descent over permutations, with cached and incrementally updated
cost matrices and warm-started exact assignment)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from .._args import int_arg
from .lap import AssignmentDuals, linear_sum_assignment
from .spec import PermutationSpec, _check_perm, apply_permutation, permute_tensor

__all__ = ["MatchingResult", "weight_matching"]

Params = Union[Mapping[str, torch.Tensor], nn.Module]


@dataclass
class MatchingResult:
    """Permutations found by a matching method.

    Attributes:
        perms: ``{permutation: int64 [n]}``, B's unit matched to A's unit ``i`` (apply to B).
        objective: the matching objective at the start and after every sweep (weight matching:
            ``sum_params <A, pi(B)>``): the start value from the parameters, then each sweep adds
            its assignment gains, summed in float64 from the cost matrices.
        iterations: sweeps run.
        converged: stopped because a sweep no longer improved the objective.
        stats: timings and counters (seconds in cost matrices / assignment, solver counters).
    """

    perms: dict[str, torch.Tensor]
    objective: list[float] = field(default_factory=list)
    iterations: int = 0
    converged: bool = False
    stats: dict[str, Any] = field(default_factory=dict)

    def apply(self, spec: PermutationSpec, params: Params, *, strict: bool = False) -> dict[str, torch.Tensor]:
        """``apply_permutation(spec, params, self.perms)`` (accepts a module: uses its state dict)."""
        sd = params.state_dict() if isinstance(params, nn.Module) else params
        return apply_permutation(spec, sd, self.perms, strict=strict)


def _state(params: Params, name: str) -> dict[str, torch.Tensor]:
    if isinstance(params, nn.Module):
        return dict(params.state_dict())
    if not isinstance(params, Mapping):
        raise TypeError(f"{name}: expected a state dict (name -> tensor) or an nn.Module, got {type(params).__name__}")
    return dict(params)


def _check_pair(spec: PermutationSpec, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, int]:
    for name in a:
        if name not in b and a[name].dim() > 0:
            raise ValueError(f"params_b: parameter {name!r} of params_a is missing (different architectures?)")
    for name in b:
        if name not in a and b[name].dim() > 0:
            raise ValueError(f"params_a: parameter {name!r} of params_b is missing (different architectures?)")
    for name in a:
        if name not in spec.axes_to_perm and a[name].dim() > 0:
            raise ValueError(f"params_a: parameter {name!r} is not in the spec (a spec for another model?)")
    return spec.check_params(a, b)


class _Term:
    """One (tensor, expanded axis k) use of a permutation: ``cost += A_mat @ pi(B)_T``.

    ``A_mat`` is A with axis k first, flattened to [n, R]; ``B_T`` is B with axis k last,
    flattened to [R, n]. The other permutations act on the R "rest" positions, so ``pi(B)_T`` is
    a gather of whole rows of ``B_T`` (contiguous copies, no strided gathers) and the product a
    plain GEMM. A later change of a few units of another permutation only touches the rows of
    those units: the cached product is corrected with a GEMM over just them.
    """

    def __init__(self, name: str, k: int, sizes: list[int], names: list[Optional[str]],
                 a: torch.Tensor, b: torch.Tensor, b_cache: Optional[dict] = None) -> None:
        self.name = name
        self.k = k
        self.n = sizes[k]
        rest = [d for d in range(len(sizes)) if d != k]
        self.rest_sizes = [sizes[d] for d in rest]
        self.perm_axes = {p: rest.index(j) for j, p in enumerate(names) if p is not None and j != k}
        a = a.reshape(sizes)
        b = b.reshape(sizes)
        self.a_mat = a.movedim(k, 0).reshape(self.n, -1).contiguous()
        self._a = a
        key = (name, k, b.data_ptr(), tuple(b.shape), b.dtype, b.device)
        if b_cache is not None and key in b_cache:
            self.b_t, self._b_mat = b_cache[key]
        else:
            self.b_t = b.movedim(k, -1).reshape(-1, self.n).contiguous() if self.perm_axes else None
            self._b_mat = None if self.perm_axes else b.movedim(k, 0).reshape(self.n, -1)
            if b_cache is not None:
                b_cache[key] = (self.b_t, self._b_mat)
        self.a_t: Optional[torch.Tensor] = None
        self.cache: Optional[torch.Tensor] = None
        self.snap: dict[str, torch.Tensor] = {}
        dev = a.device
        strides, acc = [], 1
        for sz in reversed(self.rest_sizes):
            strides.append(acc)
            acc *= sz
        self.strides = list(reversed(strides))
        self.base = [torch.arange(sz, device=dev) for sz in self.rest_sizes]

    @property
    def constant(self) -> bool:
        return not self.perm_axes

    def _rows(self, perms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Row index into ``B_T`` for every rest position under ``perms`` (mixed radix)."""
        idx = None
        nd = len(self.rest_sizes)
        by_axis = {d: p for p, d in self.perm_axes.items()}
        for d in range(nd):
            v = perms[by_axis[d]] if d in by_axis else self.base[d]
            shape = [1] * nd
            shape[d] = -1
            term = (v * self.strides[d]).view(shape)
            idx = term if idx is None else idx + term
        return idx.reshape(-1)

    def full(self, perms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.b_t is None:
            return self.a_mat @ self._b_mat.T
        return self.a_mat @ self.b_t.index_select(0, self._rows(perms))

    def value(self, perms: Mapping[str, torch.Tensor], max_frac: float) -> tuple[torch.Tensor, str]:
        """This term's [n, n] product for ``perms``: cached, updated for a few changed entries, or recomputed."""
        if self.cache is not None:
            changed = {}
            frac = 0.0
            for p, d in self.perm_axes.items():
                diff = torch.nonzero(self.snap[p] != perms[p]).flatten()
                if diff.numel():
                    changed[p] = diff
                    frac += diff.numel() / self.rest_sizes[d]
            if not changed:
                return self.cache, "cached"
            if frac <= max_frac:
                if self.a_t is None:
                    self.a_t = self._a.movedim(self.k, -1).reshape(-1, self.n).contiguous()
                cur = dict(self.snap)
                nd = len(self.rest_sizes)
                for p, pos in changed.items():
                    d = self.perm_axes[p]
                    old_rows = self._rows(cur)
                    cur[p] = perms[p]
                    new_rows = self._rows(cur)
                    # rest positions whose coordinate along axis d is a changed unit
                    sel = torch.zeros(self.rest_sizes[d], dtype=torch.bool, device=pos.device)
                    sel[pos] = True
                    shape = [1] * nd
                    shape[d] = -1
                    mask = sel.view(shape).expand(self.rest_sizes).reshape(-1)
                    at = torch.nonzero(mask).flatten()
                    delta = self.b_t.index_select(0, new_rows[at]) - self.b_t.index_select(0, old_rows[at])
                    self.cache.addmm_(self.a_t.index_select(0, at).T, delta)
                self.snap = {p: perms[p].clone() for p in self.perm_axes}
                return self.cache, "updated"
        self.cache = self.full(perms)
        self.snap = {p: perms[p].clone() for p in self.perm_axes}
        return self.cache, "computed"


def _objective(spec: PermutationSpec, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor],
               perms: Optional[Mapping[str, torch.Tensor]], names: list[str]) -> float:
    """sum over tensors of <A, pi(B)> (identity when ``perms`` is None): one dot product per tensor, summed in float64."""
    total = 0.0
    for name in names:
        pb = b[name] if perms is None else permute_tensor(spec, name, b[name], perms)
        total += float(torch.dot(a[name].reshape(-1), pb.reshape(-1)))
    return total


def weight_matching(
    spec: PermutationSpec,
    params_a: Params,
    params_b: Params,
    max_iter: int = 100,
    seed: int = 0,
    init: Optional[Mapping[str, torch.Tensor]] = None,
    device: Union[str, torch.device, None] = None,
    *,
    tol: float = 1e-12,
    include_buffers: bool = False,
    progress: bool = False,
    warm_start: bool = True,
    incremental: float = 0.35,
    lap_state: Optional[dict[str, AssignmentDuals]] = None,
    _b_cache: Optional[dict] = None,
) -> MatchingResult:
    """Permute B's hidden units to maximize ``sum_params <W_A, pi(W_B)>`` (Git Re-Basin, weight matching).

    Coordinate descent: each sweep visits the permutations in a seeded random order; for
    permutation ``p`` the cost ``C[i, j] = sum over its (tensor, axis) uses of <A row i, pi(B) row j>``
    (all other permutations applied) is maximized exactly with :func:`linear_sum_assignment`,
    warm-started from ``p``'s previous solve. Each (tensor, axis) product is a GEMM computed once
    on the parameters' device and then kept: a later sweep reuses it when the other
    permutations it depends on did not change, and corrects it with a GEMM over just the
    changed units when few did. Stops when a sweep improves the objective by at most
    ``tol`` (relative; accumulated in float64) or after ``max_iter`` sweeps.

    Args:
        spec: the models' :class:`PermutationSpec`.
        params_a, params_b: state dicts (or modules) of the same architecture.
        max_iter: maximum number of sweeps.
        seed: seed of the visiting order (``numpy.random.RandomState(seed)``, as the official code).
        init: initial permutations (default: identity).
        device: where the cost matrices are computed (default: the parameters' device).
        tol: relative improvement below which a sweep counts as no progress.
        include_buffers: also match buffers of the spec (e.g. BatchNorm running statistics).
        progress: show a progress bar.
        warm_start: warm-start each assignment from the previous sweep's duals.
        incremental: update a cached product when at most this fraction of the units it depends
            on changed (0 disables incremental updates).
        lap_state: a dict holding each permutation's assignment duals; pass the same dict to a
            later call on nearby parameters to warm-start its assignments too (STE does this).

    Returns:
        :class:`MatchingResult` (``perms``, ``objective`` per sweep, ``iterations``, ``converged``).

    Raises:
        ValueError: a parameter is missing, has another shape, or is unknown to the spec (the
            message names it); malformed ``init``.

    Example:
        >>> from fastorals import models, rebasin
        >>> a, b = models.resnet20(width=4), models.resnet20(width=4)
        >>> spec = rebasin.resnet_spec(a)
        >>> res = rebasin.weight_matching(spec, a.state_dict(), b.state_dict())
        >>> b.load_state_dict(res.apply(spec, b))
    """
    a = _state(params_a, "params_a")
    b = _state(params_b, "params_b")
    sizes = _check_pair(spec, a, b)
    dev = torch.device(device) if device is not None else next(iter(a.values())).device
    names = [n for n in spec.axes_to_perm if a[n].is_floating_point() and a[n].numel() > 0
             and (include_buffers or n not in spec.buffers)]
    max_iter = int_arg(max_iter, "max_iter", 0)
    dtype = torch.float32
    for n in names:
        dtype = torch.promote_types(dtype, torch.promote_types(a[n].dtype, b[n].dtype))
    a = {n: a[n].detach().to(dev, dtype) for n in names}
    b = {n: b[n].detach().to(dev, dtype) for n in names}  # no copy when already there: cache keys stay valid
    for arg, params in (("params_a", a), ("params_b", b)):
        bad = [n for n in names if not bool(torch.isfinite(params[n]).all())]
        if bad:
            raise ValueError(f"{arg}: tensor {bad[0]!r} has NaN or inf values; weight matching needs finite weights")
    perms: dict[str, torch.Tensor] = {}
    if init is None:
        perms = {p: torch.arange(n, device=dev) for p, n in sizes.items()}
    else:
        for p, n in sizes.items():
            if p not in init:
                raise ValueError(f"init: permutation {p!r} is missing")
            perms[p] = _check_perm(p, init[p], n, "init").to(dev).clone()
    # the (tensor, axis) terms of every permutation
    terms: dict[str, list[_Term]] = {p: [] for p in sizes}
    for name in names:
        exp_sizes, exp_names = spec.expanded_axes(name, tuple(a[name].shape))
        for k, p in enumerate(exp_names):
            if p is not None:
                terms[p].append(_Term(name, k, exp_sizes, exp_names, a[name], b[name], _b_cache))
    const: dict[str, Optional[torch.Tensor]] = {}
    for p, ts in terms.items():
        cs = [t for t in ts if t.constant]
        const[p] = sum(t.full(perms) for t in cs) if cs else None
        terms[p] = [t for t in ts if not t.constant]
    order_names = sorted(sizes)
    rng = np.random.RandomState(seed)
    duals: dict[str, Optional[AssignmentDuals]] = lap_state if lap_state is not None else {}
    for p, n in sizes.items():
        d = duals.get(p)
        if d is not None and (not isinstance(d, AssignmentDuals) or d.shape != (n, n)):
            duals[p] = None
    stats: dict[str, Any] = {"cost_s": 0.0, "lap_s": 0.0, "products": {"cached": 0, "updated": 0, "computed": 0},
                             "solves": 0}
    objective = [_objective(spec, a, b, perms if init is not None else None, names)]
    result = MatchingResult(perms, objective, 0, False, stats)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_iter, desc="weight matching", leave=False)
    try:
        for it in range(max_iter):
            gain = 0.0
            for idx in rng.permutation(len(order_names)):
                p = order_names[idx]
                n = sizes[p]
                t0 = time.perf_counter()
                cost = const[p].clone() if const[p] is not None else torch.zeros(n, n, device=dev, dtype=dtype)
                for term in terms[p]:
                    val, how = term.value(perms, incremental)
                    cost += val
                    stats["products"][how] += 1
                c = cost.cpu().numpy() if cost.device.type != "cpu" else cost.numpy()
                t1 = time.perf_counter()
                _, cols, d = linear_sum_assignment(c, maximize=True, warm_start=duals.get(p) if warm_start else None,
                                                   return_duals=True)
                stats["lap_s"] += time.perf_counter() - t1
                stats["cost_s"] += t1 - t0
                stats["solves"] += 1
                duals[p] = d
                rows = np.arange(n)
                old = float(c[rows, perms[p].cpu().numpy()].sum(dtype=np.float64))
                new = float(c[rows, cols].sum(dtype=np.float64))
                if new > old:
                    perms[p] = torch.from_numpy(cols).to(dev)
                    gain += new - old
            result.iterations = it + 1
            objective.append(objective[-1] + gain)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(objective=f"{objective[-1]:.6g}")
            if gain <= tol * max(abs(objective[-1]), 1e-300):
                result.converged = True
                break
    finally:
        if bar is not None:
            bar.close()
    result.perms = perms
    return result
