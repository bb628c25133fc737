"""Exact linear assignment (Jonker-Volgenant) with warm starts and dual certificates.

The solver lives in ``csrc/lap/lap.cpp`` (float32 and float64 kernels, AVX-512 / AVX2 /
scalar row scans chosen at run time); without the extension the NumPy shortest augmenting
path solver of :mod:`fastorals.rebasin.reference` runs instead (same results, slower).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch

from .. import _ext
from .reference import lap_reference

__all__ = ["AssignmentDuals", "linear_sum_assignment"]


@dataclass(frozen=True)
class AssignmentDuals:
    """Dual certificate of an optimal assignment, reusable as a warm start.

    For ``maximize=False``: ``row_duals[i] + col_duals[j] <= cost[i, j]`` for every pair, with
    equality on the assignment; for ``maximize=True`` the inequality is ``>=``. On a
    rectangular matrix the duals of the longer side's unassigned entries are 0 and the others
    on that side are <= 0 (minimize) / >= 0 (maximize). ``row_duals.sum() + col_duals.sum()``
    equals the optimal objective (strong duality).

    Attributes:
        row_duals: float64 [n].
        col_duals: float64 [m].
        col_of_row: int64 [n], the assigned column of each row (-1 where a row is unassigned).
        maximize: the sense of the problem these duals certify.
    """

    row_duals: np.ndarray
    col_duals: np.ndarray
    col_of_row: np.ndarray
    maximize: bool

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.row_duals), len(self.col_duals))

    def objective(self) -> float:
        """The dual objective (equal to the optimal assignment's cost)."""
        return float(self.row_duals.sum() + self.col_duals.sum())


def _as_numpy(cost: Any) -> tuple[np.ndarray, Optional[torch.device]]:
    """A 2-D float32/float64 NumPy array (zero copy where possible) and the torch device, if any."""
    if isinstance(cost, torch.Tensor):
        device = cost.device
        t = cost.detach()
        if t.dtype not in (torch.float32, torch.float64):
            if t.dtype.is_complex:
                raise TypeError(f"cost: expected a real matrix, got dtype {t.dtype}")
            t = t.to(torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else torch.float64)
        arr = t.cpu().numpy()
        return arr, device
    arr = np.asarray(cost)
    if arr.dtype not in (np.float32, np.float64):
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"cost: expected a real numeric matrix, got dtype {arr.dtype}")
        arr = arr.astype(np.float32 if arr.dtype == np.float16 else np.float64)
    return arr, None


_CPU = torch.device("cpu")
_IMPLEMENTED = ("cpp", "reference")
_TOPIC: list = []


def _lap_topic() -> Any:
    if not _TOPIC:
        _TOPIC.append(_ext.ext_topic("lap"))
    return _TOPIC[0]


def _solve_internal(c: np.ndarray, negate: bool, v: np.ndarray, x: np.ndarray, warm: bool) -> dict:
    """Solve c [n, m] (n <= m, C-contiguous) in place: x row->col, v col duals; returns counters + u."""
    n = c.shape[0]
    u = np.empty(n)
    topic = _lap_topic()
    if topic is not None and _ext.requested_backend() == "auto":
        backend = "cpp"
    else:
        backend = _ext.select_backend("rebasin.linear_sum_assignment", _CPU, _IMPLEMENTED)
    if backend == "cpp":
        if topic is None:  # an extension built without this topic
            raise _ext.BackendUnavailableError("linear_sum_assignment: the extension has no 'lap' topic")
        fn = topic.solve_f32 if c.dtype == np.float32 else topic.solve_f64
        stats = fn(c, negate, v, x, u, warm, 0, torch.get_num_threads())
    else:
        xr, ur, vr = lap_reference(
            c, negate, v if warm else None, x if warm else None
        )
        x[:], u[:], v[:] = xr, ur, vr
        stats = {"backend": "reference"}
    stats["u"] = u
    return stats


def linear_sum_assignment(
    cost: Union[np.ndarray, torch.Tensor, Any],
    maximize: bool = False,
    *,
    warm_start: Optional[AssignmentDuals] = None,
    return_duals: bool = False,
) -> Union[tuple[Any, Any], tuple[Any, Any, AssignmentDuals]]:
    """Solve the linear assignment problem exactly (drop-in for ``scipy.optimize.linear_sum_assignment``).

    Jonker-Volgenant: column reduction, reduction transfer, augmenting row reduction, then
    shortest augmenting paths (Dijkstra over dense, vectorized row scans). float32 matrices are
    read as float32 and solved in float64 arithmetic, so the optimum is exact for the given
    values in both precisions.

    Args:
        cost: [n, m] matrix (NumPy array, torch tensor or nested lists); float32 and float64 are
            solved natively, other real dtypes are converted. ``+inf`` (``-inf`` when maximizing)
            marks a forbidden pair; NaN is refused.
        maximize: maximize instead of minimize the total.
        warm_start: the :class:`AssignmentDuals` of a previous solve of a matrix of the same
            shape (e.g. from ``return_duals=True``): its duals and assignment seed the solver,
            which then repairs them, so the result is exactly optimal whatever the matrix now
            holds, and much faster when the matrix changed little.
        return_duals: also return the :class:`AssignmentDuals` of this solve.

    Returns:
        ``(row_ind, col_ind)`` as in SciPy: ``min(n, m)`` pairs with ``row_ind`` increasing;
        int64 NumPy arrays, or int64 tensors on ``cost``'s device when ``cost`` is a tensor.
        With ``return_duals=True`` a third element, the :class:`AssignmentDuals`.

    Raises:
        ValueError: not 2-D, NaN (or the wrong infinity) in ``cost``, no assignment of finite
            cost, or a ``warm_start`` of another shape or sense.
        TypeError: non-real ``cost``, or ``warm_start`` not an :class:`AssignmentDuals`.

    Example:
        >>> import numpy as np
        >>> from fastorals.rebasin import linear_sum_assignment
        >>> c = np.random.rand(512, 512)
        >>> rows, cols, duals = linear_sum_assignment(c, maximize=True, return_duals=True)
        >>> c2 = c + 1e-3 * np.random.rand(512, 512)          # a nearby matrix
        >>> rows, cols = linear_sum_assignment(c2, maximize=True, warm_start=duals)
    """
    arr, device = _as_numpy(cost)
    if arr.ndim != 2:
        raise ValueError(f"cost: expected a 2-D matrix, got shape {tuple(arr.shape)}")
    n, m = arr.shape
    maximize = bool(maximize)
    if warm_start is not None:
        if not isinstance(warm_start, AssignmentDuals):
            raise TypeError(f"warm_start: expected AssignmentDuals (from return_duals=True), got {type(warm_start).__name__}")
        if warm_start.shape != (n, m):
            raise ValueError(f"warm_start: duals are for a {warm_start.shape} matrix, cost has shape {(n, m)}")
        if warm_start.maximize != maximize:
            raise ValueError(f"warm_start: duals certify maximize={warm_start.maximize}, this call has maximize={maximize}")
    sgn = -1.0 if maximize else 1.0
    transposed = n > m
    k = min(n, m)
    if k == 0:
        rows = np.zeros(0, dtype=np.int64)
        cols = np.zeros(0, dtype=np.int64)
        duals = AssignmentDuals(np.zeros(n), np.zeros(m), np.full(n, -1, dtype=np.int64), maximize)
        return _finish(rows, cols, duals, device, return_duals)
    c = np.ascontiguousarray(arr.T if transposed else arr)
    ni, mi = c.shape
    v = np.zeros(mi)
    x = np.empty(ni, dtype=np.int64)
    warm = warm_start is not None
    if warm:
        if transposed:
            v[:] = sgn * np.asarray(warm_start.row_duals, dtype=np.float64)
            col_of_row = np.asarray(warm_start.col_of_row, dtype=np.int64)
            x.fill(-1)
            ok = (col_of_row >= 0) & (col_of_row < m)
            x[col_of_row[ok]] = np.nonzero(ok)[0]
        else:
            v[:] = sgn * np.asarray(warm_start.col_duals, dtype=np.float64)
            x[:] = np.asarray(warm_start.col_of_row, dtype=np.int64)
    try:
        stats = _solve_internal(c, maximize, v, x, warm)
    except ValueError as exc:
        msg = str(exc)
        if "NaN" in msg and maximize:
            msg = ("cost: expected finite values or -inf (forbidden pairs, maximize=True); found NaN or +inf")
        raise ValueError(msg) from None
    u = stats["u"]
    if not return_duals:
        if transposed:
            order = np.argsort(x, kind="stable")
            rows, cols = x[order], np.arange(m, dtype=np.int64)[order]
        else:
            rows, cols = np.arange(n, dtype=np.int64), x
        return _finish(rows, cols, None, device, False)
    if ni < mi:  # free columns share the largest dual: shift it to 0 (LP dual of "at most one")
        free = np.ones(mi, dtype=bool)
        free[x] = False
        top = v[free].max()
        v -= top
        u += top
    if transposed:
        cols = np.arange(m, dtype=np.int64)
        rows = x
        order = np.argsort(rows, kind="stable")
        rows, cols = rows[order], cols[order]
        col_of_row = np.full(n, -1, dtype=np.int64)
        col_of_row[x] = np.arange(m)
        duals = AssignmentDuals(sgn * v, sgn * u, col_of_row, maximize)
    else:
        rows = np.arange(n, dtype=np.int64)
        cols = x.copy()
        duals = AssignmentDuals(sgn * u, sgn * v, x.copy(), maximize)
    return _finish(rows, cols, duals, device, return_duals)


def _finish(rows: np.ndarray, cols: np.ndarray, duals: Optional[AssignmentDuals], device: Optional[torch.device],
            return_duals: bool):
    if device is not None:
        rows = torch.from_numpy(rows).to(device)
        cols = torch.from_numpy(cols).to(device)
    return (rows, cols, duals) if return_duals else (rows, cols)


# ----------------------------------------------------------------------------- torch.library op


@torch.library.custom_op("fastorals::rebasin_linear_sum_assignment", mutates_args=())
def linear_sum_assignment_op(cost: torch.Tensor, maximize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.ops.fastorals.rebasin_linear_sum_assignment(cost, maximize)``: (row_ind, col_ind), int64
    tensors on ``cost``'s device, each of length ``min(cost.shape)``. The same solver as
    :func:`linear_sum_assignment`, as an op that ``torch.compile`` graphs can contain."""
    if cost.dim() != 2:
        raise ValueError(f"cost: expected a 2-D matrix, got shape {tuple(cost.shape)}")
    rows, cols = linear_sum_assignment(cost.detach(), maximize)
    return rows, cols


@linear_sum_assignment_op.register_fake
def _(cost: torch.Tensor, maximize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    k = min(cost.shape[0], cost.shape[1])
    return cost.new_empty(k, dtype=torch.int64), cost.new_empty(k, dtype=torch.int64)
