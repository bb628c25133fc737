"""Launch-configuration sweep of the augment Triton paths on a CUDA device.

For 224 px images (batch 64, chains of 0/2/5/10 ops at their level, the CIFAR pipeline), times
the kernels alone for each (programs per image, pixels per tile, warps), eagerly (launched
directly, as in the registered op) and replayed from a CUDA graph (no host launch cost), checks
every configuration gives the same bytes, and times the public
:class:`~fastorals.augment.BatchAugment` with a CPU and a CUDA generator beside them, with the
host's share of a call (draws and transfer alone; whole calls back to back and waited for). Writes
``<out>/<device>-augment-sweep.{md,json}``.

    python -m benchmarks.sweep_augment [--budget 150] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any, Callable, Optional

import torch

from fastorals import augment

from . import harness
from .bench_augment import _Draws, _images, _no_graphs

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _configs(h: int, w: int, b: int) -> list[tuple[int, int, Optional[int]]]:
    """(tiles, block, warps) in priority order: the current paths first, then the neighbours."""
    from fastorals.augment import triton as T

    n = T.tiles_per_image(b, h, w)
    out: list[tuple[int, int, Optional[int]]] = [(n, T.tile_pixels(n), 4), (1, T.BLOCK, 8)]
    for block, warps in ((1024, 4), (256, 4), (512, 8), (2048, 8), (512, 2), (1024, 8)):
        tiles = -(-h * w // block)
        for t in (tiles, max(2, tiles // 2)):
            if (t, block, warps) not in out:
                out.append((t, block, warps))
    for cfg in ((-(-h * w // 1024), 1024, 4), (1, 2048, 16)):
        if cfg not in out:
            out.append(cfg)
    return out


def _direct(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn`` launching its Triton kernels directly, as inside the registered op in eager mode
    (outside one, ``wrap_triton`` dispatches each launch through a higher-order op: ~1 ms each)."""
    try:
        from torch._library.triton import set_wrap_triton_enabled
    except ImportError:
        return fn(*args, **kwargs)
    with set_wrap_triton_enabled(False):
        return fn(*args, **kwargs)


def _graph(fn: Callable[[], Any]) -> Callable[[], Any]:
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def _host_ms(fn: Callable[[], Any], rep_s: float, sync_each: bool) -> float:
    """Host wall time per call (ms): calls back to back with one wait at the end (what a training
    loop pays when the device keeps up), or each waited for (latency)."""
    fn()
    torch.cuda.synchronize()
    n, t0 = 0, time.perf_counter()
    while n < 20 or time.perf_counter() - t0 < rep_s:
        fn()
        if sync_each:
            torch.cuda.synchronize()
        n += 1
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1000.0


@contextlib.contextmanager
def _no_launch() -> Iterator[None]:
    """BatchAugment's calls stop before the kernel (they return the images): draws + transfer."""
    from fastorals.augment import api

    real = api._launch
    api._launch = lambda images, *args, **kwargs: images
    try:
        yield
    finally:
        api._launch = real


def _ms(samples: list[float]) -> float:
    return harness.quantile(samples, 0.5) * 1000.0


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep_augment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=150.0, help="seconds; configurations past it are skipped")
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--levels", default="0,2,5,10")
    p.add_argument("--rep-s", type=float, default=0.25, help="timing budget per measurement")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("sweep_augment needs a CUDA device")
    from fastorals.augment import triton as T

    t_start = time.perf_counter()
    dev = "cuda"
    size, b = a.size, a.batch
    levels = [int(x) for x in a.levels.split(",")]
    aug = augment.BatchAugment.cifar(cutout=16)
    images = _images(b, size).to(dev)
    draws = {n: _Draws(aug, images.cpu(), torch.full((b,), n, dtype=torch.int64), 1000 + n) for n in levels}
    args = {n: draws[n].canonical(images) for n in levels}
    rows: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)

    for n in levels:  # the public op: host draws + transfer + kernels
        st = torch.full((b,), n, dtype=torch.int64)
        for gname, gdev, graphs in (("cpu generator", "cpu", True), ("cuda generator", "cuda", True),
                                    ("cpu generator, no graphs", "cpu", False)):
            def call(st=st, gd=gdev):
                return aug(images, st, torch.Generator(device=gd).manual_seed(1))
            fn = call if graphs else _no_graphs(call)
            fn()  # compile and capture outside the timing
            emit({"what": f"BatchAugment ({gname})", "ops": n, "ms": _ms(harness.time_cuda(fn, max_time_s=a.rep_s))})
        # where a call's time goes, on the host's clock (CPU generator, graphs on)
        call = (lambda st=st: aug(images, st, torch.Generator().manual_seed(1)))
        emit({"what": "host: whole call, back to back", "ops": n, "ms": _host_ms(call, a.rep_s, sync_each=False)})
        emit({"what": "host: whole call, waited for", "ops": n, "ms": _host_ms(call, a.rep_s, sync_each=True)})
        with _no_launch():
            emit({"what": "host: draws + transfer only", "ops": n, "ms": _host_ms(call, a.rep_s, sync_each=False)})
    expect = {n: _direct(T.apply_chains, *args[n], tiles=1) for n in levels}
    torch.cuda.synchronize()
    skipped = 0
    for tiles, block, warps in _configs(size, size, b):
        if time.perf_counter() - t_start > a.budget:
            skipped += 1
            continue
        for n in levels:
            fn = (lambda n=n, t=tiles, bl=block, wp=warps: _direct(T.apply_chains, *args[n], tiles=t, block=bl,
                                                                   warps=wp))
            try:
                same = bool(torch.equal(fn(), expect[n]))
                eager = _ms(harness.time_cuda(fn, max_time_s=a.rep_s))
                graph = _ms(harness.time_cuda(_graph(fn), max_time_s=a.rep_s))
            except Exception as e:  # a configuration the device refuses (e.g. out of resources)
                emit({"what": "kernels", "tiles": tiles, "block": block, "warps": warps, "ops": n,
                      "error": f"{type(e).__name__}: {str(e)[:200]}"})
                continue
            emit({"what": "kernels", "tiles": tiles, "block": block, "warps": warps, "ops": n,
                  "ms": eager, "graph_ms": graph, "same_bytes": same})
    label = harness.device_label(dev)
    os.makedirs(a.out, exist_ok=True)
    base = os.path.join(a.out, f"{label}-augment-sweep")
    meta = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "size": size, "batch": b, "levels": levels, "skipped_configs": skipped,
            "seconds": round(time.perf_counter() - t_start, 1)}
    with open(base + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(f"# augment launch sweep — {meta['device']} ({b}x3x{size}x{size}, torch {meta['torch']})\n\n")
        f.write("Median ms; `graph` replays the same launches from a CUDA graph (no host launch cost).\n\n")
        f.write("| what | tiles | block | warps | " + " | ".join(f"{n} ops" for n in levels) + " |\n")
        f.write("|---|---|---|---|" + "---|" * len(levels) + "\n")
        keys: list[tuple] = []
        for r in rows:
            k = (r["what"], r.get("tiles", ""), r.get("block", ""), r.get("warps", ""))
            if k not in keys:
                keys.append(k)
        for k in keys:
            cells = []
            for n in levels:
                r = next((r for r in rows if (r["what"], r.get("tiles", ""), r.get("block", ""),
                                               r.get("warps", "")) == k and r["ops"] == n), None)
                if r is None:
                    cells.append("–")
                elif "error" in r:
                    cells.append("error")
                elif "graph_ms" in r:
                    cells.append(f"{r['ms']:.3g} (graph {r['graph_ms']:.3g}){'' if r['same_bytes'] else ' DIFFERS'}")
                else:
                    cells.append(f"{r['ms']:.3g}")
            f.write(f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | " + " | ".join(cells) + " |\n")
        if skipped:
            f.write(f"\n{skipped} configurations skipped past the {a.budget:.0f} s budget.\n")
    print(f"wrote {base}.md ({meta['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
