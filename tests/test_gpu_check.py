"""`benchmarks/gpu_check.py` on the CPU with the tiny model (`--device cpu --tiny`): what it runs on a GPU machine,
so that it cannot rot without a GPU."""

from __future__ import annotations

import argparse
import importlib
import json
import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PHASES = {"rollout", "beliefs", "ref_logprobs", "update"}


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module("gpu_check")


def test_the_cpu_run_of_the_tiny_model_passes_every_part(gpu_check, tmp_path):
    out = tmp_path / "check.json"
    # the loss tests alone: the device tests all run in the suite itself
    argv = ["--device", "cpu", "--tiny", "--tests", "tests/algo/test_rewards_loss.py", "--out", str(out)]
    assert gpu_check.main(argv) == 0
    res = json.loads(out.read_text())
    parts = res["parts"]
    assert res["status"] == "ok" and {p: v["status"] for p, v in parts.items()} == dict.fromkeys(parts, "ok")
    assert list(parts) == ["machine", "tests", "setup", "steps", "beliefs"]
    assert "cpu_model" in parts["machine"]["result"] and "gpu" not in parts["machine"]["result"]

    tests = parts["tests"]["result"]
    assert "IGPO_TEST_DEVICE=cpu" in tests["command"] and "-m device" in tests["command"]
    assert tests["passed"] >= 3 and tests["failed"] == tests["errors"] == 0 and tests["collection_errors"] == []

    model = parts["setup"]["result"]["model"]
    assert model["class"] == "Qwen2ForCausalLM" and model["num_hidden_layers"] == 2
    assert "trainer.autocast=bfloat16" in parts["setup"]["result"]["overrides"]
    steps = parts["steps"]["result"]
    assert [s["step"] for s in steps["steps"]] == [0, 1, 2]
    for s in steps["steps"]:
        assert PHASES <= set(s["phase_seconds"]) and all(s["phase_seconds"][p] > 0 for p in PHASES)
        assert s["seconds"] >= sum(s["phase_seconds"].values()) - 1e-3
        assert all(math.isfinite(v) for v in s["losses"].values()) and s["tool_calls"] > 0
        assert s["peak_gpu_memory_bytes"] is None  # on the CPU
    assert steps["param_dtypes"] == steps["optimizer_state_dtypes"] == ["torch.float32"]
    assert steps["linear_output_dtypes"] == ["torch.bfloat16"]

    beliefs = parts["beliefs"]["result"]
    for precision, tol in (("float32", 1e-4), ("bfloat16", 1e-3)):  # each against the reference of its precision
        b = beliefs[precision]
        assert b["beliefs"] > b["scored_episodes"] > 0 and b["from_cache_share"] == 1.0
        assert b["max_abs_diff_packed_vs_reference"] <= tol and b["max_abs_diff_cache_vs_reference"] <= tol
        assert set(b["seconds"]) == {"reference", "packed", "cache"}


def test_a_missing_package_is_named_and_nothing_runs(gpu_check, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(gpu_check.REQUIRED, "igpo_no_such_module", "igpo-no-such-package")
    out = tmp_path / "check.json"
    assert gpu_check.main(["--device", "cpu", "--out", str(out)]) == 2
    res = json.loads(out.read_text())
    assert res["status"] == "missing_imports" and res["missing"] == ["igpo-no-such-package"] and res["parts"] == {}
    assert "not installed: igpo-no-such-package" in capsys.readouterr().err


def test_cuda_without_a_gpu_stops_before_any_part(gpu_check, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "check.json"
    assert gpu_check.main(["--device", "cuda", "--out", str(out)]) == 2
    assert json.loads(out.read_text())["status"] == "no_cuda" and "sees no CUDA device" in capsys.readouterr().err


def local(names: list[str]) -> list[str]:
    """Junit's test and module names without the dotted path before the module: it is relative to pytest's
    rootdir, which depends on where the checkout and tmp_path lie (both under /tmp: a long path)."""
    return [head.split(".")[-1] + sep + rest for head, sep, rest in (n.partition(":") for n in names)]


def test_failing_and_unimportable_test_modules_fail_the_tests_part(gpu_check, tmp_path):
    (tmp_path / "test_fails.py").write_text(
        "import pytest\n\n\n@pytest.mark.device\ndef test_wrong():\n    assert False\n\n\n"
        "@pytest.mark.device\ndef test_right():\n    pass\n\n\ndef test_not_a_device_test():\n    assert False\n"
    )
    (tmp_path / "test_unimportable.py").write_text("import igpo_no_such_module\n")
    args = argparse.Namespace(device="cpu", tests=[str(tmp_path)])
    with pytest.raises(gpu_check.PartFailed, match="1 passed, 1 failed, 1 test modules not importable") as e:
        gpu_check.run_tests(args, 120)
    res = e.value.result
    assert res["passed"] == 1 and res["failed"] == 1 and local(res["not_passed"]) == ["test_fails::test_wrong"]
    assert local(res["collection_errors"]) == [
        "test_unimportable: ModuleNotFoundError: No module named 'igpo_no_such_module'"
    ]
