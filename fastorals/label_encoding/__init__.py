"""RLEL: Learning Label Encodings for Deep Regression (Shah & Aamodt, ICLR 2023).

A regression network outputs a real-valued code z in R^M; a learned code matrix D in R^{M x Q}
correlates it with each of Q quantized label levels; training minimizes the soft-target
cross-entropy of softmax(z D) plus two regularizers (R1: codes of far labels are far apart;
R2: each bit changes smoothly along the label axis); prediction is the expected level.

Fast paths: a fused scores -> softmax -> soft-target CE -> expected-value kernel (C++ on CPU,
Triton on GPU) and an R1 that never builds the [B, B, M] pairwise tensor.

Example:
    >>> import torch
    >>> from fastorals.label_encoding import LabelEncodingHead, RegressionModel, param_groups
    >>> backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 128), torch.nn.ReLU())
    >>> head = LabelEncodingHead(128, num_bits=32, label_range=(-75, 75), num_levels=151)
    >>> model = RegressionModel(backbone, head)
    >>> opt = torch.optim.Adam(param_groups(model, lr=1e-3))       # D at 10x the learning rate
    >>> x, y = torch.rand(16, 3, 32, 32), torch.empty(16).uniform_(-75, 75)
    >>> out = model(x); loss = model.loss(out, y); loss.backward(); opt.step()
    >>> y_hat = model.predict(out)                                   # expected-value decoding
"""

from .codes import (
    CODES,
    bcd_code,
    binary_code,
    bit_transitions,
    johnson_code,
    make_code,
    min_hamming_distance,
    unary_code,
)
from .data import (
    ORIENTED_SHAPES,
    TABULAR,
    RegressionSet,
    RegressionSplits,
    load_tabular,
    rotated_shape_splits,
    rotated_shapes,
)
from .functional import (
    RLELTerms,
    bit_transition_penalty,
    decode,
    encoded_cross_entropy,
    error_correction_penalty,
    rlel_loss,
)
from .grid import LabelGrid
from .heads import (
    HEADS,
    BELHead,
    DirectRegressionHead,
    LabelEncodingHead,
    MulticlassHead,
    RegressionHead,
    RegressionModel,
    make_head,
    param_groups,
)
from .training import RegressionHistory, evaluate_mae, fit_regression

__all__ = [
    "CODES",
    "HEADS",
    "ORIENTED_SHAPES",
    "TABULAR",
    "BELHead",
    "DirectRegressionHead",
    "LabelEncodingHead",
    "LabelGrid",
    "MulticlassHead",
    "RLELTerms",
    "RegressionHead",
    "RegressionHistory",
    "RegressionModel",
    "RegressionSet",
    "RegressionSplits",
    "bcd_code",
    "binary_code",
    "bit_transition_penalty",
    "bit_transitions",
    "decode",
    "encoded_cross_entropy",
    "error_correction_penalty",
    "evaluate_mae",
    "fit_regression",
    "johnson_code",
    "load_tabular",
    "make_code",
    "make_head",
    "min_hamming_distance",
    "param_groups",
    "rlel_loss",
    "rotated_shape_splits",
    "rotated_shapes",
    "unary_code",
]
