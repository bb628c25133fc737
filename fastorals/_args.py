"""Argument checks shared by the modules: every public entry point converts and checks its
scalars and tensor-likes here, so the same input is accepted (or refused, with the argument's
name) everywhere.

* Integers: Python ints, NumPy integers and 0-dim integer tensors count; bools do not.
* Reals: Python, NumPy and 0-dim real tensors count; bools do not; NaN fails every range.
* Tensor-likes: tensors (detached), or rectangular nested sequences of numbers; anything else
  (ragged lists, strings, a ``torch.Generator`` in the wrong position) is refused naming the
  argument.
"""

from __future__ import annotations

import numbers
import operator
from typing import Any, Optional

import numpy as np
import torch

__all__ = ["as_int", "as_tensor", "check_index_range", "flag", "int_arg", "probability", "real"]


def as_int(v: Any) -> Any:
    """``v`` as a Python int when it is integer-like (an int, a NumPy integer, a 0-dim integer
    tensor; not a bool), else ``v`` unchanged for the caller's check to refuse."""
    if isinstance(v, (bool, np.bool_)):
        return v
    try:
        return operator.index(v)
    except TypeError:
        return v


def int_arg(v: Any, name: str, minimum: Optional[int] = 1) -> int:
    """``v`` as an int >= ``minimum`` (None: any int), else ``ValueError`` naming ``name``."""
    i = as_int(v)
    if not isinstance(i, int) or isinstance(i, bool) or (minimum is not None and i < minimum):
        want = "an int" if minimum is None else f"an int >= {minimum}"
        raise ValueError(f"{name}: expected {want}, got {v!r}")
    return i


def real(v: Any) -> Optional[float]:
    """``v`` as a float when it is a real number (Python, NumPy or 0-dim real tensor; not a
    bool), else None."""
    if isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, torch.Tensor):
        if v.dim() or v.dtype.is_complex or v.dtype == torch.bool:
            return None
        return float(v)
    if isinstance(v, numbers.Real):
        return float(v)
    return None


def probability(v: Any, name: str) -> float:
    """``v`` as a float in [0, 1], else ``ValueError`` naming ``name``."""
    f = real(v)
    if f is None or not 0.0 <= f <= 1.0:  # NaN fails too
        raise ValueError(f"{name}: expected a number in [0, 1], got {v!r}")
    return f


def flag(v: Any, name: str) -> bool:
    """``v`` as a bool (Python or NumPy), else ``TypeError`` naming ``name``."""
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {v!r}")
    return bool(v)


def as_tensor(x: Any, name: str, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``x`` as a tensor (a tensor is detached, not copied), with conversion failures named.

    ``dtype`` applies to non-tensors only (a tensor keeps its dtype for the caller's check).
    Unsigned 64-bit tensors are refused: values past 2**63 would wrap in every int64 check.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, torch.Generator):
        raise TypeError(f"{name}: expected a tensor or nested list of numbers, got a torch.Generator "
                        "(is it one positional argument too early?)")
    elif isinstance(x, (str, bytes)):
        raise TypeError(f"{name}: expected a tensor or nested list of numbers, got {type(x).__name__} {x!r}")
    else:
        try:
            t = torch.as_tensor(x, dtype=dtype)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{name}: expected a tensor or a rectangular nested list of numbers ({e})") from None
    if t.dtype == torch.uint64:
        raise TypeError(f"{name}: expected a signed (or 8/16/32-bit unsigned) integer dtype, got torch.uint64")
    return t


def check_index_range(t: torch.Tensor, name: str, n: int, want: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless every entry of the integer tensor ``t`` lies in
    ``[0, n)`` (``want`` describes that range to the user). One pass (``aminmax``), one host read."""
    if t.numel():
        lo, hi = (int(v) for v in torch.aminmax(t))
        if lo < 0 or hi >= n:
            raise ValueError(f"{name} must lie in {want}, got min {lo}, max {hi}")
