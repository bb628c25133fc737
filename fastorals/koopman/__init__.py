"""SKD: Multifactor Sequential Disentanglement via Structured Koopman Autoencoders.

Berman, Naiman, Azencot, ICLR 2023. Latent sequences of an autoencoder evolve linearly,
``z[:, t + 1] ~= z[:, t] @ C``, with C fitted by least squares on every batch; a spectral loss
pushes the eigenvalues of C into a static group (near 1: time-invariant factors such as the
character's colours) and a dynamic group (away from 1: the motion). Swapping Koopman
coordinates between sequences swaps factors, one eigenvector subset per factor.

Example:
    >>> import torch
    >>> from fastorals.koopman import fit_koopman, spectral_loss, koopman_decompose, swap
    >>> z = torch.randn(32, 8, 40, requires_grad=True)   # (batch, time, k)
    >>> fit = fit_koopman(z)                               # normal equations + Cholesky
    >>> loss = (fit.z_pred - z).pow(2).mean() + spectral_loss(fit.C, num_static=7)
    >>> loss.backward()
    >>> dec = koopman_decompose(fit.C.detach(), num_static=7)
    >>> z_swapped = swap(z[:16].detach(), z[16:].detach(), dec, "static")

The full model is :class:`StructuredKoopmanAE`; offline data: :mod:`fastorals.koopman.sprites`;
the judge: :class:`SpriteJudge`.
"""

from __future__ import annotations

from . import sprites
from .api import (
    VARIANTS,
    FactorAssignment,
    KoopmanDecomposition,
    KoopmanFit,
    KoopmanFitWarning,
    SpectralLoss,
    StaticSplit,
    assign_factors,
    eigenvalue_loss,
    fit_koopman,
    koopman_decompose,
    spectral_loss,
    static_dynamic_split,
    swap,
)
from .judge import SpriteJudge, judge_scores, prediction_metrics, train_judge
from .model import SKDLoss, SKDOutput, StructuredKoopmanAE, train_skd

__all__ = [
    "VARIANTS",
    "FactorAssignment",
    "KoopmanDecomposition",
    "KoopmanFit",
    "KoopmanFitWarning",
    "SKDLoss",
    "SKDOutput",
    "SpectralLoss",
    "SpriteJudge",
    "StaticSplit",
    "StructuredKoopmanAE",
    "assign_factors",
    "eigenvalue_loss",
    "fit_koopman",
    "judge_scores",
    "koopman_decompose",
    "prediction_metrics",
    "spectral_loss",
    "sprites",
    "static_dynamic_split",
    "swap",
    "train_judge",
    "train_skd",
]
