"""RLEL in plain PyTorch: the paper's math, slow and obvious.

This file is the specification of every fast path in :mod:`fastorals.label_encoding` and the
oracle of its tests. Nothing here is clever; everything is materialized.

Notation (shapes):

* ``z``       [B, M]  encoded output of the network (M real-valued "bits")
* ``codes``   [M, Q]  the code matrix D; column q is the code of label level q
* ``labels``  [B]     real-valued targets y
* levels      l_q = lo + q * step, q = 0 ... Q-1  (the quantized label grid)

Loss (Shah & Aamodt, ICLR 2023, Sec. 4):

* scores      s = z D                                                    [B, Q]
* soft target t_q(y) = softmax_q(-|y - l_q| / (temperature * step))      [B, Q]
* CE          -sum_q t_q log softmax(s)_q                                [B]
* R1          mean_i sum_j relu(margin |y_i - y_j| / step - ||z_i - z_j||_1)
* R2          sum_k [D_{k,0}^2 + sum_q (D_{k,q+1} - D_{k,q})^2 + D_{k,Q-1}^2]
* decoding    expected value sum_q l_q softmax(s)_q, or the argmax level.

With unit-spaced levels (step = 1, e.g. angles in degrees on 1-degree levels), temperature 1
and margin 2 this is exactly the paper's loss; dividing by ``step`` keeps the same behaviour
for any label unit. R1 compares *labels* (not batch positions).
"""

from __future__ import annotations

import torch


def levels(lo: float, step: float, num_levels: int, *, dtype: torch.dtype = torch.float32,
           device: torch.device | str | None = None) -> torch.Tensor:
    """The label grid l_q = lo + q * step, q = 0 ... num_levels - 1.  Returns [Q]."""
    return lo + step * torch.arange(num_levels, dtype=dtype, device=device)


def soft_targets(labels: torch.Tensor, lo: float, step: float, num_levels: int,
                 temperature: float = 1.0) -> torch.Tensor:
    """softmax_q(-|y - l_q| / (temperature * step)).  labels [B] -> [B, Q]."""
    lv = levels(lo, step, num_levels, dtype=labels.dtype, device=labels.device)
    return torch.softmax(-(labels[:, None] - lv[None, :]).abs() / (temperature * step), dim=1)


def code_scores(z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Correlation of each output with each level's code: z D.  [B, M] x [M, Q] -> [B, Q]."""
    return z @ codes


def expected_decode(scores: torch.Tensor, lo: float, step: float) -> torch.Tensor:
    """sum_q l_q softmax(scores)_q.  [B, Q] -> [B]."""
    lv = levels(lo, step, scores.shape[1], dtype=scores.dtype, device=scores.device)
    return (torch.softmax(scores, dim=1) * lv).sum(dim=1)


def argmax_decode(scores: torch.Tensor, lo: float, step: float) -> torch.Tensor:
    """The level with the highest score.  [B, Q] -> [B] (dtype of scores)."""
    return lo + step * scores.argmax(dim=1).to(scores.dtype)


def soft_target_ce(z: torch.Tensor, codes: torch.Tensor, labels: torch.Tensor, lo: float, step: float,
                   temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample soft-target cross-entropy of softmax(z D) and the expected-value prediction.

    Returns:
        (ce [B], prediction [B]); both differentiable in z and codes.
    """
    s = code_scores(z, codes)
    t = soft_targets(labels, lo, step, codes.shape[1], temperature)
    logp = torch.log_softmax(s, dim=1)
    ce = -(t * logp).sum(dim=1)
    lv = levels(lo, step, codes.shape[1], dtype=s.dtype, device=s.device)
    pred = (logp.exp() * lv).sum(dim=1)
    return ce, pred


def error_correction_penalty(z: torch.Tensor, labels: torch.Tensor, margin: float = 2.0,
                             step: float = 1.0) -> torch.Tensor:
    """R1 = mean_i sum_j relu(margin |y_i - y_j| / step - ||z_i - z_j||_1).

    Materializes the [B, B, M] difference tensor (the reason fast paths exist).
    Returns a scalar.
    """
    dz = (z[:, None, :] - z[None, :, :]).abs().sum(dim=2)  # [B, B]
    dy = (labels[:, None] - labels[None, :]).abs() * (margin / step)
    return torch.relu(dy - dz).sum(dim=1).mean()


def bit_transition_penalty(codes: torch.Tensor) -> torch.Tensor:
    """R2 = sum_k [D_{k,0}^2 + sum_q (D_{k,q+1} - D_{k,q})^2 + D_{k,Q-1}^2].  codes [M, Q] -> scalar."""
    padded = torch.nn.functional.pad(codes, (1, 1))
    return (padded[:, 1:] - padded[:, :-1]).pow(2).sum()


def rlel_loss(z: torch.Tensor, codes: torch.Tensor, labels: torch.Tensor, lo: float, step: float, *,
              alpha: float = 0.5, beta: float = 1.0, temperature: float = 1.0,
              margin: float = 2.0) -> dict[str, torch.Tensor]:
    """CE (batch mean) + alpha R1 + beta R2, with the terms and the expected-value prediction."""
    ce, pred = soft_target_ce(z, codes, labels, lo, step, temperature)
    ce = ce.mean()
    r1 = error_correction_penalty(z, labels, margin, step) if alpha != 0 else z.new_zeros(())
    r2 = bit_transition_penalty(codes) if beta != 0 else codes.new_zeros(())
    return {"loss": ce + alpha * r1 + beta * r2, "ce": ce, "r1": r1, "r2": r2, "prediction": pred}


# ----------------------------------------------------------------------------- baselines


def correlation_decode(logits: torch.Tensor, code_bits: torch.Tensor, lo: float, step: float,
                       mode: str = "expected") -> torch.Tensor:
    """BEL decoding: correlate per-bit logits with each level's bipolar code.

    Args:
        logits: [B, M] per-bit classifier logits.
        code_bits: [Q, M] binary codes (0/1) of the levels.
        mode: "expected" (softmax over correlations, expected level) or "argmax".
    """
    corr = logits @ (2.0 * code_bits.to(logits.dtype) - 1.0).T  # [B, Q]
    return expected_decode(corr, lo, step) if mode == "expected" else argmax_decode(corr, lo, step)
