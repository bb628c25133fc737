"""Command line: ``fastorals info`` and ``fastorals repro NAME [--quick|--smoke] [--out DIR]``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="fastorals", description="fastorals: fast ICLR 2023 methods in PyTorch")
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("info", help="versions, extension, OpenMP threads, Triton, CUDA, backend")
    pi.add_argument("--json", action="store_true", help="print as JSON")
    pr = sub.add_parser(
        "repro", help="run a paper reproduction (writes JSON + PNG)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="modes: --smoke (seconds), --quick (under 10 minutes on 2 CPU cores), or neither: the full\n"
               "run at the paper's scale (hours on a CPU; several for some reproductions).\n"
               "data: procedural images unless a local copy of CIFAR in the python-pickle layout is given\n"
               "(--cifar10 / --cifar100 DIR, or FASTORALS_CIFAR10_ROOT / FASTORALS_CIFAR100_ROOT); nothing\n"
               "is downloaded.")
    pr.add_argument("name", nargs="?", help="reproduction to run (omit with --list)")
    g = pr.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="under 10 minutes on 2 CPU cores")
    g.add_argument("--smoke", action="store_true", help="seconds: checks the pipeline end to end")
    pr.add_argument("--out", default="repro_out", help="output folder (default: repro_out)")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--cifar10", metavar="DIR", help="a local CIFAR-10 (cifar-10-batches-py, or its parent)")
    pr.add_argument("--cifar100", metavar="DIR", help="a local CIFAR-100 (cifar-100-python, or its parent)")
    pr.add_argument("--list", action="store_true", help="list the reproductions")
    args = p.parse_args(argv)

    if args.cmd == "info":
        from . import info

        i = info(print_it=not args.json)
        if args.json:
            try:
                print(json.dumps(i.as_dict(), indent=1), flush=True)
            except BrokenPipeError:  # e.g. `fastorals info --json | head`: the reader left early
                sys.stdout = open(os.devnull, "w")
        return 0

    from . import repro

    if args.list or not args.name:
        for name, r in repro.available().items():
            print(f"{name:16s} {r.description}")
        return 0 if args.list else 2
    mode = "smoke" if args.smoke else ("quick" if args.quick else "full")
    known = repro.available().get(args.name)
    roots = {}
    for flag, var in (("cifar10", "FASTORALS_CIFAR10_ROOT"), ("cifar100", "FASTORALS_CIFAR100_ROOT")):
        root = getattr(args, flag)
        if root is not None:
            if known is not None and flag not in known.data:
                reads = ", ".join(f"--{d}" for d in known.data) or "no local data set"
                print(f"fastorals repro: --{flag}: the {args.name} reproduction does not read it (it reads: {reads})",
                      file=sys.stderr)
                return 2
            if known is not None and mode not in known.data_modes:
                print(f"fastorals repro: --{flag}: a {mode} run of {args.name} does not read it (it reads it in "
                      f"{' and '.join(known.data_modes)} runs)", file=sys.stderr)
                return 2
            if not os.path.isdir(os.path.expanduser(root)):
                print(f"fastorals repro: --{flag}: {root!r} is not a directory", file=sys.stderr)
                return 2
            roots[var] = root
    out = os.path.expanduser(args.out)
    try:
        if not out:
            raise NotADirectoryError("empty name")
        os.makedirs(repro.output_dir(out, mode), exist_ok=True)
    except OSError as exc:
        print(f"fastorals repro: --out: cannot use {args.out!r} as the output folder ({exc})", file=sys.stderr)
        return 2
    from .data import CifarFormatError, CifarNotFoundError

    saved = {var: os.environ.get(var) for var in roots}
    os.environ.update(roots)  # the reproductions read their data roots from the environment
    try:
        doc = repro.run(args.name, mode, out, args.seed)
    except KeyError as exc:
        print(f"fastorals repro: {exc.args[0]}", file=sys.stderr)
        return 2
    except (CifarNotFoundError, CifarFormatError) as exc:  # a local data set that cannot be read
        print(f"fastorals repro: {exc}", file=sys.stderr)
        return 2
    finally:
        for var, old in saved.items():
            if old is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = old
    results = doc["results"]
    for key in ("table", "tables"):
        if isinstance(results.get(key), str):
            print(results[key])
    print(json.dumps(_brief(results), indent=1))
    where = os.path.join(repro.output_dir(out, mode), f"{args.name}.json")
    print(f"[{args.name}] {mode} run took {doc['elapsed_s']} s; wrote {where} (all results)")
    return 0


def _brief(obj: Any, depth: int = 0) -> Any:
    """The results without their long parts (tables, long lists, deep nesting), still valid JSON."""
    if isinstance(obj, dict):
        if depth >= 2:
            return f"{{{len(obj)} entries}}"
        return {k: _brief(v, depth + 1) for k, v in obj.items() if k not in ("table", "tables")}
    if isinstance(obj, (list, tuple)):
        if len(obj) > 12:
            return f"[{len(obj)} values]"
        return [_brief(v, depth + 1) for v in obj]
    if isinstance(obj, str) and len(obj) > 300:
        return obj[:300] + "..."
    return obj


if __name__ == "__main__":
    sys.exit(main())
