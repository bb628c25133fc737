"""Test helpers shared by every module: one tolerance table, comparison and error asserts.

Tolerances are per dtype and per kind of comparison:

* ``"exact"``: bitwise equality (integer outputs, pointwise uint8 ops, argmax results).
* ``"kernel"``: a fused kernel against its reference on the same dtype (different
  summation order only).
* ``"grad"``: gradients (one more reduction than the forward).

Low-precision outputs (fp16/bf16) can also be judged relative to the reference's own error
against a float64 oracle with :func:`assert_close_relative_to`, as flash-attention does.

Example:
    >>> from fastorals.testing import assert_close
    >>> assert_close(fast(x), reference(x))              # tolerance from x's dtype
    >>> assert_close(g_fast, g_ref, kind="grad")
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

import torch

__all__ = [
    "TOLERANCES",
    "assert_close",
    "assert_close_relative_to",
    "assert_grads_close",
    "assert_raises",
    "cuda_available",
    "make_noncontiguous",
    "tolerance",
    "triton_test_device",
]

# (atol, rtol) per dtype and kind.
TOLERANCES: dict[str, dict[torch.dtype, tuple[float, float]]] = {
    "kernel": {
        torch.float64: (1e-10, 1e-9),
        torch.float32: (1e-5, 1e-4),
        torch.bfloat16: (2e-2, 2e-2),
        torch.float16: (2e-3, 2e-3),
    },
    "grad": {
        torch.float64: (1e-9, 1e-8),
        torch.float32: (5e-5, 5e-4),
        torch.bfloat16: (5e-2, 5e-2),
        torch.float16: (5e-3, 5e-3),
    },
}


def tolerance(dtype: torch.dtype, kind: str = "kernel") -> tuple[float, float]:
    """(atol, rtol) for ``dtype`` and ``kind`` ("kernel" or "grad"); integer dtypes: exact."""
    if kind == "exact" or not dtype.is_floating_point:
        return 0.0, 0.0
    if kind not in TOLERANCES:
        raise ValueError(f"kind: expected one of {sorted(TOLERANCES)} or 'exact', got {kind!r}")
    table = TOLERANCES[kind]
    if dtype not in table:
        raise ValueError(f"dtype: no tolerance for {dtype} (have {list(table)})")
    return table[dtype]


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    kind: str = "kernel",
    dtype: Optional[torch.dtype] = None,
    atol: Optional[float] = None,
    rtol: Optional[float] = None,
    msg: str = "",
) -> None:
    """Assert two tensors agree within the table's tolerance for ``dtype`` (default: ``actual``'s).

    Shapes, dtypes and devices must match exactly (a kernel that silently changes a dtype is
    a bug). NaNs must be in the same places.
    """
    if not isinstance(actual, torch.Tensor) or not isinstance(expected, torch.Tensor):
        raise TypeError(f"assert_close: expected tensors, got {type(actual)} and {type(expected)}")
    d = dtype or actual.dtype
    a_tol, r_tol = tolerance(d, kind)
    if atol is not None:
        a_tol = atol
    if rtol is not None:
        r_tol = rtol
    torch.testing.assert_close(
        actual, expected, atol=a_tol, rtol=r_tol, equal_nan=True, check_device=True,
        msg=(lambda m: f"{msg}\n{m}" if msg else m),
    )


def assert_grads_close(
    actual: dict[str, Optional[torch.Tensor]] | list[Optional[torch.Tensor]],
    expected: dict[str, Optional[torch.Tensor]] | list[Optional[torch.Tensor]],
    *,
    dtype: Optional[torch.dtype] = None,
) -> None:
    """Compare gradients name by name (dict) or position by position (list); None must match None."""
    if isinstance(actual, dict):
        assert isinstance(expected, dict) and set(actual) == set(expected), (
            f"gradient names differ: {sorted(actual)} vs {sorted(expected)}"
        )
        items = [(k, actual[k], expected[k]) for k in actual]
    else:
        assert len(actual) == len(expected), f"{len(actual)} gradients vs {len(expected)}"
        items = [(str(i), a, e) for i, (a, e) in enumerate(zip(actual, expected))]
    for name, a, e in items:
        if a is None or e is None:
            assert a is None and e is None, f"gradient {name}: one is None ({a is None}, {e is None})"
            continue
        assert_close(a, e, kind="grad", dtype=dtype, msg=f"gradient {name}")


def assert_close_relative_to(
    actual: torch.Tensor,
    baseline: torch.Tensor,
    oracle: torch.Tensor,
    *,
    factor: float = 2.0,
    atol: float = 1e-6,
) -> None:
    """Low-precision check: ``max|actual - oracle| <= factor * max|baseline - oracle| + atol``.

    ``oracle`` is the float64 (or float32) ground truth, ``baseline`` a trusted implementation
    at the same low precision (e.g. SDPA in bf16).
    """
    o = oracle.double()
    err = (actual.double() - o).abs().max().item()
    base = (baseline.double() - o).abs().max().item()
    assert err <= factor * base + atol, (
        f"error vs oracle {err:.3e} exceeds {factor} x baseline error {base:.3e} + {atol:.1e}"
    )


@contextmanager
def assert_raises(exc_type: type[BaseException], *words: str) -> Iterator[None]:
    """Expect ``exc_type`` whose message contains every word in ``words`` (case-insensitive).

    Use it to check that an error names the bad argument and what was expected:

        >>> with assert_raises(ValueError, "labels", "num_classes"):
        ...     search_shortcut(images, labels + 100)
    """
    try:
        yield
    except exc_type as exc:
        text = str(exc).lower()
        missing = [w for w in words if w.lower() not in text]
        if missing:
            raise AssertionError(f"{exc_type.__name__} message {str(exc)!r} lacks {missing}") from exc
        return
    raise AssertionError(f"expected {exc_type.__name__} mentioning {words}, nothing was raised")


def make_noncontiguous(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The same values as ``x`` in a non-contiguous layout (strided view of a larger buffer)."""
    shape = list(x.shape)
    d = dim % max(x.dim(), 1)
    if x.dim() == 0:
        return x
    shape[d] *= 2
    big = torch.zeros(shape, dtype=x.dtype, device=x.device)
    idx = [slice(None)] * x.dim()
    idx[d] = slice(0, None, 2)
    view = big[tuple(idx)]
    view.copy_(x)
    assert not view.is_contiguous() or x.numel() <= 1
    return view


def cuda_available() -> bool:
    return torch.cuda.is_available()


def triton_test_device() -> Optional[torch.device]:
    """Device on which Triton kernel tests run: CUDA if present, CPU under TRITON_INTERPRET=1, else None."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if re.fullmatch(r"\s*(1|true|yes|on)\s*", os.environ.get("TRITON_INTERPRET", ""), re.I):
        return torch.device("cpu")
    return None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_entry(rank: int, worker, world: int, port: int, args: tuple) -> None:
    import gc

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        worker(rank, world, *args)
        gc.collect()  # DDP wrappers the worker made hold the group: gone before it is destroyed
        dist.barrier()  # every rank is done with every collective
    finally:
        dist.destroy_process_group()


def run_gloo_ranks(worker, *args, world: int = 2) -> None:
    """Run ``worker(rank, world, *args)`` in ``world`` spawned CPU processes joined in a gloo process
    group (set up before and torn down after the worker; ``worker`` must be a module-level function).

    A rank killed by a signal (a gloo thread aborting at teardown, seen once in CI) runs all ranks
    once more on a fresh port; an exception raised by the worker, or a second crash, propagates.

    Example:
        >>> run_gloo_ranks(_worker, str(tmp_path))  # doctest: +SKIP
    """
    import torch.multiprocessing as mp

    for attempt in range(2):
        try:
            mp.start_processes(_gloo_entry, args=(worker, world, _free_port(), args), nprocs=world, join=True,
                               start_method="spawn")
            return
        except mp.ProcessExitedException as exc:
            if exc.signal_name is None or attempt:
                raise
