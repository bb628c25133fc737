"""CIFAR-10 / CIFAR-100 from the standard python-pickle directory layout, loaded safely.

The official files are pickles. A pickle can run arbitrary code, so they are read through a
restricted unpickler that resolves only the few globals these files need (NumPy's array
reconstruction and ``_codecs.encode`` for byte strings); anything else is refused with
:class:`UnsafePickleError` naming the global it wanted.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
from typing import Any, Union

import numpy as np
import torch

from .dataset import DatasetSplits, ImageDataset

PathLike = Union[str, "os.PathLike[str]"]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list (it may try to run code)."""


class CifarNotFoundError(FileNotFoundError):
    """A CIFAR directory lacks a file it needs; the message names it."""


class CifarFormatError(ValueError):
    """A file of a CIFAR directory is not a CIFAR batch (not a pickle, truncated, wrong contents);
    the message names the file."""


# (module, name) -> (module to import, attribute); numpy.core moved to numpy._core in NumPy 2.
_ALLOWED: dict[tuple[str, str], tuple[str, str]] = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"): ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): ("numpy.core.numeric", "_frombuffer"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("_codecs", "encode"): ("_codecs", "encode"),
}


def _resolve(module: str, name: str) -> Any:
    mod_name, attr = _ALLOWED[(module, name)]
    if mod_name.startswith("numpy.core") and hasattr(np, "_core"):
        mod_name = mod_name.replace("numpy.core", "numpy._core", 1)
    return getattr(importlib.import_module(mod_name), attr)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only builds builtin containers, bytes/str, numbers and NumPy arrays."""

    def __init__(self, file: io.BufferedIOBase, source: str = "<stream>") -> None:
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _resolve(module, name)
        raise UnsafePickleError(
            f"{self._source}: refused to load global '{module}.{name}' — CIFAR files may contain only "
            "dicts, lists, bytes, numbers and NumPy arrays; this file may try to run code"
        )


def safe_load_pickle(path: PathLike) -> Any:
    """Load a pickle file through :class:`RestrictedUnpickler`.

    Raises:
        UnsafePickleError: the file asks for a global outside the allow-list.
        CifarFormatError: the file is not a readable pickle (garbage, truncated).
    """
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f, source=os.fspath(path)).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
                UnicodeDecodeError, MemoryError) as e:
            raise CifarFormatError(f"{os.fspath(path)}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from None


def _get(d: dict, key: str, path: PathLike) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise CifarFormatError(f"{path}: expected a key {key!r} in the CIFAR batch, found {sorted(map(str, d))}")


def _batch_to_tensors(path: PathLike, label_key: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not os.path.isfile(path):
        raise CifarFormatError(f"{path}: expected a CIFAR batch file, found a directory or something else")
    d = safe_load_pickle(path)
    if not isinstance(d, dict):
        raise CifarFormatError(f"{path}: expected a dict in the CIFAR batch, got {type(d).__name__}")
    data = np.asarray(_get(d, "data", path))
    raw = np.asarray(_get(d, label_key, path))
    if raw.dtype.kind not in "iu" or raw.ndim != 1:  # floats would be cut, bytes would not parse
        raise CifarFormatError(f"{path}: expected a list of integer {label_key}, got {raw.dtype} {raw.shape}")
    labels = raw.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise CifarFormatError(f"{path}: {label_key} must lie in [0, {num_classes}), got min {labels.min()}, "
                               f"max {labels.max()}")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] % 3 != 0:
        raise CifarFormatError(f"{path}: expected uint8 data of shape [N, 3*H*W], got {data.dtype} {data.shape}")
    side = int(round((data.shape[1] // 3) ** 0.5))
    if 3 * side * side != data.shape[1]:
        raise CifarFormatError(f"{path}: rows of length {data.shape[1]} are not 3 square channels")
    if labels.shape != (data.shape[0],):
        raise CifarFormatError(f"{path}: {labels.shape[0]} labels for {data.shape[0]} images")
    images = torch.from_numpy(data.reshape(-1, 3, side, side).copy())
    return images, torch.from_numpy(labels)


def _names(meta: dict, key: str) -> list[str]:
    for k in (key.encode(), key):
        if k in meta:
            return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[k]]
    return []


def _find_dir(root: PathLike, folder: str, probe: str) -> str:
    root = os.fspath(root)
    for cand in (os.path.join(root, folder), root):
        if os.path.isfile(os.path.join(cand, probe)):
            return cand
    raise CifarNotFoundError(
        f"root: no CIFAR files found: expected {os.path.join(root, folder, probe)} "
        f"(the standard '{folder}' directory from the python version of the data set)"
    )


def load_cifar10(root: PathLike) -> DatasetSplits:
    """CIFAR-10 from ``root/cifar-10-batches-py`` (or ``root`` itself).

    Returns:
        DatasetSplits with ``train`` (50,000 images) and ``test`` (10,000), images uint8
        [N, 3, 32, 32], labels int64 [N], class names from ``batches.meta``.

    Example:
        >>> splits = load_cifar10("~/data")
        >>> x, y = splits.train
    """
    d = _find_dir(os.path.expanduser(os.fspath(root)), "cifar-10-batches-py", "test_batch")
    batches = sorted(f for f in os.listdir(d) if f.startswith("data_batch_"))
    if not batches:
        raise CifarNotFoundError(f"root: no data_batch_* files in {d}")
    parts = [_batch_to_tensors(os.path.join(d, b), "labels", 10) for b in batches]
    test_x, test_y = _batch_to_tensors(os.path.join(d, "test_batch"), "labels", 10)
    sizes = {tuple(p[0].shape[1:]) for p in parts} | {tuple(test_x.shape[1:])}
    if len(sizes) > 1:
        raise CifarFormatError(f"{d}: the batches hold images of different sizes {sorted(sizes)}")
    train = ImageDataset(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    test = ImageDataset(test_x, test_y)
    meta_path = os.path.join(d, "batches.meta")
    names = _names(safe_load_pickle(meta_path), "label_names") if os.path.exists(meta_path) else []
    names = names or [str(i) for i in range(10)]
    train.classes, test.classes = list(names), list(names)
    return DatasetSplits(train, test)


def load_cifar100(root: PathLike, coarse: bool = False) -> DatasetSplits:
    """CIFAR-100 from ``root/cifar-100-python`` (or ``root`` itself); fine labels unless ``coarse``."""
    d = _find_dir(os.path.expanduser(os.fspath(root)), "cifar-100-python", "test")
    if not os.path.isfile(os.path.join(d, "train")):
        raise CifarNotFoundError(f"root: {os.path.join(d, 'train')} is missing (the CIFAR-100 training batch)")
    key = "coarse_labels" if coarse else "fine_labels"
    n = 20 if coarse else 100
    train = ImageDataset(*_batch_to_tensors(os.path.join(d, "train"), key, n))
    test = ImageDataset(*_batch_to_tensors(os.path.join(d, "test"), key, n))
    if train.images.shape[1:] != test.images.shape[1:]:
        raise CifarFormatError(f"{d}: train and test hold images of different sizes "
                               f"{tuple(train.images.shape[1:])} and {tuple(test.images.shape[1:])}")
    meta_path = os.path.join(d, "meta")
    names = (
        _names(safe_load_pickle(meta_path), "coarse_label_names" if coarse else "fine_label_names")
        if os.path.exists(meta_path)
        else []
    )
    names = names or [str(i) for i in range(20 if coarse else 100)]
    train.classes, test.classes = list(names), list(names)
    return DatasetSplits(train, test)


def write_cifar_batch(path: PathLike, images: torch.Tensor, labels: torch.Tensor, label_key: str = "labels") -> None:
    """Write images (uint8 [N, 3, H, W]) and labels in the CIFAR python-pickle batch format.

    Useful to save a derived data set (e.g. OPS-perturbed CIFAR) where CIFAR tools read it.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise ValueError(f"images: expected uint8 [N, 3, H, W] with N >= 1, got {images.dtype} {tuple(images.shape)}")
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or tuple(labels.shape) != (images.shape[0],):
        raise ValueError(f"labels: expected {images.shape[0]} integer labels (one per image), got "
                         f"{labels.dtype} {tuple(labels.shape)}")
    d = {
        b"batch_label": b"fastorals",
        b"data": images.reshape(images.shape[0], -1).cpu().numpy(),
        label_key.encode(): [int(v) for v in labels.tolist()],
        b"filenames": [f"{i:06d}.png".encode() for i in range(images.shape[0])],
    }
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)
