"""`benchmarks/rollout.py` without the vLLM arm (its `vllm` arm runs in tests/policy/test_vllm_bench.py): the HF
arms on the tiny model, the JSON the docs read, and `--arms` checked before anything loads."""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The keys of the JSON with the default arms: what benchmarks/README.md and tests/test_docs_figures.py read.
KEYS = {
    "model",
    "device",
    "threads",
    "machine",
    "load_avg_before_each_run",
    "settings",
    "generated_tokens",
    "generated_per_turn",
    "final_context_tokens",
    "engine_ids_computed",
    "engine_ids_reused",
    "seconds",
    "cpu_seconds",
    "median_s",
    "seconds_summary",
    "cpu_seconds_summary",
    "median_cpu_s",
    "tokens_per_s",
    "speedup_vs_plain_loop",
    "speedup_vs_batched_generate",
    "speedup_per_repeat",
    "identical_tokens",
}


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the benchmarks import their `common` module
    return importlib.import_module("rollout")


def test_the_hf_arms_write_the_json_the_docs_read(bench, tiny_model_dir, corpus_file, qa_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out, under the working directory
    argv = ["--set", f"model.path={tiny_model_dir}", "--corpus", str(corpus_file), "--questions", str(qa_file)]
    res = bench.main([*argv, "--episodes", "3", "--turns", "2", "--max-new-tokens", "6", "--repeats", "2"])

    assert json.loads((tmp_path / "benchmarks" / "results" / "rollout.json").read_text()) == res
    assert set(res) == KEYS and res["model"] == str(tiny_model_dir)
    arms = ["engine", "plain_loop", "batched_generate"]
    assert list(res["seconds"]) == arms and all(len(v) == 2 for v in res["seconds"].values())
    # the engine went first in the first repeat, plain_loop in the second
    assert [x["generator"] for x in res["load_avg_before_each_run"]] == [*arms, *arms[1:], arms[0]]
    assert res["generated_tokens"] == sum(map(sum, res["generated_per_turn"])) > 0
    assert len(res["generated_per_turn"]) == 3 and all(len(ep) == 2 for ep in res["generated_per_turn"])
    for arm in arms:
        assert res["tokens_per_s"][arm] == pytest.approx(res["generated_tokens"] / res["median_s"][arm])
    assert res["speedup_vs_plain_loop"] == pytest.approx(res["median_s"]["plain_loop"] / res["median_s"]["engine"])
    assert res["identical_tokens"] is True and res["engine_ids_reused"] > 0


def test_arms_are_checked_before_anything_loads(bench, monkeypatch):
    with pytest.raises(SystemExit, match="choose from engine, plain_loop, batched_generate, vllm"):
        bench.main(["--arms", "engine,sglang"])
    with pytest.raises(SystemExit, match="`engine` is required"):
        bench.main(["--arms", "plain_loop,vllm"])
    with pytest.raises(SystemExit, match="an arm named twice"):
        bench.main(["--arms", "engine,engine"])
    # vLLM absent (as in .venv): the error says how to get it and where to run
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    with pytest.raises(SystemExit) as e:
        bench.main(["--arms", "engine,vllm"])
    assert "make install-vllm" in str(e.value) and ".venv-vllm/bin/python" in str(e.value)
