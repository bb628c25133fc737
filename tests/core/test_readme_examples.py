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
    "curriculum": [("batch_size=128), 200,", "batch_size=128), 1,")],  # 1 epoch instead of 200
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
    if module == "augment":
        assert scope["x"].shape == (128, 3, 32, 32) and scope["x"].dtype == torch.float32
        assert scope["z"].shape == (2, 3, 32, 32) and scope["z"].dtype == torch.uint8
        assert scope["z2"].dtype == torch.uint8 and scope["y"].dtype == torch.float32
    if module == "curriculum":
        assert scope["cur"].history.shape == (2, 10)  # the explicit update, then the hook's at epoch 0
        assert (tmp_path / "run.pt").exists()
