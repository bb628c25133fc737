"""Automatic permutation specs: a dimension-flow analysis of the model's torch.fx graph.

The model is traced to an ATen-level ``torch.fx`` graph (``make_fx`` over
``torch.func.functional_call``, so parameters and buffers are graph inputs). Every dimension
of every tensor in the graph gets a symbol; each op states which dimensions must carry the
same permutation (union-find), which may carry none (frozen: inputs, outputs, spatial axes,
indexed axes, ...), and how a dimension splits into factors when a reshape merges or splits
axes (attention heads, flattened feature maps). Residual additions simply unify their
operands, so a residual stream gets one shared permutation. What is left free on parameter
axes becomes the spec. Unknown ops raise an error naming the node (or, with
``strict=False``, freeze every dimension they touch, which is always sound).
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils import _pytree as pytree

from .spec import AxisEntry, PermutationSpec, check_spec, single_thread

__all__ = ["GraphTrace", "TraceError", "trace_permutation_spec"]


class TraceError(ValueError):
    """The tracer met an op it cannot reason about (names the node)."""


# ----------------------------------------------------------------------------- union-find with factors


class _Sym:
    __slots__ = ("children", "frozen", "parent", "size", "uid")

    def __init__(self, size: int, uid: int, frozen: bool = False) -> None:
        self.size = size
        self.parent: Optional[_Sym] = None
        self.children: Optional[list[_Sym]] = None
        self.frozen = frozen
        self.uid = uid


class _Dims:
    """Union-find over dimension symbols; a class may be split into row-major factors."""

    def __init__(self) -> None:
        self.count = 0

    def new(self, size: int, frozen: bool = False) -> _Sym:
        self.count += 1
        return _Sym(int(size), self.count, frozen or size <= 1)

    def find(self, s: _Sym) -> _Sym:
        root = s
        while root.parent is not None:
            root = root.parent
        while s.parent is not None and s.parent is not root:
            s.parent, s = root, s.parent
        return root

    def freeze(self, s: _Sym) -> None:
        r = self.find(s)
        if r.frozen and r.children is None:
            return
        r.frozen = True
        for c in r.children or ():
            self.freeze(c)

    def leaves(self, s: _Sym) -> list[_Sym]:
        r = self.find(s)
        if r.children is None:
            return [r]
        out: list[_Sym] = []
        for c in r.children:
            out.extend(self.leaves(c))
        return out

    def _bounds(self, syms: Sequence[_Sym]) -> list[int]:
        """Outer cumulative products at every leaf boundary of a row-major group of dims."""
        b, o = [], 1
        for s in syms:
            for leaf in self.leaves(s):
                o *= leaf.size
                b.append(o)
        return b

    def _refine(self, s: _Sym, bounds: list[int]) -> None:
        r = self.find(s)
        inner = [b for b in bounds if 1 < b < r.size]
        if not inner:
            return
        if r.children is None:
            pts = [1, *inner, r.size]
            r.children = [self.new(pts[k + 1] // pts[k], r.frozen) for k in range(len(pts) - 1)]
            return
        o = 1
        for c in r.children:
            cs = self.find(c).size
            self._refine(c, [b // o for b in inner if o < b < o * cs])
            o *= cs

    def unify_groups(self, a: Sequence[_Sym], b: Sequence[_Sym]) -> bool:
        """Unify two row-major groups of dims with equal total size (leaf by leaf).

        Returns False (after freezing both groups) when they have no common factorization.
        """
        a = [s for s in a if s.size > 1]
        b = [s for s in b if s.size > 1]
        if math.prod(s.size for s in a) != math.prod(s.size for s in b):
            raise TraceError("internal error: unify_groups over different sizes")
        if not a:
            return True
        pts = sorted(set(self._bounds(a)) | set(self._bounds(b)))
        if any(pts[k + 1] % pts[k] for k in range(len(pts) - 1)):
            for s in (*a, *b):
                self.freeze(s)
            return False
        for side in (a, b):
            o = 1
            for s in side:
                self._refine(s, [p // o for p in pts if o < p < o * s.size])
                o *= s.size
        la = [leaf for s in a for leaf in self.leaves(s)]
        lb = [leaf for s in b for leaf in self.leaves(s)]
        for x, y in zip(la, lb):
            self._union_leaves(x, y)
        return True

    def _union_leaves(self, x: _Sym, y: _Sym) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx is ry:
            return
        ry.parent = rx
        if rx.frozen or ry.frozen:
            rx.frozen = True

    def unify(self, a: _Sym, b: _Sym) -> None:
        """Same permutation on dims ``a`` and ``b`` (equal sizes; size-1 dims are ignored)."""
        if a.size <= 1 or b.size <= 1:
            return
        if a.size != b.size:
            raise TraceError(f"internal error: unify dims of sizes {a.size} and {b.size}")
        ra, rb = self.find(a), self.find(b)
        if ra is rb:
            return
        frozen = ra.frozen or rb.frozen
        ok = self.unify_groups([ra], [rb])
        ra, rb = self.find(ra), self.find(rb)
        if ra is not rb:
            if ra.children is None and rb.children is not None:
                ra, rb = rb, ra
            rb.parent = ra
            if frozen or not ok or rb.frozen:
                self.freeze(ra)


# ----------------------------------------------------------------------------- graph values


def _shape_of(val: Any) -> Optional[tuple[int, ...]]:
    if isinstance(val, torch.Tensor):
        return tuple(int(s) for s in val.shape)
    return None


@dataclass
class GraphTrace:
    """The traced graph and where each permutation flows.

    Attributes:
        spec: the derived :class:`PermutationSpec` (over ``model.state_dict()`` names).
        graph_module: the ATen ``torch.fx.GraphModule``: inputs are parameters and buffers
            (``input_names``) then the tensors of the example input.
        input_names: names of the parameter/buffer placeholders, in order.
        node_perms: ``{node name: [entry per dim]}`` for every tensor-valued node, entries as in a spec.
        activation_nodes: ``{permutation: [(node name, dim)]}``, the nodes whose dimension ``dim`` is
            exactly that permutation, outputs of nonlinearities first (used by activation matching).
        module_of: ``{node name: module path}`` where known.
    """

    spec: PermutationSpec
    graph_module: torch.fx.GraphModule
    input_names: list[str]
    node_perms: dict[str, list[AxisEntry]]
    activation_nodes: dict[str, list[tuple[str, int]]]
    module_of: dict[str, str] = field(default_factory=dict)
    input_shapes: list[tuple[int, ...]] = field(default_factory=list)


_NONLINEAR = {
    "relu", "gelu", "silu", "sigmoid", "tanh", "elu", "selu", "celu", "leaky_relu", "hardtanh", "hardswish",
    "hardsigmoid", "softplus", "mish", "relu6", "glu", "prelu", "_prelu_kernel", "threshold", "rrelu",
}
_SAME_SHAPE = {
    "clone", "detach", "alias", "contiguous", "_to_copy", "to", "lift_fresh_copy", "lift_fresh", "_softmax",
    "_log_softmax", "softmax", "log_softmax", "_safe_softmax", "dropout", "native_dropout", "feature_dropout",
    "alpha_dropout", "type_as", "_conj", "resolve_conj", "resolve_neg", "positive", "fill", "zero", "copy",
    "_assert_tensor_metadata",
}
_VIEWS = {
    "view", "_unsafe_view", "reshape", "view_copy", "_reshape_alias", "unflatten", "flatten", "squeeze",
    "unsqueeze", "view_as", "reshape_as", "squeeze_copy", "unsqueeze_copy", "_unsafe_view_copy",
}
_REORDERING = {"permute", "transpose", "swapaxes", "swapdims", "t", "expand", "as_strided"}
_FACTORIES = {
    "empty", "zeros", "ones", "full", "empty_like", "zeros_like", "ones_like", "full_like", "new_empty",
    "new_zeros", "new_ones", "new_full", "scalar_tensor", "empty_strided", "new_empty_strided",
}
_REDUCE = {
    "sum", "mean", "amax", "amin", "var", "std", "var_mean", "std_mean", "logsumexp", "linalg_vector_norm",
    "norm", "prod", "any", "all", "nansum", "nanmean", "count_nonzero",
}
_ORDERED = {"cumsum", "cumprod", "sort", "topk", "cummax", "cummin", "logcumsumexp", "argsort", "kthvalue", "median"}
_SDPA = {
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
    "scaled_dot_product_attention", "_scaled_dot_product_attention_math", "_scaled_dot_product_fused_attention_overrideable",
}


class _Analyzer:
    def __init__(self, gm: torch.fx.GraphModule, strict: bool) -> None:
        self.gm = gm
        self.strict = strict
        self.uf = _Dims()
        self.vals: dict[torch.fx.Node, Any] = {}  # node -> dims list, or list of (dims | None) for tuple outputs

    # -- helpers
    def fresh(self, shape: Sequence[int], frozen: bool = False) -> list[_Sym]:
        return [self.uf.new(s, frozen) for s in shape]

    def dims(self, a: Any) -> Optional[list[_Sym]]:
        if isinstance(a, torch.fx.Node):
            v = self.vals.get(a)
            if isinstance(v, list) and (not v or isinstance(v[0], _Sym)):
                return v
        return None

    def freeze_all(self, *vals: Any) -> None:
        for v in vals:
            if isinstance(v, list):
                for s in v:
                    if isinstance(s, _Sym):
                        self.uf.freeze(s)
                    elif isinstance(s, list):
                        self.freeze_all(s)

    def broadcast(self, out: list[_Sym], args: Sequence[Optional[list[_Sym]]]) -> None:
        r = len(out)
        for d in args:
            if d is None:
                continue
            k = len(d)
            if k > r:  # cannot broadcast a larger tensor into the output: be safe
                self.freeze_all(d, out)
                continue
            for i in range(k):
                o = out[r - k + i]
                if d[i].size == o.size:
                    self.uf.unify(d[i], o)
                elif d[i].size != 1:  # not a plain broadcast (e.g. grouped heads): never permute
                    self.uf.freeze(d[i])
                    self.uf.freeze(o)

    def tensor_args(self, node: torch.fx.Node) -> list[Optional[list[_Sym]]]:
        out = []
        for a in pytree.tree_leaves((node.args, node.kwargs)):
            if isinstance(a, torch.fx.Node):
                out.append(self.dims(a))
        return out

    def where(self, node: torch.fx.Node) -> str:
        stack = node.meta.get("nn_module_stack")
        mod = ""
        if stack:
            path = list(stack.values())[-1]
            mod = f" in module {path[0] if isinstance(path, tuple) else path!r}"
        trace = node.meta.get("stack_trace")
        line = ""
        if trace:
            lines = [s.strip() for s in trace.strip().splitlines() if s.strip()]
            line = f"; source: {lines[-1]}" if lines else ""
        return f"node {node.name!r} ({node.target}){mod}{line}"

    # -- main loop
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                shape = _shape_of(node.meta.get("val"))
                self.vals[node] = self.fresh(shape) if shape is not None else None
            elif node.op == "output":
                for a in pytree.tree_leaves(node.args):
                    d = self.dims(a) if isinstance(a, torch.fx.Node) else None
                    if d is not None:
                        self.freeze_all(d)
            elif node.op == "call_function":
                self.call(node)
            elif node.op == "get_attr":
                val = getattr(self.gm, node.target, None)
                shape = _shape_of(val)
                self.vals[node] = self.fresh(shape, frozen=True) if shape is not None else None
            else:
                raise TraceError(f"unexpected graph node {node.op} {node.target}")

    def out_dims(self, node: torch.fx.Node) -> Any:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            return self.fresh(val.shape)
        if isinstance(val, (tuple, list)):
            return [self.fresh(v.shape) if isinstance(v, torch.Tensor) else None for v in val]
        return None

    def call(self, node: torch.fx.Node) -> None:
        target = node.target
        if target is operator.getitem:
            src = self.vals.get(node.args[0])
            self.vals[node] = src[node.args[1]] if isinstance(src, list) and src and not isinstance(src[0], _Sym) else None
            return
        out = self.out_dims(node)
        self.vals[node] = out
        if not isinstance(target, torch._ops.OpOverload):
            if self.strict:
                raise TraceError(f"trace_permutation_spec: cannot handle {self.where(node)} (not an ATen op)")
            self.freeze_all(out, *self.tensor_args(node))
            return
        name = target._schema.name.split("::")[-1]
        base = name[:-1] if name.endswith("_") and not name.endswith("__") else name
        try:
            handled = self.rule(node, target, base, out)
        except TraceError:
            raise
        except (IndexError, KeyError, TypeError, AttributeError) as exc:  # unexpected argument layout
            handled = False
            if self.strict:
                raise TraceError(f"trace_permutation_spec: cannot handle {self.where(node)}: {exc}") from exc
        if not handled:
            if self.strict:
                raise TraceError(
                    f"trace_permutation_spec: cannot handle {self.where(node)}; pass strict=False to freeze "
                    "(never permute) every dimension it touches"
                )
            self.freeze_all(out, *self.tensor_args(node))
            return
        if name != base and isinstance(out, list) and out and isinstance(out[0], _Sym):
            if base in _VIEWS or base in _REORDERING:
                # an in-place view (transpose_, t_, squeeze_, ...) changes ``self``'s own shape: the
                # rule related its old dims to ``out``; later readers of ``self`` see ``out``'s dims
                self.vals[node.args[0]] = out
                return
            self_d = self.dims(node.args[0])  # in-place: the result is ``self``
            if self_d is not None and len(self_d) == len(out):
                for a, b in zip(self_d, out):
                    self.uf.unify(a, b)

    # -- rules: return True when handled
    def rule(self, node: torch.fx.Node, op: torch._ops.OpOverload, base: str, out: Any) -> bool:
        args, kw = node.args, node.kwargs
        D = self.dims
        if torch.Tag.pointwise in op.tags or base in ("where", "masked_fill", "lerp", "addcmul", "addcdiv", "clamp",
                                                      "clamp_min", "clamp_max", "copy", "fill"):
            if not isinstance(out, list) or (out and not isinstance(out[0], _Sym)):
                return False
            self.broadcast(out, self.tensor_args(node))
            return True
        if base == "_prelu_kernel":  # x * w where x < 0: w arrives viewed to broadcast ([1, C], [C, 1, 1])
            if not isinstance(out, list) or (out and not isinstance(out[0], _Sym)):
                return False
            self.broadcast(out, self.tensor_args(node))
            return True
        if base == "prelu":  # w [C] along dim 1 of x (or one shared value)
            x, w = D(args[0]), D(args[1])
            if x is None or out is None or not isinstance(out, list) or len(out) != len(x):
                return False
            for a, b in zip(x, out):
                self.uf.unify(a, b)
            if w is not None and len(w) == 1 and len(x) >= 2 and w[0].size == x[1].size and w[0].size > 1:
                self.uf.unify(w[0], x[1])
            elif w is not None:
                self.freeze_all(w)
            return True
        if base in _SAME_SHAPE:
            x = D(args[0])
            outs = out if (isinstance(out, list) and out and not isinstance(out[0], _Sym)) else [out]
            for o in outs:
                if x is not None and o is not None and len(o) == len(x):
                    for a, b in zip(x, o):
                        self.uf.unify(a, b)
            return True
        if base in _VIEWS or base in ("expand", "expand_copy", "expand_as"):
            x = D(args[0])
            if x is None or out is None:
                return False
            if base.startswith("expand"):
                return self.expand(x, out)
            return self.view(x, out)
        if base in ("permute", "permute_copy"):
            x = D(args[0])
            dims = [d % len(x) for d in args[1]]
            for i, d in enumerate(dims):
                self.uf.unify(x[d], out[i])
            return True
        if base in ("transpose", "transpose_copy", "swapaxes", "swapdims"):
            x = D(args[0])
            if not x:
                return True
            d0, d1 = args[1] % len(x), args[2] % len(x)
            perm = list(range(len(x)))
            perm[d0], perm[d1] = perm[d1], perm[d0]
            for i, d in enumerate(perm):
                self.uf.unify(x[d], out[i])
            return True
        if base in ("t", "t_copy", "numpy_T"):
            x = D(args[0])
            for i, d in enumerate(reversed(range(len(x)))):
                self.uf.unify(x[d], out[i])
            return True
        if base in _FACTORIES:
            return True  # constant along every axis: no constraint
        if base in ("select", "select_copy"):
            x = D(args[0])
            d = args[1] % len(x)
            self.uf.freeze(x[d])
            rest = [s for k, s in enumerate(x) if k != d]
            for a, b in zip(rest, out):
                self.uf.unify(a, b)
            return True
        if base in ("slice", "slice_copy", "narrow", "narrow_copy"):
            x = D(args[0])
            d = (args[1] if len(args) > 1 else kw.get("dim", 0)) % len(x)
            full = out[d].size == x[d].size
            if base.startswith("slice"):
                step = args[4] if len(args) > 4 else kw.get("step", 1)
                full = full and step == 1
            for k, (a, b) in enumerate(zip(x, out)):
                if k == d and not full:
                    self.uf.freeze(a)
                    self.uf.freeze(b)
                else:
                    self.uf.unify(a, b)
            return True
        if base == "index_select":
            x = D(args[0])
            d = args[1] % len(x)
            for k, (a, b) in enumerate(zip(x, out)):
                if k == d:
                    self.uf.freeze(a)
                    self.uf.freeze(b)
                else:
                    self.uf.unify(a, b)
            return True
        if base in ("cat", "concat", "concatenate"):
            tensors = [D(t) for t in args[0]]
            d = (args[1] if len(args) > 1 else kw.get("dim", 0)) % len(out)
            self.uf.freeze(out[d])
            for t in tensors:
                if t is None or len(t) != len(out):  # legacy empty tensors
                    continue
                for k, (a, b) in enumerate(zip(t, out)):
                    if k == d:
                        self.uf.freeze(a)
                    else:
                        self.uf.unify(a, b)
            return True
        if base == "stack":
            tensors = [D(t) for t in args[0]]
            d = (args[1] if len(args) > 1 else kw.get("dim", 0)) % len(out)
            self.uf.freeze(out[d])
            rest = [s for k, s in enumerate(out) if k != d]
            for t in tensors:
                for a, b in zip(t, rest):
                    self.uf.unify(a, b)
            return True
        if base in ("split", "split_with_sizes", "chunk", "unbind", "tensor_split", "unsafe_split",
                    "unsafe_split_with_sizes", "split_copy", "unbind_copy"):
            x = D(args[0])
            d = (args[2] if base not in ("unbind", "unbind_copy") and len(args) > 2 else
                 (args[1] if base in ("unbind", "unbind_copy") and len(args) > 1 else kw.get("dim", 0))) % len(x)
            self.uf.freeze(x[d])
            for o in out:
                if o is None:
                    continue
                if base.startswith("unbind"):
                    rest = [s for k, s in enumerate(x) if k != d]
                    for a, b in zip(rest, o):
                        self.uf.unify(a, b)
                else:
                    for k, (a, b) in enumerate(zip(x, o)):
                        if k == d:
                            self.uf.freeze(b)
                        else:
                            self.uf.unify(a, b)
            return True
        if base == "embedding":
            w, idx = D(args[0]), D(args[1])
            self.uf.freeze(w[0])
            self.uf.unify(w[1], out[-1])
            if idx is not None:
                for a, b in zip(idx, out[:-1]):
                    self.uf.unify(a, b)
            return True
        if base in ("mm", "addmm", "bmm", "baddbmm", "matmul", "mv", "addmv", "dot", "vdot", "outer", "linear"):
            return self.matmul(node, base, out)
        if base in ("convolution", "_convolution", "conv1d", "conv2d", "conv3d", "conv_transpose1d",
                    "conv_transpose2d", "conv_transpose3d"):
            return self.conv(node, base, out)
        if base in ("native_batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
                    "_native_batch_norm_legit_functional", "batch_norm", "cudnn_batch_norm", "miopen_batch_norm",
                    "instance_norm"):
            x = D(args[0])
            outs = out if (out and not isinstance(out[0], _Sym)) else [out]
            if base == "instance_norm":
                return False
            for a in args[1:5]:
                d = D(a)
                if d is not None and len(d) == 1:
                    self.uf.unify(d[0], x[1])
            for k, o in enumerate(outs):
                if o is None:
                    continue
                if k == 0:
                    for a, b in zip(x, o):
                        self.uf.unify(a, b)
                elif len(o) == 1 and o[0].size == x[1].size:
                    self.uf.unify(o[0], x[1])
            return True
        if base in ("native_layer_norm", "layer_norm", "_fused_rms_norm", "rms_norm"):
            x = D(args[0])
            k = len(args[1])
            outs = out if (out and not isinstance(out[0], _Sym)) else [out]
            for a in args[2:4]:
                d = D(a)
                if d is not None:
                    for s, t in zip(d, x[-k:]):
                        self.uf.unify(s, t)
            for j, o in enumerate(outs):
                if o is None:
                    continue
                if j == 0:
                    for a, b in zip(x, o):
                        self.uf.unify(a, b)
                else:
                    for a, b in zip(x[: len(x) - k], o):
                        self.uf.unify(a, b)
            return True
        if base in ("native_group_norm", "group_norm"):
            x = D(args[0])
            if base == "group_norm":
                groups, wi, bi = args[1], 2, 3
            else:
                groups, wi, bi = args[6], 1, 2
            for a in (args[wi] if len(args) > wi else None, args[bi] if len(args) > bi else None):
                d = D(a)
                if d is not None:
                    self.uf.unify(d[0], x[1])
            outs = out if (out and not isinstance(out[0], _Sym)) else [out]
            g_sym = self.factor(x[1], [groups, x[1].size // groups])[0]
            for j, o in enumerate(outs):
                if o is None:
                    continue
                if j == 0:
                    for a, b in zip(x, o):
                        self.uf.unify(a, b)
                else:
                    self.uf.unify(o[0], x[0])
                    if g_sym is not None and len(o) > 1:
                        self.uf.unify(o[1], g_sym)
            return True
        if base in _REDUCE or base in ("max", "min", "argmax", "argmin"):
            return self.reduce(node, base, out)
        if base in _ORDERED or base in ("flip", "roll"):
            x = D(args[0])
            if base == "flip":
                frozen = [d % len(x) for d in args[1]]
            elif base == "roll":
                dims = args[2] if len(args) > 2 else kw.get("dims", [])
                frozen = [d % len(x) for d in dims] if dims else list(range(len(x)))
            else:
                d = args[1] if len(args) > 1 and isinstance(args[1], int) else kw.get("dim", -1)
                if base == "topk":
                    d = args[2] if len(args) > 2 else kw.get("dim", -1)
                frozen = [d % len(x)] if x else []
            outs = out if (out and not isinstance(out[0], _Sym)) else [out]
            for k, s in enumerate(x):
                if k in frozen:
                    self.uf.freeze(s)
            for o in outs:
                if o is None:
                    continue
                for k, (a, b) in enumerate(zip(x, o)):
                    if k in frozen:
                        self.uf.freeze(b)
                    else:
                        self.uf.unify(a, b)
            return True
        if any(base.startswith(p) for p in ("max_pool", "avg_pool", "adaptive_avg_pool", "_adaptive_avg_pool",
                                             "adaptive_max_pool", "upsample_", "_upsample_", "lp_pool", "fractional_max_pool")):
            x = D(args[0])
            k = 3 if "3d" in base else (1 if "1d" in base else 2)
            outs = out if (out and not isinstance(out[0], _Sym)) else [out]
            lead = len(x) - k
            for s in x[lead:]:
                self.uf.freeze(s)
            for o in outs:
                if o is None:
                    continue
                for a, b in zip(x[:lead], o[:lead]):
                    self.uf.unify(a, b)
                for s in o[lead:]:
                    self.uf.freeze(s)
            return True
        if base in ("constant_pad_nd", "pad", "reflection_pad1d", "reflection_pad2d", "replication_pad1d",
                    "replication_pad2d", "reflection_pad3d", "replication_pad3d"):
            x = D(args[0])
            pad = list(args[1])
            padded = {len(x) - 1 - i // 2 for i, p in enumerate(pad) if p != 0}
            for k, (a, b) in enumerate(zip(x, out)):
                if k in padded:
                    self.uf.freeze(a)
                    self.uf.freeze(b)
                else:
                    self.uf.unify(a, b)
            return True
        if base in _SDPA:
            return self.sdpa(node, out)
        if base in ("_local_scalar_dense", "item", "_assert_async", "sym_size", "sym_numel", "sym_stride"):
            self.freeze_all(*self.tensor_args(node))
            return True
        if base in ("arange", "linspace", "logspace", "rand", "randn", "randint", "rand_like", "randn_like",
                    "bernoulli", "normal", "uniform", "tril_indices", "triu_indices", "eye"):
            self.freeze_all(out, *self.tensor_args(node))
            return True
        if base in ("tril", "triu", "diagonal", "diag", "diag_embed", "gather", "scatter", "scatter_add",
                    "index", "index_put", "masked_select", "masked_scatter", "nonzero", "index_add", "index_copy",
                    "take", "repeat", "repeat_interleave", "tile", "one_hot", "unfold", "im2col", "col2im",
                    "pixel_shuffle", "pixel_unshuffle", "channel_shuffle", "native_channel_shuffle", "grid_sampler_2d"):
            self.freeze_all(out, *self.tensor_args(node))
            return True
        return False

    # -- rule helpers
    def factor(self, s: _Sym, sizes: Sequence[int]) -> list[Optional[_Sym]]:
        """Split dim ``s`` into row-major factors of ``sizes``; returns a symbol per factor (None for size 1)."""
        fresh = [self.uf.new(k) if k > 1 else None for k in sizes]
        self.uf.unify_groups([s], [f for f in fresh if f is not None])
        return fresh

    def view(self, x: list[_Sym], out: list[_Sym]) -> bool:
        if any(s.size == 0 for s in (*x, *out)):
            self.freeze_all(x, out)
            return True
        a = [s for s in x if s.size != 1]
        b = [s for s in out if s.size != 1]
        i = j = 0
        while i < len(a) or j < len(b):
            ga, gb = [a[i]], [b[j]]
            pa, pb = a[i].size, b[j].size
            i += 1
            j += 1
            while pa != pb:
                if pa < pb:
                    ga.append(a[i])
                    pa *= a[i].size
                    i += 1
                else:
                    gb.append(b[j])
                    pb *= b[j].size
                    j += 1
            if len(ga) == 1 and len(gb) == 1:
                self.uf.unify(ga[0], gb[0])
            else:
                self.uf.unify_groups(ga, gb)
        return True

    def expand(self, x: list[_Sym], out: list[_Sym]) -> bool:
        k, r = len(x), len(out)
        for i in range(k):
            o = out[r - k + i]
            if x[i].size == o.size:
                self.uf.unify(x[i], o)
        return True

    def matmul(self, node: torch.fx.Node, base: str, out: list[_Sym]) -> bool:
        args = node.args
        D = self.dims
        u = self.uf.unify
        if base in ("addmm", "baddbmm", "addmv"):
            bias = D(args[0])
            a, b = D(args[1]), D(args[2])
            self.broadcast(out, [bias])
            base = {"addmm": "mm", "baddbmm": "bmm", "addmv": "mv"}[base]
        elif base == "linear":
            x, w = D(args[0]), D(args[1])
            bias = D(args[2]) if len(args) > 2 else None
            u(x[-1], w[-1])
            if len(w) == 2:
                u(out[-1], w[0])
            for s, t in zip(x[:-1], out[: len(x) - 1]):
                u(s, t)
            if bias is not None:
                self.broadcast(out, [bias])
            return True
        else:
            a, b = D(args[0]), D(args[1])
        if base == "mm":
            u(a[1], b[0])
            u(out[0], a[0])
            u(out[1], b[1])
        elif base == "bmm":
            u(a[0], b[0])
            u(out[0], a[0])
            u(a[2], b[1])
            u(out[1], a[1])
            u(out[2], b[2])
        elif base == "mv":
            u(a[1], b[0])
            u(out[0], a[0])
        elif base in ("dot", "vdot"):
            u(a[0], b[0])
        elif base == "outer":
            u(out[0], a[0])
            u(out[1], b[0])
        elif base == "matmul":
            if len(a) == 1 and len(b) == 1:
                u(a[0], b[0])
            elif len(b) == 1:
                u(a[-1], b[0])
                for s, t in zip(a[:-1], out):
                    u(s, t)
            elif len(a) == 1:
                u(a[0], b[-2])
                for s, t in zip(b[:-2], out[:-1]):
                    u(s, t)
                u(b[-1], out[-1])
            else:
                u(a[-1], b[-2])
                u(out[-2], a[-2])
                u(out[-1], b[-1])
                self.broadcast(out[:-2], [a[:-2], b[:-2]])
        return True

    def conv(self, node: torch.fx.Node, base: str, out: list[_Sym]) -> bool:
        args = node.args
        D = self.dims
        x, w = D(args[0]), D(args[1])
        b = D(args[2]) if len(args) > 2 else node.kwargs.get("bias")
        b = b if isinstance(b, list) else None
        if base in ("convolution", "_convolution"):
            transposed, groups = bool(args[6]), int(args[8])
        elif base.startswith("conv_transpose"):
            transposed = True
            groups = int(args[6]) if len(args) > 6 else int(node.kwargs.get("groups", 1))
        else:
            transposed = False
            groups = int(args[6]) if len(args) > 6 else int(node.kwargs.get("groups", 1))
        batched = len(x) == len(w)
        if not batched:  # unbatched input (C, *spatial)
            x = [self.uf.new(1), *x]
            out = [self.uf.new(1), *out]
        self.uf.unify(x[0], out[0])
        for s in (*x[2:], *w[2:], *out[2:]):
            self.uf.freeze(s)
        cin, cout = x[1].size, out[1].size
        g = groups
        if g == 1:
            if transposed:
                self.uf.unify(x[1], w[0])
                self.uf.unify(out[1], w[1])
            else:
                self.uf.unify(x[1], w[1])
                self.uf.unify(out[1], w[0])
            if b is not None:
                self.uf.unify(b[0], out[1])
            return True
        gi = self.factor(x[1], [g, cin // g])
        go = self.factor(out[1], [g, cout // g])
        if gi[0] is not None and go[0] is not None:
            self.uf.unify(gi[0], go[0])
        if transposed:  # w: (cin, cout // g, *k)
            self.uf.unify(x[1], w[0])
            if go[1] is not None:
                self.uf.unify(go[1], w[1])
        else:  # w: (cout, cin // g, *k)
            self.uf.unify(out[1], w[0])
            if gi[1] is not None:
                self.uf.unify(gi[1], w[1])
        if b is not None:
            self.uf.unify(b[0], out[1])
        return True

    def reduce(self, node: torch.fx.Node, base: str, out: Any) -> bool:
        args, kw = node.args, node.kwargs
        x = self.dims(args[0])
        if x is None:
            return False
        dims = None
        keep = False
        if base in ("linalg_vector_norm",):
            dims = args[2] if len(args) > 2 else kw.get("dim")
            keep = args[3] if len(args) > 3 else kw.get("keepdim", False)
        elif len(args) > 1 and isinstance(args[1], (int, list, tuple)) and not isinstance(args[1], bool):
            dims = args[1]
            keep = args[2] if len(args) > 2 and isinstance(args[2], bool) else kw.get("keepdim", False)
        else:
            dims = kw.get("dim")
            keep = kw.get("keepdim", False)
        if isinstance(dims, int):
            dims = [dims]
        red = set(range(len(x))) if not dims else {d % len(x) for d in dims}
        indices = base in ("max", "min", "argmax", "argmin") and (dims is not None)
        if base in ("argmax", "argmin") and dims is None:
            self.freeze_all(x)
            return True
        if indices:
            for d in red:
                self.uf.freeze(x[d])
        outs = out if (out and not isinstance(out[0], _Sym)) else [out]
        for o in outs:
            if o is None:
                continue
            kept = [s for k, s in enumerate(x) if k not in red] if not keep else x
            if len(kept) != len(o):
                continue
            for k, (a, b) in enumerate(zip(kept, o)):
                if keep and k in red:
                    continue
                self.uf.unify(a, b)
        return True

    def sdpa(self, node: torch.fx.Node, out: Any) -> bool:
        bound = _bind(node)
        q, k, v = self.dims(bound["query"]), self.dims(bound["key"]), self.dims(bound["value"])
        outs = out if (out and not isinstance(out[0], _Sym)) else [out]
        o = outs[0]
        u = self.uf.unify
        u(q[-1], k[-1])
        u(k[-2], v[-2])
        u(o[-2], q[-2])
        u(o[-1], v[-1])
        self.broadcast(o[:-2], [q[:-2], k[:-2], v[:-2]])
        if bound.get("is_causal"):
            self.uf.freeze(q[-2])
            self.uf.freeze(k[-2])
        mask = bound.get("attn_mask", bound.get("attn_bias"))
        md = self.dims(mask) if isinstance(mask, torch.fx.Node) else None
        if md is not None:
            self.broadcast([*o[:-2], q[-2], k[-2]], [md])
        for extra in outs[1:]:
            if extra is not None and len(extra) == len(o) - 1:  # logsumexp (..., L)
                for a, b in zip(o[:-1], extra):
                    if a.size == b.size:
                        u(a, b)
        return True


def _merge_frozen(factors: Sequence[tuple[Optional[str], int]]) -> tuple[tuple[Optional[str], int], ...]:
    """Merge adjacent unpermuted factors: ((P, 6), (None, 4), (None, 4)) -> ((P, 6), (None, 16))."""
    out: list[tuple[Optional[str], int]] = []
    for p, k in factors:
        if p is None and out and out[-1][0] is None:
            out[-1] = (None, out[-1][1] * k)
        else:
            out.append((p, k))
    return tuple(out)


def _bind(node: torch.fx.Node) -> dict[str, Any]:
    """Arguments of an ATen call by schema name (defaults filled in)."""
    out: dict[str, Any] = {}
    for i, a in enumerate(node.target._schema.arguments):
        if i < len(node.args) and not a.kwarg_only:
            out[a.name] = node.args[i]
        elif a.name in node.kwargs:
            out[a.name] = node.kwargs[a.name]
        elif a.has_default_value():
            out[a.name] = a.default_value
    return out


# ----------------------------------------------------------------------------- tracing


def _make_graph(model: nn.Module, example_input: Any, record: bool):
    from torch.func import functional_call
    from torch.fx.experimental.proxy_tensor import make_fx

    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    names = [n for n, _ in named]
    tensors = [t.detach() for _, t in named]
    if isinstance(example_input, tuple):
        call_args, call_kwargs = example_input, {}
    elif isinstance(example_input, dict):
        call_args, call_kwargs = (), example_input
    else:
        call_args, call_kwargs = (example_input,), {}
    leaves, treedef = pytree.tree_flatten((call_args, call_kwargs))
    tensor_pos = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
    k = len(tensors)

    def f(*flat: torch.Tensor) -> Any:
        state = dict(zip(names, flat[:k]))
        vals = list(leaves)
        for pos, t in zip(tensor_pos, flat[k:]):
            vals[pos] = t
        a, kw = pytree.tree_unflatten(vals, treedef)
        return functional_call(model, state, a, kw, tie_weights=False)

    inputs = [leaves[i] for i in tensor_pos]
    kwargs = {"record_module_stack": True} if record else {}
    try:
        gm = make_fx(f, tracing_mode="real", record_stack_traces=True, **kwargs)(*tensors, *inputs)
    except TypeError:
        gm = make_fx(f, tracing_mode="real")(*tensors, *inputs)
    return gm, names, [tuple(t.shape) for t in inputs]


def trace_permutation_spec(
    model: nn.Module,
    example_input: Any,
    *,
    check: bool = True,
    strict: bool = True,
    return_trace: bool = False,
) -> Any:
    """Derive a model's :class:`PermutationSpec` automatically from its torch.fx graph.

    Handles Linear/Conv chains (grouped and depthwise convolutions, transposed convolutions),
    BatchNorm (with running statistics), LayerNorm, GroupNorm, residual additions (one shared
    permutation per residual stream), reshapes and flattening (a permutation of channels
    becomes a factor of the flattened axis), pooling, concatenation (the concatenated axis is
    left unpermuted) and multi-head attention (``nn.MultiheadAttention`` or q/k/v Linear layers:
    heads, query/key dims and value dims get separate permutations). Inputs and outputs are
    never permuted. The resulting spec is verified with :func:`check_spec` unless ``check=False``.

    Args:
        model: the model (traced in eval mode, not modified).
        example_input: a tensor, a tuple of positional arguments or a dict of keyword arguments.
        check: run :func:`check_spec` on the result (raises ``ValueError`` on failure).
        strict: raise :class:`TraceError` on an op the tracer does not know; with ``strict=False``
            such ops freeze every dimension they touch (sound, but fewer permutations).
        return_trace: return a :class:`GraphTrace` (spec, graph, per-node permutations) instead of the spec.

    Returns:
        :class:`PermutationSpec` over the names of ``model.state_dict()`` (or a :class:`GraphTrace`).

    Raises:
        TraceError: an op the tracer cannot handle (the message names the node, its module and source line).

    Example:
        >>> from fastorals import models, rebasin
        >>> net = models.resnet20(width=2)
        >>> spec = rebasin.trace_permutation_spec(net, torch.randn(2, 3, 32, 32))
    """
    was_training = model.training
    model.eval()
    try:
        with single_thread():
            gm, names, in_shapes = _make_graph(model, example_input, record=True)
    finally:
        model.train(was_training)
    an = _Analyzer(gm, strict)
    an.run()
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    state_keys = list(model.state_dict().keys())
    persistent = set(state_keys)
    buffer_names = {n for n, _ in model.named_buffers(remove_duplicate=False)}
    # inputs beyond parameters/buffers are frozen (never permuted)
    for node in placeholders[len(names):]:
        d = an.vals.get(node)
        if d is not None:
            an.freeze_all(d)
    used = {n for n in gm.graph.nodes if n.users}
    name_of: dict[int, str] = {}
    for node, name in zip(placeholders, names):
        d = an.vals.get(node)
        if d is None:
            continue
        if name not in persistent or node not in used:  # non-persistent buffers / unused tensors: never permuted
            an.freeze_all(d)
    # name every free leaf after its first appearance in state_dict order
    axes: dict[str, tuple[AxisEntry, ...]] = {}
    by_name = dict(zip(names, placeholders))
    taken: set[str] = set()

    def leaf_name(leaf: _Sym, param: str, axis: int, k: Optional[int]) -> str:
        if leaf.uid in name_of:
            return name_of[leaf.uid]
        prefix = param.rsplit(".", 1)[0] if "." in param else param
        role = {0: "out", 1: "in"}.get(axis, f"axis{axis}")
        base = f"{prefix}.{role}" + ("" if k is None else f".{k}")
        nm, c = base, 1
        while nm in taken:
            c += 1
            nm = f"{base}_{c}"
        taken.add(nm)
        name_of[leaf.uid] = nm
        return nm

    def entry(s: _Sym, param: str, axis: int) -> AxisEntry:
        leaves = an.uf.leaves(s)
        if len(leaves) == 1:
            lf = an.uf.find(leaves[0])
            return None if (lf.frozen or lf.size <= 1) else leaf_name(lf, param, axis, None)
        fs = []
        for k, lf in enumerate(leaves):
            lf = an.uf.find(lf)
            fs.append((None if lf.frozen else leaf_name(lf, param, axis, k), lf.size))
        if all(p is None for p, _ in fs):
            return None
        return _merge_frozen(fs)

    for key in state_keys:
        node = by_name.get(key)
        d = an.vals.get(node) if node is not None else None
        if d is None:
            t = model.state_dict()[key]
            axes[key] = (None,) * t.dim()
            continue
        axes[key] = tuple(entry(s, key, ax) for ax, s in enumerate(d))
    spec = PermutationSpec(axes, buffers=[k for k in state_keys if k in buffer_names])
    if check:
        check_spec(model, spec, example_input)
    if not return_trace:
        return spec
    # per-node permutations, for activation matching
    node_perms: dict[str, list[AxisEntry]] = {}
    acts: dict[str, list[tuple[str, int]]] = {}
    nonlin: dict[str, list[tuple[str, int]]] = {}
    module_of: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        d = an.vals.get(node)
        if not (isinstance(d, list) and d and isinstance(d[0], _Sym)):
            continue
        ents = []
        for s in d:
            leaves = [an.uf.find(x) for x in an.uf.leaves(s)]
            if len(leaves) == 1:
                lf = leaves[0]
                ents.append(name_of.get(lf.uid) if not lf.frozen else None)
            else:
                fs = [(None if lf.frozen else name_of.get(lf.uid), lf.size) for lf in leaves]
                ents.append(None if all(p is None for p, _ in fs) else _merge_frozen(fs))
        node_perms[node.name] = ents
        stack = node.meta.get("nn_module_stack")
        if stack:
            path = list(stack.values())[-1]
            module_of[node.name] = path[0] if isinstance(path, tuple) else str(path)
        op = node.target
        base = op._schema.name.split("::")[-1] if isinstance(op, torch._ops.OpOverload) else ""
        for ax, e in enumerate(ents):
            if isinstance(e, str):
                (nonlin if base.rstrip("_") in _NONLINEAR else acts).setdefault(e, []).append((node.name, ax))
    activation_nodes = {p: nonlin.get(p, []) + acts.get(p, []) for p in spec.perm_names}
    return GraphTrace(spec, gm, names, node_perms, activation_nodes, module_of, in_shapes)


def _copy_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


def run_graph(trace: GraphTrace, state: dict[str, torch.Tensor], inputs: Sequence[torch.Tensor],
              capture: Optional[set[str]] = None, hook: Optional[Callable[[str, torch.Tensor], Any]] = None) -> Any:
    """Run the traced graph with the given parameter/buffer values; call ``hook(node, value)`` on captured nodes."""
    gm = trace.graph_module
    env: dict[torch.fx.Node, Any] = {}
    flat = [state[n] for n in trace.input_names] + list(inputs)
    it = iter(flat)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node] = next(it)
        elif node.op == "call_function":
            a = torch.fx.node.map_arg(node.args, lambda n: env[n])
            k = torch.fx.node.map_arg(node.kwargs, lambda n: env[n])
            env[node] = node.target(*a, **k)
            if capture is not None and node.name in capture and hook is not None:
                hook(node.name, env[node])
        elif node.op == "get_attr":
            env[node] = getattr(gm, node.target)
        elif node.op == "output":
            return torch.fx.node.map_arg(node.args[0], lambda n: env[n])
    return None
