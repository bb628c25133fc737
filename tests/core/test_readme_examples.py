"""The API example of a module README runs as written (in a scratch directory), so a user who
copies it gets what it promises. A long training call is shortened by an explicit substitution
that must match the README's text (a changed README fails here rather than running long)."""

from __future__ import annotations

import pathlib
import re

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2] / "fastorals"

# module -> (README text, shortened text) substitutions applied before running
EXAMPLES = {
    "augment": [],
    "behavior": [("steps=5000", "steps=20")],
    "curriculum": [("batch_size=128), 200,", "batch_size=128), 1,")],  # 1 epoch instead of 200
    "distillation": [("steps=2000", "steps=2")],
    "koopman": [],
    "label_encoding": [],
    "lipschitz": [],
    "onepixel": [],
    "rebasin": [("num_points=25", "num_points=3")],
    "transformer": [],
}


def _shape(scope: dict, name: str) -> tuple:
    return tuple(scope[name].shape)


# what each example leaves behind (names the README's comments describe)
CHECKS = {
    "augment": lambda s: (_shape(s, "x") == (128, 3, 32, 32) and s["x"].dtype == torch.float32
                          and _shape(s, "z") == (2, 3, 32, 32) and s["z"].dtype == torch.uint8),
    "behavior": lambda s: _shape(s, "logits") == (64, 5, 24) and _shape(s, "offsets") == (64, 5, 24, 2),
    "curriculum": lambda s: s["cur"].history.shape == (2, 10) and pathlib.Path("run.pt").exists(),
    "distillation": lambda s: tuple(s["hist"].obs.shape) == (64, 200, 2) and tuple(s["res"].returns.shape) == (32, 4),
    "koopman": lambda s: _shape(s, "z_new") == (16, 8, 40) and not torch.equal(s["z_new"], s["z1"]),
    "label_encoding": lambda s: _shape(s, "out") == (32, 32) and _shape(s, "y_hat") == (32,),
    "lipschitz": lambda s: _shape(s, "logits") == (16, 10) and _shape(s, "r") == (16,) and s["lip"] <= 1 + 1e-5,
    "onepixel": lambda s: _shape(s, "x_ops") == (500, 3, 32, 32) and s["x_ops"].dtype == torch.uint8,
    "rebasin": lambda s: len(s["curve"].lambdas) == 3 and s["res"].converged,
    "transformer": lambda s: _shape(s, "out") == (256, 3, 5) and _shape(s, "logits") == (4, 96, 5),
}


def _api_block(module: str) -> str:
    text = (ROOT / module / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, f"{module}/README.md has no python block"
    return blocks[0]


@pytest.mark.parametrize("module", sorted(EXAMPLES))
def test_readme_api_example_runs(module, tmp_path, monkeypatch):
    code = _api_block(module)
    for old, new in EXAMPLES[module]:
        assert old in code, f"{module}/README.md no longer contains {old!r}: update EXAMPLES"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)  # files the example writes (checkpoints) land here
    threads = torch.get_num_threads()
    scope: dict = {"__name__": f"readme_{module}"}
    try:
        exec(compile(code, f"fastorals/{module}/README.md", "exec"), scope)
    finally:
        torch.set_num_threads(threads)
    assert CHECKS[module](scope), f"{module}: the example's results differ from what its comments say"


def test_every_module_readme_example_is_run_here():
    with_examples = {p.parent.name for p in ROOT.glob("*/README.md") if "```python" in p.read_text()}
    assert with_examples == set(EXAMPLES) == set(CHECKS)
