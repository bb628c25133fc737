"""k-means on actions (Lloyd's algorithm) and the action discretizer of BeT / C-BeT."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from .. import _ext
from . import ops
from .reference import lloyd_reference, reseed_empty

__all__ = ["KMeansDiscretizer", "KMeansResult", "kmeans", "kmeans_assign", "kmeans_plusplus"]

IMPLEMENTED = ("triton", "cpp", "torch", "reference")
INITS = ("k-means++", "random")
RESEEDS = ("farthest", "random")


@dataclass
class KMeansResult:
    """Result of :func:`kmeans`.

    Attributes:
        centers: ``(K, D)`` cluster centres (dtype of the input; float32 for half inputs).
        labels: ``(N,)`` int64 index of each point's nearest centre (exact, ties to the lowest index).
        inertia: sum of the squared distances of the points to their centres (float64).
        n_iter: number of centre updates performed.
        converged: True when it stopped before ``iters`` (assignment unchanged, or ``tol`` reached).
    """

    centers: torch.Tensor
    labels: torch.Tensor
    inertia: float
    n_iter: int
    converged: bool


# ----------------------------------------------------------------------------- validation


def _checked_points(x: torch.Tensor, name: str = "x") -> tuple[torch.Tensor, float]:
    """Validated float32/float64 points and their largest magnitude (one pass for both)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D tensor (N points, D dims), got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating point tensor, got {x.dtype}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: expected at least one point and one dimension, got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    lo, hi = torch.aminmax(x)  # one pass; NaN propagates, so finite extremes mean finite values
    if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name}: {bad} values are NaN or infinite; k-means needs finite values")
    return x, max(-float(lo), float(hi))


def _magnitude_ok(big: float, d: int, dtype: torch.dtype) -> bool:
    """Squared distances and their screening stay finite in ``dtype`` for ``max|x| + max|c| = big``."""
    return big * big * d * 64 < float(torch.finfo(dtype).max)


def _max_abs(t: torch.Tensor) -> float:
    lo, hi = torch.aminmax(t)
    return max(-float(lo), float(hi))


def _generator(seed: int, generator: Optional[torch.Generator]) -> torch.Generator:
    if generator is not None:
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise TypeError("generator: expected a CPU torch.Generator (draws are made on the CPU for every device)")
        return generator
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- k-means++


def _sq_dist_gemm(x: torch.Tensor, xn: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float64 squared distances ``(N, t)`` through one GEMM (initialisation only), clamped at 0."""
    cd = c.double()
    d = torch.addmm(xn[:, None] + (cd * cd).sum(1)[None, :], x.double(), cd.t(), alpha=-2.0)
    return d.clamp_min_(0.0)


def kmeans_plusplus(
    x: torch.Tensor,
    k: int,
    *,
    seed: int = 0,
    generator: Optional[torch.Generator] = None,
    n_local_trials: Optional[int] = None,
) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii; greedy variant with local trials).

    The first centre is a uniformly drawn point; each next one is the best (lowest resulting
    potential) of ``n_local_trials`` candidates drawn with probability proportional to the squared
    distance to the nearest chosen centre. Random numbers come from a CPU generator, so a seed
    gives the same centres on any device.

    Args:
        x: ``(N, D)`` points.
        k: number of centres, ``1 <= k <= N``.
        seed: seed of the generator (ignored when ``generator`` is given).
        generator: a CPU ``torch.Generator``.
        n_local_trials: candidates per centre (default ``2 + floor(ln k)``).
    Returns:
        ``(k, D)`` centres (rows of ``x``).

    Example:
        >>> c0 = kmeans_plusplus(actions, 64, seed=0)
        >>> res = kmeans(actions, 64, init=c0)
    """
    x, _ = _checked_points(x)
    _check_k(k, x.shape[0])
    g = _generator(seed, generator)
    trials = 2 + int(math.log(k)) if n_local_trials is None else int(n_local_trials)
    if trials < 1:
        raise ValueError(f"n_local_trials: expected >= 1, got {n_local_trials}")
    N = x.shape[0]
    xd = x.double()
    xn = (xd * xd).sum(1)
    idx = [int(torch.randint(N, (1,), generator=g))]
    closest = _sq_dist_gemm(x, xn, x[idx[0] : idx[0] + 1])[:, 0]
    pot = closest.sum()
    for _ in range(1, k):
        r = torch.rand(trials, generator=g, dtype=torch.float64).to(x.device) * pot
        cand = torch.searchsorted(torch.cumsum(closest, 0), r, right=True).clamp_max_(N - 1)
        d = torch.minimum(_sq_dist_gemm(x, xn, x[cand]), closest[:, None])
        pots = d.sum(0)
        best = int(torch.argmin(pots))
        closest, pot = d[:, best].contiguous(), pots[best]
        idx.append(int(cand[best]))
    return x[torch.tensor(idx, device=x.device)].clone()


def _check_k(k: int, n: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k: expected a positive int, got {k!r}")
    if k > n:
        raise ValueError(f"k: {k} clusters requested but x has only N={n} points (k must be <= N)")


# ----------------------------------------------------------------------------- Lloyd


def _pass_fn(backend: str):
    if backend == "cpp":
        return ops.lloyd_pass_cpp
    if backend == "triton":
        return ops.lloyd_pass_triton
    return ops.lloyd_pass_torch


def _assigned_dist(backend: str, x: torch.Tensor, c: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if backend == "cpp":
        return ops.assigned_dist_cpp(x, c, labels, True)
    return ops.assigned_dist_torch(x, c, labels)


def _inertia(backend: str, x: torch.Tensor, c: torch.Tensor, labels: torch.Tensor) -> float:
    if backend == "cpp":
        return float(ops.assigned_dist_cpp(x, c, labels, False)[0])
    return float(ops.assigned_dist_torch(x, c, labels).sum())


def _means(sums: torch.Tensor, counts: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, bool]:
    """New centres (float64 means cast to ``dtype``; empty clusters get 0) and whether any is empty.

    The K x D arithmetic runs in NumPy for CPU tensors: a few microseconds, no thread pool (tiny
    PyTorch ops can stall for milliseconds on a busy machine); the rounding is the same IEEE
    division and cast as the reference's.
    """
    if sums.device.type == "cpu":
        c = counts.numpy()
        new = sums.numpy() / np.maximum(c, 1)[:, None]
        return torch.from_numpy(new.astype(torch.empty(0, dtype=dtype).numpy().dtype)), bool((c == 0).any())
    return (sums / counts.clamp_min(1)[:, None].double()).to(dtype), bool((counts == 0).any())


def _sq_shift(new: torch.Tensor, old: torch.Tensor) -> float:
    if new.device.type == "cpu":
        return float(((new.numpy().astype(np.float64) - old.numpy().astype(np.float64)) ** 2).sum())
    return float(((new.double() - old.double()) ** 2).sum())


# Bounded (Hamerly) passes pay per-point bookkeeping; they are used once few labels change.
BOUNDS_ON = 0.01    # switch bounds on when at most this fraction of labels changed in a pass
BOUNDS_OFF = 0.5    # and off again when a bounded pass still had to screen this fraction


def _lloyd_fast(x, init, iters, reseed, tol, g, backend):
    """Lloyd with fused passes: pass t assigns with centres c_t and sums for c_{t+1}.

    On the CPU, once the assignment is nearly stable the C++ pass keeps Hamerly distance bounds
    and skips the points whose centre provably cannot change; every backend and mode returns the
    reference's labels.
    """
    run = _pass_fn(backend)
    u = ops.unit_roundoff(x.dtype, x.device, gemm=backend == "torch")
    centers = init.clone()
    N, K = x.shape[0], init.shape[0]
    labels = torch.full((N,), -1, dtype=torch.int64, device=x.device)
    sums, counts, stats = run(x, centers, labels, True, u)
    tol_abs = tol * float(x.double().var(0, unbiased=False).mean()) if tol > 0 else 0.0
    n_iter, converged = 0, False
    state = "plain"  # "plain" -> "store" (next pass writes bounds) -> "bounded"
    upper = lower = drift = None
    drift_max = 0.0
    for _ in range(iters):
        new, any_empty = _means(sums, counts, x.dtype)
        n_reseeded = 0
        if any_empty:
            dists = _assigned_dist(backend, x, centers, labels)
            n_reseeded = reseed_empty(x, new, counts, dists, reseed, g).numel()
        shift = _sq_shift(new, centers) if tol > 0 else 0.0
        if state == "bounded":
            motion, half_sep = ops.centre_motion(centers, new)
            drift += motion
            drift_max += float(motion.max()) * (1 + 1e-12)
            centers = new
            sums, counts, stats = run(x, centers, labels, True, u, upper, lower, drift, drift_max, half_sep)
            if int(stats[2]) > BOUNDS_OFF * N:
                state = "plain"
        elif state == "store":
            upper = torch.empty(N, dtype=torch.float32)
            lower = torch.empty(N, dtype=torch.float32)
            drift = torch.zeros(K, dtype=torch.float64)
            drift_max = 0.0
            centers = new
            sums, counts, stats = run(x, centers, labels, True, u, upper, lower, drift, drift_max)
            state = "bounded"
        else:
            centers = new
            sums, counts, stats = run(x, centers, labels, True, u)
            if backend == "cpp" and int(stats[0]) <= BOUNDS_ON * N:
                state = "store"
        n_iter += 1
        if (int(stats[0]) == 0 and n_reseeded == 0) or (tol > 0 and shift <= tol_abs):
            converged = True
            break
    return centers, labels, _inertia(backend, x, centers, labels), n_iter, converged


def kmeans(
    x: torch.Tensor,
    k: int,
    iters: int = 50,
    seed: int = 0,
    *,
    init: Union[str, torch.Tensor] = "k-means++",
    reseed: str = "farthest",
    tol: float = 0.0,
    generator: Optional[torch.Generator] = None,
) -> KMeansResult:
    """k-means clustering with Lloyd's algorithm (the action discretisation of BeT / C-BeT).

    Each pass assigns every point to its nearest centre and sums the points per cluster in one
    sweep: on the CPU a C++ kernel with SIMD screening (|c|^2 - 2 x.c, points in vector lanes),
    elsewhere a GEMM in PyTorch; near ties are re-decided with exact float64 distances, so the
    assignment equals :func:`~fastorals.behavior.reference.assign_reference` exactly (ties go to
    the lowest centre index) on every backend. Centres are float64 means cast to ``x``'s dtype.
    Empty clusters are reseeded deterministically.

    Args:
        x: ``(N, D)`` float points (float16/bfloat16 are computed in float32).
        k: number of clusters, ``1 <= k <= N``.
        iters: maximum number of Lloyd iterations (centre updates); the paper uses 50.
        seed: seed of the initialisation and of random reseeding (ignored when ``generator`` is given).
        init: "k-means++" (greedy k-means++), "random" (k distinct points, the original BeT
            code's choice) or a ``(k, D)`` tensor of initial centres.
        reseed: what an empty cluster gets: "farthest" (the point farthest from its centre, ties
            to the lowest index) or "random" (uniformly drawn points, as in the original code).
        tol: also stop once the total squared centre shift is at most ``tol`` times the mean
            per-dimension variance of ``x`` (0: only on an unchanged assignment).
        generator: CPU ``torch.Generator`` for the draws (overrides ``seed``).
    Returns:
        :class:`KMeansResult` (centres, labels of those centres, inertia, iterations, converged).
    Raises:
        ValueError: ``x`` not 2-D, empty, NaN/inf; ``k`` not in [1, N]; bad ``init``/``reseed``.

    Example:
        >>> actions = torch.randn(100_000, 8)
        >>> res = kmeans(actions, 64, iters=50, seed=0)
        >>> res.centers.shape, res.labels.shape
        (torch.Size([64, 8]), torch.Size([100000]))
    """
    x, x_max = _checked_points(x)
    N, D = x.shape
    _check_k(k, N)
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 0:
        raise ValueError(f"iters: expected a non-negative int, got {iters!r}")
    if reseed not in RESEEDS:
        raise ValueError(f"reseed: expected one of {RESEEDS}, got {reseed!r}")
    if not (isinstance(tol, (int, float)) and tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"tol: expected a finite number >= 0, got {tol!r}")
    g = _generator(seed, generator)
    if isinstance(init, torch.Tensor):
        if init.shape != (k, D):
            raise ValueError(f"init: expected a ({k}, {D}) tensor of centres, got shape {tuple(init.shape)}")
        if not init.dtype.is_floating_point:
            raise TypeError(f"init: expected a floating point tensor, got {init.dtype}")
        if init.device != x.device:
            raise ValueError(f"init: expected centres on {x.device}, got {init.device}")
        if not bool(torch.isfinite(init).all()):
            raise ValueError("init: centres must be finite")
        centers0 = init.to(x.dtype)
    elif init == "k-means++":
        centers0 = kmeans_plusplus(x, k, generator=g)
    elif init == "random":
        centers0 = x[torch.randperm(N, generator=g)[:k].to(x.device)].clone()
    else:
        raise ValueError(f"init: expected one of {INITS} or a ({k}, {D}) tensor, got {init!r}")
    backend = _ext.select_backend("kmeans", x.device, IMPLEMENTED)
    xw, cw = x, centers0
    big = x_max + _max_abs(centers0)
    if not _magnitude_ok(big, D, torch.float64):
        raise ValueError("x: values too large for squared distances in float64 (max |x| ~ 1e150)")
    if x.dtype == torch.float32 and not _magnitude_ok(big, D, torch.float32):
        xw, cw = x.double(), centers0.double()  # squares would overflow float32 screening
    if backend == "reference":
        c, labels, inertia, n_iter, conv = lloyd_reference(xw, cw, iters, reseed=reseed, tol=tol, generator=g)
    else:
        c, labels, inertia, n_iter, conv = _lloyd_fast(xw.contiguous(), cw.contiguous(), iters, reseed, tol, g, backend)
    return KMeansResult(c.to(x.dtype), labels, inertia, n_iter, conv)


def kmeans_assign(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Nearest centre of every point (exact; ties to the lowest index), with the fastest backend.

    Args:
        x: ``(N, D)`` points; centers: ``(K, D)``.
    Returns:
        ``(N,)`` int64 labels.
    """
    x, x_max = _checked_points(x)
    centers, c_max = _checked_points(centers, "centers")
    if centers.shape[1] != x.shape[1]:
        raise ValueError(f"centers: expected {x.shape[1]} columns like x, got shape {tuple(centers.shape)}")
    if centers.device != x.device:
        raise ValueError(f"centers: expected device {x.device}, got {centers.device}")
    dtype = torch.float64 if torch.float64 in (x.dtype, centers.dtype) else torch.float32
    xw, cw = x.to(dtype).contiguous(), centers.to(dtype).contiguous()
    big = x_max + c_max  # the dtype conversion below is exact
    if not _magnitude_ok(big, x.shape[1], torch.float64):
        raise ValueError("x: values too large for squared distances in float64 (max |x| ~ 1e150)")
    if dtype == torch.float32 and not _magnitude_ok(big, x.shape[1], torch.float32):
        xw, cw = xw.double(), cw.double()
    backend = _ext.select_backend("kmeans_assign", x.device, IMPLEMENTED)
    if backend == "reference":
        from .reference import assign_reference

        return assign_reference(xw, cw)[0]
    labels = torch.full((x.shape[0],), -1, dtype=torch.int64, device=x.device)
    _pass_fn(backend)(xw, cw, labels, False, ops.unit_roundoff(xw.dtype, x.device, gemm=backend == "torch"))
    return labels


# ----------------------------------------------------------------------------- discretizer


class KMeansDiscretizer(nn.Module):
    """Action discretiser of BeT: k-means bins plus continuous residual offsets.

    ``fit`` clusters the dataset's actions; ``encode`` maps an action to its bin (nearest centre)
    and residual ``action - centre[bin]``; ``decode`` inverts it. The centres are a buffer, so
    they travel with ``state_dict``.

    Args:
        num_bins: number of clusters K.
        action_dim: action dimension A (inferred by ``fit`` when None).
        iters: Lloyd iterations (paper: 50).
        init: "k-means++", "random" (see :func:`kmeans`).
        reseed: "farthest" or "random".
        seed: seed of the clustering.

    Example:
        >>> disc = KMeansDiscretizer(24).fit(actions)          # actions (N, A) or (B, T, A)
        >>> bins, residuals = disc.encode(actions)
        >>> torch.allclose(disc.decode(bins, residuals), actions)
        True
    """

    centers: torch.Tensor

    def __init__(self, num_bins: int, action_dim: Optional[int] = None, *, iters: int = 50,
                 init: str = "k-means++", reseed: str = "farthest", seed: int = 0) -> None:
        super().__init__()
        if not isinstance(num_bins, int) or isinstance(num_bins, bool) or num_bins < 1:
            raise ValueError(f"num_bins: expected a positive int, got {num_bins!r}")
        if action_dim is not None and (not isinstance(action_dim, int) or action_dim < 1):
            raise ValueError(f"action_dim: expected a positive int or None, got {action_dim!r}")
        if init not in INITS:
            raise ValueError(f"init: expected one of {INITS}, got {init!r}")
        if reseed not in RESEEDS:
            raise ValueError(f"reseed: expected one of {RESEEDS}, got {reseed!r}")
        self.num_bins = num_bins
        self.action_dim = action_dim
        self.iters, self.init, self.reseed, self.seed = iters, init, reseed, seed
        self.register_buffer("centers", torch.zeros(num_bins, action_dim or 0))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.inertia: Optional[float] = None

    def extra_repr(self) -> str:
        return f"num_bins={self.num_bins}, action_dim={self.action_dim}, fitted={bool(self.fitted)}"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        c = state_dict.get(prefix + "centers")
        if c is not None and c.shape != self.centers.shape:  # loading into an unfitted discretizer
            if c.dim() != 2 or c.shape[0] != self.num_bins:
                raise ValueError(f"state_dict: {prefix}centers has shape {tuple(c.shape)}, this discretizer has "
                                 f"num_bins={self.num_bins} (expected ({self.num_bins}, A))")
            if self.action_dim is not None and c.shape[1] != self.action_dim:
                raise ValueError(f"state_dict: {prefix}centers has action dim {c.shape[1]}, this discretizer "
                                 f"has action_dim={self.action_dim}")
            self.centers = torch.empty_like(c, device=self.centers.device)
            self.action_dim = c.shape[1]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _flat(self, actions: torch.Tensor, name: str = "actions") -> torch.Tensor:
        if not isinstance(actions, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(actions).__name__}")
        if actions.dim() < 1 or not actions.dtype.is_floating_point:
            raise ValueError(f"{name}: expected a float tensor (..., A), got shape {tuple(actions.shape)} "
                             f"dtype {actions.dtype}")
        if self.action_dim is not None and actions.shape[-1] != self.action_dim:
            raise ValueError(f"{name}: expected action dim A={self.action_dim} (last dimension), got shape "
                             f"{tuple(actions.shape)}")
        return actions.reshape(-1, actions.shape[-1])

    @torch.no_grad()
    def fit(self, actions: torch.Tensor, mask: Optional[torch.Tensor] = None) -> KMeansDiscretizer:
        """Cluster ``actions`` ``(..., A)`` (only rows where ``mask`` ``(...)`` is True); returns self."""
        flat = self._flat(actions)
        if mask is not None:
            if mask.shape != actions.shape[:-1]:
                raise ValueError(f"mask: expected shape {tuple(actions.shape[:-1])}, got {tuple(mask.shape)}")
            flat = flat[mask.reshape(-1).to(torch.bool)]
        if flat.shape[0] < self.num_bins:
            raise ValueError(f"actions: {flat.shape[0]} actions to cluster into num_bins={self.num_bins} bins "
                             "(need at least as many actions as bins)")
        res = kmeans(flat, self.num_bins, self.iters, self.seed, init=self.init, reseed=self.reseed)
        self.action_dim = flat.shape[1]
        self.centers = res.centers.to(self.centers.device)
        self.fitted.fill_(True)
        self.inertia = res.inertia
        return self

    def _require_fit(self) -> None:
        if not bool(self.fitted):
            raise RuntimeError("KMeansDiscretizer: call fit(actions) (or load a state_dict) before encode/decode")

    @torch.no_grad()
    def encode(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``actions`` ``(..., A)`` -> bins ``(...)`` int64 and residuals ``(..., A)`` (actions' dtype)."""
        self._require_fit()
        flat = self._flat(actions)
        bins = kmeans_assign(flat, self.centers.to(flat.device))
        res = flat - self.centers.to(flat)[bins]
        return bins.view(actions.shape[:-1]), res.view(actions.shape)

    def decode(self, bins: torch.Tensor, residuals: Optional[torch.Tensor] = None) -> torch.Tensor:
        """bins ``(...)`` (+ residuals ``(..., A)``) -> actions ``(..., A)``."""
        self._require_fit()
        if bins.dtype.is_floating_point or bins.dtype == torch.bool:
            raise TypeError(f"bins: expected an integer tensor, got {bins.dtype}")
        if bins.numel() and (int(bins.min()) < 0 or int(bins.max()) >= self.num_bins):
            raise ValueError(f"bins: values must lie in [0, num_bins={self.num_bins})")
        out = self.centers[bins.long()]
        if residuals is not None:
            if residuals.shape != out.shape:
                raise ValueError(f"residuals: expected shape {tuple(out.shape)}, got {tuple(residuals.shape)}")
            out = out.to(residuals.dtype) + residuals
        return out

    forward = encode
