"""Every registered case as a pytest-benchmark group (see conftest.py)."""

from __future__ import annotations

import os

import pytest

from benchmarks import harness
from benchmarks.run import discover

MODE = os.environ.get("FASTORALS_BENCH_MODE", "smoke")


def _params():
    out = []
    for name, suite in discover().items():
        for i, case in enumerate(harness.iter_cases(suite, MODE, "cpu")):
            for impl, _kind, fn in case.impls():
                if impl in case.skip:
                    continue
                out.append(pytest.param(case, impl, fn, id=f"{name}-{case.name or case.op}-{i}-{impl}"))
    return out


@pytest.mark.parametrize(("case", "impl", "fn"), _params())
def test_case(benchmark, case, impl, fn):
    benchmark.group = f"{case.op} {case.shape} {case.dtype}"
    benchmark.extra_info.update(impl=impl, backend=case.backend)
    benchmark.pedantic(fn, rounds=3, warmup_rounds=1)
