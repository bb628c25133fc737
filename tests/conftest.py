"""Shared pytest setup: markers and the device on which Triton kernel tests run.

* ``@pytest.mark.interpret``: Triton kernel tests. They run on CUDA when present, else on the
  CPU when ``TRITON_INTERPRET=1`` was set before triton was imported (a separate invocation:
  ``TRITON_INTERPRET=1 python -m pytest -m interpret``), else they skip with that instruction.
* ``@pytest.mark.gpu``: skipped without CUDA.
* ``@pytest.mark.slow``: skipped unless ``-m slow`` (or FASTORALS_SLOW=1) asks for them.
"""

from __future__ import annotations

import os

import pytest
import torch

from fastorals.testing import triton_test_device

try:  # hypothesis profiles: CI-sized by default; FASTORALS_HYPOTHESIS=thorough for more examples
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.register_profile(
        "thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.load_profile(os.environ.get("FASTORALS_HYPOTHESIS", "ci"))
except ImportError:  # pragma: no cover
    pass


def pytest_collection_modifyitems(config, items):
    markexpr = config.getoption("-m") or ""
    run_slow = "slow" in markexpr or os.environ.get("FASTORALS_SLOW") == "1"
    tdev = triton_test_device()
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        if "interpret" in item.keywords and tdev is None:
            item.add_marker(
                pytest.mark.skip(reason="Triton kernel test: run on CUDA or with TRITON_INTERPRET=1 python -m pytest -m interpret")
            )
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow test: run with -m slow or FASTORALS_SLOW=1"))


@pytest.fixture
def triton_device() -> torch.device:
    """Device for Triton kernel tests (see module docstring)."""
    dev = triton_test_device()
    if dev is None:
        pytest.skip("no CUDA and TRITON_INTERPRET is not set")
    return dev


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
