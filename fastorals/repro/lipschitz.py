"""SLL reproduction: train a 1-Lipschitz SLL network, report clean / certified / PGD-l2 accuracy.

The paper (Araujo et al., ICLR 2023) trains SLL networks on CIFAR-10 for 1000 epochs (Adam,
lr 0.01, betas (0.5, 0.9), triangular schedule, offset cross-entropy with offset 3 sqrt(2) / 2
and temperature 0.25) and reports clean and certified accuracy at l2 radii 36, 72, 108 and
255 (/255). This reproduction runs the same recipe, scaled to a CPU, on the procedural image
set (or on CIFAR-10 when ``FASTORALS_CIFAR10_ROOT`` points at a local copy):

* smoke: a tiny network, a few hundred 16x16 images, one epoch (checks the pipeline);
* quick: a small SLL network (4 conv layers of width 24, 2 dense layers of 512) on 32x32
  images, well under 10 minutes on 2 cores;
* full: SLL Small (20 conv / 7 dense, width 45, inner 2048), 100 epochs.

Besides the certificates, every test point is attacked with PGD-l2 at each radius: the
empirical robust accuracy must never fall below the certified accuracy (a certified point that
an attack flips would be a bug); the run fails loudly if that happens.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from fastorals import data
from fastorals import lipschitz as L
from fastorals.repro import pyplot, register, savefig
from fastorals.training import pgd_attack, seed_everything

EPS = (36 / 255, 72 / 255, 108 / 255, 255 / 255)

CONFIGS: dict[str, dict[str, Any]] = {
    "smoke": {"n_train": 384, "n_test": 128, "size": 16, "n_conv": 2, "n_dense": 1, "width": 8, "dense_inner": 64,
              "epochs": 1, "batch": 64, "pgd_steps": 5, "n_attack": 64, "lr": 0.01},
    "quick": {"n_train": 10000, "n_test": 500, "size": 32, "n_conv": 4, "n_dense": 2, "width": 24,
              "dense_inner": 512, "epochs": 25, "batch": 100, "pgd_steps": 10, "n_attack": 250, "lr": 0.01},
    "full": {"n_train": 50000, "n_test": 10000, "size": 32, "n_conv": 20, "n_dense": 7, "width": 45,
             "dense_inner": 2048, "epochs": 100, "batch": 256, "pgd_steps": 100, "n_attack": 1000, "lr": 0.01},
}


def _load(cfg: dict[str, Any], seed: int) -> tuple[data.DatasetSplits, str]:
    root = os.environ.get("FASTORALS_CIFAR10_ROOT")
    if root and cfg["size"] == 32:
        splits = data.load_cifar10(root)
        g = torch.Generator().manual_seed(seed)
        if cfg["n_train"] < len(splits.train):
            splits = data.DatasetSplits(splits.train.subset(torch.randperm(len(splits.train), generator=g)[: cfg["n_train"]]),
                                        splits.test)
        if cfg["n_test"] < len(splits.test):
            splits = data.DatasetSplits(splits.train, splits.test.subset(torch.arange(cfg["n_test"])))
        return splits, "CIFAR-10"
    return data.synthetic_splits(cfg["n_train"], cfg["n_test"], num_classes=10, size=cfg["size"], seed=seed), \
        "procedural"


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random crop (reflect padding 4) and horizontal flip, per image (float [N, 3, H, W])."""
    n, _, h, w = x.shape
    pad = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
    oy = torch.randint(0, 9, (n,), generator=g)
    ox = torch.randint(0, 9, (n,), generator=g)
    rows = (oy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, 3, h, w + 8)
    out = pad.gather(2, rows)
    cols = (ox[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, 3, h, w)
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=g) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def _triangular(step: int, total: int, lr: float) -> float:
    """The paper's schedule: 0 -> lr at 40%, -> lr / 20 at 80%, -> 0 at the end."""
    return float(np.interp(step, [0, total * 2 // 5, total * 4 // 5, total], [0, lr, lr / 20, 0]))


@register("lipschitz", "SLL: clean / certified / PGD-l2 accuracy of a 1-Lipschitz SLL network", data=("cifar10",),
          data_modes=("quick", "full"))  # the smoke run's 16 px images are procedural
def run(mode: str, out_dir: str, seed: int) -> dict[str, Any]:
    cfg = CONFIGS[mode]
    seed_everything(seed)
    splits, source = _load(cfg, seed)
    size = splits.train.images.shape[-1]
    mean = tuple(float(v) for v in splits.train.images[:2000].float().div(255).mean(dim=(0, 2, 3)))
    net = L.SLLNetwork(10, cfg["n_conv"], cfg["n_dense"], cfg["width"], cfg["dense_inner"], image_size=size, mean=mean)
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"], betas=(0.5, 0.9))
    loss_fn = L.OffsetCrossEntropy()
    loader = data.TensorLoader(splits.train, batch_size=cfg["batch"], shuffle=True, drop_last=True, seed=seed)
    total = cfg["epochs"] * len(loader)
    g = torch.Generator().manual_seed(seed)
    history: dict[str, list[float]] = {"loss": [], "train_acc": [], "test_acc": [], "cert_36": []}
    xt, yt = splits.test.images.float().div(255), splits.test.labels
    t0 = time.perf_counter()
    step = 0
    for epoch in range(cfg["epochs"]):
        net.train()
        loader.set_epoch(epoch)
        tot, correct, n = 0.0, 0, 0
        for xb, yb in loader:
            for group in opt.param_groups:
                group["lr"] = _triangular(step, total, cfg["lr"])
            x = _augment(xb.float().div(255), g)
            logits = net(x)
            loss = loss_fn(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            tot += loss.item() * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            n += len(yb)
        res = L.certified_accuracy(net, (xt, yt), [EPS[0]], batch_size=500)
        history["loss"].append(tot / n)
        history["train_acc"].append(correct / n)
        history["test_acc"].append(res["clean"])
        history["cert_36"].append(res["certified"][EPS[0]])
        print(f"[lipschitz] epoch {epoch + 1}/{cfg['epochs']}: loss {tot / n:.4f}, train acc {correct / n:.3f}, "
              f"test acc {res['clean']:.3f}, certified@36/255 {res['certified'][EPS[0]]:.3f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    train_s = time.perf_counter() - t0

    net.eval()
    final = L.certified_accuracy(net, (xt, yt), EPS, batch_size=500)
    radii = final["radii"]
    # empirical robustness: PGD-l2 on the first n_attack test points at every radius
    na = min(cfg["n_attack"], len(yt))
    xa, ya = xt[:na], yt[:na]
    with torch.no_grad():
        clean_ok = net(xa).argmax(1) == ya
    pgd: dict[str, float] = {}
    violations = 0
    for eps in EPS:
        adv = pgd_attack(net, xa, ya, eps=eps, alpha=2.5 * eps / cfg["pgd_steps"], steps=cfg["pgd_steps"], norm="l2",
                         loss_fn=torch.nn.functional.cross_entropy)
        with torch.no_grad():
            ok = (net(adv).argmax(1) == ya) & clean_ok
        certified = radii[:na] > eps
        violations += int((certified & ~ok).sum())
        pgd[f"{round(eps * 255)}/255"] = float(ok.float().mean())
        cert_sub = float(certified.float().mean())
        if float(ok.float().mean()) + 1e-12 < cert_sub:
            violations += 1
    if violations:
        raise AssertionError(f"PGD-l2 broke {violations} certificates: the network is not 1-Lipschitz")
    lip = L.lipschitz_constant(torch.nn.Sequential(net.shift, net.model[:-1]), (3, size, size), n_points=1,
                               n_iter=100, exact_below=0)
    results = {
        "data": source,
        "config": cfg,
        "train_seconds": round(train_s, 1),
        "clean_accuracy": final["clean"],
        "certified_accuracy": {f"{round(e * 255)}/255": final["certified"][e] for e in EPS},
        "pgd_l2_accuracy": pgd,
        "pgd_attacked_points": na,
        "certificate_violations": violations,
        "measured_lipschitz_before_head": lip,
        "history": history,
        "paper_cifar10_sll_small_cert_36": 0.626,
    }

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    ep = np.arange(1, len(history["loss"]) + 1)
    axes[0].plot(ep, history["test_acc"], label="clean (test)")
    axes[0].plot(ep, history["cert_36"], label="certified @ 36/255")
    axes[0].plot(ep, history["train_acc"], "--", label="train")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("accuracy")
    axes[0].set_title(f"SLL ({source} data)")
    axes[0].legend()
    xs = [0] + [round(e * 255) for e in EPS]
    axes[1].plot(xs, [final["clean"]] + [final["certified"][e] for e in EPS], "o-", label="certified")
    axes[1].plot(xs, [float(clean_ok.float().mean()), *pgd.values()], "s--", label="PGD-l2 (empirical)")
    axes[1].set_xlabel("l2 radius (x 1/255)")
    axes[1].set_ylabel("accuracy")
    axes[1].set_title("certified vs empirical robustness")
    axes[1].legend()
    savefig(fig, out_dir, "lipschitz.png")
    return results
