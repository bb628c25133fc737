import json
import os
import subprocess
import sys

import pytest
import torch

import fastorals
from fastorals import _ext
from fastorals.testing import assert_raises


def _run(code, **env):
    e = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=300)


def test_info_fields_and_pretty_print(capsys):
    i = fastorals.info()
    out = capsys.readouterr().out
    for word in ("fastorals", "torch", "extension", "OpenMP", "Triton", "CUDA", "backend"):
        assert word in out
    assert i.version == fastorals.__version__ and i.torch_version == torch.__version__
    if i.extension_loaded:
        assert i.extension_error is None and i.openmp_threads >= 1 and i.compiler
    else:
        assert i.extension_error


@pytest.mark.skipif(not _ext.HAS_EXT, reason="checks the built extension")
def test_extension_loaded_with_openmp_here():
    i = fastorals.info(print_it=False)
    assert i.extension_loaded and i.openmp and i.openmp_threads >= 1
    assert i.backend_cpu == "cpp"


def test_missing_extension_path_works_and_explains():
    code = (
        "import json, fastorals, torch\n"
        "from fastorals import _ext\n"
        "i = fastorals.info(print_it=False)\n"
        "r = {'loaded': i.extension_loaded, 'err': i.extension_error, 'cpu': i.backend_cpu}\n"
        "try:\n"
        "    with fastorals.use_backend('cpp'):\n"
        "        _ext.select_backend('x', torch.device('cpu'), ('cpp', 'reference'))\n"
        "except fastorals.BackendUnavailableError as e:\n"
        "    r['raised'] = str(e)\n"
        "print(json.dumps(r))\n"
    )
    p = _run(code, FASTORALS_NO_EXT="1")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["loaded"] is False and "FASTORALS_NO_EXT" in r["err"]
    assert r["cpu"] == "torch" and "not loaded" in r["raised"]


def test_backend_selection_rules(monkeypatch):
    cpu = torch.device("cpu")
    assert _ext.select_backend("op", cpu, ("torch", "reference")) == "torch"
    with fastorals.use_backend("reference"):
        assert _ext.select_backend("op", cpu, ("cpp", "torch", "reference")) == "reference"
    with fastorals.use_backend("torch"), assert_raises(fastorals.BackendUnavailableError, "op", "torch"):
        _ext.select_backend("op", cpu, ("cpp", "reference"))
    if not _ext.triton_interpret():
        with fastorals.use_backend("triton"), assert_raises(fastorals.BackendUnavailableError, "triton"):
            _ext.select_backend("op", cpu, ("triton", "reference"))
    monkeypatch.setenv("FASTORALS_BACKEND", "reference")
    assert _ext.select_backend("op", cpu, ("cpp", "reference")) == "reference"
    monkeypatch.setenv("FASTORALS_BACKEND", "fastest")
    with assert_raises(fastorals.BackendUnavailableError, "FASTORALS_BACKEND", "auto"):
        _ext.select_backend("op", cpu, ("cpp", "reference"))
    with assert_raises(ValueError, "backend"):
        with fastorals.use_backend("gpu"):
            pass


def test_cli_info_json_and_repro_list():
    p = subprocess.run([sys.executable, "-m", "fastorals", "info", "--json"], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["version"] == fastorals.__version__ and "extension_loaded" in d
    p = subprocess.run([sys.executable, "-m", "fastorals", "repro", "--list"], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([sys.executable, "-m", "fastorals", "repro", "no-such-thing", "--smoke"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "unknown reproduction" in p.stderr


def test_lazy_submodules():
    assert fastorals.data.synthetic_images is not None
    with pytest.raises(AttributeError):
        _ = fastorals.no_such_module
