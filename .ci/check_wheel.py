"""Import an installed wheel outside the source tree and exercise it (used by .ci/run)."""

import importlib
import os
import pkgutil
import sys

import torch

import fastorals

expect_ext = "--expect-ext" in sys.argv
root = os.path.dirname(os.path.dirname(os.path.abspath(fastorals.__file__)))
assert "site-" in root, f"imported fastorals from {root}, not from the installed wheel"
i = fastorals.info()
assert i.extension_loaded is expect_ext, (i.extension_loaded, i.extension_error)
x = fastorals.data.synthetic_images(64, num_classes=4, size=16, seed=0)
assert x.images.shape == (64, 3, 16, 16)
m = fastorals.models.resnet20(num_classes=4, width=0.25)
assert m(x.float()[:2]).shape == (2, 4)
# every module imports and its public API is reachable on this install
for mod in pkgutil.iter_modules(fastorals.__path__):
    if not mod.name.startswith("_") and mod.name not in ("cli",):
        importlib.import_module(f"fastorals.{mod.name}")
print("wheel OK:", "with" if expect_ext else "without", "extension;", torch.__version__)
