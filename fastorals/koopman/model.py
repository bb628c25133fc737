"""The structured Koopman autoencoder (SKD) and a training helper.

Architecture (Sprites-sized by default, as in the paper): per-frame conv encoder (4x4 stride-2
convs with BatchNorm and LeakyReLU(0.2), widths conv_dim * 1, 2, 4, 8, then a valid conv to k
channels, BatchNorm, Tanh) followed by an LSTM over time -> z (B, T, k); the Koopman layer fits
C on the batch (:func:`fit_koopman`); the decoder is an LSTM (k -> hidden) and the mirrored
transposed-conv stack with a Sigmoid. The loss is

    w_rec * MSE(x, dec(dropout(z))) + w_pred * (MSE(dec(z), dec(z_pred)) + MSE(z, z_pred)) + w_eig * L_eig

with w_rec = 15, w_pred = 1, w_eig = 1, dropout 0.2 on the reconstruction path only, and
``L_eig`` the spectral loss (:func:`spectral_loss`). Shapes stay explicit (B, T, k) and
(B, T, hidden) end to end: the decoder's LSTM width (80) never mixes with k (40) in a reshape.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch import nn

from .._args import int_arg
from .api import (
    KoopmanDecomposition,
    KoopmanFit,
    SpectralLoss,
    Which,
    _modes,
    eigenvalue_loss,
    fit_koopman,
    koopman_decompose,
    swap,
)

__all__ = ["SKDLoss", "SKDOutput", "StructuredKoopmanAE", "train_skd"]


def _layout(frame_size: Union[int, tuple[int, int]]) -> tuple[int, int, int]:
    h, w = (frame_size, frame_size) if isinstance(frame_size, int) else tuple(frame_size)
    if not (isinstance(h, int) and isinstance(w, int)) or min(h, w) < 8:
        raise ValueError(f"frame_size: expected an int or (H, W) with H, W >= 8, got {frame_size!r}")
    n = int(math.floor(math.log2(min(h, w)))) - 2
    if h % (2**n) or w % (2**n):
        raise ValueError(f"frame_size: H and W must be divisible by 2**{n} = {2**n}, got {(h, w)}")
    return h, w, n


class _Encoder(nn.Module):
    def __init__(self, channels: int, h: int, w: int, n: int, conv_dim: int, k: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = channels
        for i in range(n):
            cout = conv_dim * 2**i
            layers += [nn.Conv2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        layers += [nn.Conv2d(cin, k, (h >> n, w >> n), 1, 0), nn.BatchNorm2d(k), nn.Tanh()]
        self.conv = nn.Sequential(*layers)
        self.lstm = nn.LSTM(k, k, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        f = self.conv(x.reshape(b * t, *x.shape[2:])).reshape(b, t, -1)
        z, _ = self.lstm(f)
        return z


class _Decoder(nn.Module):
    def __init__(self, channels: int, h: int, w: int, n: int, conv_dim: int, k: int, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(k, hidden, batch_first=True)
        top = conv_dim * 2 ** (n - 1)
        layers: list[nn.Module] = [nn.ConvTranspose2d(hidden, top, (h >> n, w >> n), 1, 0), nn.BatchNorm2d(top),
                                   nn.LeakyReLU(0.2, inplace=True)]
        cin = top
        for i in range(n - 2, -1, -1):
            cout = conv_dim * 2**i
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        layers += [nn.ConvTranspose2d(cin, channels, 4, 2, 1), nn.Sigmoid()]
        self.deconv = nn.Sequential(*layers)
        self.hidden = hidden

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, t, _ = z.shape
        hseq, _ = self.lstm(z)  # (B, T, hidden)
        out = self.deconv(hseq.reshape(b * t, self.hidden, 1, 1))
        return out.reshape(b, t, *out.shape[1:])


@dataclass
class SKDOutput:
    """Forward pass of :class:`StructuredKoopmanAE`.

    Attributes:
        x_rec: (B, T, C, H, W) reconstruction from the (dropped-out) latents.
        x_pred: (B, T, C, H, W) decoding of the Koopman prediction.
        z: (B, T, k) latents.
        z_pred: (B, T, k) Koopman prediction (frame 0 copied).
        C: (k, k) Koopman matrix of the batch.
        eigvals: (k,) complex eigenvalues of C (differentiable).
        fit: the :class:`KoopmanFit` (flags, condition estimate).
    """

    x_rec: torch.Tensor
    x_pred: torch.Tensor
    z: torch.Tensor
    z_pred: torch.Tensor
    C: torch.Tensor
    eigvals: torch.Tensor
    fit: KoopmanFit


@dataclass
class SKDLoss:
    """Loss terms (tensors, never read on the host here); ``total`` is the weighted sum training minimizes."""

    total: torch.Tensor
    reconstruction: torch.Tensor
    prediction_ambient: torch.Tensor
    prediction_latent: torch.Tensor
    eig_static: torch.Tensor
    eig_dynamic: torch.Tensor
    num_static_eigvals: torch.Tensor

    def as_dict(self) -> dict[str, float]:
        return {k: (float(v.detach()) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}


class StructuredKoopmanAE(nn.Module):
    """SKD: a Koopman autoencoder with the spectral loss, for sequences of frames.

    Args:
        frame_size: H = W (int) or (H, W); each divisible by 2**n with n = floor(log2 min(H, W)) - 2
            (64 -> four stride-2 convs, as in the paper; 32 -> three).
        channels: image channels (3).
        k: Koopman latent size (40).
        hidden: decoder LSTM width (80).
        conv_dim: width of the first conv layer (32; doubles per layer).
        num_static: static components of the spectral loss (7 in the paper's script, 8 in the
            released checkpoint's).
        variant: spectral-loss variant, "paper" or "released" (see :func:`spectral_loss`).
        static_mode, dynamic_mode: override the variant's terms.
        dynamic_threshold, ball_radius, eigs_threshold: thresholds of the dynamic terms (0.5, 0.6, 0.5).
        dropout: dropout on z in the reconstruction path (0.2).
        w_rec, w_pred, w_eig: loss weights (15, 1, 1).
        ridge: ridge of the Koopman fit (None: the default of :func:`fit_koopman`).

    Example:
        >>> model = StructuredKoopmanAE(frame_size=64)
        >>> x = torch.rand(4, 8, 3, 64, 64)
        >>> out = model(x); losses = model.loss(x, out); losses.total.backward()
    """

    def __init__(
        self,
        frame_size: Union[int, tuple[int, int]] = 64,
        channels: int = 3,
        k: int = 40,
        hidden: int = 80,
        conv_dim: int = 32,
        num_static: int = 7,
        variant: str = "paper",
        *,
        static_mode: Optional[str] = None,
        dynamic_mode: Optional[str] = None,
        dynamic_threshold: float = 0.5,
        ball_radius: float = 0.6,
        eigs_threshold: float = 0.5,
        dropout: float = 0.2,
        w_rec: float = 15.0,
        w_pred: float = 1.0,
        w_eig: float = 1.0,
        ridge: Optional[float] = None,
    ) -> None:
        super().__init__()
        h, w, n = _layout(frame_size)
        for name, v in (("channels", channels), ("k", k), ("hidden", hidden), ("conv_dim", conv_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        if isinstance(num_static, bool) or not isinstance(num_static, int) or not 0 <= num_static <= k:
            raise ValueError(f"num_static: expected an int in [0, k={k}], got {num_static!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout: expected 0 <= dropout < 1, got {dropout!r}")
        self.static_mode, self.dynamic_mode = _modes(variant, static_mode, dynamic_mode)
        self.frame_shape = (channels, h, w)
        self.k, self.hidden, self.num_static, self.variant = k, hidden, num_static, variant
        self.dynamic_threshold, self.ball_radius, self.eigs_threshold = dynamic_threshold, ball_radius, eigs_threshold
        self.w_rec, self.w_pred, self.w_eig, self.ridge = w_rec, w_pred, w_eig, ridge
        self.encoder = _Encoder(channels, h, w, n, conv_dim, k)
        self.decoder = _Decoder(channels, h, w, n, conv_dim, k, hidden)
        self.drop = nn.Dropout(dropout)

    def extra_repr(self) -> str:
        c, h, w = self.frame_shape
        return (f"frame=({c}, {h}, {w}), k={self.k}, hidden={self.hidden}, num_static={self.num_static}, "
                f"static_mode={self.static_mode!r}, dynamic_mode={self.dynamic_mode!r}, "
                f"weights=(rec {self.w_rec}, pred {self.w_pred}, eig {self.w_eig})")

    # -------------------------------------------------------------------------- parts

    def _check_x(self, x: torch.Tensor, name: str = "x") -> None:
        if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
            raise TypeError(f"{name}: expected a floating-point tensor (B, T, C, H, W) in [0, 1]")
        if x.dim() != 5 or tuple(x.shape[2:]) != self.frame_shape:
            raise ValueError(f"{name}: expected shape (B, T, {', '.join(map(str, self.frame_shape))}), got {tuple(x.shape)}")
        if x.shape[1] < 2:
            raise ValueError(f"{name}: sequences must have at least 2 frames (T >= 2), got {tuple(x.shape)}")
        if x.device.type != "cuda" and not bool(torch.isfinite(x).all()):
            # checked before the encoder: in training mode its BatchNorm would store NaN statistics
            # and every later call would fail, on clean frames too
            raise ValueError(f"{name}: frames contain NaN or inf values")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) frames -> (B, T, k) latents."""
        self._check_x(x)
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, T, k) latents -> (B, T, C, H, W) frames in [0, 1]."""
        if not isinstance(z, torch.Tensor) or z.dim() != 3 or z.shape[-1] != self.k:
            raise ValueError(f"z: latent size k mismatch or bad shape: expected (B, T, {self.k}), got "
                             f"{tuple(getattr(z, 'shape', ()))}")
        return self.decoder(z)

    def koopman(self, z: torch.Tensor) -> tuple[KoopmanFit, torch.Tensor]:
        """Fit C on latents (B, T, k) and return (fit, eigenvalues of C).

        On CUDA the fit does not synchronize; its ill-conditioning flag is read after the
        eigendecomposition (which synchronizes anyway), and only then, if set, the fit is
        redone with the lstsq fallback.
        """
        cuda = z.device.type == "cuda"
        fit = fit_koopman(z, ridge=self.ridge, fallback="none" if cuda else "lstsq", check_finite=not cuda)
        try:
            eigvals = torch.linalg.eigvals(fit.C)
        except RuntimeError as exc:  # NaN/inf latents on CUDA surface here
            raise ValueError(f"latents: non-finite values reached the Koopman fit ({exc})") from exc
        if cuda and bool(fit.ill_conditioned.any()):
            fit = fit_koopman(z, ridge=self.ridge, fallback="lstsq", check_finite=True)
            eigvals = torch.linalg.eigvals(fit.C)
        return fit, eigvals

    def forward(self, x: torch.Tensor) -> SKDOutput:
        """Encode, fit the Koopman matrix on the batch, decode both paths (see :class:`SKDOutput`)."""
        z = self.encode(x)
        fit, eigvals = self.koopman(z)
        x_rec = self.decoder(self.drop(z))
        x_pred = self.decoder(fit.z_pred)
        return SKDOutput(x_rec, x_pred, z, fit.z_pred, fit.C, eigvals, fit)

    def spectral_terms(self, eigvals: torch.Tensor) -> SpectralLoss:
        """The spectral loss of the model's settings on eigenvalues (k,)."""
        out = eigenvalue_loss(eigvals, self.num_static, self.variant, static_mode=self.static_mode,
                              dynamic_mode=self.dynamic_mode, dynamic_threshold=self.dynamic_threshold,
                              ball_radius=self.ball_radius, eigs_threshold=self.eigs_threshold,
                              return_details=True, check_finite=eigvals.device.type != "cuda")
        assert isinstance(out, SpectralLoss)
        return out

    def loss(self, x: torch.Tensor, out: SKDOutput) -> SKDLoss:
        """All loss terms of a forward pass (``total`` is what training minimizes)."""
        mse = nn.functional.mse_loss
        rec = mse(out.x_rec, x)
        pa = mse(out.x_rec, out.x_pred)
        pl = mse(out.z, out.z_pred)
        spec = self.spectral_terms(out.eigvals)
        total = self.w_rec * rec + self.w_pred * (pa + pl) + self.w_eig * (spec.static + spec.dynamic)
        return SKDLoss(total, rec, pa, pl, spec.static, spec.dynamic, spec.num_static_eigvals)

    # -------------------------------------------------------------------------- swaps

    @torch.no_grad()
    def decompose(self, x_or_z: torch.Tensor, num_static: Optional[int] = None) -> KoopmanDecomposition:
        """Koopman decomposition from a reference batch of frames (B, T, C, H, W) or latents (B, T, k).

        Use a large batch (hundreds of sequences): C is fitted on it.
        """
        z = self.encode(x_or_z) if x_or_z.dim() == 5 else x_or_z
        fit = fit_koopman(z, ridge=self.ridge, fallback="lstsq")
        return koopman_decompose(fit.C, self.num_static if num_static is None else num_static, self.static_mode)

    @torch.no_grad()
    def swap(self, x: torch.Tensor, x_donor: torch.Tensor, decomposition: KoopmanDecomposition,
             which: Which = "static") -> torch.Tensor:
        """Decode ``x`` with the coordinates ``which`` taken from ``x_donor`` (see :func:`swap`).

        ``which="static"`` keeps the motion of ``x`` and takes the appearance of ``x_donor``.
        Returns frames (B, T, C, H, W).
        """
        return self.decoder(swap(self.encode(x), self.encode(x_donor), decomposition, which))


def train_skd(
    model: StructuredKoopmanAE,
    batches: Callable[[], Iterator[torch.Tensor]],
    *,
    epochs: int = 1,
    max_steps: Optional[int] = None,
    time_budget_s: Optional[float] = None,
    lr: float = 1e-3,
    optimizer: Optional[torch.optim.Optimizer] = None,
    log_every: int = 50,
    log: Optional[Callable[[int, dict[str, float]], None]] = None,
) -> list[dict[str, float]]:
    """Train SKD with Adam (lr 1e-3, as the paper) on frames from ``batches()``.

    Args:
        model: the model (its device is used).
        batches: callable returning an iterator of (B, T, C, H, W) float batches (one epoch).
        epochs: passes over ``batches()``.
        max_steps: stop after this many optimizer steps.
        time_budget_s: stop once this many seconds have passed.
        lr: Adam learning rate (ignored when ``optimizer`` is given).
        optimizer: optional optimizer to use (e.g. to resume).
        log_every: record the loss terms every this many steps.
        log: optional callback ``log(step, terms)``.

    Returns:
        History: one dict of loss terms per logged step (with "step" and "elapsed_s").
    """
    if not callable(batches):
        raise TypeError(f"batches: expected a callable returning an iterable of (B, T, C, H, W) batches "
                        f"(called once per epoch), got {type(batches).__name__}")
    epochs, log_every = int_arg(epochs, "epochs", 0), int_arg(log_every, "log_every")
    max_steps = None if max_steps is None else int_arg(max_steps, "max_steps (or None)", 0)
    hist: list[dict[str, float]] = []
    if max_steps == 0:
        return hist
    dev = next(model.parameters()).device
    opt = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    step = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for x in batches():
            x = x.to(dev, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            out = model(x)
            terms = model.loss(x, out)
            terms.total.backward()
            opt.step()
            step += 1
            if step % log_every == 0 or step == 1:
                d = terms.as_dict()
                d.update(step=step, elapsed_s=time.perf_counter() - t0)
                hist.append(d)
                if log is not None:
                    log(step, d)
            if (max_steps is not None and step >= max_steps) or (
                    time_budget_s is not None and time.perf_counter() - t0 > time_budget_s):
                return hist
    return hist
