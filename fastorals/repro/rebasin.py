"""Git Re-Basin reproduction: loss barriers between two independently trained models, before and
after aligning their hidden units.

Two models of each architecture are trained from different seeds (initialization and data
order); B is then permuted onto A by weight matching, activation matching and the
straight-through estimator (STE), and the loss / accuracy along ``(1 - l) A + l pi(B)`` is
measured (with and without REPAIR). The paper's claim: for wide enough models, matching removes
most of the barrier that naive interpolation (no permutation) shows, and the barrier shrinks
as width grows.

quick: MLP (3 x 512) and ResNet-20 with LayerNorm at width x1 and x4, on the 8x8 digits;
       25-point curves for the MLP, 9 for the ResNets; STE on every model.
full:  the same on the digits, plus ResNet-20 x1 / x4 / x8 (LayerNorm) on 32x32 procedural
       images (or CIFAR-10 when ``FASTORALS_CIFAR10_ROOT`` is set), 25 points everywhere, STE on
       every model. Several hours on CPU; use a GPU.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from .. import data, models, rebasin, training
from . import pyplot, register, savefig

CONFIGS: dict[str, dict[str, Any]] = {
    "smoke": dict(mlp_hidden=(64, 64), mlp_epochs=3, resnets=[(0.25, 2)], points=5, resnet_points=3,
                  ste=("mlp",), ste_epochs=1, am_batches=4, eval_n=256, repair_batches=2, images=None),
    "quick": dict(mlp_hidden=(512, 512, 512), mlp_epochs=20, resnets=[(1, 6), (4, 6)], points=25, resnet_points=9,
                  ste=("mlp", "resnet20x1", "resnet20x4"), ste_epochs=3, am_batches=None, eval_n=512, repair_batches=4,
                  images=None),
    "full": dict(mlp_hidden=(512, 512, 512), mlp_epochs=40, resnets=[(1, 20), (4, 20)], points=25, resnet_points=25,
                 ste=("mlp", "resnet20x1", "resnet20x4"), ste_epochs=10, am_batches=None, eval_n=2048,
                 repair_batches=16, images=dict(n_train=20000, n_test=5000, size=32, widths=[(1, 40), (4, 40), (8, 40)])),
}
BATCH = 64


def _train(model: torch.nn.Module, loader: data.TensorLoader, test: data.TensorLoader, epochs: int, seed: int,
           adam: bool) -> dict[str, float]:
    kw = dict(optimizer_name="adamw", lr=1e-3, weight_decay=0.01, warmup_epochs=1) if adam else \
        dict(optimizer_name="sgd", lr=0.05, weight_decay=5e-4)
    training.fit(model, loader, epochs, seed=seed, progress=False, **kw)
    loss, acc = rebasin.evaluate_loss(model, test)
    return {"test_loss": loss, "test_acc": acc}


def _pair(name: str, build, loader, test, epochs: int, seed: int, adam: bool):
    nets, stats = [], []
    for k in range(2):
        torch.manual_seed(seed + 101 * k)
        m = build()
        loader.seed = seed + 7 * k  # a different data order per model
        stats.append(_train(m, loader, test, epochs, seed + 101 * k, adam))
        nets.append(m.eval())
    loader.seed = seed
    return nets, stats


def _study(name: str, a: torch.nn.Module, b: torch.nn.Module, train: data.TensorLoader, train_eval: Any,
           test: data.TensorLoader, cfg: dict[str, Any], points: int, ste: bool) -> dict[str, Any]:
    spec = rebasin.spec_for(a)
    methods: dict[str, Any] = {}
    t = time.perf_counter()
    wm = rebasin.weight_matching(spec, a, b)
    methods["weight matching"] = (wm.perms, time.perf_counter() - t, {"iterations": wm.iterations})
    t = time.perf_counter()
    am = rebasin.activation_matching(a, b, train_eval, spec=spec, num_batches=cfg["am_batches"])
    methods["activation matching"] = (am.perms, time.perf_counter() - t, {})
    if ste:
        t = time.perf_counter()
        st = rebasin.ste_matching(a, b, train, spec, epochs=cfg["ste_epochs"], eval_batches=4)
        methods["STE"] = (st.perms, time.perf_counter() - t, {"steps": st.iterations})
    out: dict[str, Any] = {}
    repair_data = list(train_eval)[: cfg["repair_batches"]]
    for label, perms, secs, extra in [("naive", None, 0.0, {}),
                                      *[(k, p, s, e) for k, (p, s, e) in methods.items()]]:
        pb = b.state_dict() if perms is None else rebasin.apply_permutation(spec, b.state_dict(), perms)
        plain = rebasin.loss_barrier(a, a, pb, train_eval, test, num_points=points)
        rep = rebasin.loss_barrier(a, a, pb, train_eval, test, num_points=points, use_repair=True, spec=spec,
                                   stats_loader=repair_data)
        out[label] = {"seconds": secs, **extra, "barrier": plain.barrier, "barrier_repair": rep.barrier,
                      "curve": plain.as_dict(), "curve_repair": rep.as_dict()}
    return out


def _plot(results: dict[str, Any], out_dir: str) -> None:
    plt = pyplot()
    names = list(results)
    fig, axes = plt.subplots(len(names), 2, figsize=(10, 3.2 * len(names)), squeeze=False)
    colors = {"naive": "tab:gray", "weight matching": "tab:blue", "activation matching": "tab:green", "STE": "tab:red"}
    for r, name in enumerate(names):
        for label, entry in results[name]["methods"].items():
            for key, style in (("curve", "-"), ("curve_repair", "--")):
                c = entry[key]
                suffix = "" if key == "curve" else " + REPAIR"
                axes[r][0].plot(c["lambdas"], c["test_loss"], style, color=colors.get(label), label=label + suffix)
                axes[r][1].plot(c["lambdas"], c["test_acc"], style, color=colors.get(label), label=label + suffix)
        axes[r][0].set_title(f"{name}: test loss")
        axes[r][1].set_title(f"{name}: test accuracy")
        for ax in axes[r]:
            ax.set_xlabel("lambda (A -> pi(B))")
        axes[r][0].legend(fontsize=7)
    fig.tight_layout()
    savefig(fig, out_dir, "rebasin.png")


@register("rebasin", "Git Re-Basin: loss barriers before/after weight, activation and STE matching (+ REPAIR)", data=("cifar10",),
          data_modes=("full",))  # only the full run has the image study
def run(mode: str, out_dir: str, seed: int) -> dict[str, Any]:
    cfg = CONFIGS[mode]
    t0 = time.perf_counter()
    digits = data.train_test_split(data.load_digits(), 0.25, seed=seed)
    train = data.TensorLoader(digits.train, batch_size=BATCH, seed=seed)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(digits.train), generator=g)[: cfg["eval_n"]]
    train_eval = data.TensorLoader(digits.train.subset(idx), batch_size=128, shuffle=False)
    test = data.TensorLoader(digits.test, batch_size=512, shuffle=False)
    results: dict[str, Any] = {}

    def study(label: str, build, epochs: int, adam: bool, points: int, tr, tr_eval, te) -> None:
        t = time.perf_counter()
        (a, b), accs = _pair(label, build, tr, te, epochs, seed, adam)
        train_s = time.perf_counter() - t
        res = _study(label, a, b, tr, tr_eval, te, cfg, points, ste=label in cfg["ste"])
        results[label] = {"endpoints": accs, "train_seconds": train_s, "methods": res,
                          "params": sum(p.numel() for p in a.parameters())}

    study("mlp", lambda: models.MLP(64, 10, cfg["mlp_hidden"]), cfg["mlp_epochs"], False, cfg["points"],
          train, train_eval, test)
    for width, epochs in cfg["resnets"]:
        label = f"resnet20x{width:g}"
        study(label, lambda w=width: models.resnet20(width=w, norm="layer", in_channels=1), epochs, True,
              cfg["resnet_points"], train, train_eval, test)
    if cfg["images"] is not None:
        icfg = cfg["images"]
        root = os.environ.get("FASTORALS_CIFAR10_ROOT")
        splits = data.load_cifar10(root) if root else data.synthetic_splits(
            icfg["n_train"], icfg["n_test"], num_classes=10, size=icfg["size"], seed=seed)
        tr = data.TensorLoader(splits.train, batch_size=128, seed=seed)
        idx = torch.randperm(len(splits.train), generator=g)[: cfg["eval_n"]]
        tr_eval = data.TensorLoader(splits.train.subset(idx), batch_size=256, shuffle=False)
        te = data.TensorLoader(splits.test, batch_size=512, shuffle=False)
        tag = "cifar10" if root else "images"
        for width, epochs in icfg["widths"]:
            study(f"resnet20x{width:g}-{tag}", lambda w=width: models.resnet20(width=w, norm="layer"),
                  epochs, True, cfg["points"], tr, tr_eval, te)
    _plot(results, out_dir)
    summary = {
        name: {label: {"test_loss_barrier": round(e["barrier"].get("test_loss", float("nan")), 4),
                       "test_loss_barrier_repair": round(e["barrier_repair"].get("test_loss", float("nan")), 4),
                       "test_acc_barrier": round(e["barrier"].get("test_acc", float("nan")), 4)}
               for label, e in r["methods"].items()}
        for name, r in results.items()
    }
    return {"summary": summary, "models": results, "config": {k: v for k, v in cfg.items()},
            "seconds": time.perf_counter() - t0, "data": "digits (8x8, sklearn)"}
