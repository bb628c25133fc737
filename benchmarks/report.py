"""Markdown tables and plots from benchmark rows (see harness.py for the schema)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional


def _fmt(x: Optional[float], digits: int = 3) -> str:
    if x is None:
        return "–"
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def markdown_table(rows: list[dict[str, Any]], title: str = "") -> str:
    """One table per suite: time, ratios vs reference and peers, % of the machine limit."""
    out = [f"# {title}\n"] if title else []
    suites: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
    for r in rows:
        suites.setdefault(r["suite"], []).append(r)
    for suite, rs in suites.items():
        out.append(f"\n## {suite}\n")
        out.append("| op | shape | dtype | impl | backend | median ms | p20–p80 ms | × vs reference | × vs peers | % of limit | peak MiB | note |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rs:
            peers = ", ".join(f"{k} {_fmt(v)}×" for k, v in r.get("ratio_vs_peers", {}).items()) or "–"
            pct = "–" if r.get("pct_of_limit") is None else f"{r['pct_of_limit']:.1f}% {r['limit_kind']}"
            if r.get("p20_ms") is None:
                span = "–"
            elif r.get("repeats") == 1:  # one timed call (over the time budget): no spread to show
                span = "1 call"
            else:
                span = f"{_fmt(r['p20_ms'])}–{_fmt(r['p80_ms'])}"
            ratio = "–" if r.get("ratio_vs_reference") is None else f"{_fmt(r['ratio_vs_reference'])}×"
            note = (r.get("note") or "").replace("|", "/")
            out.append(
                f"| {r['case']} | {r['shape']} | {r['dtype']} | {r['impl']} | {r['backend']} | {_fmt(r.get('median_ms'))} "
                f"| {span} | {ratio} | {peers} | {pct} | {_fmt(r.get('peak_mem_mb'))} | {note} |"
            )
    return "\n".join(out) + "\n"


def compact_table(rows: list[dict[str, Any]], suite: str) -> str:
    """A README-sized table of one suite: one line per case, fastorals' time and its ratios.

    Columns: case | shape | fastorals ms (backend) | × vs reference | × vs each peer | % of limit.
    A ratio above 1 means fastorals is faster.
    """
    rs = [r for r in rows if r["suite"] == suite]
    fast = [r for r in rs if r.get("kind") == "fast"] or rs
    peers: list[str] = []
    for r in fast:
        for k in r.get("ratio_vs_peers", {}):
            if k not in peers:
                peers.append(k)
    head = ["case", "shape", "dtype", "fastorals ms", "× vs reference", *[f"× vs {p}" for p in peers], "% of limit"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in fast:
        ratio = "–" if r.get("ratio_vs_reference") is None else f"{_fmt(r['ratio_vs_reference'])}×"
        pr = [f"{_fmt(r['ratio_vs_peers'][p])}×" if p in r.get("ratio_vs_peers", {}) else "–" for p in peers]
        pct = "–" if r.get("pct_of_limit") is None else f"{r['pct_of_limit']:.0f}% {r['limit_kind']}"
        name = r["case"] if r["impl"] == "fastorals" else f"{r['case']} ({r['impl']})"
        cells = [name, r["shape"], str(r["dtype"]), f"{_fmt(r.get('median_ms'))} ({r['backend']})", ratio, *pr, pct]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"



def plot_suite(rows: list[dict[str, Any]], path: str, title: str) -> Optional[str]:
    """Horizontal bars of median time per implementation (log scale), one group per case.

    Returns the path written, or None when matplotlib is missing or nothing was timed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    timed = [r for r in rows if r.get("median_ms")]
    if not timed:
        return None
    groups: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
    for r in timed:
        groups.setdefault(f"{r['case']} {r['shape']} {r['dtype']}", []).append(r)
    colors = {"fast": "#1f77b4", "reference": "#7f7f7f", "peer": "#d62728"}
    labels, values, cols = [], [], []
    for g, rs in groups.items():
        for r in rs:
            labels.append(f"{g} · {r['impl']}")
            values.append(r["median_ms"])
            cols.append(colors.get(r["kind"], "#2ca02c"))
    fig, ax = plt.subplots(figsize=(10, 0.28 * len(labels) + 1.5))
    y = list(range(len(labels)))[::-1]
    ax.barh(y, values, color=cols)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("median time (ms, log scale) — blue: fastorals, grey: reference, red: peers")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    import argparse
    import json

    ap = argparse.ArgumentParser(description="print a compact table of one suite from a results JSON")
    ap.add_argument("results")
    ap.add_argument("--suite", required=True)
    a = ap.parse_args()
    with open(a.results) as f:
        data = json.load(f)
    lim = ", ".join(f"{k} {v:.3g}" for k, v in data.get("limits", {}).items())
    print(f"{data['device']['label'] if isinstance(data.get('device'), dict) else data.get('device')}, "
          f"{data.get('mode')} mode, {data.get('date', '')[:10]}; machine limits: {lim}\n")
    print(compact_table(data["rows"], a.suite))
