"""RLEL reproduction: MAE of learned label encodings vs direct regression, multiclass and BEL codes.

Offline regression tasks, every method with the same backbone, optimizer, schedule, batch
size and number of steps, several seeds:

* ``rotated-shapes``: angle in [-75, 75] degrees of a rendered shape (see
  :func:`fastorals.label_encoding.rotated_shapes`), a small CNN backbone, 151 one-degree levels.
* ``diabetes`` (scikit-learn's bundled 442-patient set) and ``friedman1`` (scikit-learn's procedural
  Friedman #1 benchmark), 10 features each, an MLP backbone, 65 levels.

Methods: RLEL (learned codes, CE + alpha R1 + beta R2, expected-value decoding), direct regression
with L1 and L2 losses, multiclass classification over the levels, BEL with fixed unary, Johnson
and BCD codes (per-bit BCE, correlation decoding). Reports mean +- std MAE per method and the
relative change of RLEL's MAE against direct regression and multiclass classification (the
paper reports -10.9% and -12.4% averaged over its tasks), and plots RLEL's learned code matrix.

Modes: smoke (seconds, pipeline check), quick (< 10 min on 2 cores), full (larger data, longer
training, 5 seeds; about an hour on 2 cores).
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from typing import Any

import torch
from torch import nn

from ..label_encoding import (
    RegressionModel,
    evaluate_mae,
    fit_regression,
    load_tabular,
    make_head,
    rotated_shape_splits,
)
from . import pyplot, register, savefig

METHODS = ("rlel", "direct-l1", "direct-l2", "multiclass", "bel-unary", "bel-johnson", "bel-bcd")

# RLEL settings (R1 weight alpha, R2 weight beta, code length M); the loss uses the batch-mean
# CE, so alpha multiplies mean_i sum_j of R1 (see fastorals.label_encoding.rlel_loss).
RLEL_KW = {"alpha": 1e-4, "beta": 1e-4, "num_bits": 32}

CONFIG: dict[str, dict[str, Any]] = {
    "smoke": {
        "rotated-shapes": dict(size=16, n_train=512, n_test=256, epochs=1, batch=64, lr=2e-3, width=8, seeds=[0],
                               methods=("rlel", "direct-l1", "multiclass", "bel-johnson"), levels=151),
        "diabetes": dict(epochs=3, batch=32, lr=3e-3, seeds=[0], methods=("rlel", "direct-l1"), levels=65),
    },
    "quick": {
        "rotated-shapes": dict(size=16, n_train=16_000, n_test=2_000, epochs=10, batch=64, lr=2e-3, width=16,
                               seeds=[0, 1, 2], methods=METHODS, levels=151),
        "diabetes": dict(epochs=40, batch=32, lr=3e-3, seeds=[0, 1, 2, 3, 4], methods=METHODS, levels=65),
        "friedman1": dict(n_samples=2000, epochs=40, batch=32, lr=3e-3, seeds=[0, 1, 2, 3, 4], methods=METHODS,
                          levels=65),
    },
    "full": {
        "rotated-shapes": dict(size=24, n_train=40_000, n_test=5_000, epochs=12, batch=64, lr=2e-3, width=24,
                               seeds=[0, 1, 2, 3, 4], methods=METHODS, levels=151),
        "diabetes": dict(epochs=40, batch=32, lr=3e-3, seeds=list(range(10)), methods=METHODS, levels=65),
        "friedman1": dict(n_samples=5000, epochs=60, batch=32, lr=3e-3, seeds=list(range(10)), methods=METHODS,
                          levels=65),
    },
}


def _cpu_seconds() -> float:
    """CPU time of this process (all threads): a load-independent measure of the work done."""
    try:
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    except ImportError:  # pragma: no cover - not on Linux/macOS
        return float("nan")


def small_cnn(size: int, width: int) -> nn.Module:
    """conv-BN-ReLU x3 (two stride-2) -> flatten -> Linear(64) -> ReLU: features [B, 64]."""
    w = width
    return nn.Sequential(
        nn.Conv2d(3, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
        nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
        nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
        nn.Flatten(), nn.Linear(2 * w * math.ceil(size / 4) ** 2, 64), nn.ReLU(),
    )


def mlp(in_features: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_features, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())


def _head_kwargs(method: str) -> dict[str, Any]:
    if method == "rlel":
        return dict(RLEL_KW)
    return {}


def _train_eval(method: str, backbone: nn.Module, splits, cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    kw = _head_kwargs(method)
    head = make_head(method, 64, splits.label_range, cfg["levels"], **kw)
    model = RegressionModel(backbone, head)
    t0 = time.perf_counter()
    fit_regression(model, splits.train.loader(cfg["batch"], seed=seed), cfg["epochs"], lr=cfg["lr"], seed=seed)
    test = splits.test.loader(1000, shuffle=False)
    out = {"mae": evaluate_mae(model, test), "seconds": round(time.perf_counter() - t0, 1)}
    if method in ("rlel", "multiclass") or method.startswith("bel-"):
        out["mae_argmax"] = evaluate_mae(model, test, "argmax")
    if method == "rlel":
        out["codes"] = head.codes.detach().clone()
    return out


def _summary(per_seed: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    out = {}
    for m, runs in per_seed.items():
        maes = [r["mae"] for r in runs]
        out[m] = {"mean": statistics.fmean(maes), "std": statistics.stdev(maes) if len(maes) > 1 else 0.0,
                  "n": len(maes), "seconds": sum(r["seconds"] for r in runs)}
        arg = [r["mae_argmax"] for r in runs if "mae_argmax" in r]
        if arg:
            out[m]["mean_argmax"] = statistics.fmean(arg)
    return out


def _relative(summary: dict[str, dict[str, float]]) -> dict[str, float]:
    rel = {}
    if "rlel" not in summary:
        return rel
    r = summary["rlel"]["mean"]
    direct = [summary[m]["mean"] for m in ("direct-l1", "direct-l2") if m in summary]
    if direct:
        rel["vs_direct_best_pct"] = 100.0 * (r - min(direct)) / min(direct)
    if "multiclass" in summary:
        rel["vs_multiclass_pct"] = 100.0 * (r - summary["multiclass"]["mean"]) / summary["multiclass"]["mean"]
    bel = [summary[m]["mean"] for m in summary if m.startswith("bel-")]
    if bel:
        rel["vs_bel_best_pct"] = 100.0 * (r - min(bel)) / min(bel)
    return rel


def _table(name: str, summary: dict[str, dict[str, float]]) -> str:
    rows = [f"| {name} | method | MAE (mean ± std) | seeds |", "|---|---|---|---|"]
    best = min(s["mean"] for s in summary.values())
    for m, s in summary.items():
        mark = " **(best)**" if s["mean"] == best else ""
        rows.append(f"| | {m} | {s['mean']:.3f} ± {s['std']:.3f}{mark} | {s['n']} |")
    return "\n".join(rows)


def _splits(task: str, cfg: dict[str, Any], seed: int):
    if task == "rotated-shapes":
        return rotated_shape_splits(cfg["n_train"], cfg["n_test"], size=cfg["size"], seed=seed)
    return load_tabular(task, seed=seed, n_samples=cfg.get("n_samples", 2000))


def _run_task(task: str, cfg: dict[str, Any], seed0: int, log: list[str]) -> dict[str, Any]:
    per_seed: dict[str, list[dict[str, Any]]] = {m: [] for m in cfg["methods"]}
    codes = None
    for s in cfg["seeds"]:
        seed = seed0 + s
        splits = _splits(task, cfg, seed)
        for m in cfg["methods"]:
            torch.manual_seed(1000 * seed + 7)
            backbone = small_cnn(cfg["size"], cfg["width"]) if task == "rotated-shapes" else mlp(splits.train.inputs.shape[1])
            r = _train_eval(m, backbone, splits, cfg, seed)
            if "codes" in r:
                c = r.pop("codes")
                codes = c if codes is None else codes
            per_seed[m].append(r)
            log.append(f"{task} seed={seed} {m}: MAE {r['mae']:.3f} ({r['seconds']}s)")
            print(f"[label_encoding] {log[-1]}", file=sys.stderr, flush=True)
    summary = _summary(per_seed)
    return {"per_seed": per_seed, "summary": summary, "relative": _relative(summary),
            "table": _table(task, summary), "codes": codes, "config": {k: v for k, v in cfg.items()}}


def _sign_transitions(codes: torch.Tensor) -> dict[str, float]:
    """How often each learned bit changes sign along the label axis (binarized code structure)."""
    signs = codes > codes.mean(dim=1, keepdim=True)
    flips = (signs[:, 1:] != signs[:, :-1]).sum(dim=1).float()
    return {"mean": float(flips.mean()), "max": float(flips.max()), "min": float(flips.min())}


def _plot_codes(codes: torch.Tensor, label_range: tuple[float, float], out_dir: str, name: str) -> str:
    plt = pyplot()
    M, Q = codes.shape
    lv = torch.linspace(label_range[0], label_range[1], Q)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    im = axes[0].imshow(codes.numpy(), aspect="auto", cmap="coolwarm",
                        extent=(label_range[0], label_range[1], M - 0.5, -0.5))
    axes[0].set_xlabel("label level")
    axes[0].set_ylabel("bit k")
    axes[0].set_title("learned code matrix D")
    fig.colorbar(im, ax=axes[0])
    order = codes.std(dim=1).argsort(descending=True)[:6]
    for k in order.tolist():
        axes[1].plot(lv.numpy(), codes[k].numpy(), label=f"bit {k}")
    axes[1].set_xlabel("label level")
    axes[1].set_title("six most varying bits")
    axes[1].legend(fontsize=7)
    dist = torch.cdist(codes.T, codes.T, p=1)
    im2 = axes[2].imshow(dist.numpy(), cmap="viridis", extent=(*label_range, label_range[1], label_range[0]))
    axes[2].set_title("L1 distance between level codes")
    fig.colorbar(im2, ax=axes[2])
    fig.tight_layout()
    return savefig(fig, out_dir, name)


@register("label_encoding", "RLEL vs direct regression, multiclass and BEL codes: MAE on rotated shapes, diabetes and Friedman #1")
def run(mode: str, out_dir: str, seed: int) -> dict[str, Any]:
    cfg = CONFIG[mode]
    t0, c0 = time.perf_counter(), _cpu_seconds()
    log: list[str] = []
    results: dict[str, Any] = {"mode": mode, "rlel_settings": dict(RLEL_KW), "tasks": {}}
    for task, tcfg in cfg.items():
        tt, tc = time.perf_counter(), _cpu_seconds()
        res = _run_task(task, tcfg, seed, log)
        res["wall_s"], res["cpu_s"] = round(time.perf_counter() - tt, 1), round(_cpu_seconds() - tc, 1)
        codes = res.pop("codes")
        if codes is not None:
            rng = _splits(task, dict(tcfg, n_train=1, n_test=1), seed).label_range
            res["codes_plot"] = _plot_codes(codes, rng, out_dir, f"label_encoding_codes_{task}.png")
            res["learned_code_bit_transitions"] = _sign_transitions(codes)
        results["tasks"][task] = res
    results["tables"] = "\n\n".join(r["table"] for r in results["tasks"].values())
    results["log"] = log
    results["elapsed_s"] = round(time.perf_counter() - t0, 1)
    results["cpu_s"] = round(_cpu_seconds() - c0, 1)
    results["threads"] = torch.get_num_threads()
    notes = []
    for task, r in results["tasks"].items():
        rel = r["relative"]
        if rel:
            notes.append(f"{task}: RLEL MAE " + ", ".join(f"{k} {v:+.1f}%" for k, v in rel.items()))
    results["notes"] = notes
    return results
