"""The vLLM engine in the speed benchmarks (marker `vllm`), at tiny scale over a tiny random Llama written here:
`benchmarks/rollout.py`'s `vllm` arm beside the KV-cache engine, and `benchmarks/step_backend.py`'s training step
with each backend. What is checked is the JSON's structure and sanity, not a speed."""

from __future__ import annotations

import importlib
import statistics
from pathlib import Path

import pytest

from tests.policy.conftest import ENGINE_ENV

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[2]
# fp32 (the engine's greedy tokens are the trainer's on this model), eager
ENGINE = ["rollout.vllm.dtype=float32", "rollout.vllm.enforce_eager=true"]


def sets(*overrides: str) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


@pytest.fixture
def benchmarks(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the benchmarks import their `common` module


def test_the_rollout_benchmarks_vllm_arm(benchmarks, engine_env, base_dir, corpus_file, qa_file, tmp_path):
    bench = importlib.import_module("rollout")
    argv = ["--arms", "engine,batched_generate,vllm", "--corpus", str(corpus_file), "--questions", str(qa_file)]
    argv += ["--episodes", "3", "--turns", "2", "--max-new-tokens", "8", "--topk", "1", "--max-words", "20"]
    argv += ["--repeats", "2", "--out", str(tmp_path / "rollout_vllm.json")]
    res = bench.main([*argv, *sets(f"model.path={base_dir}", "rollout.max_context=2048", *ENGINE)])

    arms = ["engine", "batched_generate", "vllm"]
    assert list(res["seconds"]) == arms and all(len(v) == 2 for v in res["seconds"].values())
    assert [x["generator"] for x in res["load_avg_before_each_run"]] == [*arms, *arms[1:], arms[0]]
    assert all(v > 0 for v in res["tokens_per_s"].values())
    assert res["identical_tokens"] is True  # between the HF arms, asserted by the run
    assert "speedup_vs_plain_loop" not in res and res["speedup_vs_batched_generate"] > 0
    v = res["vllm"]
    # the engine's start and its first push, timed apart from its runs; a push before each run
    assert v["start_s"] > 0 and v["first_push_s"] > 0 and len(v["push_s_before_each_run"]) == 2
    assert v["settings"]["dtype"] == "float32" and v["settings"]["enforce_eager"] is True
    assert v["settings"]["engine_dtype"] == "torch.float32" and v["settings"]["max_model_len"] == 2048
    assert v["settings"]["env"] == ENGINE_ENV
    assert v["generated_tokens"] == sum(map(sum, v["generated_per_turn"])) > 0
    assert v["generated_tokens_per_repeat"] == [v["generated_tokens"]] * 2 and v["identical_across_repeats"]
    # fp32 on this model: the engine's greedy tokens are the HF engine's (as in test_vllm_commands.py), episode by
    # episode, so the arm played the same model on the same contexts
    assert v["identical_to_engine_share"] == 1.0 and v["generated_per_turn"] == res["generated_per_turn"]
    tps = res["tokens_per_s"]
    assert tps["vllm"] == pytest.approx(v["generated_tokens"] / res["median_s"]["vllm"])
    assert res["vllm_over_engine_tokens_per_s"] == pytest.approx(tps["vllm"] / tps["engine"])
    per_repeat = [e / s for s, e in zip(res["seconds"]["vllm"], res["seconds"]["engine"])]  # the same token count
    assert v["tokens_per_s_over_engine_per_repeat"] == pytest.approx(per_repeat)
    assert v["tokens_per_s_over_engine_median_of_repeats"] == pytest.approx(statistics.median(per_repeat))


def test_one_training_step_with_each_backend(benchmarks, engine_env, base_dir, corpus_file, qa_file, tmp_path):
    bench = importlib.import_module("step_backend")
    out = tmp_path / "step_backend.json"
    argv = ["--small", "--model", str(base_dir), "--config", str(ROOT / "configs" / "demo.yaml")]
    argv += ["--data-dir", str(tmp_path / "vfb"), "--warmup", "0", "--repeats", "2", "--out", str(out)]
    argv += ["--set-vllm", "algorithm.belief_backend=engine"]  # the vllm trainer's config only
    data = [f"data.train={qa_file}", "data.eval=null", "retrieval.kind=bm25", f"retrieval.corpus={corpus_file}"]
    res = bench.main([*argv, *sets(*data, *ENGINE)])

    assert res["baseline"] == "hf" and list(res["backends"]) == ["hf", "vllm"]
    assert res["order"] == ["hf", "vllm", "vllm", "hf"]  # interleaved, the first to go rotating
    assert res["regime"]["questions"] == 2 and res["regime"]["estimator"] == "igpo"
    assert {"cpu_model", "cpu_flags", "cpu_capability", "torch_threads"} <= set(res["machine"])
    hf, vllm = res["backends"]["hf"], res["backends"]["vllm"]
    assert vllm["generator_start_s"] > 0  # the engine's start, outside the steps
    for b in (hf, vllm):
        assert [r["step"] for r in b["runs"]] == [0, 1]  # real consecutive steps
        assert b["step_s"]["n"] == 2 and b["step_s"]["median"] > 0 and b["rollout_tokens_per_s"]["median"] > 0
        assert all(n > 0 for n in b["generated_tokens"])
        # (`beliefs` too where an episode has two turns or more: the random model writes no tool call)
        assert {"rollout", "ref_logprobs", "update", "other"} <= set(b["phase_s"])
        for r in b["runs"]:
            assert r["total"] == pytest.approx(sum(r["phases"].values()))
    # a push before each of the vLLM trainer's rollouts; none for the trainer's own model
    assert all(r["phases"]["weight_push"] > 0 for r in vllm["runs"]) and "weight_push" not in hf["phase_s"]
    assert all(r["rollout_lp_abs_diff"] < 1e-4 for r in vllm["runs"])  # sampled from the trainer's weights
    assert vllm["engine"]["dtype"] == "float32" and vllm["engine"]["env"] == ENGINE_ENV and "engine" not in hf
    per_repeat = [v["total"] / h["total"] for v, h in zip(vllm["runs"], hf["runs"])]
    assert vllm["step_ratio_to_baseline_per_repeat"] == pytest.approx(per_repeat)
    assert vllm["step_ratio_to_baseline"] == pytest.approx(vllm["step_s"]["median"] / hf["step_s"]["median"])
    assert hf["step_ratio_to_baseline"] == 1.0
    assert hf["belief_backend"] == "trainer" and vllm["belief_backend"] == "engine"
