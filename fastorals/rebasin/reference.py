"""Reference implementations: slow, obvious, used as oracles in tests and as fallbacks.

* :func:`lap_reference` — shortest augmenting path (successive Dijkstra) linear assignment in
  NumPy with explicit dual variables, cold or warm started. It is the fallback of
  :func:`fastorals.rebasin.linear_sum_assignment` when the C++ extension is absent.
* :func:`weight_matching_reference` — the official weight matching loop, written plainly:
  every cost matrix rebuilt from permuted copies of B's parameters with one GEMM per
  (parameter, axis), and :func:`scipy.optimize.linear_sum_assignment` (the official code's
  solver) on float64 copies. The benchmark's baseline ("same iterations, scipy LAP").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import numpy as np
import torch

_INF = np.inf


def lap_reference(
    cost: np.ndarray,
    negate: bool = False,
    warm_col_duals: Optional[np.ndarray] = None,
    warm_row_to_col: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimum-cost assignment of every row of ``cost`` [n, m] (n <= m) to a distinct column.

    Args:
        cost: float array [n, m] with n <= m; +inf marks forbidden pairs.
        negate: solve for ``-cost`` (maximization).
        warm_col_duals, warm_row_to_col: optional warm start (column duals [m], row -> column [n]).

    Returns:
        (row_to_col int64 [n], row_duals float64 [n], col_duals float64 [m]) for the minimized
        matrix ``c = -cost if negate else cost``: ``u_i + v_j <= c_ij`` with equality on the
        assignment; for n < m the unassigned columns hold the largest ``v``.

    Raises:
        ValueError: NaN / -inf entries, or no assignment of finite cost.
    """
    c = np.asarray(cost, dtype=np.float64)
    if negate:
        c = -c
    n, m = c.shape
    if n > m:
        raise ValueError(f"cost: expected rows <= columns, got shape {c.shape}")
    if np.isnan(c).any() or np.isneginf(c).any():
        raise ValueError("cost: expected finite values or +inf (forbidden pairs); found NaN or -inf")
    x = np.full(n, -1, dtype=np.int64)  # row -> col
    y = np.full(m, -1, dtype=np.int64)  # col -> row
    v = np.zeros(m)
    if warm_col_duals is not None:
        v = np.where(np.isfinite(warm_col_duals), np.asarray(warm_col_duals, dtype=np.float64), 0.0).copy()
        prev = np.full(n, -1, dtype=np.int64) if warm_row_to_col is None else np.asarray(warm_row_to_col, np.int64)
        reduced = c - v[None, :]
        u = reduced.min(axis=1)
        for i in range(n):
            j = int(prev[i])
            if 0 <= j < m and y[j] < 0 and np.isfinite(reduced[i, j]):
                tol = 2.0**-44 * (abs(c[i, j]) + abs(v[j]))
                if reduced[i, j] <= u[i] + tol:
                    x[i], y[j] = j, i
        if n < m:  # every free column must hold the largest dual
            top = v.max()
            stack = [j for j in range(m) if y[j] < 0 and v[j] < top]
            while stack:
                j = stack.pop()
                if y[j] >= 0 or v[j] >= top:
                    continue
                v[j] = top
                for k in np.nonzero(x >= 0)[0]:
                    jk = x[k]
                    if c[k, j] - top < c[k, jk] - v[jk]:
                        x[k], y[jk] = -1, -1
                        if v[jk] < top:
                            stack.append(int(jk))
    for f in np.nonzero(x < 0)[0]:
        _augment(c, int(f), x, y, v)
    u = c[np.arange(n), x] - v[x] if n else np.zeros(0)
    return x, u, v


def _augment(c: np.ndarray, f: int, x: np.ndarray, y: np.ndarray, v: np.ndarray) -> None:
    """One Dijkstra over reduced costs from free row ``f`` to the nearest free column."""
    m = c.shape[1]
    d = np.full(m, _INF)
    pred = np.full(m, f, dtype=np.int64)
    scanned = np.zeros(m, dtype=bool)
    i, mu, off = f, 0.0, 0.0
    while True:
        h = c[i] - v - off
        better = (h < d) & ~scanned
        d[better] = h[better]
        pred[better] = i
        masked = np.where(scanned, _INF, d)
        j = int(np.argmin(masked))
        if not np.isfinite(masked[j]):
            raise ValueError(f"cost: infeasible assignment: row {f} cannot be matched through finite entries")
        mu = masked[j]
        if y[j] < 0:
            break
        scanned[j] = True
        i = int(y[j])
        off = (c[i, j] - v[j]) - mu
    v[scanned] += d[scanned] - mu
    while True:
        r = int(pred[j])
        y[j] = r
        x[r], j = j, x[r]
        if r == f:
            break


# ----------------------------------------------------------------------------- weight matching


def _permute_param(w: torch.Tensor, axes: tuple, perms: Mapping[str, torch.Tensor], except_axis: Optional[int]) -> torch.Tensor:
    for ax, p in enumerate(axes):
        if p is None or ax == except_axis:
            continue
        w = torch.index_select(w, ax, perms[p])
    return w


def weight_matching_reference(
    axes_to_perm: Mapping[str, tuple],
    params_a: Mapping[str, torch.Tensor],
    params_b: Mapping[str, torch.Tensor],
    max_iter: int = 100,
    seed: int = 0,
    init: Optional[Mapping[str, torch.Tensor]] = None,
    order: Optional[list[list[str]]] = None,
) -> tuple[dict[str, torch.Tensor], float, int]:
    """The official weight matching loop (coordinate descent over permutations), plainly.

    ``axes_to_perm`` maps parameter names to one entry per axis (a permutation name or None),
    PyTorch layout. Each iteration visits the permutations in a seeded random order (or the given
    ``order``, one list per iteration); each cost matrix is rebuilt with ``W_A @ permuted(W_B).T``
    per (parameter, axis) and solved with ``scipy.optimize.linear_sum_assignment`` (maximize).
    Stops after an iteration without improvement (official rule: ``new > old + 1e-12``).

    Returns:
        (perms, objective, iterations): perms[p] int64 [n] (B's unit matched to A's unit i), the
        final total objective sum <A, pi(B)> (float64), and the number of iterations run.
    """
    from scipy.optimize import linear_sum_assignment as scipy_lsa

    perm_to_axes: dict[str, list[tuple[str, int]]] = {}
    for name, axes in axes_to_perm.items():
        for ax, p in enumerate(axes):
            if p is not None:
                perm_to_axes.setdefault(p, []).append((name, ax))
    names = sorted(perm_to_axes)
    sizes = {p: params_a[perm_to_axes[p][0][0]].shape[perm_to_axes[p][0][1]] for p in names}
    perms = {p: (init[p].clone() if init is not None else torch.arange(sizes[p])) for p in names}
    rng = np.random.RandomState(seed)

    def total() -> float:
        s = 0.0
        for name, axes in axes_to_perm.items():
            wb = _permute_param(params_b[name], axes, perms, None)
            s += float(torch.sum(params_a[name].double() * wb.double()))
        return s

    iterations = 0
    for it in range(max_iter):
        iterations = it + 1
        progress = False
        visit = order[it] if order is not None else [names[k] for k in rng.permutation(len(names))]
        for p in visit:
            n = sizes[p]
            A = torch.zeros(n, n, dtype=params_a[perm_to_axes[p][0][0]].dtype)
            for name, ax in perm_to_axes[p]:
                wa = torch.movedim(params_a[name], ax, 0).reshape(n, -1)
                wb = torch.movedim(_permute_param(params_b[name], axes_to_perm[name], perms, ax), ax, 0).reshape(n, -1)
                A += wa @ wb.T
            A64 = A.double().numpy()
            _, ci = scipy_lsa(A64, maximize=True)
            old = float(A64[np.arange(n), perms[p].numpy()].sum())
            new = float(A64[np.arange(n), ci].sum())
            progress = progress or new > old + 1e-12
            perms[p] = torch.as_tensor(ci, dtype=torch.int64)
        if not progress:
            break
    return perms, total(), iterations
