"""Run every registered benchmark suite and write results.

    python -m benchmarks.run                 # full run on CPU (and CUDA rows if a GPU is present)
    python -m benchmarks.run --quick         # smaller sizes, same cases
    python -m benchmarks.run --smoke         # tiny sizes: checks the suites run (CI)
    python -m benchmarks.run --only onepixel --only rebasin
    python -m benchmarks.run --only augment --match 224px   # only the cases whose name has "224px"

Writes ``benchmarks/results/<device>[-quick|-smoke].json`` (rows merged by suite with what is
already there), ``<device>[...].md`` and one plot per suite ``<device>[...]-<suite>.png``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import os
import pkgutil
import sys
import time
from typing import Any

import torch

from fastorals._io import atomic_write

from . import harness, report

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def discover() -> dict[str, harness.Suite]:
    """All ``benchmarks/bench_*.py`` modules that define ``SUITE``."""
    import benchmarks

    suites: dict[str, harness.Suite] = {}
    for m in sorted(pkgutil.iter_modules(benchmarks.__path__), key=lambda m: m.name):
        if not m.name.startswith("bench_"):
            continue
        mod = importlib.import_module(f"benchmarks.{m.name}")
        suite = getattr(mod, "SUITE", None)
        if isinstance(suite, harness.Suite):
            suites[suite.name] = suite
    return suites


def _load(path: str) -> dict[str, Any]:
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


def _save(base: str, device: str, limits: dict[str, Any], mode: str, t_start: float,
          rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Write ``<base>.json``; called after every case, so a run stopped midway keeps what it measured."""
    doc = {
        "device": harness.device_description(device),
        "limits": limits,
        "mode": mode,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": round(time.perf_counter() - t_start, 1),
        "rows": rows,
    }
    atomic_write(base + ".json", lambda f: json.dump(doc, f, indent=1), text=True)  # Ctrl-C keeps the last rows
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="smaller sizes")
    g.add_argument("--smoke", action="store_true", help="tiny sizes, just check every suite runs")
    p.add_argument("--only", action="append", default=[], metavar="MODULE", help="run only this suite (repeatable)")
    p.add_argument("--match", action="append", default=[], metavar="TEXT",
                   help="run only the cases whose name contains TEXT (repeatable: any of them)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: CPU rows, plus CUDA rows when a GPU is present")
    p.add_argument("--out", default=RESULTS, help="results folder (default: benchmarks/results)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--list", action="store_true", help="list suites and exit")
    args = p.parse_args(argv)
    mode = "smoke" if args.smoke else ("quick" if args.quick else "full")

    suites = discover()
    if args.list:
        for name, s in suites.items():
            print(f"{name:16s} {s.description}")
        return 0
    unknown = [o for o in args.only if o not in suites]
    if unknown:
        p.error(f"--only: unknown suite(s) {unknown}; known: {sorted(suites)}")
    selected = {k: v for k, v in suites.items() if not args.only or k in args.only}

    devices = ["cpu"]
    if args.device == "cuda":
        if not torch.cuda.is_available():
            p.error("--device cuda: no CUDA device is available")
        devices = ["cuda"]
    elif args.device == "auto" and torch.cuda.is_available():
        devices = ["cpu", "cuda"]

    from tqdm.auto import tqdm

    os.makedirs(args.out, exist_ok=True)
    status = 0
    for device in devices:
        label = harness.device_label(device)
        suffix = "" if mode == "full" else f"-{mode}"
        base = os.path.join(args.out, f"{label}{suffix}")
        limits = harness.measure_limits(device, mode)
        print(f"[{device}] {label}: limits {limits['gflops']:.1f} GFLOP/s (mm {int(limits['mm_n'])}), "
              f"{limits['gbps']:.1f} GB/s (copy {limits['copy_mib']:.0f} MiB)")
        rows: list[dict[str, Any]] = []
        t_start = time.perf_counter()
        old = _load(base + ".json")
        kept = [r for r in old.get("rows", []) if r.get("suite") not in selected
                or (args.match and not any(t in r.get("case", "") for t in args.match))]

        for name, suite in selected.items():
            for case in tqdm(harness.iter_cases(suite, mode, device), desc=f"{name} [{device}]", unit="case",
                             leave=False):
                if args.match and not any(t in (case.name or case.op) for t in args.match):
                    continue
                try:
                    rows += harness.run_case(name, case, mode)
                except Exception as exc:
                    status = 1
                    print(f"FAILED {name}/{case.op} {case.shape}: {type(exc).__name__}: {exc}", file=sys.stderr)
                    rows.append({"suite": name, "op": case.op, "case": case.name or case.op, "shape": case.shape,
                                 "dtype": case.dtype, "device": device, "impl": "-", "kind": "fast",
                                 "backend": case.backend, "note": f"FAILED: {type(exc).__name__}: {exc}"[:300],
                                 "mode": mode})
                _save(base, device, limits, mode, t_start, kept + rows)
        doc = _save(base, device, limits, mode, t_start, kept + rows)
        title = f"fastorals benchmarks — {doc['device']['name']} ({label}, {mode})"
        with open(base + ".md", "w") as f:
            f.write(report.markdown_table(doc["rows"], title))
            f.write(f"\nLimits measured in the same run: {limits['gflops']:.1f} GFLOP/s (float32 torch.mm), "
                    f"{limits['gbps']:.1f} GB/s (tensor copy).\n")
        if not args.no_plots:
            for name in selected:
                report.plot_suite([r for r in rows if r["suite"] == name], f"{base}-{name}.png", f"{name} — {label}")
        print(report.markdown_table(rows))
        print(f"wrote {base}.json and {base}.md")
    return status


if __name__ == "__main__":
    sys.exit(main())
