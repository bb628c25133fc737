"""SLL and the 1-Lipschitz layers it unifies (AOL, CPL), with certification.

"A Unified Algebraic Perspective on Lipschitz Neural Networks", Araujo, Havens, Delattre,
Allauzen, Hu (ICLR 2023). Every layer here is 1-Lipschitz in l2 by construction; a network
built from them certifies a robustness radius from its logit margins.

Example:
    >>> import torch
    >>> from fastorals import lipschitz as L
    >>> net = L.SLLNetwork(10, n_conv=4, n_dense=2, width=16, dense_inner=256)
    >>> loss = L.offset_cross_entropy(net(torch.rand(8, 3, 32, 32)), torch.randint(0, 10, (8,)))
    >>> res = L.certified_accuracy(net, (torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))),
    ...                            [36 / 255, 72 / 255])
"""

from . import reference
from .certification import (
    OffsetCrossEntropy,
    certified_accuracy,
    certified_radius,
    check_finite_parameters,
    lipschitz_constant,
    offset_cross_entropy,
    random_pair_ratio,
)
from .functional import (
    aol_conv2d,
    aol_linear,
    cpl_conv2d,
    cpl_linear,
    sll_conv2d,
    sll_conv_t,
    sll_linear,
    sll_t,
    worst_case_gates,
)
from .layers import (
    AOLConv2d,
    AOLLinear,
    CPLConv2d,
    CPLLinear,
    GroupSort,
    LinearNormalized,
    LipschitzAvgPool2d,
    MaxMin,
    MeanShift,
    PaddingChannels,
    PoolingLinear,
    ResidualExport,
    SLLConv2d,
    SLLLinear,
)
from .models import (
    SLL_CONFIGS,
    SLLNetwork,
    convert_official_state_dict,
    export_model,
    load_official_checkpoint,
    sll_large,
    sll_medium,
    sll_small,
    sll_xlarge,
)
from .spectral import conv_operator_norm_bound, dense_operator_norm

__all__ = [
    "SLL_CONFIGS",
    "AOLConv2d",
    "AOLLinear",
    "CPLConv2d",
    "CPLLinear",
    "GroupSort",
    "LinearNormalized",
    "LipschitzAvgPool2d",
    "MaxMin",
    "MeanShift",
    "OffsetCrossEntropy",
    "PaddingChannels",
    "PoolingLinear",
    "ResidualExport",
    "SLLConv2d",
    "SLLLinear",
    "SLLNetwork",
    "aol_conv2d",
    "aol_linear",
    "certified_accuracy",
    "certified_radius",
    "check_finite_parameters",
    "conv_operator_norm_bound",
    "convert_official_state_dict",
    "cpl_conv2d",
    "cpl_linear",
    "dense_operator_norm",
    "export_model",
    "lipschitz_constant",
    "load_official_checkpoint",
    "offset_cross_entropy",
    "random_pair_ratio",
    "reference",
    "sll_conv2d",
    "sll_conv_t",
    "sll_large",
    "sll_linear",
    "sll_medium",
    "sll_small",
    "sll_t",
    "sll_xlarge",
    "worst_case_gates",
]
