"""The one benchmark harness: timing, peak memory, machine limits, a fixed row schema.

A suite (``benchmarks/bench_<module>.py``) defines ``SUITE = Suite(name, cases)`` where
``cases(mode, device)`` yields :class:`Case` objects for ``mode`` in {"smoke", "quick", "full"}
and ``device`` in {"cpu", "cuda"} (yield nothing for a device the suite does not cover).
A case is a group: the fastorals path(s), the reference and every peer run on the same
inputs in the same process, so every ratio is measured side by side.

Row schema (one row per implementation in a case)::

    suite, op, case, shape, dtype, device, impl, kind ("fast" | "reference" | "peer"),
    backend, median_ms, p20_ms, p80_ms, repeats, peak_mem_mb,
    ratio_vs_reference   reference time / this time (>1: faster than the reference)
    ratio_vs_peers       {peer: peer time / this time}
    gflops, gbps         achieved, from the case's flop and byte counts
    pct_of_limit         achieved / machine limit measured in the same run, in %
    limit_kind           "gflops" (large torch.mm) or "gbps" (large tensor copy)
    limit_value          that limit's measured value
    note                 free text (e.g. why a peer was skipped)
"""

from __future__ import annotations

import gc
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch

MODES = ("smoke", "quick", "full")

# ------------------------------------------------------------------------------ cases


@dataclass
class Case:
    """One benchmark group.

    Attributes:
        op: operation name (e.g. "search_shortcut").
        shape: human-readable shape of the inputs (e.g. "50000x3x32x32").
        dtype: input dtype as text.
        device: "cpu" or "cuda".
        fast: {name: fn} fastorals implementations (first one is "the" fast path).
        reference: the module's reference.py path, or None.
        peers: {peer name: fn} what a user would use instead.
        backend: backend of the fast path ("cpp", "triton", "torch"), or {fast impl name: backend}
            when the fast implementations use different backends.
        flops: floating point operations per call (None if not meaningful).
        bytes: bytes that must move per call (None if not meaningful).
        verify: optional ``verify(fast_output, other_output, other_name)`` run once per impl
            so the benchmark compares implementations that agree.
        skip: {impl name: reason} implementations not run at this size (recorded with the reason).
        max_time_s: time budget per implementation (after one warm-up call).
        note: free text carried into every row.
    """

    op: str
    shape: str
    dtype: str
    device: str
    fast: dict[str, Callable[[], Any]]
    reference: Optional[Callable[[], Any]] = None
    peers: dict[str, Callable[[], Any]] = field(default_factory=dict)
    backend: Union[str, dict[str, str]] = "cpp"
    flops: Optional[float] = None
    bytes: Optional[float] = None
    verify: Optional[Callable[[Any, Any, str], None]] = None
    skip: dict[str, str] = field(default_factory=dict)
    max_time_s: float = 2.0
    note: str = ""
    name: str = ""

    def impls(self) -> list[tuple[str, str, Callable[[], Any]]]:
        out = [(n, "fast", f) for n, f in self.fast.items()]
        if self.reference is not None:
            out.append(("reference", "reference", self.reference))
        out += [(n, "peer", f) for n, f in self.peers.items()]
        return out


@dataclass
class Suite:
    name: str
    cases: Callable[[str, str], Iterable[Case]]
    description: str = ""


# ------------------------------------------------------------------------------ timing


def native_backend(device: str) -> Optional[str]:
    """The compiled fast path a suite times on ``device``: ``"triton"`` on CUDA, ``"cpp"`` on the
    CPU when the extension is loaded, else None (only the PyTorch paths can run)."""
    if device.startswith("cuda"):
        return "triton"
    from fastorals import _ext

    return "cpp" if _ext.HAS_EXT else None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_cpu(fn: Callable[[], Any], *, max_time_s: float = 2.0, min_repeats: int = 3,
             max_repeats: int = 200, warmup: int = 1) -> list[float]:
    """Wall-clock samples in seconds (``time.perf_counter``), after ``warmup`` calls.

    Runs at least ``min_repeats`` and stops once ``max_time_s`` is spent. A warm-up call that
    alone exceeds the budget is kept as a sample so very slow peers cost at most ~2 calls.
    """
    samples: list[float] = []
    for _ in range(max(warmup, 1)):
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
    if first > max_time_s:
        return [first]
    spent = 0.0
    while len(samples) < max_repeats and (len(samples) < min_repeats or spent < max_time_s):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        samples.append(dt)
        spent += dt
        if spent > 3 * max_time_s and len(samples) >= 2:
            break
    return samples


def time_cuda(fn: Callable[[], Any], *, max_time_s: float = 1.0) -> list[float]:
    """GPU samples in seconds: every timed run of ``triton.testing.do_bench`` (which flushes the L2
    cache between runs), else a CUDA-event loop. One call (synchronized) is timed first: a slow
    implementation (a host-side reference or peer in a CUDA case) that alone exceeds the budget
    is kept as that single sample, since ``do_bench`` would run it at least seven more times."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    if first > max_time_s:
        return [first]
    try:
        from triton.testing import do_bench

        times = do_bench(fn, warmup=25, rep=max(int(max_time_s * 1000), 50), return_mode="all")
        return [v / 1000.0 for v in times]
    except ImportError:
        pass
    fn()
    torch.cuda.synchronize()
    samples = []
    spent = 0.0
    while len(samples) < 10 or (spent < max_time_s and len(samples) < 1000):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        dt = a.elapsed_time(b) / 1000.0
        samples.append(dt)
        spent += dt
    return samples


def quantile(xs: list[float], q: float) -> float:
    if len(xs) == 1:
        return xs[0]
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# ------------------------------------------------------------------------------ memory


def _rss_hwm_kb() -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _rss_kb() -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set size (Linux >= 4.0)
        return True
    except OSError:
        return False


def peak_memory_mb(fn: Callable[[], Any], device: str) -> Optional[float]:
    """Peak memory one call adds above what was resident before it, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU (Linux): the process's peak resident set
    (VmHWM, reset through /proc/self/clear_refs) minus its resident set before the call;
    None where that is unavailable.
    """
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del out
        return peak / 2**20
    if not _reset_hwm():
        return None
    before = _rss_kb()
    out = fn()
    hwm = _rss_hwm_kb()
    del out
    if before is None or hwm is None:
        return None
    return max(hwm - before, 0) / 1024.0


# ------------------------------------------------------------------------------ limits

_LIMITS: dict[tuple[str, str], dict[str, float]] = {}


def measure_limits(device: str, mode: str = "full") -> dict[str, float]:
    """The machine's own limits measured now: large float32 ``torch.mm`` GFLOP/s and large-copy GB/s."""
    key = (device, "smoke" if mode == "smoke" else "full")
    if key in _LIMITS:
        return _LIMITS[key]
    small = mode == "smoke"
    n = 1024 if small else (2048 if device == "cpu" else 8192)
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    timer = time_cuda if device.startswith("cuda") else time_cpu
    t_mm = statistics.median(timer(lambda: torch.mm(a, b), max_time_s=0.3 if small else 1.5))
    gflops = 2 * n**3 / t_mm / 1e9
    numel = (16 if small else (64 if device == "cpu" else 256)) * 2**20  # float32 elements
    src = torch.empty(numel, device=device).uniform_()
    dst = torch.empty_like(src)
    t_cp = statistics.median(timer(lambda: dst.copy_(src), max_time_s=0.3 if small else 1.5))
    gbps = 2 * numel * 4 / t_cp / 1e9
    _LIMITS[key] = {"gflops": gflops, "gbps": gbps, "mm_n": float(n), "copy_mib": numel * 4 / 2**20}
    if device.startswith("cuda"):  # the matrix units' rate: the limit of bfloat16/float16 rows
        a16, b16 = a.bfloat16(), b.bfloat16()
        t16 = statistics.median(timer(lambda: torch.mm(a16, b16), max_time_s=0.3 if small else 1.5))
        _LIMITS[key]["gflops_16bit"] = 2 * n**3 / t16 / 1e9
    return _LIMITS[key]


def flops_limit_key(limits: dict[str, float], dtype: str) -> str:
    """``gflops_16bit`` for rows whose arithmetic runs in bfloat16/float16 where it was measured,
    else ``gflops`` (float32)."""
    low = dtype.split(",")[0].strip().removeprefix("q ") in ("bfloat16", "float16")
    return "gflops_16bit" if low and "gflops_16bit" in limits else "gflops"


# ------------------------------------------------------------------------------ device names


def cpu_name() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return name


def device_label(device: str) -> str:
    """File-name label of a device, e.g. ``cpu-intel-r-xeon-r-processor-2c`` or ``cuda-nvidia-h100``."""
    if device.startswith("cuda"):
        raw = torch.cuda.get_device_name(0)
        return "cuda-" + re.sub(r"[^a-z0-9]+", "-", raw.lower()).strip("-")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return "cpu-" + re.sub(r"[^a-z0-9]+", "-", cpu_name().lower()).strip("-") + f"-{cores}c"


def device_description(device: str) -> dict[str, Any]:
    import fastorals

    i = fastorals.info(print_it=False)
    d: dict[str, Any] = {
        "label": device_label(device),
        "torch": torch.__version__,
        "fastorals": fastorals.__version__,
        "extension": i.extension_loaded,
        "openmp_threads": i.openmp_threads,
        "torch_threads": torch.get_num_threads(),
        "simd": i.simd,
        "triton": i.triton_version,
    }
    if device.startswith("cuda"):
        d["name"] = torch.cuda.get_device_name(0)
        d["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    else:
        d["name"] = cpu_name()
        d["cores"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return d


# ------------------------------------------------------------------------------ running a case


def _summ(samples: list[float]) -> tuple[float, float, float]:
    return statistics.median(samples), quantile(samples, 0.2), quantile(samples, 0.8)


def run_case(suite: str, case: Case, mode: str, *, memory: bool = True) -> list[dict[str, Any]]:
    """Time every implementation of ``case``; return one schema row per implementation."""
    device = case.device
    limits = measure_limits("cuda" if device.startswith("cuda") else "cpu", mode)
    budget = case.max_time_s * (0.15 if mode == "smoke" else (0.5 if mode == "quick" else 1.0))
    times: dict[str, tuple[float, float, float, int]] = {}
    mems: dict[str, Optional[float]] = {}
    notes: dict[str, str] = {}
    first_out: Any = None
    first_name = next(iter(case.fast))
    for name, kind, fn in case.impls():
        if name in case.skip:
            notes[name] = f"not run: {case.skip[name]}"
            continue
        try:
            out = fn()
            _sync(device)
            if case.verify is not None:
                if name == first_name:
                    first_out = out
                else:
                    case.verify(first_out, out, name)
            del out
            if device.startswith("cuda"):
                samples = time_cuda(fn, max_time_s=budget)
            else:
                samples = time_cpu(fn, max_time_s=budget, min_repeats=1 if mode == "smoke" else 3, warmup=0)
            med, p20, p80 = _summ(samples)
            times[name] = (med, p20, p80, len(samples))
            mems[name] = peak_memory_mb(fn, device) if memory else None
        except Exception as exc:  # a peer failing must not hide the others; recorded in the row
            if kind == "fast" or isinstance(exc, AssertionError):
                raise
            notes[name] = f"failed: {type(exc).__name__}: {exc}"[:300]
    rows = []
    ref_t = times.get("reference", (None,))[0]
    peer_names = list(case.peers)
    for name, kind, _ in case.impls():
        row: dict[str, Any] = {
            "suite": suite, "op": case.op, "case": case.name or case.op, "shape": case.shape,
            "dtype": case.dtype, "device": device, "impl": name, "kind": kind,
            "backend": (case.backend.get(name, "?") if isinstance(case.backend, dict) else case.backend)
            if kind == "fast" else ("reference" if kind == "reference" else name),
            "median_ms": None, "p20_ms": None, "p80_ms": None, "repeats": 0, "peak_mem_mb": None,
            "ratio_vs_reference": None, "ratio_vs_peers": {}, "gflops": None, "gbps": None,
            "pct_of_limit": None, "limit_kind": None, "limit_value": None,
            "note": "; ".join(x for x in (case.note, notes.get(name, "")) if x),
            "mode": mode,
        }
        if name in times:
            med, p20, p80, n = times[name]
            row.update(median_ms=med * 1e3, p20_ms=p20 * 1e3, p80_ms=p80 * 1e3, repeats=n,
                       peak_mem_mb=mems.get(name))
            if ref_t is not None and name != "reference":
                row["ratio_vs_reference"] = ref_t / med
            row["ratio_vs_peers"] = {p: times[p][0] / med for p in peer_names if p in times and p != name}
            pct = {}
            if case.flops:
                row["gflops"] = case.flops / med / 1e9
                fk = flops_limit_key(limits, case.dtype)
                pct[fk] = 100 * row["gflops"] / limits[fk]
            if case.bytes:
                row["gbps"] = case.bytes / med / 1e9
                pct["gbps"] = 100 * row["gbps"] / limits["gbps"]
            if pct:
                k = max(pct, key=pct.get)
                row.update(pct_of_limit=pct[k], limit_kind=k, limit_value=limits[k])
        rows.append(row)
    return rows


def iter_cases(suite: Suite, mode: str, device: str = "cpu") -> Iterator[Case]:
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    for case in suite.cases(mode, device):
        if case.device.split(":")[0] != device:
            raise ValueError(f"suite {suite.name}: case {case.op} is on {case.device}, asked for {device}")
        yield case
