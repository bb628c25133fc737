"""Command line: ``fastorals info`` and ``fastorals repro NAME [--quick|--smoke] [--out DIR]``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="fastorals", description="fastorals: fast ICLR 2023 methods in PyTorch")
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("info", help="versions, extension, OpenMP threads, Triton, CUDA, backend")
    pi.add_argument("--json", action="store_true", help="print as JSON")
    pr = sub.add_parser("repro", help="run a paper reproduction (writes JSON + PNG)")
    pr.add_argument("name", nargs="?", help="reproduction to run (omit with --list)")
    g = pr.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="under 10 minutes on 2 CPU cores")
    g.add_argument("--smoke", action="store_true", help="seconds: checks the pipeline end to end")
    pr.add_argument("--out", default="repro_out", help="output folder (default: repro_out)")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--list", action="store_true", help="list the reproductions")
    args = p.parse_args(argv)

    if args.cmd == "info":
        from . import info

        i = info(print_it=not args.json)
        if args.json:
            print(json.dumps(i.as_dict(), indent=1))
        return 0

    from . import repro

    if args.list or not args.name:
        for name, r in repro.available().items():
            print(f"{name:16s} {r.description}")
        return 0 if args.list else 2
    mode = "smoke" if args.smoke else ("quick" if args.quick else "full")
    try:
        doc = repro.run(args.name, mode, args.out, args.seed)
    except KeyError as exc:
        print(f"fastorals repro: {exc.args[0]}", file=sys.stderr)
        return 2
    print(json.dumps(doc["results"], indent=1)[:4000])
    print(f"[{args.name}] {mode} run took {doc['elapsed_s']} s; wrote {args.out}/{args.name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
