"""Bad input raises a clear exception that names the argument and what was expected."""

from __future__ import annotations

import torch

import fastorals
from fastorals._ext import triton_runs_on
from fastorals.label_encoding import (
    BELHead,
    DirectRegressionHead,
    LabelEncodingHead,
    LabelGrid,
    MulticlassHead,
    RegressionModel,
    decode,
    encoded_cross_entropy,
    error_correction_penalty,
    fit_regression,
    load_tabular,
    make_head,
    param_groups,
    rlel_loss,
    rotated_shapes,
)
from fastorals.testing import assert_raises

Z = torch.randn(4, 3)
D = torch.rand(3, 11)
Y = torch.tensor([0.0, 2.5, 10.0, 7.0])
RNG = (0.0, 10.0)


def test_labels_outside_the_range():
    for bad in (torch.tensor([0.0, 2.5, 10.5, 7.0]), torch.tensor([-1.0, 2.5, 1.0, 7.0])):
        with assert_raises(ValueError, "labels", "label_range", "[0, 10]"):
            encoded_cross_entropy(Z, D, bad, RNG)
        with assert_raises(ValueError, "labels", "label_range"):
            rlel_loss(Z, D, bad, RNG)
        with assert_raises(ValueError, "labels", "label_range"):
            LabelEncodingHead(3, 3, RNG, 11).loss(Z, bad)
    with assert_raises(ValueError, "labels", "nan"):
        encoded_cross_entropy(Z, D, torch.tensor([0.0, float("nan"), 1.0, 1.0]), RNG)
    with assert_raises(ValueError, "labels", "nan"):
        error_correction_penalty(Z, torch.tensor([0.0, float("nan"), 1.0, 1.0]))
    # validate=False skips the (syncing) range check
    encoded_cross_entropy(Z, D, torch.tensor([0.0, 2.5, 10.5, 7.0]), RNG, validate=False)


def test_wrong_shapes():
    with assert_raises(ValueError, "labels", "[4]"):
        encoded_cross_entropy(Z, D, Y[:3], RNG)
    with assert_raises(ValueError, "z", "2-d"):
        encoded_cross_entropy(Z[0], D, Y, RNG)
    with assert_raises(ValueError, "codes", "m=3"):
        encoded_cross_entropy(Z, torch.rand(4, 11), Y, RNG)
    with assert_raises(ValueError, "codes", "2 levels"):
        encoded_cross_entropy(Z, torch.rand(3, 1), Y, RNG)
    with assert_raises(ValueError, "labels", "[4]"):
        error_correction_penalty(Z, torch.zeros(5))
    with assert_raises(ValueError, "features", "[b, 3]"):
        LabelEncodingHead(3, 4, RNG, 11)(torch.randn(2, 5))
    with assert_raises(ValueError, "labels", "[4]"):
        MulticlassHead(3, RNG, 11).loss(torch.randn(4, 11), torch.zeros(2))
    with assert_raises(ValueError, "init", "[4, 11]"):
        LabelEncodingHead(3, 4, RNG, 11, init=torch.zeros(3, 11))
    with assert_raises(ValueError, "init", "bits"):
        LabelEncodingHead(3, 4, RNG, 11, init="unary")
    with assert_raises(ValueError, "code", "0/1"):
        BELHead(3, torch.full((11, 4), 0.5), RNG, 11)
    with assert_raises(ValueError, "code", "[11, m]"):
        BELHead(3, torch.zeros(10, 4), RNG, 11)


def test_num_levels_and_range():
    for bad in (1, 0):
        with assert_raises(ValueError, "num_levels", "at least 2"):
            LabelEncodingHead(3, 4, RNG, bad)
        with assert_raises(ValueError, "num_levels"):
            MulticlassHead(3, RNG, bad)
        with assert_raises(ValueError, "num_levels"):
            BELHead(3, "unary", RNG, bad)
    with assert_raises(TypeError, "num_levels", "int"):
        LabelGrid.make(RNG, 5.0)
    with assert_raises(ValueError, "label_range", "lo < hi"):
        LabelGrid.make((3.0, 3.0), 5)
    with assert_raises(ValueError, "label_range", "(lo, hi)"):
        LabelGrid.make((3.0,), 5)
    with assert_raises(ValueError, "label_range", "finite"):
        encoded_cross_entropy(Z, D, Y, (0.0, float("inf")))
    with assert_raises(TypeError, "label_range", "number"):
        LabelGrid.make(("a", 1.0), 5)


def test_dtypes_and_types():
    with assert_raises(TypeError, "z", "floating"):
        encoded_cross_entropy(torch.ones(4, 3, dtype=torch.long), D, Y, RNG)
    with assert_raises(TypeError, "codes", "dtype"):
        encoded_cross_entropy(Z, D.double(), Y, RNG)
    with assert_raises(TypeError, "labels", "tensor"):
        encoded_cross_entropy(Z, D, [0.0, 1.0, 2.0, 3.0], RNG)
    with assert_raises(TypeError, "labels", "real"):
        error_correction_penalty(Z, torch.ones(4, dtype=torch.bool))
    with assert_raises(TypeError, "features", "tensor"):
        LabelEncodingHead(3, 4, RNG, 11)([1.0, 2.0, 3.0])
    with assert_raises(TypeError, "head", "regressionhead"):
        RegressionModel(torch.nn.Identity(), torch.nn.Linear(2, 2))
    with assert_raises(TypeError, "model", "regressionmodel"):
        fit_regression(torch.nn.Linear(2, 2), None, 1)


def test_hyperparameters():
    with assert_raises(ValueError, "temperature", "positive"):
        encoded_cross_entropy(Z, D, Y, RNG, temperature=0.0)
    with assert_raises(ValueError, "reduction"):
        encoded_cross_entropy(Z, D, Y, RNG, reduction="max")
    with assert_raises(ValueError, "margin", "non-negative"):
        error_correction_penalty(Z, Y, margin=-1.0)
    with assert_raises(ValueError, "label_step", "positive"):
        error_correction_penalty(Z, Y, label_step=0.0)
    with assert_raises(ValueError, "alpha"):
        rlel_loss(Z, D, Y, RNG, alpha=-0.1)
    with assert_raises(ValueError, "beta"):
        LabelEncodingHead(3, 4, RNG, 11, beta=float("nan"))
    with assert_raises(ValueError, "code_lr_mult"):
        LabelEncodingHead(3, 4, RNG, 11, code_lr_mult=0.0)
    with assert_raises(ValueError, "num_bits"):
        LabelEncodingHead(3, 0, RNG, 11)
    with assert_raises(ValueError, "bottleneck"):
        LabelEncodingHead(3, 4, RNG, 11, bottleneck=0)
    with assert_raises(ValueError, "in_features"):
        LabelEncodingHead(0, 4, RNG, 11)
    with assert_raises(ValueError, "decode", "expected"):
        LabelEncodingHead(3, 4, RNG, 11, decode="median")
    with assert_raises(ValueError, "mode", "argmax"):
        decode(Z, D, RNG, mode="mode")
    with assert_raises(ValueError, "init", "uniform"):
        LabelEncodingHead(3, 4, RNG, 11, init="gaussian")
    with assert_raises(ValueError, "loss", "l1"):
        DirectRegressionHead(3, RNG, loss="huber")
    with assert_raises(ValueError, "method", "rlel"):
        make_head("bel-gray", 3, RNG, 11)
    with assert_raises(ValueError, "lr", "positive"):
        param_groups(torch.nn.Linear(2, 2), lr=0.0)


def test_data_arguments():
    with assert_raises(ValueError, "angle_range", "(-90, 90)"):
        rotated_shapes(4, angle_range=(-100, 50))
    with assert_raises(ValueError, "size"):
        rotated_shapes(4, size=4)
    with assert_raises(ValueError, "n"):
        rotated_shapes(-1)
    with assert_raises(ValueError, "name", "diabetes"):
        load_tabular("boston")


def test_backend_requests():
    with fastorals.use_backend("cpp"):
        with assert_raises(fastorals.BackendUnavailableError, "cpp"):
            encoded_cross_entropy(Z.half(), D.half(), Y, RNG)
    if not triton_runs_on(torch.device("cpu")):
        with fastorals.use_backend("triton"):
            with assert_raises(fastorals.BackendUnavailableError, "triton"):
                error_correction_penalty(Z, Y)
    with fastorals.use_backend("triton"):
        with assert_raises(fastorals.BackendUnavailableError, "triton", "not implemented"):
            error_correction_penalty(Z.double(), Y)
