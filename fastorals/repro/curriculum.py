"""CUDA reproduction: does a curriculum of per-class augmentation help long-tailed recognition?

Data: a long-tailed (imbalance ratio 100) version of the procedural image set
(``fastorals.data.synthetic_images`` + ``long_tailed_indices``), or CIFAR-100-LT when
``FASTORALS_CIFAR100_ROOT`` points at a local CIFAR-100 copy (the python-pickle directory).
Model: ResNet-32 (a width multiplier < 1 in the smoke/quick modes). Four runs with the same
base pipeline (random crop with padding 4, horizontal flip, through the same fused kernel):
CE, CE + CUDA, Balanced Softmax (BS), BS + CUDA. Reported: many/medium/few/all accuracy on a
balanced test set (mean per-class accuracy), per-class levels over epochs (heatmap), and the
training time with and without CUDA split into augmentation, LoL updates and the rest, with the
per-image PIL pipeline (what the paper's code runs in DataLoader workers) timed on the same
draws for comparison.

Modes: smoke (seconds, checks the pipeline), quick (20 classes, 30 epochs; under 10 minutes on
2 quiet cores), full (100 classes as CIFAR-100-LT, 200 epochs, the paper's schedule; hours on a
CPU, minutes per run on a GPU).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional, Union

import torch

from .. import augment, curriculum, data, models, training
from ..augment import reference as aug_reference
from . import pyplot, register, savefig

CONFIGS: dict[str, dict[str, Any]] = {
    "smoke": dict(classes=5, n_max=40, imbalance=10, size=16, width=0.25, epochs=2, test_per_class=8, batch=32, lr=0.05,
                  warmup=0, schedule="cosine", milestones=None, num_test=2, timing_images=16),
    "quick": dict(classes=20, n_max=250, imbalance=100, size=32, width=0.5, epochs=30, test_per_class=50, batch=64, lr=0.03,
                  warmup=2, schedule="cosine", milestones=None, num_test=10, timing_images=256),
    "full": dict(classes=100, n_max=500, imbalance=100, size=32, width=1.0, epochs=200, test_per_class=100, batch=128, lr=0.1,
                 warmup=5, schedule="multistep", milestones=[160, 180], num_test=10, timing_images=512),
}
MEAN, STD = augment.CIFAR10_MEAN, augment.CIFAR10_STD
RUNS = (("CE", "ce", False), ("CE+CUDA", "ce", True), ("BS", "bs", False), ("BS+CUDA", "bs", True))


def _load(cfg: dict[str, Any], seed: int) -> tuple[data.ImageDataset, data.ImageDataset, str]:
    """(long-tailed train set, balanced test set, description)."""
    c = cfg["classes"]
    root = os.environ.get("FASTORALS_CIFAR100_ROOT")
    if root:
        splits = data.load_cifar100(root)
        tr, te = splits.train, splits.test
        if c < 100:
            tr = tr.subset(torch.nonzero(tr.labels < c).flatten())
            te = te.subset(torch.nonzero(te.labels < c).flatten())
            tr.classes, te.classes = tr.classes[:c], te.classes[:c]
        idx = data.long_tailed_indices(tr.labels, cfg["imbalance"], seed=seed, num_classes=c,
                                       n_max=min(cfg["n_max"], 500))
        name = "CIFAR-100-LT" if c == 100 else f"CIFAR-100-LT (first {c} classes)"
        return tr.subset(idx), te, f"{name}, IR {cfg['imbalance']}"
    train = data.synthetic_images(c * cfg["n_max"], num_classes=c, size=cfg["size"], seed=2 * seed)
    test = data.synthetic_images(c * cfg["test_per_class"], num_classes=c, size=cfg["size"], seed=2 * seed + 1)
    idx = data.long_tailed_indices(train.labels, cfg["imbalance"], seed=seed, num_classes=c, n_max=cfg["n_max"])
    return train.subset(idx), test, f"procedural, {c} classes, IR {cfg['imbalance']}"


class _Timed:
    """Wraps an augmentation callback and accumulates its wall time."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        self.fn, self.seconds = fn, 0.0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.fn(x, y)
        self.seconds += time.perf_counter() - t0
        return out


@torch.no_grad()
def _predict(model: torch.nn.Module, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    model.eval()
    out = [model(images[i:i + batch].float().div(255)).argmax(1) for i in range(0, images.shape[0], batch)]
    return torch.cat(out)


def _pil_vs_kernel(train: data.ImageDataset, cur: curriculum.CurriculumAugment, n: int, seed: int) -> dict[str, float]:
    """Seconds per epoch the per-image PIL pipeline and the fused kernel take on the same draws
    (training draws at the final levels), measured on ``n`` images and scaled to the epoch."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(train), (n,), generator=g)
    x, y = train.images[idx], train.labels[idx]
    s = cur.strengths(y, g)
    b, _, h, w = x.shape
    chains = cur.pipeline.sample(s, (h, w), generator=g)
    d = augment.draw_pipeline(b, h, w, crop_padding=cur.pipeline.crop_padding, flip_prob=cur.pipeline.flip_prob,
                              cutout=cur.pipeline.cutout, generator=g)
    t0 = time.perf_counter()
    fast = augment.apply_chains(x, chains.ops, chains.magnitudes, chains.signs, crop=d.crop, flip=d.flip,
                                cutout=d.cutout, out_dtype=torch.float32)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = aug_reference.augment_batch(x, chains.ops, chains.values(), d.crop, d.flip.to(torch.uint8), d.cutout,
                                      None, None, True)
    t_pil = time.perf_counter() - t0
    if not torch.equal(fast, ref):
        raise AssertionError("repro: the kernel and the PIL pipeline disagree on the same draws")
    scale = len(train) / n
    return {"kernel_s_per_epoch": t_fast * scale, "pil_s_per_epoch": t_pil * scale,
            "mean_strength": float(s.double().mean())}


@register("curriculum", "CUDA: CE / BS with and without a curriculum of per-class augmentation (long-tailed)", data=("cifar100",))
def run(mode: str, out_dir: str, seed: int) -> dict[str, Any]:
    cfg = dict(CONFIGS[mode])
    if os.environ.get("FASTORALS_CURRICULUM_EPOCHS"):  # a longer schedule at the same size
        cfg["epochs"] = int(os.environ["FASTORALS_CURRICULUM_EPOCHS"])
    train, test, source = _load(cfg, seed)
    c = cfg["classes"]
    counts = train.class_counts()
    groups = data.shot_groups(counts)
    progress = mode != "smoke"

    results: dict[str, Any] = {}
    histories: dict[str, torch.Tensor] = {}
    timing: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    for name, loss_name, use_cuda in RUNS:
        lol_times: list[float] = []
        r = _train(cfg, train, loss_name, use_cuda, seed, name if progress else False, lol_times)
        pred = _predict(r["model"], test.images)
        acc = data.group_accuracy(pred, test.labels, groups, c)
        results[name] = {k: 100 * v for k, v in acc.items()}
        curves[name] = {"train_loss": r["train_loss"], "train_acc": r["train_acc"]}
        timing[name] = {"total_s": r["seconds"], "augment_s": r["augment_s"], "lol_s": sum(lol_times),
                        "train_s": r["seconds"] - r["augment_s"] - sum(lol_times),
                        "epochs": cfg["epochs"]}
        if use_cuda:
            cur = r["curriculum"]
            histories[name] = cur.history
            timing[name]["lol_samples_per_update"] = r["lol_samples"]
            timing[name]["pil_vs_kernel"] = _pil_vs_kernel(train, cur, cfg["timing_images"], seed)

    for base in ("CE", "BS"):
        a, b = timing[base], timing[f"{base}+CUDA"]
        b["overhead_vs_base"] = {
            "total": b["total_s"] / a["total_s"] - 1.0,
            "augment": (b["augment_s"] - a["augment_s"]) / a["total_s"],
            "lol": b["lol_s"] / a["total_s"],
        }
    _plot(results, histories, counts, source, mode, cfg, out_dir)
    return {
        "table": _table(results, timing, source),
        "data": source,
        "config": cfg,
        "train_counts": counts.tolist(),
        "groups": {k: v.numel() for k, v in groups.items()},
        "accuracy": results,
        "final_levels": {k: v[-1].tolist() for k, v in histories.items()},
        "mean_level_by_epoch": {k: v.double().mean(1).tolist() for k, v in histories.items()},
        "timing": timing,
        "curves": curves,
        "threads": torch.get_num_threads(),
    }


def _table(results: dict[str, Any], timing: dict[str, Any], source: str) -> str:
    """The accuracies (%, mean per class) and training times, as a Markdown table."""
    rows = [f"{source}", "", "| run | many | medium | few | all | train s | vs base |", "|---|---|---|---|---|---|---|"]
    for name, acc in results.items():
        over = timing[name].get("overhead_vs_base", {}).get("total")
        cells = [f"{acc[k]:.1f}" if acc[k] == acc[k] else "–" for k in ("many", "medium", "few", "all")]
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {timing[name]['total_s']:.1f} | "
                    + ("–" if over is None else f"{100 * over:+.0f}%") + " |")
    return "\n".join(rows)


def _train(cfg: dict[str, Any], train: data.ImageDataset, loss_name: str, use_cuda: bool, seed: int,
           progress: Union[bool, str], lol_times: list[float]) -> dict[str, Any]:
    c = cfg["classes"]
    counts = train.class_counts()
    torch.manual_seed(seed)
    model = models.resnet32(num_classes=c, width=cfg["width"], mean=MEAN, std=STD)
    loss = curriculum.make_loss(loss_name, counts)
    loader = data.TensorLoader(train, batch_size=cfg["batch"], seed=seed)
    cur: Optional[curriculum.CurriculumAugment] = None
    hook = None
    lol_samples: list[int] = []
    if use_cuda:
        cur = curriculum.CurriculumAugment(c, num_test=cfg["num_test"], seed=seed)
        aug = _Timed(cur)
        pool = curriculum.ClassPool(train.images, train.labels, c)

        def hook(epoch: int, m: torch.nn.Module) -> None:
            res = cur.update(m, pool)
            lol_times.append(res.seconds)
            lol_samples.append(res.num_total)
    else:
        base = augment.BatchAugment(crop_padding=4, flip_prob=0.5, out_dtype=torch.float32)
        g = torch.Generator().manual_seed(seed)
        aug = _Timed(lambda x, y: base(x, torch.zeros(x.shape[0], dtype=torch.int64), g))
    t0 = time.perf_counter()
    hist = training.fit(model, loader, cfg["epochs"], lr=cfg["lr"], weight_decay=2e-4, schedule=cfg["schedule"],
                        warmup_epochs=cfg["warmup"], milestones=cfg["milestones"], loss_fn=loss, augment=aug,
                        on_epoch_start=hook, progress=progress, seed=seed)
    return {"model": model, "train_loss": hist.train_loss, "train_acc": hist.train_acc, "seconds": time.perf_counter() - t0,
            "augment_s": aug.seconds, "curriculum": cur,
            "lol_samples": float(sum(lol_samples) / max(len(lol_samples), 1))}


def _plot(results: dict[str, Any], histories: dict[str, torch.Tensor], counts: torch.Tensor, source: str, mode: str,
          cfg: dict[str, Any], out_dir: str) -> None:
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 3.6))
    keys = ["many", "medium", "few", "all"]
    width = 0.2
    for i, name in enumerate(results):
        vals = [results[name][k] if results[name][k] == results[name][k] else 0.0 for k in keys]
        ax.bar([j + (i - 1.5) * width for j in range(len(keys))], vals, width, label=name)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(keys)
    ax.set_ylabel("test accuracy (%, mean per class)")
    ax.set_title(f"CUDA ({source}, {mode}; ResNet-32 x{cfg['width']}, {cfg['epochs']} epochs)", fontsize=9)
    ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    savefig(fig, out_dir, "curriculum.png")

    if histories:
        fig, axes = plt.subplots(1, len(histories), figsize=(5.6 * len(histories), 3.8), squeeze=False)
        for ax, (name, h) in zip(axes[0], histories.items()):
            im = ax.imshow(h.t().numpy(), aspect="auto", origin="upper", cmap="viridis", vmin=0,
                           vmax=int(cfg.get("max_level", 10)), interpolation="nearest")
            ax.set_xlabel("epoch (levels used during it)")
            ax.set_ylabel(f"class (head -> tail; n = {int(counts[0])} ... {int(counts[-1])})")
            ax.set_title(f"{name}: level per class", fontsize=9)
            c = h.shape[1]
            ax.set_yticks(list(range(0, c, max(1, c // 10))))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            fig.colorbar(im, ax=ax, label="level")
        fig.tight_layout()
        savefig(fig, out_dir, "curriculum_levels.png")
