"""Small reproductions of each paper's claim: ``fastorals repro NAME [--quick|--smoke] [--out DIR]``.

A reproduction is a function registered with :func:`register`; modules ``fastorals/repro/<name>.py``
are discovered automatically. It receives the mode ("smoke": seconds, checks the pipeline;
"quick": under 10 minutes on 2 cores; "full": the documented run), an output folder and a seed,
and returns a JSON-serializable dict of results. The runner writes ``<out>/<name>.json``; the
reproduction writes its own plots (``<out>/<name>*.png``) with :func:`savefig`.

Example:
    >>> from fastorals.repro import register
    >>> @register("onepixel", "One-Pixel Shortcut: accuracy of models trained on perturbed data")
    ... def run(mode, out_dir, seed): ...
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import math
import os
import pkgutil
import platform
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .._io import atomic_write

MODES = ("smoke", "quick", "full")


@dataclass
class Repro:
    name: str
    description: str
    fn: Callable[[str, str, int], dict[str, Any]]
    data: tuple[str, ...] = ()  # local data sets it reads when given ("cifar10", "cifar100")
    data_modes: tuple[str, ...] = MODES  # the modes in which it reads them


_REGISTRY: dict[str, Repro] = {}


def register(name: str, description: str = "", data: tuple[str, ...] = (),
             data_modes: tuple[str, ...] = MODES) -> Callable:
    """Decorator registering ``fn(mode, out_dir, seed) -> dict`` as reproduction ``name``;
    ``data``: the local data sets it reads when given (``"cifar10"``, ``"cifar100"``), in the
    modes ``data_modes`` (the CLI refuses a data set a run would not read)."""

    def deco(fn: Callable[[str, str, int], dict[str, Any]]) -> Callable:
        _REGISTRY[name] = Repro(name, description or (fn.__doc__ or "").strip().split("\n")[0], fn, tuple(data),
                                tuple(data_modes))
        return fn

    return deco


def available() -> dict[str, Repro]:
    """All registered reproductions (imports every ``fastorals.repro.<name>`` module once)."""
    for m in pkgutil.iter_modules(__path__):
        if not m.name.startswith("_"):
            importlib.import_module(f"{__name__}.{m.name}")
    return dict(sorted(_REGISTRY.items()))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "item") and callable(x.item):
        return _jsonable(x.item())
    return x


def output_dir(out_dir: str, mode: str) -> str:
    """Where a run in ``mode`` writes: ``out_dir``, or ``out_dir/smoke`` for smoke runs (a check
    of seconds never overwrites the results, plots and models of a quick or full run)."""
    return os.path.join(out_dir, "smoke") if mode == "smoke" else out_dir


def run(name: str, mode: str = "quick", out_dir: str = "repro_out", seed: int = 0) -> dict[str, Any]:
    """Run reproduction ``name`` and write ``<out_dir>/<name>.json`` (smoke runs: under
    ``<out_dir>/smoke``, see :func:`output_dir`); returns the results."""
    repros = available()
    if name not in repros:
        raise KeyError(f"name: unknown reproduction {name!r}; available: {', '.join(repros) or 'none'}")
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    out_dir = output_dir(out_dir, mode)
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    results = repros[name].fn(mode, out_dir, seed)
    doc = {
        "name": name,
        "mode": mode,
        "seed": seed,
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "results": _jsonable(results),
    }
    atomic_write(os.path.join(out_dir, f"{name}.json"), lambda f: json.dump(doc, f, indent=1), text=True)
    return doc


def savefig(fig: Any, out_dir: str, filename: str) -> str:
    """Save a matplotlib figure under ``out_dir`` and close it; returns the path."""
    import matplotlib.pyplot as plt

    path = os.path.join(out_dir, filename)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
