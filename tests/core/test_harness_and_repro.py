import json

import pytest
import torch

from benchmarks import harness, report
from fastorals import repro
from fastorals.testing import assert_raises


def test_run_case_rows_follow_the_schema():
    a = torch.randn(64, 64)
    slow = lambda: sum(torch.mm(a, a) for _ in range(20))
    fast = lambda: torch.mm(a, a)
    case = harness.Case(op="mm", shape="64x64", dtype="float32", device="cpu", fast={"fastorals": fast},
                        reference=slow, peers={"peer": slow, "broken": lambda: 1 / 0},
                        backend="torch", flops=2 * 64**3, bytes=3 * 64 * 64 * 4)
    rows = harness.run_case("demo", case, "smoke")
    assert [r["impl"] for r in rows] == ["fastorals", "reference", "peer", "broken"]
    f = rows[0]
    for key in ("op", "shape", "dtype", "device", "backend", "median_ms", "p20_ms", "p80_ms", "peak_mem_mb",
                "ratio_vs_reference", "ratio_vs_peers", "pct_of_limit", "limit_kind"):
        assert key in f
    assert f["median_ms"] > 0 and f["ratio_vs_reference"] > 1 and f["ratio_vs_peers"]["peer"] > 1
    assert f["pct_of_limit"] > 0 and f["limit_kind"] in ("gflops", "gbps")
    assert "failed: ZeroDivisionError" in rows[3]["note"] and rows[3]["median_ms"] is None
    md = report.markdown_table(rows)
    assert "| mm | 64x64 |" in md and "ratio" not in md.split("\n")[0]


def test_verify_failure_is_not_hidden():
    case = harness.Case(op="x", shape="1", dtype="f", device="cpu", fast={"fastorals": lambda: 1},
                        reference=lambda: 2, verify=lambda a, b, name: (_ for _ in ()).throw(AssertionError(name)))
    with pytest.raises(AssertionError):
        harness.run_case("demo", case, "smoke")


def test_limits_and_labels():
    lim = harness.measure_limits("cpu", "smoke")
    assert lim["gflops"] > 0 and lim["gbps"] > 0
    assert harness.device_label("cpu").startswith("cpu-")
    assert harness.quantile([1.0, 2.0, 3.0], 0.5) == 2.0
    with assert_raises(ValueError, "mode"):
        list(harness.iter_cases(harness.Suite("s", lambda m, d: []), "huge"))


def test_repro_registry_runs_and_writes_json(tmp_path):
    @repro.register("_demo_test", "a test reproduction")
    def _run(mode, out_dir, seed):
        return {"mode": mode, "seed": seed, "value": torch.tensor(1.5), "nan": float("nan")}

    doc = repro.run("_demo_test", "smoke", str(tmp_path), seed=3)
    saved = json.loads((tmp_path / "smoke" / "_demo_test.json").read_text())  # smoke runs write apart
    assert saved["results"] == {"mode": "smoke", "seed": 3, "value": 1.5, "nan": None}
    assert doc["elapsed_s"] >= 0
    with assert_raises(KeyError, "unknown reproduction"):
        repro.run("_missing", "smoke", str(tmp_path))
    with assert_raises(ValueError, "mode"):
        repro.run("_demo_test", "long", str(tmp_path))
