"""Activation matching (streaming correlation statistics) and the straight-through estimator."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .lap import AssignmentDuals, linear_sum_assignment
from .matching import MatchingResult, weight_matching
from .spec import AxisEntry, PermutationSpec, apply_permutation
from .trace import GraphTrace, run_graph, trace_permutation_spec

__all__ = ["ActivationStats", "activation_matching", "ste_matching"]


def _inputs_of(batch: Any) -> tuple[torch.Tensor, ...]:
    """The model inputs of a loader batch: ``x`` of ``(x, y)`` / ``[x, y]``, or the batch itself."""
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return (batch[0],)
    raise TypeError(f"loader: expected batches of tensors or (inputs, targets), got {type(batch).__name__}")


def _float_inputs(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if x.dtype == torch.uint8:
        return x.to(dtype) / 255.0
    return x.to(dtype) if x.is_floating_point() else x


def _unit_view(t: torch.Tensor, dim: int, entry: AxisEntry, perm: str) -> torch.Tensor:
    """[samples, units] view of activation ``t`` whose axis ``dim`` carries ``perm`` (maybe as a factor)."""
    if isinstance(entry, tuple):
        sizes = [k for _, k in entry]
        t = t.reshape(*t.shape[:dim], *sizes, *t.shape[dim + 1:])
        dim = dim + [p for p, _ in entry].index(perm)
    return t.movedim(dim, -1).reshape(-1, t.shape[dim])


class ActivationStats:
    """Streaming first and second moments of two activation sets with the same units.

    Accumulates, in float64, ``sum a``, ``sum b``, ``sum a^2``, ``sum b^2`` and ``A^T B`` over
    samples, so that the correlation (or ``E[a b^T]``) of millions of activations never needs
    them in memory at once.

    Example:
        >>> st = ActivationStats(64)
        >>> for a, b in batches:               # a, b: [samples, 64]
        ...     st.update(a, b)
        >>> corr = st.correlation()            # [64, 64]
    """

    def __init__(self, n: int, device: Union[str, torch.device, None] = None) -> None:
        self.n = n
        self.count = 0
        dev = torch.device(device) if device is not None else None
        self.sa = torch.zeros(n, dtype=torch.float64, device=dev)
        self.sb = torch.zeros(n, dtype=torch.float64, device=dev)
        self.saa = torch.zeros(n, dtype=torch.float64, device=dev)
        self.sbb = torch.zeros(n, dtype=torch.float64, device=dev)
        self.sab = torch.zeros(n, n, dtype=torch.float64, device=dev)

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Add samples ``a``, ``b``: [samples, n] each."""
        if a.shape != b.shape or a.dim() != 2 or a.shape[1] != self.n:
            raise ValueError(f"a, b: expected two [samples, {self.n}] tensors, got {tuple(a.shape)} and {tuple(b.shape)}")
        dev = self.sab.device
        a = a.detach().to(dev)
        b = b.detach().to(dev)
        self.count += a.shape[0]
        self.sa += a.sum(0, dtype=torch.float64)
        self.sb += b.sum(0, dtype=torch.float64)
        self.saa += (a.double() ** 2).sum(0)
        self.sbb += (b.double() ** 2).sum(0)
        self.sab += (a.T @ b).double() if a.dtype != torch.float64 else a.T @ b

    def cross_moment(self) -> torch.Tensor:
        """E[a b^T], float64 [n, n]."""
        return self.sab / max(self.count, 1)

    def correlation(self, eps: float = 1e-12) -> torch.Tensor:
        """Pearson correlation of every unit pair, float64 [n, n]; dead (constant) units give 0."""
        c = max(self.count, 1)
        ma, mb = self.sa / c, self.sb / c
        cov = self.sab / c - ma[:, None] * mb[None, :]
        va = (self.saa / c - ma**2).clamp_min(0)
        vb = (self.sbb / c - mb**2).clamp_min(0)
        sa, sb = va.sqrt(), vb.sqrt()
        denom = sa[:, None] * sb[None, :]
        scale = max(float(sa.max()) if sa.numel() else 0.0, float(sb.max()) if sb.numel() else 0.0, 1e-300)
        dead = denom <= (eps * scale) ** 2
        return torch.where(dead, torch.zeros_like(cov), cov / denom.clamp_min(1e-300))


def _traces(model: nn.Module, cache: dict[tuple, GraphTrace], inputs: tuple[torch.Tensor, ...]) -> GraphTrace:
    key = tuple(tuple(x.shape) for x in inputs)
    if key not in cache:
        example = inputs[0] if len(inputs) == 1 else inputs
        first = next(iter(cache.values()), None)
        tr = trace_permutation_spec(model, example, check=first is None, return_trace=True)
        if first is not None and tr.spec != first.spec:
            raise ValueError("activation_matching: the traced spec depends on the input shape; use batches of one shape")
        cache[key] = tr
    return cache[key]


def activation_matching(
    model_a: nn.Module,
    model_b: nn.Module,
    loader: Iterable[Any],
    *,
    spec: Optional[PermutationSpec] = None,
    method: str = "correlation",
    num_batches: Optional[int] = None,
    device: Union[str, torch.device, None] = None,
    progress: bool = False,
) -> MatchingResult:
    """Match B's hidden units to A's by the similarity of their activations (Git Re-Basin, activation matching).

    The model graph is traced (:func:`trace_permutation_spec`); for every permutation, the
    activations that carry it (outputs of nonlinearities where there are any, else every
    tensor that carries it: e.g. each block output of a residual stream) are collected from
    both models batch by batch into streaming float64 statistics (never all activations at once).
    Each permutation is then one exact assignment maximizing the summed Pearson correlation
    (``method="correlation"``, dead units count 0) or ``E[a b^T]`` (``method="covariance"``).

    Args:
        model_a, model_b: models of the same architecture (run in eval mode, not modified).
        loader: iterable of batches ``x`` or ``(x, y, ...)`` (uint8 images are scaled to [0, 1]).
        spec: optional spec to name the permutations by (e.g. a ready spec); its permutations
            are mapped to the traced ones through the parameter axes they act on.
        method: "correlation" or "covariance".
        num_batches: use at most this many batches.
        device: where to run (default: model_a's device).
        progress: show a progress bar.

    Returns:
        :class:`MatchingResult` with ``perms`` (keyed by ``spec``'s names when given, else the
        traced names) and ``objective`` = [total similarity of the matched units].

    Raises:
        ValueError: mismatched models, an unknown ``method``, an empty loader, or a ``spec``
            whose permutations do not correspond to the traced ones.

    Example:
        >>> res = rebasin.activation_matching(model_a, model_b, train_loader, num_batches=20)
        >>> model_b.load_state_dict(res.apply(spec, model_b))
    """
    if method not in ("correlation", "covariance"):
        raise ValueError(f"method: expected 'correlation' or 'covariance', got {method!r}")
    dev = torch.device(device) if device is not None else next(model_a.parameters()).device
    sa_full = {k: v.to(dev) for k, v in model_a.state_dict().items()}
    sb_full = {k: v.to(dev) for k, v in model_b.state_dict().items()}
    for k in sa_full:
        if k not in sb_full or sa_full[k].shape != sb_full[k].shape:
            raise ValueError(f"model_b: parameter {k!r} is missing or has another shape (different architectures?)")
    named_a = dict(model_a.named_parameters(remove_duplicate=False)) | dict(model_a.named_buffers(remove_duplicate=False))
    named_b = dict(model_b.named_parameters(remove_duplicate=False)) | dict(model_b.named_buffers(remove_duplicate=False))
    state_a = {k: v.detach().to(dev) for k, v in named_a.items()}
    state_b = {k: v.detach().to(dev) for k, v in named_b.items()}
    dtype = next(model_a.parameters()).dtype
    cache: dict[tuple, GraphTrace] = {}
    stats: dict[str, ActivationStats] = {}
    first: Optional[GraphTrace] = None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_batches, desc="activation matching", leave=False)
    seen = 0
    with torch.no_grad():
        for batch in loader:
            if num_batches is not None and seen >= num_batches:
                break
            inputs = tuple(_float_inputs(x.to(dev), dtype) for x in _inputs_of(batch))
            tr = _traces(model_a, cache, inputs)
            first = first or tr
            wanted: dict[str, list[tuple[str, int]]] = {}
            for p in tr.spec.perm_names:
                nodes = tr.activation_nodes.get(p, [])
                nonlin = [(nd, ax) for nd, ax in nodes if _is_nonlinear(tr, nd)]
                wanted[p] = nonlin or nodes
            need = {nd for lst in wanted.values() for nd, _ in lst}
            acts: dict[str, list[torch.Tensor]] = {}
            keep = _collector(acts)
            run_graph(tr, state_a, inputs, need, keep)
            run_graph(tr, state_b, inputs, need, keep)
            for p, lst in wanted.items():
                for nd, ax in lst:
                    va, vb = acts[nd]
                    entry = tr.node_perms[nd][ax]
                    ua, ub = _unit_view(va, ax, entry, p), _unit_view(vb, ax, entry, p)
                    key = f"{p}|{nd}|{ax}"
                    if key not in stats:
                        stats[key] = ActivationStats(ua.shape[1], dev)
                    stats[key].update(ua, ub)
            seen += 1
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    if first is None:
        raise ValueError("loader: no batches")
    perms: dict[str, torch.Tensor] = {}
    total = 0.0
    for p in first.spec.perm_names:
        mats = [st.correlation() if method == "correlation" else st.cross_moment()
                for key, st in stats.items() if key.split("|", 1)[0] == p]
        if not mats:
            perms[p] = torch.arange(first.spec.perm_sizes(sa_full)[p], device=dev)
            continue
        c = torch.stack(mats).sum(0).cpu().numpy()
        _, cols = linear_sum_assignment(c, maximize=True)
        total += float(c[np.arange(len(cols)), cols].sum())
        perms[p] = torch.from_numpy(cols).to(dev)
    result = MatchingResult(perms, [total], 1, True, {"batches": seen, "activations": len(stats)})
    if spec is not None:
        result.perms = _rename(first.spec, spec, perms)
    return result


def _collector(store: dict[str, list[torch.Tensor]]) -> Callable[[str, torch.Tensor], None]:
    def keep(node: str, value: torch.Tensor) -> None:
        store.setdefault(node, []).append(value)

    return keep


def _is_nonlinear(tr: GraphTrace, node_name: str) -> bool:
    from .trace import _NONLINEAR

    node = next((n for n in tr.graph_module.graph.nodes if n.name == node_name), None)
    if node is None or not isinstance(node.target, torch._ops.OpOverload):
        return False
    return node.target._schema.name.split("::")[-1].rstrip("_") in _NONLINEAR


def _rename(traced: PermutationSpec, spec: PermutationSpec, perms: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Re-key permutations of a traced spec by the names of an equivalent spec."""
    out: dict[str, torch.Tensor] = {}
    for p, uses in spec.perm_to_axes.items():
        found = None
        for u in uses:
            e = traced.axes_to_perm.get(u.param)
            if e is None:
                continue
            t = e[u.axis]
            if u.factor is None and isinstance(t, str):
                found = t
            elif u.factor is not None and isinstance(t, tuple):
                found = t[u.factor][0]
            if found is not None:
                break
        if found is None or found not in perms:
            raise ValueError(f"spec: permutation {p!r} has no counterpart in the traced graph")
        out[p] = perms[found]
    return out


# ----------------------------------------------------------------------------- STE


def _labelled(batch: Any, dev: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """An ``(x, y)`` training batch on ``dev`` (x as floats), else ``ValueError`` naming ``loader``."""
    if isinstance(batch, torch.Tensor) or not isinstance(batch, (tuple, list)) or len(batch) < 2 or not all(
            isinstance(t, torch.Tensor) for t in batch[:2]):
        raise ValueError("loader: STE needs (x, y) batches (inputs and labels for its loss), got "
                         f"{type(batch).__name__}{' of shape ' + str(list(batch.shape)) if isinstance(batch, torch.Tensor) else ''}")
    return _float_inputs(batch[0].to(dev), dtype), batch[1].to(dev)


def ste_matching(
    model_a: nn.Module,
    model_b: nn.Module,
    loader: Iterable[Any],
    spec: PermutationSpec,
    *,
    epochs: int = 1,
    lr: float = 1e-2,
    momentum: float = 0.9,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    max_steps: Optional[int] = None,
    wm_iters: int = 100,
    eval_batches: int = 8,
    device: Union[str, torch.device, None] = None,
    seed: int = 0,
    progress: bool = False,
) -> MatchingResult:
    """Straight-through estimator matching (the paper's Algorithm 3, "STE", v2).

    Learns a proxy ``theta`` initialized at A. Every batch: weight matching of ``theta`` against
    B (warm-started from the previous permutation and its assignment duals) gives ``pi(B)``; the
    loss is evaluated at the midpoint of A and ``stopgrad(pi(B)) + theta - stopgrad(theta)`` (whose
    value is ``pi(B)`` and whose gradient flows to ``theta``); SGD with momentum updates ``theta``.
    The permutation with the lowest midpoint loss (measured on ``eval_batches`` batches at the
    start and after every epoch) is returned.

    Args:
        model_a, model_b: trained models of the same architecture (not modified).
        loader: batches ``(x, y)`` of training data.
        spec: their :class:`PermutationSpec`.
        epochs: passes over ``loader``.
        lr, momentum: SGD settings (official: lr 1e-2, momentum 0.9).
        loss_fn: ``loss_fn(logits, y)``.
        max_steps: stop after this many steps.
        wm_iters: maximum weight matching sweeps per step.
        eval_batches: batches used to score a permutation.
        device: where to run.
        seed: weight matching seed.
        progress: show a progress bar.

    Returns:
        :class:`MatchingResult`: ``perms`` (best), ``objective`` = midpoint loss of each scored permutation.
    """
    dev = torch.device(device) if device is not None else next(model_a.parameters()).device
    sd_a = {k: v.detach().to(dev) for k, v in model_a.state_dict().items()}
    sd_b = {k: v.detach().to(dev) for k, v in model_b.state_dict().items()}
    spec.check_params(sd_a, sd_b, names=("model_a", "model_b"))
    net = copy.deepcopy(model_a).to(dev).train()
    pnames = [n for n, _ in net.named_parameters()]
    theta = {n: sd_a[n].clone().requires_grad_(True) for n in pnames}
    opt = torch.optim.SGD(list(theta.values()), lr=lr, momentum=momentum)
    lap_state: dict[str, AssignmentDuals] = {}
    b_cache: dict = {}  # B's GEMM layouts, shared by every step's matching
    perms = weight_matching(spec, sd_a, sd_b, max_iter=wm_iters, seed=seed, lap_state=lap_state,
                            _b_cache=b_cache).perms
    dtype = next(model_a.parameters()).dtype

    def midpoint_loss(p: Mapping[str, torch.Tensor], batches: Sequence[Any]) -> float:
        pb = apply_permutation(spec, sd_b, p, strict=False)
        mid = {k: (0.5 * (sd_a[k] + pb[k]) if sd_a[k].is_floating_point() else sd_a[k]) for k in sd_a}
        m = copy.deepcopy(model_a).to(dev)
        m.load_state_dict(mid)
        from .merge import reset_bn_stats

        reset_bn_stats(m, batches)
        m.eval()
        tot, cnt = 0.0, 0
        with torch.no_grad():
            for batch in batches:
                x, y = _labelled(batch, dev, dtype)
                tot += float(loss_fn(m(x), y)) * len(y)
                cnt += len(y)
        return tot / max(cnt, 1)

    held: list[Any] = []
    for batch in loader:
        held.append(batch)
        if len(held) >= eval_batches:
            break
    if not held:
        raise ValueError("loader: no batches")
    best_perm = {k: v.clone() for k, v in perms.items()}
    best = midpoint_loss(perms, held)
    scores = [best]
    steps = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_steps, desc="STE", leave=False)
    buffers = {n: t.to(dev) for n, t in net.named_buffers()}
    for _ in range(epochs):
        for batch in loader:
            if max_steps is not None and steps >= max_steps:
                break
            x, y = _labelled(batch, dev, dtype)
            cur = {n: theta[n].detach() for n in pnames}
            wm_a = dict(sd_a)
            wm_a.update(cur)
            perms = weight_matching(spec, wm_a, sd_b, max_iter=wm_iters, seed=seed, init=perms,
                                    lap_state=lap_state, _b_cache=b_cache).perms
            pb = apply_permutation(spec, sd_b, perms, strict=False)
            params = {n: 0.5 * (sd_a[n] + (pb[n] + theta[n] - theta[n].detach())) for n in pnames}
            bufs = {n: (0.5 * (sd_a[n] + pb[n]) if n in sd_a and t.is_floating_point() else t).clone()
                    for n, t in buffers.items()}
            out = torch.func.functional_call(net, {**params, **bufs}, (x,))
            loss = loss_fn(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss):.4f}")
        s = midpoint_loss(perms, held)
        scores.append(s)
        if s < best:
            best, best_perm = s, {k: v.clone() for k, v in perms.items()}
        if max_steps is not None and steps >= max_steps:
            break
    if bar is not None:
        bar.close()
    return MatchingResult(best_perm, scores, steps, True, {"best_midpoint_loss": best})
