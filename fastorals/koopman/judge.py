"""A judge classifier for sprite sequences and the disentanglement metrics it scores.

The judge predicts the four static factors (6 classes each) and the motion (9 classes) of a
sequence. It is trained on the procedural sprites with blur and noise augmentation so it stays
accurate on decoded (slightly blurred) samples. Metrics, as in the sequential-disentanglement
literature: accuracy of a preserved factor, inception score IS = exp(E_x KL(p(y|x) || p(y))),
the conditional entropy H(y|x) and the marginal entropy H(y).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .sprites import NUM_MOTIONS, NUM_VALUES, STATIC_FACTORS, SpriteSet, motion_of

__all__ = ["HEADS", "SpriteJudge", "judge_scores", "prediction_metrics", "train_judge"]

#: Judge outputs: the four static factors and the 9-way motion.
HEADS: dict[str, int] = {**{f: NUM_VALUES for f in STATIC_FACTORS}, "motion": NUM_MOTIONS}


def targets_of(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Judge targets of (N, 6) sprite labels: {factor: (N,)} including "motion"."""
    out = {f: labels[:, j] for j, f in enumerate(STATIC_FACTORS)}
    out["motion"] = motion_of(labels)
    return out


class SpriteJudge(nn.Module):
    """Per-frame CNN + temporal head; logits for each factor of :data:`HEADS`.

    Args:
        frame_size: frame height = width (16..256, a power of two).
        num_frames: sequence length (the motion head reads all frames in order).
        channels: image channels.
        width: channels of the first conv layer.

    Example:
        >>> judge = SpriteJudge(64)
        >>> logits = judge(torch.rand(2, 8, 3, 64, 64))    # {"skin": (2, 6), ..., "motion": (2, 9)}
    """

    def __init__(self, frame_size: int = 64, num_frames: int = 8, channels: int = 3, width: int = 32) -> None:
        super().__init__()
        if frame_size < 16 or frame_size & (frame_size - 1):
            raise ValueError(f"frame_size: expected a power of two >= 16, got {frame_size!r}")
        if num_frames < 2:
            raise ValueError(f"num_frames: expected >= 2, got {num_frames!r}")
        n = int(math.log2(frame_size)) - 2
        layers: list[nn.Module] = []
        cin = channels
        for i in range(n):
            cout = width * 2 ** min(i, 3)
            layers += [nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
        self.frames = nn.Sequential(*layers, nn.Flatten(), nn.Linear(cin * 16, 128), nn.ReLU(inplace=True))
        self.static_heads = nn.ModuleDict({f: nn.Linear(128, NUM_VALUES) for f in STATIC_FACTORS})
        self.temporal = nn.Sequential(nn.Conv1d(128, 128, 3, padding=1), nn.ReLU(inplace=True))
        self.motion_head = nn.Linear(128 * num_frames, NUM_MOTIONS)
        self.frame_size, self.num_frames = frame_size, num_frames

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 5 or x.shape[1] != self.num_frames or x.shape[-1] != self.frame_size:
            raise ValueError(f"x: expected (B, {self.num_frames}, C, {self.frame_size}, {self.frame_size}), "
                             f"got {tuple(x.shape)}")
        b, t = x.shape[:2]
        f = self.frames(x.reshape(b * t, *x.shape[2:])).reshape(b, t, -1)
        out = {name: head(f.mean(1)) for name, head in self.static_heads.items()}
        m = self.temporal(f.transpose(1, 2))
        out["motion"] = self.motion_head(m.flatten(1))
        return out


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random Gaussian blur (sigma in [0, 1.2] px at 64x64, scaled) and additive noise, per batch."""
    b, t, c, h, w = x.shape
    sigma = float(torch.rand((), generator=gen)) * 1.2 * h / 64
    if sigma > 0.2:
        r = max(1, int(math.ceil(2 * sigma)))
        ax = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
        k1 = torch.exp(-0.5 * (ax / sigma) ** 2)
        k1 = k1 / k1.sum()
        flat = x.reshape(b * t * c, 1, h, w)
        flat = F.conv2d(F.pad(flat, (r, r, 0, 0), mode="replicate"), k1.view(1, 1, 1, -1))
        flat = F.conv2d(F.pad(flat, (0, 0, r, r), mode="replicate"), k1.view(1, 1, -1, 1))
        x = flat.reshape(b, t, c, h, w)
    noise = float(torch.rand((), generator=gen)) * 0.06
    x = x + noise * torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    return x.clamp(0, 1)


def train_judge(
    train: SpriteSet,
    *,
    steps: int = 600,
    batch_size: int = 64,
    lr: float = 2e-3,
    width: int = 32,
    augment: bool = True,
    seed: int = 0,
    device: Optional[Union[str, torch.device]] = None,
    time_budget_s: Optional[float] = None,
    log_every: int = 100,
    log: Optional[Callable[[int, float, float], None]] = None,
) -> SpriteJudge:
    """Train a :class:`SpriteJudge` on rendered sprites (with blur/noise augmentation).

    Args:
        train: the labelled sprite set to train on.
        steps: optimizer steps (Adam, cosine-decayed learning rate).
        batch_size: sequences per step.
        lr: peak learning rate.
        width: first conv width of the judge.
        augment: blur + noise augmentation (robustness to decoded samples).
        seed: seed of sampling and augmentation.
        device: where to train (default CPU).
        time_budget_s: stop early once this many seconds have passed.
        log_every: call ``log`` every this many steps (and after the last).
        log: progress callback ``log(step, loss, elapsed_s)`` (None: silent).

    Returns:
        The trained judge in eval mode.
    """
    if steps < 1 or batch_size < 1 or log_every < 1:
        raise ValueError(f"steps, batch_size, log_every: expected >= 1, got {steps}, {batch_size}, {log_every}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    judge = SpriteJudge(train.size, train.num_frames, width=width).to(dev)
    opt = torch.optim.Adam(judge.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    judge.train()
    t0 = time.perf_counter()
    n = len(train)
    for step in range(1, steps + 1):
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        lab = train.labels[idx]
        x = train.images(idx, device=dev)
        if augment:
            x = _augment(x, gen)
        logits = judge(x)
        tg = targets_of(lab.to(dev))
        loss = sum(F.cross_entropy(logits[h], tg[h]) for h in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        opt.step()
        sched.step()
        over = time_budget_s is not None and time.perf_counter() - t0 > time_budget_s
        if log is not None and (step % log_every == 0 or step == steps or over):
            log(step, float(loss), time.perf_counter() - t0)
        if over:
            break
    return judge.eval()


def prediction_metrics(probs: torch.Tensor, target: Optional[torch.Tensor] = None) -> dict[str, float]:
    """Accuracy, IS, H(y|x) and H(y) of class probabilities (N, K).

    IS = exp(mean_x KL(p(y|x) || p(y))) with p(y) the mean prediction (at most K);
    H(y|x) = mean_x entropy(p(y|x)) (0 for confident predictions); H(y) = entropy(p(y))
    (log K for a uniform spread). Accuracy is reported when ``target`` (N,) is given.
    """
    if probs.dim() != 2:
        raise ValueError(f"probs: expected (N, K), got {tuple(probs.shape)}")
    p = probs.double().clamp_min(1e-12)
    py = p.mean(0)
    kl = (p * (p.log() - py.log())).sum(1)
    out = {
        "IS": float(torch.exp(kl.mean())),
        "H_y_given_x": float(-(p * p.log()).sum(1).mean()),
        "H_y": float(-(py * py.log()).sum()),
    }
    if target is not None:
        out["acc"] = float((probs.argmax(1) == target.to(probs.device)).double().mean())
    return out


@torch.no_grad()
def judge_scores(judge: SpriteJudge, x: torch.Tensor, targets: dict[str, torch.Tensor],
                 batch_size: int = 256) -> dict[str, dict[str, float]]:
    """Score sequences ``x`` (N, T, C, H, W) against ``targets`` {head: (N,)}: metrics per head."""
    judge.eval()
    probs: dict[str, list[torch.Tensor]] = {h: [] for h in targets}
    dev = next(judge.parameters()).device
    for i in range(0, x.shape[0], batch_size):
        logits = judge(x[i:i + batch_size].to(dev))
        for h in targets:
            probs[h].append(logits[h].softmax(-1).cpu())
    return {h: prediction_metrics(torch.cat(probs[h]), targets[h].cpu()) for h in targets}
