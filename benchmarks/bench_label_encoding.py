"""RLEL: head loss forward+backward and R1 (time and peak memory), fast vs reference vs peers.

Cases (each: fastorals paths, the materializing reference, and what a user would otherwise write):

* ``rlel_loss``      CE + alpha R1 + beta R2 forward + backward (the training step's head).
  Peer "official-style": the published training scripts' formulation (``torch.cdist(p=1)``
  pairwise code distances, clamp, soft targets through ``F.cross_entropy``), with R1 on labels.
* ``encoded_cross_entropy``  the fused scores -> softmax -> soft-target CE -> expected value,
  forward + backward. Peer: ``F.cross_entropy`` with probability targets + softmax decoding.
* ``error_correction_penalty`` (R1) forward + backward at B = 512 and 2048: time and peak
  memory; the reference materializes [B, B, M].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import fastorals
from benchmarks.harness import Case, Suite
from fastorals.label_encoding import encoded_cross_entropy, error_correction_penalty, rlel_loss
from fastorals.label_encoding import reference as R

LO, HI = -75.0, 75.0


def _data(B, M, Q, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, M, generator=g) * 2
    D = torch.rand(M, Q, generator=g)
    y = torch.rand(B, generator=g) * (HI - LO) + LO
    return z.to(device), D.to(device), y.to(device)


def _grads_of(fn, z, D=None):
    """Run ``fn(z, D)`` forward + backward on fresh leaves; return (loss, dz[, dD])."""
    zz = z.clone().requires_grad_()
    leaves = [zz]
    if D is not None:
        DD = D.clone().requires_grad_()
        leaves.append(DD)
        loss = fn(zz, DD)
    else:
        loss = fn(zz)
    grads = torch.autograd.grad(loss, leaves)
    return (loss.detach(), *grads)


def _close(a, b, name, rtol=2e-4, atol=1e-4):
    for i, (x, y) in enumerate(zip(a, b)):
        scale = max(1.0, float(y.abs().max()))
        err = float((x.double() - y.double()).abs().max())
        assert err <= atol * scale + rtol * scale, f"{name}: output {i} differs by {err:.3g} (scale {scale:.3g})"


def _verify(fast_out, other, name):
    _close(fast_out, other, name)


def _with(backend, fn):
    def run():
        with fastorals.use_backend(backend):
            return fn()

    return run


# ----------------------------------------------------------------------------- peers


def official_style_rlel(z, D, y, alpha, beta, step=1.0):
    """CE through F.cross_entropy(prob targets), R1 via torch.cdist(p=1) + clamp, R2 via pad/diff."""
    Q = D.shape[1]
    lv = LO + step * torch.arange(Q, dtype=z.dtype, device=z.device)
    targets = torch.softmax(-(y[:, None] - lv).abs() / step, dim=1)
    s = z @ D
    ce = F.cross_entropy(s, targets)
    dist = torch.cdist(z.contiguous(), z.contiguous(), p=1)
    target_dist = torch.cdist(y[:, None], y[:, None], p=1) / step
    r1 = torch.clamp(2 * target_dist - dist, min=0).sum(dim=1).mean()
    r2 = (F.pad(D, (1, 1))[:, 1:] - F.pad(D, (1, 1))[:, :-1]).pow(2).sum()
    return ce + alpha * r1 + beta * r2


def official_style_r1(z, y):
    dist = torch.cdist(z.contiguous(), z.contiguous(), p=1)
    return torch.clamp(2 * torch.cdist(y[:, None], y[:, None], p=1) - dist, min=0).sum(dim=1).mean()


def torch_ce_decode(z, D, y, step=1.0):
    Q = D.shape[1]
    lv = LO + step * torch.arange(Q, dtype=z.dtype, device=z.device)
    s = z @ D
    ce = F.cross_entropy(s, torch.softmax(-(y[:, None] - lv).abs() / step, dim=1))
    pred = (torch.softmax(s, 1) * lv).sum(1)
    return ce + 1e-3 * pred.mean()


# ----------------------------------------------------------------------------- cases

ALPHA, BETA = 1e-3, 1e-2


def cases(mode: str, device: str):
    if device not in ("cpu", "cuda"):
        return
    fast_backend = "triton" if device == "cuda" else "cpp"
    if device == "cpu" and not fastorals._ext.HAS_EXT:
        fast_backend = "torch"
    Q, M = 151, 32
    head_sizes = {"smoke": [128], "quick": [256, 1024], "full": [256, 1024, 2048]}[mode]
    r1_sizes = {"smoke": [128], "quick": [512, 2048], "full": [512, 2048]}[mode]

    for B in head_sizes:
        z, D, y = _data(B, M, Q, device)
        loss = lambda a, b, y=y: rlel_loss(a, b, y, (LO, HI), alpha=ALPHA, beta=BETA)
        ref = lambda a, b, y=y: R.rlel_loss(a, b, y, LO, 1.0, alpha=ALPHA, beta=BETA)["loss"]
        fast = {"fastorals": _with(fast_backend, lambda z=z, D=D, f=loss: _grads_of(f, z, D))}
        backends = {"fastorals": fast_backend}
        if fast_backend != "torch":
            fast["fastorals-torch"] = _with("torch", lambda z=z, D=D, f=loss: _grads_of(f, z, D))
            backends["fastorals-torch"] = "torch"
        peers = {"official-style": lambda z=z, D=D, y=y: _grads_of(
            lambda a, b: official_style_rlel(a, b, y, ALPHA, BETA), z, D)}
        yield Case(op="rlel_loss_fwd_bwd", shape=f"B={B},M={M},Q={Q}", dtype="float32", device=device,
                   fast=fast, reference=lambda z=z, D=D, f=ref: _grads_of(f, z, D), peers=peers,
                   backend=backends, verify=_verify, max_time_s=2.0,
                   flops=6.0 * B * M * Q + 6.0 * B * B * M,
                   note="CE + 1e-3 R1 + 1e-2 R2, forward + backward")

        ce_fast = lambda a, b, y=y: _ce_plus_pred(a, b, y)
        ce_ref = lambda a, b, y=y: _ce_ref(a, b, y)
        fast = {"fastorals": _with(fast_backend, lambda z=z, D=D, f=ce_fast: _grads_of(f, z, D))}
        if fast_backend != "torch":
            fast["fastorals-torch"] = _with("torch", lambda z=z, D=D, f=ce_fast: _grads_of(f, z, D))
        yield Case(op="encoded_cross_entropy_fwd_bwd", shape=f"B={B},M={M},Q={Q}", dtype="float32", device=device,
                   fast=fast, reference=lambda z=z, D=D, f=ce_ref: _grads_of(f, z, D),
                   peers={"torch-F.cross_entropy": lambda z=z, D=D, y=y: _grads_of(
                       lambda a, b: torch_ce_decode(a, b, y), z, D)},
                   backend=backends, verify=_verify, max_time_s=2.0, flops=6.0 * B * M * Q,
                   note="soft-target CE + 1e-3 mean(expected-value prediction), forward + backward")

    for B in r1_sizes:
        z, _, y = _data(B, M, Q, device, seed=1)
        f = lambda a, y=y: error_correction_penalty(a, y)
        fast = {"fastorals": _with(fast_backend, lambda z=z, f=f: _grads_of(f, z))}
        backends = {"fastorals": fast_backend}
        if fast_backend != "torch":
            fast["fastorals-torch"] = _with("torch", lambda z=z, f=f: _grads_of(f, z))
            backends["fastorals-torch"] = "torch"
        yield Case(op="error_correction_penalty_fwd_bwd", shape=f"B={B},M={M}", dtype="float32", device=device,
                   fast=fast, reference=lambda z=z, y=y: _grads_of(lambda a: R.error_correction_penalty(a, y), z),
                   peers={"official-style-cdist": lambda z=z, y=y: _grads_of(lambda a: official_style_r1(a, y), z)},
                   backend=backends, verify=_verify, max_time_s=2.0, flops=6.0 * B * B * M,
                   note="R1 forward + backward; peak_mem_mb: the reference materializes [B, B, M]")


def _ce_plus_pred(a, b, y):
    ce, pred = encoded_cross_entropy(a, b, y, (LO, HI))
    return ce + 1e-3 * pred.mean()


def _ce_ref(a, b, y):
    ce, pred = R.soft_target_ce(a, b, y, LO, 1.0)
    return ce.mean() + 1e-3 * pred.mean()


SUITE = Suite("label_encoding", cases,
              "RLEL head loss and R1 fwd+bwd: fused/C++ vs PyTorch path vs materializing reference vs cdist peers")
