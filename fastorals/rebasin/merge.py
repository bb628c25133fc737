"""Interpolation, loss barriers, BatchNorm reset, REPAIR and MergeMany."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .matching import weight_matching
from .spec import PermutationSpec, apply_permutation

__all__ = [
    "BarrierResult",
    "evaluate_loss",
    "interpolate",
    "loss_barrier",
    "merge_many",
    "repair",
    "reset_bn_stats",
]

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def interpolate(params_a: Mapping[str, torch.Tensor], params_b: Mapping[str, torch.Tensor], lam: float) -> dict[str, torch.Tensor]:
    """``(1 - lam) * A + lam * B`` for floating tensors; other tensors (e.g. ``num_batches_tracked``) from A.

    Raises:
        ValueError: the two dicts have different keys or shapes (naming the tensor).
    """
    out = {}
    for k, a in params_a.items():
        if k not in params_b:
            raise ValueError(f"params_b: tensor {k!r} is missing")
        b = params_b[k]
        if a.shape != b.shape:
            raise ValueError(f"tensor {k!r}: shape {tuple(a.shape)} vs {tuple(b.shape)}")
        out[k] = torch.lerp(a, b.to(a.dtype), float(lam)) if a.is_floating_point() else a.clone()
    for k in params_b:
        if k not in params_a:
            raise ValueError(f"params_a: tensor {k!r} is missing")
    return out


def _batches(loader: Iterable[Any], num_batches: Optional[int]) -> Iterable[Any]:
    for i, batch in enumerate(loader):
        if num_batches is not None and i >= num_batches:
            return
        yield batch


def _xy(batch: Any, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    if isinstance(batch, torch.Tensor):
        x, y = batch, None
    else:
        x, y = batch[0], (batch[1] if len(batch) > 1 else None)
    x = x.to(device)
    x = x.to(dtype) / 255.0 if x.dtype == torch.uint8 else (x.to(dtype) if x.is_floating_point() else x)
    return x, (y.to(device) if y is not None else None)


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in model.modules())


@torch.no_grad()
def reset_bn_stats(model: nn.Module, loader: Iterable[Any], num_batches: Optional[int] = None) -> nn.Module:
    """Recompute every BatchNorm's running statistics as exact averages over ``loader`` (train-mode passes).

    Returns the model (modified in place; its train/eval mode is restored).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return model
    was = model.training
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    dev, dtype = _device_dtype(model)
    for batch in _batches(loader, num_batches):
        x, _ = _xy(batch, dev, dtype)
        model(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.train(was)
    return model


@torch.no_grad()
def evaluate_loss(model: nn.Module, loader: Iterable[Any], loss_fn: Callable = F.cross_entropy,
                  num_batches: Optional[int] = None) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` (eval mode) over ``loader``."""
    was = model.training
    model.eval()
    dev, dtype = _device_dtype(model)
    tot = correct = n = 0.0
    for batch in _batches(loader, num_batches):
        x, y = _xy(batch, dev, dtype)
        out = model(x)
        tot += float(loss_fn(out, y, reduction="sum")) if loss_fn is F.cross_entropy else float(loss_fn(out, y)) * len(y)
        correct += float((out.argmax(-1) == y).sum())
        n += len(y)
    model.train(was)
    return tot / max(n, 1), correct / max(n, 1)


# ----------------------------------------------------------------------------- REPAIR


def _channel_dim(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, (nn.Linear, nn.LayerNorm)) or out.dim() <= 2:
        return out.dim() - 1
    return 1


@torch.no_grad()
def _last_called(model: nn.Module, layers: Sequence[tuple[str, nn.Module]], loader: Iterable[Any]) -> Optional[str]:
    """The name of the layer among ``layers`` that one forward pass on the first batch runs last
    (the output layer, whatever order the modules were registered in)."""
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: order.append(n)) for n, m in layers]
    was = model.training
    model.eval()
    dev, dtype = _device_dtype(model)
    try:
        for batch in _batches(loader, 1):
            model(_xy(batch, dev, dtype)[0])
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return order[-1] if order else None


def _repair_points(model: nn.Module, spec: Optional[PermutationSpec],
                   loader: Optional[Iterable[Any]] = None) -> list[tuple[str, nn.Module]]:
    """Modules whose output channels are hidden units: normalization layers with an affine
    weight, or (in models without them) Linear/Conv layers other than the output layer (the
    one run last on a batch of ``loader``; without a loader, the last registered)."""

    def permuted(name: str) -> bool:
        if spec is None:
            return True
        e = spec.axes_to_perm.get(f"{name}.weight")
        return e is not None and len(e) > 0 and e[0] is not None

    norms = [(n, m) for n, m in model.named_modules()
             if isinstance(m, _NORMS) and getattr(m, "weight", None) is not None and m.weight.dim() == 1 and permuted(n)]
    if norms:
        return norms
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    if spec is None and layers:  # the layer run last produces the outputs
        last = _last_called(model, layers, loader) if loader is not None else None
        last = layers[-1][0] if last is None else last
        layers = [(n, m) for n, m in layers if n != last]
    return [(n, m) for n, m in layers if permuted(n)]


class _Moments:
    def __init__(self) -> None:
        self.s1: Optional[torch.Tensor] = None
        self.s2: Optional[torch.Tensor] = None
        self.n = 0

    def add(self, y: torch.Tensor, dim: int) -> None:
        y = y.detach().movedim(dim, -1).reshape(-1, y.shape[dim]).double()
        s1, s2 = y.sum(0), (y * y).sum(0)
        self.s1 = s1 if self.s1 is None else self.s1 + s1
        self.s2 = s2 if self.s2 is None else self.s2 + s2
        self.n += y.shape[0]

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.s1 / self.n
        return m, (self.s2 / self.n - m * m).clamp_min(0).sqrt()


@torch.no_grad()
def _output_moments(model: nn.Module, points: Sequence[tuple[str, nn.Module]], loader: Iterable[Any],
                    num_batches: Optional[int]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    stats = {n: _Moments() for n, _ in points}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: stats[n].add(out, _channel_dim(mod, out))) for n, m in points]
    was = model.training
    model.eval()
    dev, dtype = _device_dtype(model)
    try:
        for batch in _batches(loader, num_batches):
            model(_xy(batch, dev, dtype)[0])
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return {n: s.mean_std() for n, s in stats.items()}


@torch.no_grad()
def repair(model: nn.Module, model_a: nn.Module, model_b: nn.Module, loader: Iterable[Any], lam: float,
           spec: Optional[PermutationSpec] = None, num_batches: Optional[int] = None, eps: float = 1e-5) -> nn.Module:
    """REPAIR (Jordan et al., 2022): give every hidden channel of an interpolated model the
    interpolated statistics of the endpoints.

    For each repair point (normalization layers with an affine weight, else hidden Linear/Conv
    layers) the per-channel mean and standard deviation of ``model_a``'s and ``model_b``'s outputs
    are measured, and ``model`` (weights ``(1 - lam) A + lam B``) is rescaled so that its outputs
    have mean ``(1 - lam) mu_a + lam mu_b`` and std ``(1 - lam) s_a + lam s_b``. As in the paper the
    statistics of ``model`` are measured in one pass in which every corrected layer already
    normalizes with the batch statistics (BatchNorm-style), then folded into the layer's
    weight and bias; BatchNorm running statistics are reset first.

    Args:
        model: the interpolated model (modified in place and returned).
        model_a, model_b: the endpoints (``model_b`` already permuted to align with A).
        loader: training batches.
        lam: the interpolation coefficient of ``model``.
        spec: optional spec: only layers whose output channels are permuted are repaired.
        num_batches: batches per statistics pass.

    Returns:
        ``model``.
    """
    reset_bn_stats(model, loader, num_batches)
    points = _repair_points(model, spec, loader)
    names = [n for n, _ in points]
    mods_a = dict(model_a.named_modules())
    mods_b = dict(model_b.named_modules())
    for n in names:
        if n not in mods_a or n not in mods_b:
            raise ValueError(f"model_a/model_b: module {n!r} is missing (different architectures?)")
    sa = _output_moments(model_a, [(n, mods_a[n]) for n in names], loader, num_batches)
    sb = _output_moments(model_b, [(n, mods_b[n]) for n in names], loader, num_batches)
    target = {n: ((1 - lam) * sa[n][0] + lam * sb[n][0], (1 - lam) * sa[n][1] + lam * sb[n][1]) for n in names}
    stats = {n: _Moments() for n in names}

    def hook(mod: nn.Module, inp: Any, out: torch.Tensor, n: str) -> torch.Tensor:
        dim = _channel_dim(mod, out)
        stats[n].add(out, dim)
        y = out.movedim(dim, -1)
        flat = y.reshape(-1, y.shape[-1]).double()
        mu, sd = flat.mean(0), flat.std(0, unbiased=False)
        tm, ts = target[n]
        z = ((y.double() - mu) / (sd + eps) * ts + tm).to(out.dtype)
        return z.movedim(-1, dim)

    handles = [m.register_forward_hook(lambda mod, i, o, n=n: hook(mod, i, o, n)) for n, m in points]
    was = model.training
    model.eval()
    dev, dtype = _device_dtype(model)
    try:
        for batch in _batches(loader, num_batches):
            model(_xy(batch, dev, dtype)[0])
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    for n, m in points:
        mu, sd = stats[n].mean_std()
        tm, ts = target[n]
        s = ts / (sd + eps)
        shift = tm - mu * s
        w = m.weight
        shape = (-1,) + (1,) * (w.dim() - 1)
        w.mul_(s.to(w.dtype).view(shape))
        if getattr(m, "bias", None) is not None:
            m.bias.mul_(s.to(w.dtype)).add_(shift.to(w.dtype))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) or isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
            pass
        else:
            m.bias = nn.Parameter(shift.to(w.dtype))
    return model


# ----------------------------------------------------------------------------- barriers


@dataclass
class BarrierResult:
    """Loss and accuracy along the linear path from A (lam = 0) to B (lam = 1).

    ``barrier`` holds, for "train_loss" and "test_loss", ``max_l L(l) - (L(0) + L(1)) / 2``; for
    "train_acc" and "test_acc", ``(acc(0) + acc(1)) / 2 - min_l acc(l)`` (positive: a barrier).
    """

    lambdas: list[float]
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    barrier: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"lambdas": self.lambdas, "train_loss": self.train_loss, "train_acc": self.train_acc,
                "test_loss": self.test_loss, "test_acc": self.test_acc, "barrier": self.barrier}


def loss_barrier(
    model: nn.Module,
    params_a: Union[Mapping[str, torch.Tensor], nn.Module],
    params_b: Union[Mapping[str, torch.Tensor], nn.Module],
    train_loader: Iterable[Any],
    test_loader: Optional[Iterable[Any]] = None,
    *,
    num_points: int = 25,
    reset_bn: Optional[bool] = None,
    use_repair: bool = False,
    spec: Optional[PermutationSpec] = None,
    loss_fn: Callable = F.cross_entropy,
    num_batches: Optional[int] = None,
    stats_loader: Optional[Iterable[Any]] = None,
) -> BarrierResult:
    """Evaluate ``theta(l) = (1 - l) A + l B`` at ``num_points`` values of l in [0, 1] (Git Re-Basin Fig. 2 / 3).

    Args:
        model: a module of the architecture (its weights are not used; a copy is loaded per point).
        params_a, params_b: the endpoints (state dicts or modules; B already permuted for a
            matched barrier, or raw for the naive one).
        train_loader, test_loader: batches ``(x, y)``; train loss/accuracy always, test when given.
        num_points: values of l (25 in the paper).
        reset_bn: recompute BatchNorm statistics at every point on the training data (default:
            when the model has BatchNorm).
        use_repair: apply :func:`repair` at every interior point.
        spec: passed to :func:`repair`.
        loss_fn: ``loss_fn(logits, y)``.
        num_batches: batches per evaluation / statistics pass.
        stats_loader: data for the BatchNorm / REPAIR statistics (default: ``train_loader``).

    Returns:
        :class:`BarrierResult`.
    """
    sa = params_a.state_dict() if isinstance(params_a, nn.Module) else dict(params_a)
    sb = params_b.state_dict() if isinstance(params_b, nn.Module) else dict(params_b)
    if num_points < 2:
        raise ValueError(f"num_points: expected >= 2, got {num_points}")
    if reset_bn is None:
        reset_bn = has_batchnorm(model)
    lambdas = [float(x) for x in np.linspace(0.0, 1.0, num_points)]
    res = BarrierResult(lambdas)
    m_a = m_b = None
    if use_repair:
        m_a = copy.deepcopy(model)
        m_a.load_state_dict(sa)
        m_b = copy.deepcopy(model)
        m_b.load_state_dict(sb)
    stats = train_loader if stats_loader is None else stats_loader
    for lam in lambdas:
        m = copy.deepcopy(model)
        m.load_state_dict(interpolate(sa, sb, lam))
        if use_repair and 0.0 < lam < 1.0:
            repair(m, m_a, m_b, stats, lam, spec=spec, num_batches=num_batches)
        elif reset_bn and 0.0 < lam < 1.0:
            reset_bn_stats(m, stats, num_batches)
        tl, ta = evaluate_loss(m, train_loader, loss_fn, num_batches)
        res.train_loss.append(tl)
        res.train_acc.append(ta)
        if test_loader is not None:
            vl, va = evaluate_loss(m, test_loader, loss_fn, num_batches)
            res.test_loss.append(vl)
            res.test_acc.append(va)
    for key in ("train", "test"):
        loss, acc = getattr(res, f"{key}_loss"), getattr(res, f"{key}_acc")
        if loss:
            res.barrier[f"{key}_loss"] = max(loss) - 0.5 * (loss[0] + loss[-1])
            res.barrier[f"{key}_acc"] = 0.5 * (acc[0] + acc[-1]) - min(acc)
    return res


# ----------------------------------------------------------------------------- MergeMany


def merge_many(
    spec: PermutationSpec,
    params_list: Sequence[Union[Mapping[str, torch.Tensor], nn.Module]],
    *,
    max_iter: int = 100,
    seed: int = 0,
    progress: bool = False,
    **wm_kwargs: Any,
) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """MergeMany (Git Re-Basin, appendix): align N models to each other and average them.

    Repeatedly, in a seeded random order, each model is weight-matched to the mean of the
    others (all in their current permutations), until a full round changes no permutation.

    Args:
        spec: the models' spec.
        params_list: N >= 2 state dicts (or modules) of one architecture.
        max_iter: maximum rounds.
        seed: seed of the visiting order and of the inner weight matching.
        progress: show a progress bar over rounds.
        **wm_kwargs: passed to :func:`weight_matching`.

    Returns:
        (merged state dict, [permutations of each model]).
    """
    sds = [p.state_dict() if isinstance(p, nn.Module) else dict(p) for p in params_list]
    if len(sds) < 2:
        raise ValueError(f"params_list: expected at least 2 models, got {len(sds)}")
    sizes = spec.check_params(sds[0])
    for i, sd in enumerate(sds[1:], 1):
        spec.check_params(sds[0], sd, names=("params_list[0]", f"params_list[{i}]"))
    dev = next(iter(sds[0].values())).device
    perms = [{p: torch.arange(n, device=dev) for p, n in sizes.items()} for _ in sds]
    aligned = [apply_permutation(spec, sd, pm, strict=False) for sd, pm in zip(sds, perms)]
    rng = np.random.RandomState(seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_iter, desc="MergeMany", leave=False)
    for _ in range(max_iter):
        changed = False
        for i in rng.permutation(len(sds)):
            others = [aligned[j] for j in range(len(sds)) if j != i]
            mean = {k: (sum(o[k] for o in others) / len(others) if others[0][k].is_floating_point() else others[0][k])
                    for k in others[0]}
            res = weight_matching(spec, mean, sds[i], seed=seed, init=perms[i], **wm_kwargs)
            if any(not torch.equal(res.perms[p], perms[i][p]) for p in sizes):
                changed = True
                perms[i] = res.perms
                aligned[i] = apply_permutation(spec, sds[i], perms[i], strict=False)
        if bar is not None:
            bar.update(1)
        if not changed:
            break
    if bar is not None:
        bar.close()
    merged = {k: (sum(a[k] for a in aligned) / len(aligned) if aligned[0][k].is_floating_point() else aligned[0][k])
              for k in aligned[0]}
    return merged, perms
