"""Training loop, evaluation, checkpoints and PGD attacks shared by every module.

Example:
    >>> from fastorals import data, models, training
    >>> ds = data.synthetic_splits(5000, 1000)
    >>> loader = data.TensorLoader(ds.train, batch_size=128)
    >>> test = data.TensorLoader(ds.test, batch_size=512, shuffle=False)
    >>> hist = training.fit(models.resnet20(), loader, epochs=5, test=test)
"""

from .attacks import adversarial_training_step, pgd_attack
from .loop import (
    AdversarialConfig,
    FitResult,
    evaluate,
    fit,
    load_checkpoint,
    make_optimizer,
    make_schedule,
    save_checkpoint,
    seed_everything,
    to_float_images,
)

__all__ = [
    "AdversarialConfig",
    "FitResult",
    "adversarial_training_step",
    "evaluate",
    "fit",
    "load_checkpoint",
    "make_optimizer",
    "make_schedule",
    "pgd_attack",
    "save_checkpoint",
    "seed_everything",
    "to_float_images",
]
