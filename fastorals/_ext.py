"""Loading of the C++ extension and choice of backend.

The extension ``fastorals._C`` is loaded once, at import. If it is missing (built with
``FASTORALS_NO_EXT=1``, no compiler, an import error) or disabled at run time with
``FASTORALS_NO_EXT=1``, ``HAS_EXT`` is False and ``EXT_ERROR`` says exactly why; every op
then runs its PyTorch path.

Backends, per op call, chosen by :func:`select_backend`:

``"cpp"``        the C++ kernels (CPU tensors)
``"triton"``     Triton kernels (CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1``)
``"torch"``      a PyTorch implementation of the fast algorithm (no custom kernel)
``"reference"``  the op's ``reference.py``: slow, obvious, the oracle

The environment variable ``FASTORALS_BACKEND`` (or :func:`use_backend`) asks for one of
them; ``"auto"`` (the default) picks the fastest available. An explicit request for a
backend that cannot serve the call raises :class:`BackendUnavailableError`.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import threading
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Optional

import torch

BACKENDS = ("auto", "cpp", "triton", "torch", "reference")


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run the call."""


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _load_extension() -> tuple[Optional[ModuleType], Optional[str]]:
    if _truthy(os.environ.get("FASTORALS_NO_EXT")):
        return None, "disabled by FASTORALS_NO_EXT=1"
    try:
        mod = importlib.import_module("fastorals._C")
    except ImportError as exc:  # not built, or built for another interpreter/ABI
        return None, f"{type(exc).__name__}: {exc}"
    return mod, None


_C, EXT_ERROR = _load_extension()
HAS_EXT: bool = _C is not None


def ext() -> ModuleType:
    """The loaded extension module; raises :class:`BackendUnavailableError` when absent."""
    if _C is None:
        raise BackendUnavailableError(f"the C++ extension fastorals._C is not available ({EXT_ERROR})")
    return _C


def ext_topic(topic: str) -> Optional[ModuleType]:
    """``fastorals._C.<topic>`` or None when the extension (or that topic) is missing."""
    return getattr(_C, topic, None) if _C is not None else None


# ----------------------------------------------------------------------------- triton


def triton_interpret() -> bool:
    """True when Triton runs kernels on the CPU (``TRITON_INTERPRET=1``)."""
    return _truthy(os.environ.get("TRITON_INTERPRET"))


_TRITON_STATE: dict[str, object] = {}


def triton_status() -> tuple[bool, Optional[str]]:
    """(importable, reason when not). Imports triton at most once, lazily."""
    if "ok" not in _TRITON_STATE:
        if importlib.util.find_spec("triton") is None:
            _TRITON_STATE.update(ok=False, reason="triton is not installed (pip install triton)")
        else:
            try:
                importlib.import_module("triton")
                importlib.import_module("triton.language")
                _TRITON_STATE.update(ok=True, reason=None)
            except Exception as exc:  # broken install
                _TRITON_STATE.update(ok=False, reason=f"import triton failed: {type(exc).__name__}: {exc}")
    return bool(_TRITON_STATE["ok"]), _TRITON_STATE["reason"]  # type: ignore[return-value]


def has_triton() -> bool:
    return triton_status()[0]


def triton_runs_on(device: torch.device) -> bool:
    """Whether a Triton kernel can run on tensors of ``device`` in this process."""
    if not has_triton():
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and triton_interpret()


# ----------------------------------------------------------------------------- backend choice

_local = threading.local()


def requested_backend() -> str:
    """The backend asked for: :func:`use_backend` if active, else ``FASTORALS_BACKEND``, else "auto"."""
    forced = getattr(_local, "stack", None)
    if forced:
        return forced[-1]
    value = os.environ.get("FASTORALS_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise BackendUnavailableError(f"FASTORALS_BACKEND={value!r}: expected one of {', '.join(BACKENDS)}")
    return value


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force a backend inside a ``with`` block (thread-local), e.g. for A/B tests.

    Example:
        >>> with fastorals.use_backend("reference"):
        ...     pattern = fastorals.onepixel.search_shortcut(images, labels)
    """
    if name not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, got {name!r}")
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def available_backends(device: torch.device, implemented: Iterable[str]) -> list[str]:
    """Which of ``implemented`` can run on ``device`` now, fastest first."""
    order = ("triton", "cpp", "torch", "reference")
    impl = set(implemented)
    out = []
    for b in order:
        if b not in impl:
            continue
        if b == "cpp" and not (HAS_EXT and device.type == "cpu"):
            continue
        if b == "triton" and not (device.type == "cuda" and triton_runs_on(device)):
            # under the interpreter Triton is correct but slow: never chosen automatically on CPU
            continue
        out.append(b)
    return out


def select_backend(op: str, device: torch.device, implemented: Iterable[str]) -> str:
    """The backend that runs ``op`` for tensors on ``device``.

    Args:
        op: op name, for error messages.
        device: where the inputs live.
        implemented: backends this op has (always includes "reference").
    Raises:
        BackendUnavailableError: the requested backend is not implemented for ``op`` or cannot
            run on ``device`` in this process.
    """
    impl = tuple(implemented)
    req = requested_backend()
    if req == "auto":
        avail = available_backends(device, impl)
        return avail[0] if avail else "reference"
    if req not in impl:
        raise BackendUnavailableError(
            f"{op}: backend {req!r} is not implemented (implemented: {', '.join(impl)})"
        )
    if req == "cpp" and not HAS_EXT:
        raise BackendUnavailableError(f"{op}: backend 'cpp' requested but the extension is not loaded ({EXT_ERROR})")
    if req == "cpp" and device.type != "cpu":
        raise BackendUnavailableError(f"{op}: backend 'cpp' needs CPU tensors, got device {device}")
    if req == "triton" and not triton_runs_on(device):
        ok, reason = triton_status()
        why = reason if not ok else f"tensors on {device} (Triton needs CUDA, or TRITON_INTERPRET=1 on CPU)"
        raise BackendUnavailableError(f"{op}: backend 'triton' requested but unavailable: {why}")
    return req
