"""Regression heads with one interface: RLEL and the baselines it is compared against.

Every head maps backbone features [B, F] to a raw output (``forward``), turns (output, labels)
into a scalar training loss (``loss``) and decodes outputs into predictions in label units
(``predict``). ``param_groups`` gives optimizer groups (RLEL's code matrix has its own learning
rate multiplier).

==========================  ======================  =========================================
head                        output                  loss / decoding
==========================  ======================  =========================================
``LabelEncodingHead``       z [B, M] (real bits)    soft-target CE over z D + a R1 + b R2 /
                                                    expected value (or argmax) over levels
``DirectRegressionHead``    [B] (normalized)        L1 or L2 / identity (rescaled)
``MulticlassHead``          logits [B, Q]           CE on the nearest level / expected or argmax
``BELHead``                 bit logits [B, M]       per-bit BCE against a fixed code /
                                                    correlation with the level codes
==========================  ======================  =========================================

Example:
    >>> backbone = fastorals.models.resnet20(width=0.5)
    >>> head = LabelEncodingHead(backbone.fc.in_features, num_bits=32, label_range=(-75, 75), num_levels=151)
    >>> model = RegressionModel(backbone.features, head)
    >>> opt = torch.optim.Adam(param_groups(model, lr=1e-3))
    >>> out = model(x); loss = model.loss(out, y); pred = model.predict(out)
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import codes as codes_mod
from . import functional as Fn
from .grid import LabelGrid, RangeLike


def _encoder(in_features: int, out_features: int, bottleneck: Optional[int]) -> nn.Module:
    if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
        raise ValueError(f"in_features: expected a positive int, got {in_features!r}")
    if bottleneck is None:
        return nn.Linear(in_features, out_features)
    if isinstance(bottleneck, bool) or not isinstance(bottleneck, int) or bottleneck < 1:
        raise ValueError(f"bottleneck: expected None or a positive int, got {bottleneck!r}")
    return nn.Sequential(nn.Linear(in_features, bottleneck), nn.Linear(bottleneck, out_features))


def _check_features(x: object, in_features: int) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"features: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != in_features:
        raise ValueError(f"features: expected shape [B, {in_features}], got {tuple(x.shape)}")
    return x


def _check_decode_mode(mode: str, allowed: tuple[str, ...]) -> str:
    if mode not in allowed:
        raise ValueError(f"decode: expected one of {allowed}, got {mode!r}")
    return mode


class RegressionHead(nn.Module):
    """Base class: a head over backbone features with ``loss`` and ``predict``."""

    grid: LabelGrid

    @property
    def label_range(self) -> tuple[float, float]:
        return self.grid.label_range

    def loss(self, output: Tensor, labels: Tensor, *, return_terms: bool = False) -> Any:  # pragma: no cover
        raise NotImplementedError

    def predict(self, output: Tensor, mode: Optional[str] = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def param_groups(self, lr: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """One group with every parameter at ``lr``."""
        return [{"params": list(self.parameters()), "lr": lr, "weight_decay": weight_decay}]

    def _labels(self, labels: Tensor, like: Tensor) -> Tensor:
        if not isinstance(labels, Tensor):
            raise TypeError(f"labels: expected a torch.Tensor, got {type(labels).__name__}")
        if labels.dim() == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.dim() != 1 or labels.shape[0] != like.shape[0]:
            raise ValueError(f"labels: expected shape [{like.shape[0]}], got {tuple(labels.shape)}")
        labels = labels.to(device=like.device, dtype=like.dtype if like.dtype.is_floating_point else torch.float32)
        self.grid.check_labels(labels)
        return labels


class LabelEncodingHead(RegressionHead):
    """RLEL head: features -> (bottleneck) -> z [B, M]; learned code matrix D [M, Q].

    Args:
        in_features: size of the backbone features F.
        num_bits: M, length of the real-valued code.
        label_range: (lo, hi) spanned by the levels.
        num_levels: Q >= 2 quantized levels (l_q = lo + q (hi - lo) / (Q - 1)).
        bottleneck: optional width of a low-dimensional linear layer before the bits.
        alpha: R1 weight (error correction). beta: R2 weight (bit transitions).
        temperature: soft-target temperature in level steps. margin: R1 distance per level step.
        code_lr_mult: learning-rate multiplier of D in :meth:`param_groups` (10 in the paper).
        init: "uniform" (U[0, 1), the paper) or the name of a fixed code ("unary", "johnson",
            "bcd", "binary"; its bipolar form, needs matching ``num_bits``), or a [M, Q] tensor.
        decode: default decoding, "expected" or "argmax".

    Shapes: features [B, F] -> z [B, M]; ``predict(z)`` -> [B].

    Example:
        >>> head = LabelEncodingHead(64, num_bits=32, label_range=(-75, 75), num_levels=151)
        >>> z = head(features); loss = head.loss(z, y); y_hat = head.predict(z)
    """

    def __init__(
        self,
        in_features: int,
        num_bits: int,
        label_range: RangeLike,
        num_levels: int,
        bottleneck: Optional[int] = None,
        *,
        alpha: float = 1e-4,
        beta: float = 1e-4,
        temperature: float = 1.0,
        margin: float = 2.0,
        code_lr_mult: float = 10.0,
        init: Union[str, Tensor] = "uniform",
        decode: str = "expected",
    ) -> None:
        super().__init__()
        self.grid = LabelGrid.make(label_range, num_levels)
        if isinstance(num_bits, bool) or not isinstance(num_bits, int) or num_bits < 1:
            raise ValueError(f"num_bits: expected a positive int, got {num_bits!r}")
        self.in_features, self.num_bits, self.num_levels, self.bottleneck = in_features, num_bits, num_levels, bottleneck
        self.encoder = _encoder(in_features, num_bits, bottleneck)
        self.alpha = Fn._positive(alpha, "alpha", allow_zero=True)
        self.beta = Fn._positive(beta, "beta", allow_zero=True)
        self.temperature = Fn._positive(temperature, "temperature")
        self.margin = Fn._positive(margin, "margin", allow_zero=True)
        self.code_lr_mult = Fn._positive(code_lr_mult, "code_lr_mult")
        self.decode_mode = _check_decode_mode(decode, ("expected", "argmax"))
        self.codes = nn.Parameter(self._initial_codes(init))

    def _initial_codes(self, init: Union[str, Tensor]) -> Tensor:
        M, Q = self.num_bits, self.num_levels
        if isinstance(init, Tensor):
            if tuple(init.shape) != (M, Q):
                raise ValueError(f"init: expected a tensor of shape [{M}, {Q}], got {tuple(init.shape)}")
            return init.detach().to(torch.float32).clone()
        if init == "uniform":
            return torch.rand(M, Q)
        if init in codes_mod.CODES:
            c = codes_mod.make_code(init, Q)  # [Q, M']
            if c.shape[1] != M:
                raise ValueError(f"init: code {init!r} for {Q} levels has {c.shape[1]} bits, but num_bits={M}")
            return 2.0 * c.T.to(torch.float32) - 1.0
        raise ValueError(f"init: expected 'uniform', one of {codes_mod.CODES} or a tensor, got {init!r}")

    def extra_repr(self) -> str:
        return (f"num_bits={self.num_bits}, num_levels={self.num_levels}, label_range={self.grid.label_range}, "
                f"alpha={self.alpha:g}, beta={self.beta:g}, temperature={self.temperature:g}, "
                f"code_lr_mult={self.code_lr_mult:g}")

    def forward(self, features: Tensor) -> Tensor:
        """Encoded output z [B, M]."""
        return self.encoder(_check_features(features, self.in_features))

    def loss(self, z: Tensor, labels: Tensor, *, return_terms: bool = False) -> Union[Tensor, Fn.RLELTerms]:
        """CE + alpha R1 + beta R2 (see :func:`rlel_loss`); ``return_terms`` adds the parts and predictions."""
        return Fn.rlel_loss(z, self.codes.to(z.dtype), labels, self.grid.label_range, alpha=self.alpha,
                            beta=self.beta, temperature=self.temperature, margin=self.margin,
                            return_terms=return_terms)

    def predict(self, z: Tensor, mode: Optional[str] = None) -> Tensor:
        """Decoded labels [B]: expected value over the levels (default) or the argmax level."""
        mode = _check_decode_mode(mode or self.decode_mode, ("expected", "argmax"))
        return Fn.decode(z, self.codes.to(z.dtype), self.grid.label_range, mode)

    def param_groups(self, lr: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Encoder at ``lr``; the code matrix at ``lr * code_lr_mult`` without weight decay."""
        return [
            {"params": list(self.encoder.parameters()), "lr": lr, "weight_decay": weight_decay},
            {"params": [self.codes], "lr": lr * self.code_lr_mult, "weight_decay": 0.0},
        ]


class DirectRegressionHead(RegressionHead):
    """Direct regression: features -> (bottleneck) -> one value, trained with L1 or L2.

    The output is normalized: 0 maps to the middle of ``label_range`` and +-1 to its ends, which
    keeps the loss scale independent of the label unit.

    Args:
        in_features: size of the features. label_range: (lo, hi). loss: "l1" or "l2".
        bottleneck: optional low-dimensional layer.
    """

    def __init__(self, in_features: int, label_range: RangeLike, loss: str = "l1",
                 bottleneck: Optional[int] = None) -> None:
        super().__init__()
        self.grid = LabelGrid.make(label_range, 2)
        if loss not in ("l1", "l2"):
            raise ValueError(f"loss: expected 'l1' or 'l2', got {loss!r}")
        self.loss_name, self.in_features = loss, in_features
        self.encoder = _encoder(in_features, 1, bottleneck)
        self.center = 0.5 * (self.grid.lo + self.grid.hi)
        self.half = 0.5 * (self.grid.hi - self.grid.lo)

    def extra_repr(self) -> str:
        return f"loss={self.loss_name}, label_range={self.grid.label_range}"

    def forward(self, features: Tensor) -> Tensor:
        return self.encoder(_check_features(features, self.in_features))[:, 0]

    def loss(self, output: Tensor, labels: Tensor, *, return_terms: bool = False) -> Tensor:
        target = (self._labels(labels, output) - self.center) / self.half
        if self.loss_name == "l1":
            return F.l1_loss(output, target)
        return F.mse_loss(output, target)

    def predict(self, output: Tensor, mode: Optional[str] = None) -> Tensor:
        return (self.center + self.half * output).clamp(self.grid.lo, self.grid.hi)


class MulticlassHead(RegressionHead):
    """Multiclass classification over the Q levels (CE on the nearest level).

    Args:
        in_features, label_range, num_levels, bottleneck: as :class:`LabelEncodingHead`.
        decode: "expected" (softmax-weighted levels, default) or "argmax".
    """

    def __init__(self, in_features: int, label_range: RangeLike, num_levels: int,
                 bottleneck: Optional[int] = None, decode: str = "expected") -> None:
        super().__init__()
        self.grid = LabelGrid.make(label_range, num_levels)
        self.in_features, self.num_levels = in_features, num_levels
        self.encoder = _encoder(in_features, num_levels, bottleneck)
        self.decode_mode = _check_decode_mode(decode, ("expected", "argmax"))

    def extra_repr(self) -> str:
        return f"num_levels={self.num_levels}, label_range={self.grid.label_range}"

    def forward(self, features: Tensor) -> Tensor:
        return self.encoder(_check_features(features, self.in_features))

    def loss(self, logits: Tensor, labels: Tensor, *, return_terms: bool = False) -> Tensor:
        return F.cross_entropy(logits, self.grid.nearest(self._labels(labels, logits)))

    def predict(self, logits: Tensor, mode: Optional[str] = None) -> Tensor:
        mode = _check_decode_mode(mode or self.decode_mode, ("expected", "argmax"))
        from . import reference

        fn = reference.expected_decode if mode == "expected" else reference.argmax_decode
        return fn(logits, self.grid.lo, self.grid.step)


class BELHead(RegressionHead):
    """Binary-encoded labels (BEL) with a fixed code: one binary classifier per bit.

    Training: binary cross-entropy of each bit logit against the bit of the nearest level's code
    (summed over bits, averaged over the batch). Decoding: the code posterior of independent
    bits, softmax_q(1/2 sum_k (2 c_qk - 1) z_k), i.e. correlation of the logits with the bipolar
    codes; "expected" returns its expected level, "argmax" the best-correlated level.

    Args:
        in_features: feature size. code: "unary", "johnson", "bcd", "binary" or a [Q, M] 0/1 tensor.
        label_range, num_levels, bottleneck: as :class:`LabelEncodingHead`.
        decode: "expected" (default) or "argmax".
    """

    def __init__(self, in_features: int, code: Union[str, Tensor], label_range: RangeLike, num_levels: int,
                 bottleneck: Optional[int] = None, decode: str = "expected") -> None:
        super().__init__()
        self.grid = LabelGrid.make(label_range, num_levels)
        if isinstance(code, Tensor):
            if code.dim() != 2 or code.shape[0] != num_levels:
                raise ValueError(f"code: expected a [{num_levels}, M] 0/1 tensor, got shape {tuple(code.shape)}")
            if not bool(((code == 0) | (code == 1)).all()):
                raise ValueError("code: expected only 0/1 entries")
            bits, self.code_name = code.to(torch.float32), "custom"
        else:
            bits, self.code_name = codes_mod.make_code(code, num_levels).to(torch.float32), code
        self.in_features, self.num_levels = in_features, num_levels
        self.register_buffer("code_bits", bits)  # [Q, M]
        self.register_buffer("bipolar", (bits - 0.5).T.contiguous())  # [M, Q] = (2c - 1) / 2
        self.encoder = _encoder(in_features, bits.shape[1], bottleneck)
        self.decode_mode = _check_decode_mode(decode, ("expected", "argmax"))

    @property
    def num_bits(self) -> int:
        return int(self.code_bits.shape[1])

    def extra_repr(self) -> str:
        return f"code={self.code_name}, num_bits={self.num_bits}, num_levels={self.num_levels}"

    def forward(self, features: Tensor) -> Tensor:
        return self.encoder(_check_features(features, self.in_features))

    def loss(self, logits: Tensor, labels: Tensor, *, return_terms: bool = False) -> Tensor:
        target = self.code_bits[self.grid.nearest(self._labels(labels, logits))].to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / max(logits.shape[0], 1)

    def predict(self, logits: Tensor, mode: Optional[str] = None) -> Tensor:
        mode = _check_decode_mode(mode or self.decode_mode, ("expected", "argmax"))
        return Fn.decode(logits, self.bipolar.to(logits.dtype), self.grid.label_range, mode)


class RegressionModel(nn.Module):
    """backbone (inputs -> features [B, F]) followed by a :class:`RegressionHead`.

    ``forward`` returns the head's raw output; ``loss`` and ``predict`` delegate to the head.
    """

    def __init__(self, backbone: Union[nn.Module, Callable[[Tensor], Tensor]], head: RegressionHead) -> None:
        super().__init__()
        if not isinstance(head, RegressionHead):
            raise TypeError(f"head: expected a RegressionHead, got {type(head).__name__}")
        if not isinstance(backbone, nn.Module):
            backbone = _Lambda(backbone)
        self.backbone, self.head = backbone, head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))

    def loss(self, output: Tensor, labels: Tensor, **kw: Any) -> Any:
        return self.head.loss(output, labels, **kw)

    def predict(self, output: Tensor, mode: Optional[str] = None) -> Tensor:
        return self.head.predict(output, mode)


class _Lambda(nn.Module):
    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, nn.Module):  # a bound method such as resnet.features: keep its parameters
            self.owner = owner

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


HEADS = ("rlel", "direct-l1", "direct-l2", "multiclass", "bel-unary", "bel-johnson", "bel-bcd", "bel-binary")


def make_head(method: str, in_features: int, label_range: RangeLike, num_levels: int, *,
              num_bits: int = 32, bottleneck: Optional[int] = None, **kwargs: Any) -> RegressionHead:
    """Build a head by name: one of ``HEADS`` ("rlel", "direct-l1", "direct-l2", "multiclass",
    "bel-unary", "bel-johnson", "bel-bcd", "bel-binary"). ``kwargs`` go to the head's constructor."""
    if method == "rlel":
        return LabelEncodingHead(in_features, num_bits, label_range, num_levels, bottleneck, **kwargs)
    if method in ("direct-l1", "direct-l2"):
        return DirectRegressionHead(in_features, label_range, method[-2:], bottleneck, **kwargs)
    if method == "multiclass":
        return MulticlassHead(in_features, label_range, num_levels, bottleneck, **kwargs)
    if method.startswith("bel-") and method[4:] in codes_mod.CODES:
        return BELHead(in_features, method[4:], label_range, num_levels, bottleneck, **kwargs)
    raise ValueError(f"method: expected one of {', '.join(HEADS)}, got {method!r}")


def param_groups(model: nn.Module, lr: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """Optimizer parameter groups for any model holding :class:`LabelEncodingHead` modules.

    Every code matrix gets ``lr * head.code_lr_mult`` and no weight decay; all other
    parameters get ``lr`` and ``weight_decay``.

    Example:
        >>> opt = torch.optim.Adam(param_groups(model, lr=1e-3))
    """
    if not lr > 0:
        raise ValueError(f"lr: expected a positive learning rate, got {lr}")
    code_params: dict[int, float] = {}
    for m in model.modules():
        if isinstance(m, LabelEncodingHead):
            code_params[id(m.codes)] = m.code_lr_mult
    groups: dict[float, list[nn.Parameter]] = {}
    rest: list[nn.Parameter] = []
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        if id(p) in code_params:
            groups.setdefault(code_params[id(p)], []).append(p)
        else:
            rest.append(p)
    out: list[dict[str, Any]] = [{"params": rest, "lr": lr, "weight_decay": weight_decay}] if rest else []
    out += [{"params": ps, "lr": lr * mult, "weight_decay": 0.0} for mult, ps in groups.items()]
    return out

