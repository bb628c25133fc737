"""CUDA: Curriculum of Data Augmentation for long-tailed recognition (Ahn, Ko, Yun, ICLR 2023).

Every class keeps an augmentation level; a class the model already recognises under
augmentation of every strength up to its level is augmented harder, the others more gently.
Training batches are augmented per sample in one kernel call (:mod:`fastorals.augment`), and the
Level-of-Learning test of all classes runs as a few large batched forward passes.

Example:
    >>> import torch
    >>> from fastorals import curriculum, data, models, training
    >>> train = data.synthetic_images(5000, num_classes=10, seed=0)
    >>> lt = train.subset(data.long_tailed_indices(train.labels, imbalance_ratio=100))
    >>> cur = curriculum.CurriculumAugment(num_classes=10)            # levels start at 0
    >>> pool = curriculum.ClassPool(lt.images, lt.labels, 10)
    >>> loss = curriculum.make_loss("bs", lt.class_counts())           # Balanced Softmax
    >>> model = models.resnet32(num_classes=10)
    >>> training.fit(model, data.TensorLoader(lt, batch_size=128), 200, loss_fn=loss,  # doctest: +SKIP
    ...              augment=cur, on_epoch_start=cur.hook(pool), extra_state={"curriculum": cur})
    >>> cur.levels.shape                                               # history: [200, 10] after fit
    torch.Size([10])
"""

from .api import CurriculumAugment
from .lol import (
    ClassPool,
    LoLPlan,
    LoLResult,
    accept_fraction,
    derive_seed,
    draw_plan,
    evaluate_plan,
    lol_decision,
    plan_sizes,
)
from .losses import (
    BalancedSoftmaxLoss,
    CEDRWLoss,
    CELoss,
    LDAMLoss,
    LongTailLoss,
    NormedLinear,
    balanced_softmax_loss,
    class_balanced_weights,
    ldam_loss,
    ldam_margins,
    log_prior,
    make_loss,
)

__all__ = [
    "BalancedSoftmaxLoss",
    "CEDRWLoss",
    "CELoss",
    "ClassPool",
    "CurriculumAugment",
    "LDAMLoss",
    "LoLPlan",
    "LoLResult",
    "LongTailLoss",
    "NormedLinear",
    "accept_fraction",
    "balanced_softmax_loss",
    "class_balanced_weights",
    "derive_seed",
    "draw_plan",
    "evaluate_plan",
    "ldam_loss",
    "ldam_margins",
    "log_prior",
    "lol_decision",
    "make_loss",
    "plan_sizes",
]
