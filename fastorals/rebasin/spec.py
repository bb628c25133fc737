"""Permutation specs: which axes of which parameters each hidden-unit permutation acts on.

A spec maps every parameter (or buffer) name to one entry per axis, in PyTorch layout
(Linear weight ``(out, in)``, Conv weight ``(out, in, kh, kw)``):

* ``None``: the axis is never permuted;
* ``"P"``: permutation ``P`` acts on the whole axis (the official format);
* ``(("P", 4), (None, 16))``: the axis is a row-major product of factors, each permuted by its
  own permutation or not at all. ``(("P_head", 4), ("P_dim", 16))`` is a 64-wide attention axis
  whose 4 heads and 16 dims per head are permuted separately; ``(("P_c", 64), (None, 49))`` is
  the input axis of a Linear after flattening a 64 x 7 x 7 feature map.

Permutations follow one convention everywhere: ``perm[i]`` is the unit of B that moves to
position ``i``, i.e. ``apply_permutation`` computes ``W.index_select(axis, perm)``.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import nn

__all__ = [
    "AxisEntry",
    "PermutationSpec",
    "SpecCheck",
    "apply_permutation",
    "check_spec",
    "identity_permutation",
    "invert_permutation",
    "mlp_spec",
    "random_permutation",
    "resnet_spec",
    "spec_for",
    "vgg_spec",
]

Factor = tuple[Optional[str], int]
AxisEntry = Union[None, str, tuple[Factor, ...]]


def _norm_entry(entry: Any, name: str, axis: int) -> AxisEntry:
    if entry is None or isinstance(entry, str):
        return entry
    if isinstance(entry, (tuple, list)):
        out = []
        for f in entry:
            if not (isinstance(f, (tuple, list)) and len(f) == 2 and (f[0] is None or isinstance(f[0], str))
                    and isinstance(f[1], int) and f[1] >= 1):
                raise ValueError(
                    f"axes_to_perm[{name!r}]: axis {axis}: expected None, a permutation name, or a tuple of "
                    f"(name or None, size) factors; got {entry!r}"
                )
            out.append((f[0], int(f[1])))
        if all(p is None for p, _ in out):
            return None
        return tuple(out)
    raise ValueError(
        f"axes_to_perm[{name!r}]: axis {axis}: expected None, a permutation name, or a tuple of "
        f"(name or None, size) factors; got {entry!r}"
    )


@dataclass(frozen=True)
class _Use:
    """One place a permutation acts: parameter, axis, and factor index (None: the whole axis)."""

    param: str
    axis: int
    factor: Optional[int]


class PermutationSpec:
    """Axes-to-permutation map of a model, with its inverse.

    Args:
        axes_to_perm: ``{parameter name: (entry per axis)}``; see the module docstring for entries.
            The official Git Re-Basin format (a permutation name or None per axis) is accepted as is.
        buffers: names in ``axes_to_perm`` that are buffers (e.g. BatchNorm running statistics):
            they are permuted but not part of the weight matching objective by default.

    Attributes:
        axes_to_perm: normalized entries per parameter.
        perm_to_axes: ``{permutation: [(parameter, axis, factor or None), ...]}``.

    Example:
        >>> spec = PermutationSpec({"fc1.weight": ("P1", None), "fc1.bias": ("P1",),
        ...                         "fc2.weight": (None, "P1"), "fc2.bias": (None,)})
        >>> spec.perm_names
        ['P1']
    """

    def __init__(self, axes_to_perm: Mapping[str, Sequence[AxisEntry]], buffers: Iterable[str] = ()) -> None:
        if not isinstance(axes_to_perm, Mapping):
            raise TypeError(f"axes_to_perm: expected a mapping name -> axes, got {type(axes_to_perm).__name__}")
        self.axes_to_perm: dict[str, tuple[AxisEntry, ...]] = {}
        perm_to_axes: dict[str, list[_Use]] = {}
        for name, axes in axes_to_perm.items():
            if isinstance(axes, (str, bytes)) or not isinstance(axes, Sequence):
                raise ValueError(f"axes_to_perm[{name!r}]: expected a tuple with one entry per axis, got {axes!r}")
            entries = tuple(_norm_entry(e, name, ax) for ax, e in enumerate(axes))
            self.axes_to_perm[name] = entries
            seen: set[str] = set()
            for ax, e in enumerate(entries):
                factors = [(e, None)] if isinstance(e, str) else ([] if e is None else [(p, k) for k, (p, _) in enumerate(e)])
                for p, k in factors:
                    if p is None:
                        continue
                    if p in seen:
                        raise ValueError(f"axes_to_perm[{name!r}]: permutation {p!r} appears on more than one axis")
                    seen.add(p)
                    perm_to_axes.setdefault(p, []).append(_Use(name, ax, k))
        self.perm_to_axes = {p: perm_to_axes[p] for p in sorted(perm_to_axes)}
        self.buffers = frozenset(buffers)
        unknown = self.buffers - set(self.axes_to_perm)
        if unknown:
            raise ValueError(f"buffers: names not in axes_to_perm: {sorted(unknown)}")

    # ------------------------------------------------------------------ introspection
    @property
    def perm_names(self) -> list[str]:
        return list(self.perm_to_axes)

    def __repr__(self) -> str:
        return f"PermutationSpec({len(self.axes_to_perm)} tensors, {len(self.perm_to_axes)} permutations)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PermutationSpec) and self.axes_to_perm == other.axes_to_perm and self.buffers == other.buffers

    def describe(self) -> str:
        """A readable table: each permutation and where it acts."""
        lines = []
        for p, uses in self.perm_to_axes.items():
            where = ", ".join(f"{u.param}[{u.axis}{'' if u.factor is None else f'.{u.factor}'}]" for u in uses)
            lines.append(f"{p}: {where}")
        return "\n".join(lines)

    def expanded_axes(self, name: str, shape: Sequence[int]) -> tuple[list[int], list[Optional[str]]]:
        """Shape with factored axes expanded, and the permutation (or None) of each expanded axis.

        Raises:
            ValueError: ``shape`` does not match the spec (naming the parameter).
        """
        entries = self.axes_to_perm[name]
        if len(entries) != len(shape):
            raise ValueError(
                f"parameter {name!r}: the spec has {len(entries)} axes, the tensor has shape {tuple(shape)}"
            )
        sizes: list[int] = []
        perms: list[Optional[str]] = []
        for ax, (e, s) in enumerate(zip(entries, shape)):
            if isinstance(e, tuple):
                prod = math.prod(k for _, k in e)
                if prod != s:
                    raise ValueError(
                        f"parameter {name!r}: axis {ax} has size {s}, its factors {e} multiply to {prod}"
                    )
                for p, k in e:
                    sizes.append(k)
                    perms.append(p)
            else:
                sizes.append(int(s))
                perms.append(e)
        return sizes, perms

    def perm_sizes(self, params: Mapping[str, torch.Tensor]) -> dict[str, int]:
        """Size of every permutation, read from ``params`` (which must be consistent).

        Raises:
            ValueError: a parameter of the spec is missing, or two uses of a permutation disagree.
        """
        sizes: dict[str, int] = {}
        where: dict[str, str] = {}
        for p, uses in self.perm_to_axes.items():
            for u in uses:
                if u.param not in params:
                    raise ValueError(f"parameter {u.param!r} is in the spec but missing from the parameters")
                shape = tuple(params[u.param].shape)
                exp, names = self.expanded_axes(u.param, shape)
                k = names.index(p)
                n = exp[k]
                if p in sizes and sizes[p] != n:
                    raise ValueError(
                        f"permutation {p!r}: size {n} at parameter {u.param!r} axis {u.axis} but "
                        f"{sizes[p]} at {where[p]}"
                    )
                sizes.setdefault(p, n)
                where.setdefault(p, f"parameter {u.param!r} axis {u.axis}")
        return sizes

    def check_params(self, params: Mapping[str, torch.Tensor], other: Optional[Mapping[str, torch.Tensor]] = None,
                     names: tuple[str, str] = ("params_a", "params_b")) -> dict[str, int]:
        """Validate parameter dicts against the spec (and each other); returns the permutation sizes.

        Raises:
            ValueError: a spec parameter is missing, shapes disagree with the spec or between
                the two dicts (the message names the parameter).
        """
        for name in self.axes_to_perm:
            if name not in params:
                raise ValueError(f"{names[0]}: parameter {name!r} of the spec is missing")
            if other is not None:
                if name not in other:
                    raise ValueError(f"{names[1]}: parameter {name!r} of the spec is missing")
                if tuple(params[name].shape) != tuple(other[name].shape):
                    raise ValueError(
                        f"parameter {name!r}: shape {tuple(params[name].shape)} in {names[0]} but "
                        f"{tuple(other[name].shape)} in {names[1]} (different architectures?)"
                    )
            self.expanded_axes(name, tuple(params[name].shape))
        return self.perm_sizes(params)


# ----------------------------------------------------------------------------- permutations


def identity_permutation(spec: PermutationSpec, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{p: arange(n)}`` for every permutation of ``spec``."""
    dev = next(iter(params.values())).device if params else None
    return {p: torch.arange(n, device=dev) for p, n in spec.perm_sizes(params).items()}


def random_permutation(spec: PermutationSpec, params: Mapping[str, torch.Tensor],
                       generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
    """A uniformly random permutation for every permutation of ``spec``."""
    dev = next(iter(params.values())).device if params else None
    return {p: torch.randperm(n, generator=generator).to(dev) for p, n in spec.perm_sizes(params).items()}


def invert_permutation(perms: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``inv[p][perm[p][i]] = i`` for every permutation."""
    out = {}
    for p, t in perms.items():
        t = _check_perm(p, t, None)
        inv = torch.empty_like(t)
        inv[t] = torch.arange(len(t), device=t.device, dtype=t.dtype)
        out[p] = inv
    return out


def _check_perm(p: str, t: Any, n: Optional[int], arg: str = "perms") -> torch.Tensor:
    """``t`` (a tensor, array or list) as an int64 permutation of ``0..n-1`` (any length when
    ``n`` is None), else ``ValueError`` naming ``arg[p]``."""
    if not isinstance(t, torch.Tensor):
        try:
            t = torch.as_tensor(t)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"{arg}[{p!r}]: expected a 1-D integer tensor, got {type(t).__name__}") from None
    if t.dim() != 1 or t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{arg}[{p!r}]: expected a 1-D integer tensor, got {t!r}")
    if n is not None and len(t) != n:
        raise ValueError(f"{arg}[{p!r}]: expected {n} entries, got {len(t)}")
    t = t.long()
    if not torch.equal(torch.sort(t).values, torch.arange(len(t), device=t.device)):
        raise ValueError(f"{arg}[{p!r}]: expected a permutation of 0..{len(t) - 1} (each index once), "
                         f"got {t.tolist()[:16]}{' ...' if len(t) > 16 else ''}")
    return t


def permute_tensor(spec: PermutationSpec, name: str, w: torch.Tensor, perms: Mapping[str, torch.Tensor],
                   skip: Optional[tuple[int, ...]] = None) -> torch.Tensor:
    """``w`` (parameter ``name``) with every permutation of the spec applied (expanded axes in ``skip`` left alone)."""
    sizes, names = spec.expanded_axes(name, tuple(w.shape))
    if all(p is None for p in names):
        return w
    x = w.reshape(sizes)
    for k, p in enumerate(names):
        if p is None or (skip is not None and k in skip):
            continue
        x = x.index_select(k, perms[p].to(x.device))
    return x.reshape(w.shape)


def apply_permutation(spec: PermutationSpec, params: Mapping[str, torch.Tensor],
                      perms: Mapping[str, torch.Tensor], *, strict: bool = True) -> dict[str, torch.Tensor]:
    """Permute the hidden units of a model: ``out[name] = params[name]`` indexed by ``perms`` on every axis.

    Args:
        spec: the model's :class:`PermutationSpec`.
        params: ``{name: tensor}``, e.g. ``model.state_dict()``.
        perms: ``{permutation: int64 [n]}``; ``perms[p][i]`` is the unit moved to position ``i``.
        strict: raise for tensors of ``params`` that the spec does not know (0-dim tensors such
            as ``num_batches_tracked`` always pass through).

    Returns:
        A new dict with the same keys (tensors not in the spec are passed through unchanged).

    Example:
        >>> pi_b = apply_permutation(spec, model_b.state_dict(), result.perms)
        >>> model_b.load_state_dict(pi_b)
    """
    sizes = spec.perm_sizes(params)
    checked: dict[str, torch.Tensor] = {}
    for p, n in sizes.items():
        if p not in perms:
            raise ValueError(f"perms: permutation {p!r} is missing")
        checked[p] = _check_perm(p, perms[p], n)
    out: dict[str, torch.Tensor] = {}
    for name, w in params.items():
        if name not in spec.axes_to_perm:
            if strict and isinstance(w, torch.Tensor) and w.dim() > 0:
                raise ValueError(f"params: tensor {name!r} is not in the spec (pass strict=False to copy it unchanged)")
            out[name] = w
            continue
        out[name] = permute_tensor(spec, name, w, checked)
    return out


# ----------------------------------------------------------------------------- ready specs


def _linear_or_conv(prefix: str, out_p: Optional[str], in_p: Optional[str], module: nn.Module,
                    axes: dict[str, tuple[AxisEntry, ...]]) -> None:
    w = module.weight
    axes[f"{prefix}.weight"] = (out_p, in_p) + (None,) * (w.dim() - 2)
    if getattr(module, "bias", None) is not None:
        axes[f"{prefix}.bias"] = (out_p,)


def _norm(prefix: str, p: Optional[str], module: nn.Module, axes: dict[str, tuple[AxisEntry, ...]],
          buffers: set[str]) -> None:
    if isinstance(module, nn.Identity):
        return
    if isinstance(module, (nn.GroupNorm,)) and module.num_groups not in (1, module.num_channels):
        raise ValueError(f"{prefix}: GroupNorm with {module.num_groups} groups is not handled by the ready specs; use trace_permutation_spec")
    if getattr(module, "weight", None) is not None:
        axes[f"{prefix}.weight"] = (p,)
    if getattr(module, "bias", None) is not None:
        axes[f"{prefix}.bias"] = (p,)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.running_mean is not None:
            axes[f"{prefix}.running_mean"] = (p,)
            axes[f"{prefix}.running_var"] = (p,)
            buffers.update({f"{prefix}.running_mean", f"{prefix}.running_var"})
        if module.num_batches_tracked is not None:
            axes[f"{prefix}.num_batches_tracked"] = ()
            buffers.add(f"{prefix}.num_batches_tracked")


def mlp_spec(model: nn.Module) -> PermutationSpec:
    """Spec of :class:`fastorals.models.MLP`: one permutation ``layers.{i}`` per hidden layer."""
    from ..models import MLP

    if not isinstance(model, MLP):
        raise TypeError(f"model: expected fastorals.models.MLP, got {type(model).__name__}")
    axes: dict[str, tuple[AxisEntry, ...]] = {}
    buffers: set[str] = set()
    prev: Optional[str] = None
    for i, (layer, norm) in enumerate(zip(model.layers, model.norms)):
        p = f"layers.{i}"
        _linear_or_conv(f"layers.{i}", p, prev, layer, axes)
        _norm(f"norms.{i}", p, norm, axes, buffers)
        prev = p
    _linear_or_conv("head", None, prev, model.head, axes)
    return PermutationSpec(axes, buffers)


def resnet_spec(model: nn.Module) -> PermutationSpec:
    """Spec of :class:`fastorals.models.CifarResNet` (ResNet-18/20/32).

    One permutation per residual stream (``stream{s}``, shared by the stem or the stage's first
    shortcut and by every block that adds into the stream) and one per block interior
    (``layer{s}.{b}.inner``); BatchNorm running statistics follow their channels.
    """
    from ..models import CifarResNet

    if not isinstance(model, CifarResNet):
        raise TypeError(f"model: expected fastorals.models.CifarResNet, got {type(model).__name__}")
    axes: dict[str, tuple[AxisEntry, ...]] = {}
    buffers: set[str] = set()
    stream = "stream0"
    _linear_or_conv("conv1", stream, None, model.conv1, axes)
    _norm("norm1", stream, model.norm1, axes, buffers)
    count = 0
    for s in range(model.num_stages):
        stage = getattr(model, f"layer{s + 1}")
        for b, block in enumerate(stage):
            pre = f"layer{s + 1}.{b}"
            inner = f"{pre}.inner"
            out_stream = stream
            if len(block.shortcut) > 0:
                count += 1
                out_stream = f"stream{count}"
                _linear_or_conv(f"{pre}.shortcut.0", out_stream, stream, block.shortcut[0], axes)
                _norm(f"{pre}.shortcut.1", out_stream, block.shortcut[1], axes, buffers)
            _linear_or_conv(f"{pre}.conv1", inner, stream, block.conv1, axes)
            _norm(f"{pre}.norm1", inner, block.norm1, axes, buffers)
            _linear_or_conv(f"{pre}.conv2", out_stream, inner, block.conv2, axes)
            _norm(f"{pre}.norm2", out_stream, block.norm2, axes, buffers)
            stream = out_stream
    _linear_or_conv("fc", None, stream, model.fc, axes)
    return PermutationSpec(axes, buffers)


def vgg_spec(model: nn.Module) -> PermutationSpec:
    """Spec of :class:`fastorals.models.VGG`: one permutation per conv layer and per hidden classifier layer."""
    from ..models import VGG

    if not isinstance(model, VGG):
        raise TypeError(f"model: expected fastorals.models.VGG, got {type(model).__name__}")
    axes: dict[str, tuple[AxisEntry, ...]] = {}
    buffers: set[str] = set()
    prev: Optional[str] = None
    for k, layer in enumerate(model.features):
        if isinstance(layer, nn.Conv2d):
            p = f"features.{k}"
            _linear_or_conv(f"features.{k}", p, prev, layer, axes)
            prev = p
        elif isinstance(layer, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.Identity)):
            _norm(f"features.{k}", prev, layer, axes, buffers)
    linears = [(k, m) for k, m in enumerate(model.classifier) if isinstance(m, nn.Linear)]
    for idx, (k, layer) in enumerate(linears):
        p = None if idx == len(linears) - 1 else f"classifier.{k}"
        _linear_or_conv(f"classifier.{k}", p, prev, layer, axes)
        prev = p
    return PermutationSpec(axes, buffers)


def spec_for(model: nn.Module, example_input: Any = None, **trace_kwargs: Any) -> PermutationSpec:
    """The ready spec of a :mod:`fastorals.models` model, else the traced spec (needs ``example_input``)."""
    from ..models import MLP, VGG, CifarResNet

    if isinstance(model, MLP):
        return mlp_spec(model)
    if isinstance(model, CifarResNet):
        return resnet_spec(model)
    if isinstance(model, VGG):
        return vgg_spec(model)
    if example_input is None:
        raise ValueError(f"example_input: needed to trace a spec for {type(model).__name__} (no ready spec)")
    from .trace import trace_permutation_spec

    return trace_permutation_spec(model, example_input, **trace_kwargs)


# ----------------------------------------------------------------------------- check


@dataclass
class SpecCheck:
    """Result of :func:`check_spec`: the largest output difference after a random permutation."""

    ok: bool
    max_abs_diff: float
    max_abs_output: float
    tolerance: float

    def __bool__(self) -> bool:
        return self.ok


def _call(model: nn.Module, example_input: Any) -> Any:
    if isinstance(example_input, tuple):
        return model(*example_input)
    if isinstance(example_input, dict):
        return model(**example_input)
    return model(example_input)


def _flat_tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flat_tensors(o)]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in _flat_tensors(out[k])]
    return []


def _to_double(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.double() if x.is_floating_point() else x
    if isinstance(x, tuple):
        return tuple(_to_double(v) for v in x)
    if isinstance(x, list):
        return [_to_double(v) for v in x]
    if isinstance(x, dict):
        return {k: _to_double(v) for k, v in x.items()}
    return x


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch ops on one thread inside the block (tiny example-input passes: no pool overhead)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def check_spec(model: nn.Module, spec: PermutationSpec, example_input: Any, *, trials: int = 2, seed: int = 0,
               rtol: float = 1e-9, raise_on_failure: bool = True) -> SpecCheck:
    """Verify that permuting a model by ``spec`` leaves its function unchanged.

    A float64 copy of ``model`` (eval mode) gets randomized parameters and normalization
    statistics (so that, e.g., BatchNorm weights of 1 cannot hide a missing entry), then a
    random permutation of every permutation of ``spec``; outputs on ``example_input`` must agree
    to ``rtol`` (relative to the largest output).

    Args:
        model: the model (not modified).
        spec: its spec.
        example_input: a tensor, a tuple of positional arguments, or a dict of keyword arguments.
        trials: random permutations tried.
        seed: seed of the randomization.
        rtol: tolerance relative to max |output|.
        raise_on_failure: raise ``ValueError`` instead of returning a failed :class:`SpecCheck`.

    Returns:
        :class:`SpecCheck` (truthy when the outputs agree).
    """
    with single_thread():
        return _check_spec(model, spec, example_input, trials, seed, rtol, raise_on_failure)


def _check_spec(model: nn.Module, spec: PermutationSpec, example_input: Any, trials: int, seed: int, rtol: float,
                raise_on_failure: bool) -> SpecCheck:
    gen = torch.Generator().manual_seed(seed)
    m = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for _, t in m.named_parameters():
            if t.is_floating_point():
                scale = float(t.abs().mean()) or 1.0
                t.add_(0.5 * scale * torch.randn(t.shape, generator=gen, dtype=t.dtype))
        for name, t in m.named_buffers():
            if name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype))
            elif name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen, dtype=t.dtype))
    sd = m.state_dict()
    x = _to_double(example_input)
    with torch.no_grad():
        ref = _flat_tensors(_call(m, x))
    worst, scale = 0.0, max((float(r.abs().max()) for r in ref if r.numel() and r.is_floating_point()), default=1.0)
    for _ in range(trials):
        perms = random_permutation(spec, sd, generator=gen)
        permuted = apply_permutation(spec, sd, perms, strict=False)
        m2 = copy.deepcopy(m)
        m2.load_state_dict(permuted)
        with torch.no_grad():
            out = _flat_tensors(_call(m2, x))
        for a, b in zip(ref, out):
            if a.is_floating_point():
                worst = max(worst, float((a - b).abs().max()) if a.numel() else 0.0)
            elif not torch.equal(a, b):
                worst = math.inf
    tol = rtol * max(scale, 1e-30)
    res = SpecCheck(worst <= tol, worst, scale, tol)
    if raise_on_failure and not res.ok:
        raise ValueError(
            f"spec check failed: permuting the model changed its output by {worst:.3e} "
            f"(max |output| {scale:.3e}, tolerance {tol:.3e}); the spec misses or misplaces a permutation"
        )
    return res
