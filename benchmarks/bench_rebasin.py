"""Git Re-Basin: the linear assignment solver and end-to-end weight matching.

LAP cases (same matrix for every implementation, minimization, objectives verified equal):

* ``lap_uniform``: i.i.d. uniform costs, the hardest common case.
* ``lap_wm``: weight-matching-shaped costs ``X_A X_B^T / d`` between two layers whose units are a
  hidden permutation of each other, correlated with rho = 0.3 (SciPy solves these ~5x faster than
  uniform ones, as the weight matching matrices of trained nets), and ``lap_wm_hard`` with
  rho = 0.1 (weaker structure, long augmenting paths).
* ``lap_resolve``: re-solving a slightly changed matrix (``C + eps * std(C) * noise``): the
  warm start from the previous solve's duals against a cold solve, SciPy and lapx.

Peers: ``scipy.optimize.linear_sum_assignment`` (Crouse's shortest augmenting path) and lapx
(``lapjvh``, ``lapjvs`` in float32, ``lapjv``). The NumPy reference solver runs at small sizes.

Weight matching (``weight_matching``): fastorals against a plain implementation of the official
algorithm (``fastorals.rebasin.reference.weight_matching_reference``: the same coordinate descent,
visiting order and iterations; every cost matrix rebuilt with one GEMM per (parameter, axis) from
permuted copies; SciPy's solver), on two independently initialized models.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.harness import Case, Suite
from fastorals.rebasin import linear_sum_assignment, spec_for, weight_matching
from fastorals.rebasin.reference import lap_reference, weight_matching_reference

try:
    import lap as _lapx  # the lapx distribution installs the "lap" module
except ImportError:  # pragma: no cover
    _lapx = None


def _uniform(n: int, dtype: np.dtype, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, n)).astype(dtype)


def _wm_like(n: int, dtype: np.dtype, seed: int, rho: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, n), dtype=np.float32)
    y = (rho * x + np.sqrt(1 - rho**2) * rng.standard_normal((n, n), dtype=np.float32))[rng.permutation(n)]
    return ((x @ y.T) / n).astype(dtype)


def _objective(c: np.ndarray, cols: np.ndarray) -> float:
    return float(c[np.arange(len(cols)), cols].astype(np.float64).sum())


def _peers(c: np.ndarray, maximize: bool = False) -> dict:
    from scipy.optimize import linear_sum_assignment as scipy_lsa

    peers = {"scipy": lambda: scipy_lsa(c, maximize=maximize)[1]}
    if _lapx is not None:
        m = -c if maximize else c  # lapx minimizes: negated once, outside the timed call
        m32 = m.astype(np.float32)
        peers["lapx.lapjvh"] = lambda: _lapx.lapjvh(m, return_cost=False)[1]
        peers["lapx.lapjvs"] = lambda: _lapx.lapjvs(m32, return_cost=False)[1]
        peers["lapx.lapjv"] = lambda: _lapx.lapjv(m, return_cost=False)[0]
    return peers


def _verify(c: np.ndarray, maximize: bool = False):
    def verify(fast_out, other_out, name: str) -> None:
        a = _objective(c, np.asarray(fast_out))
        b = _objective(c, np.asarray(other_out))
        # lapjvs works in float32 arithmetic: its optimum may be off by float32 rounding
        tol = 1e-5 if name == "lapx.lapjvs" else 1e-9
        worse = a - b if maximize else b - a
        assert worse >= -1e-9 * max(1.0, abs(a)), f"{name}: objective {b!r} better than the optimum {a!r}?"
        assert abs(a - b) <= tol * max(1.0, abs(a)), f"{name}: objective {b!r} differs from fastorals {a!r}"

    return verify


def _lap_cases(mode: str):
    sizes = {"smoke": [64], "quick": [256, 1024, 2048], "full": [256, 512, 1024, 2048, 4096]}[mode]
    # uniform costs: minimize; weight-matching costs: maximize (as weight matching does)
    kinds = (("lap_uniform", _uniform, False), ("lap_wm", lambda n, d, s: _wm_like(n, d, s, 0.3), True),
             ("lap_wm_hard", lambda n, d, s: _wm_like(n, d, s, 0.1), True))
    for kind, make, mx in kinds:
        for n in sizes:
            for dtype in (np.float32, np.float64):
                c = make(n, dtype, n)
                skip = {} if n <= 512 else {"reference": "the NumPy reference takes minutes at this size"}
                if dtype == np.float64:
                    skip = {**skip, "lapx.lapjvs": "float32 solver (run in the float32 rows)"}
                yield Case(
                    op=kind, shape=f"{n}x{n}", dtype=np.dtype(dtype).name, device="cpu",
                    fast={"fastorals": lambda c=c, mx=mx: linear_sum_assignment(c, mx)[1]},
                    reference=lambda c=c, mx=mx: lap_reference(c, mx)[0],
                    peers=_peers(c, mx), backend="cpp", bytes=c.nbytes, verify=_verify(c, mx), skip=skip,
                    max_time_s=4.0, note=("maximize" if mx else "minimize") + "; lapx gets -cost when maximizing; "
                    "lapx.lapjvs rounds to float32",
                )
    # warm re-solve after a small change
    rsizes = {"smoke": [64], "quick": [1024, 2048], "full": [1024, 2048, 4096]}[mode]
    for n in rsizes:
        for eps in (1e-6, 1e-4):
            c = _uniform(n, np.float32, n)
            _, _, duals = linear_sum_assignment(c, return_duals=True)
            noise = np.random.default_rng(n + 1).standard_normal((n, n)).astype(np.float32)
            c2 = (c + np.float32(eps * float(c.std())) * noise).astype(np.float32)
            peers = {"fastorals (cold)": lambda c2=c2: linear_sum_assignment(c2)[1], **_peers(c2)}
            yield Case(
                op="lap_resolve", shape=f"{n}x{n} eps={eps:g}", dtype="float32", device="cpu",
                fast={"fastorals (warm)": lambda c2=c2, d=duals: linear_sum_assignment(c2, warm_start=d)[1]},
                peers=peers, backend="cpp", bytes=c2.nbytes, verify=_verify(c2),
                skip={"lapx.lapjv": "slow; covered in lap_uniform"}, max_time_s=3.0,
                note="uniform costs; warm start from the unperturbed solve's duals",
            )


def _wm_cases(mode: str):
    from fastorals import models

    configs = {
        "smoke": [("mlp", dict(in_features=64, num_classes=10, hidden=(32, 32, 32)))],
        "quick": [("mlp", dict(in_features=3072, num_classes=10, hidden=(1024, 1024, 1024))),
                  ("resnet20", dict(width=2))],
        "full": [("mlp", dict(in_features=3072, num_classes=10, hidden=(2048, 2048, 2048))),
                 ("resnet20", dict(width=4))],
    }[mode]
    for name, kw in configs:
        torch.manual_seed(0)
        build = models.MLP if name == "mlp" else models.resnet20
        a, b = build(**kw), build(**kw)
        spec = spec_for(a)
        sa, sb = a.state_dict(), b.state_dict()
        axes = {k: spec.axes_to_perm[k] for k in spec.axes_to_perm if k not in spec.buffers}

        def verify(fast_out, other_out, impl: str) -> None:
            ours = fast_out.objective[-1]
            theirs = other_out[1]
            assert abs(ours - theirs) <= 1e-5 * abs(theirs), f"{impl}: objective {theirs} vs fastorals {ours}"
            assert fast_out.iterations == other_out[2], f"{impl}: {other_out[2]} iterations vs {fast_out.iterations}"

        label = (f"MLP {len(kw['hidden'])}x{kw['hidden'][0]} (in {kw['in_features']})" if name == "mlp"
                 else f"ResNet-20x{kw['width']}")
        yield Case(
            op="weight_matching", shape=label, dtype="float32", device="cpu",
            fast={"fastorals": lambda spec=spec, sa=sa, sb=sb: weight_matching(spec, sa, sb)},
            reference=lambda axes=axes, sa=sa, sb=sb: weight_matching_reference(axes, sa, sb),
            backend="cpp", verify=verify, max_time_s=10.0,
            note="two independently initialized models; reference = official algorithm, scipy LAP, same iterations",
        )


def cases(mode: str, device: str):
    if device != "cpu":
        return
    yield from _lap_cases(mode)
    yield from _wm_cases(mode)


SUITE = Suite("rebasin", cases, "Git Re-Basin: exact LAP (vs scipy, lapx) and end-to-end weight matching")
