"""`igpo bench learning` orchestration at tiny scale: shared SFT, runs per (estimator, seed), resume, results."""

import json
import os
import shutil

import pytest
import torch
import yaml
from typer.testing import CliRunner

from igpo.bench.config import arm_config, load_bench_config
from igpo.bench.learning import _start_scores
from igpo.bench.results import (
    _curve,
    _steps_to_reach,
    advantage_signal,
    aggregate,
    included_runs,
    paired_vs_grpo,
    regime,
)
from igpo.cli import app
from igpo.config import ConfigError
from igpo.train.faults import KILL_ENV


def _write_config(tmp_path, tiny_model_dir, corpus_file, plans_file, estimators):
    cfg = {
        "bench": {
            "estimators": estimators,
            "seeds": [0],
            "eval_every": 1,
            "dev_size": 2,
            "test": str(plans_file),
            "test_size": 3,
            "out_dir": str(tmp_path / "bench"),
        },
        "model": {"path": str(tiny_model_dir)},
        "data": {"train": str(plans_file), "eval": str(plans_file)},
        "retrieval": {"corpus": str(corpus_file), "topk": 1},
        "rollout": {"group_size": 2, "questions_per_step": 1, "max_turns": 3, "max_new_tokens": 40},
        "trainer": {"steps": 2, "lr": 1e-3},
        "sft": {"examples": 4, "batch_size": 2, "eval_size": 0},
    }
    path = tmp_path / "learning.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_bench_config_splits_bench_keys_and_names_bad_ones(tmp_path, tiny_model_dir, corpus_file, plans_file):
    path = _write_config(tmp_path, tiny_model_dir, corpus_file, plans_file, ["igpo", "grpo", "gated"])
    bench, cfg = load_bench_config(path, ["bench.seeds=[3, 4]", "trainer.steps=7"])
    assert bench.seeds == [3, 4] and cfg.trainer.steps == 7 and bench.estimators == ["igpo", "grpo", "gated"]
    bench, _ = load_bench_config(path, small=True)
    assert bench.estimators == ["igpo", "grpo"] and bench.seeds == [0]
    # a `small:` section in the file is the preset; command-line overrides still win over it
    tree = yaml.safe_load(path.read_text())
    tree["small"] = {"bench.seeds": [5], "bench.out_dir": str(tmp_path / "small"), "trainer.steps": 3}
    path.write_text(yaml.safe_dump(tree))
    bench, cfg = load_bench_config(path, ["trainer.steps=4"], small=True)
    assert bench.seeds == [5] and bench.out_dir == str(tmp_path / "small") and cfg.trainer.steps == 4
    bench, cfg = load_bench_config(path)
    assert bench.seeds == [0] and cfg.trainer.steps == 2  # without --small the section is ignored
    tree["small"] = {"trainer.stepz": 3}
    path.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match="trainer.stepz: unknown key"):
        load_bench_config(path, small=True)
    with pytest.raises(ConfigError, match="bench.eval_evry: unknown key"):
        load_bench_config(path, ["bench.eval_evry=3"])
    with pytest.raises(ConfigError, match="bench.estimators: unknown estimator"):
        load_bench_config(path, ["bench.estimators=[ppo]"])
    # An estimator-specific key is fine when one of the benchmark's estimators reads it, refused otherwise.
    assert load_bench_config(path, ["algorithm.gate_threshold=0.3"])[1].algorithm.gate_threshold == 0.3
    with pytest.raises(ConfigError, match="algorithm.gate_threshold: not read by estimator igpo, grpo"):
        load_bench_config(path, ["algorithm.gate_threshold=0.3", "bench.estimators=[igpo, grpo]"])


def test_variants_are_arms_with_algorithm_overrides(tmp_path, tiny_model_dir, corpus_file, plans_file):
    path = _write_config(tmp_path, tiny_model_dir, corpus_file, plans_file, ["grpo", "igpo_raw_ig"])
    tree = yaml.safe_load(path.read_text())
    tree["bench"]["variants"] = {"igpo_raw_ig": {"algorithm.norm": "raw_ig", "algorithm.ig": "log_prob_diff"}}
    tree["algorithm"] = {"std": False}
    path.write_text(yaml.safe_dump(tree))
    bench, cfg = load_bench_config(path)
    raw = arm_config(bench, cfg, "igpo_raw_ig")
    assert (raw.algorithm.estimator, raw.algorithm.norm, raw.algorithm.ig) == ("igpo", "raw_ig", "log_prob_diff")
    assert raw.algorithm.std is False and raw.trainer.steps == cfg.trainer.steps  # the rest is shared
    assert arm_config(bench, cfg, "grpo").algorithm.estimator == "grpo" and cfg.algorithm.estimator == "igpo"
    bad = [
        ({"igpo_raw_ig": {"trainer.lr": 1.0}}, "bench.variants.igpo_raw_ig: only algorithm.* keys may differ"),
        (
            {"igpo_raw_ig": {"algorithm.norm": "raw_ig", "algorithm.gamma": 0.9}},
            "bench.variants.igpo_raw_ig: invalid config: algorithm: .*gamma must stay 1.0",
        ),
        (
            {"igpo_raw_ig": {"algorithm.estimator": "grpo", "algorithm.ig_clip": "positive"}},
            "algorithm.ig_clip: not read by estimator grpo",
        ),
        ({"grpo": {"algorithm.std": True}}, r"bench.variants: \['grpo'\] name estimators"),
    ]
    for variants, message in bad:
        tree["bench"]["variants"] = variants
        path.write_text(yaml.safe_dump(tree))
        with pytest.raises(ConfigError, match=message):
            load_bench_config(path)
    with pytest.raises(ConfigError, match="unknown estimator.* or variant.*igpo_raw_ig"):
        load_bench_config(path, ["bench.variants={}"])


def test_each_run_checkpoints_every_save_every_steps_apart_from_its_evaluations(
    tmp_path, tiny_model_dir, corpus_file, plans_file
):
    from igpo.bench.run import run_config

    path = _write_config(tmp_path, tiny_model_dir, corpus_file, plans_file, ["igpo"])
    bench, cfg = load_bench_config(path, ["bench.eval_every=5"])
    run = run_config(bench, cfg, "grpo", 2, "start/model")
    # a stopped run loses at most the step it was in: a checkpoint after every step by default
    assert (run.trainer.save_every, run.trainer.eval_every) == (1, 5)
    assert run.trainer.seed == 2 and run.model.path == "start/model" and run.trainer.eval_size == bench.dev_size
    assert run.trainer.out_dir == str(tmp_path / "bench" / "grpo-s2")
    bench, cfg = load_bench_config(path, ["bench.save_every=3"])
    assert run_config(bench, cfg, "grpo", 0, "m").trainer.save_every == 3
    with pytest.raises(ConfigError, match="save_every"):
        load_bench_config(path, ["bench.save_every=0"])


def test_a_key_added_since_counts_at_its_default_when_merging(tmp_path, tiny_model_dir, corpus_file, plans_file):
    path = _write_config(tmp_path, tiny_model_dir, corpus_file, plans_file, ["igpo", "grpo", "v"])
    bench, cfg = load_bench_config(path, ['bench.variants={"v": {"algorithm.norm": "raw_ig"}}'])
    start = {"dev": {"n": 2, "f1": 0.5, "em": 0.5}, "test": None, "model_sha256": "a" * 64}
    older = regime(cfg)
    del older["algorithm.gamma_min_weight"]  # recorded before the key existed
    other = {"bench": bench.model_dump(), "start": start, "config": older, "runs": {"grpo": {"0": {"dev_f1": [0.5]}}}}
    f = tmp_path / "older.json"
    f.write_text(json.dumps(other))
    assert included_runs(bench.model_copy(update={"include": [str(f)]}), start, regime(cfg))["grpo"]["0"]
    moved = regime(cfg.model_copy(update={"algorithm": cfg.algorithm.model_copy(update={"gamma_min_weight": 0.5})}))
    with pytest.raises(ConfigError, match="algorithm.gamma_min_weight is 0.0 there, 0.5 here"):
        included_runs(bench.model_copy(update={"include": [str(f)]}), start, moved)
    other["bench"]["variants"] = {"v": {"algorithm.norm": "scaled_separate"}}
    f.write_text(json.dumps(other))
    with pytest.raises(ConfigError, match="bench.variants.v is .*scaled_separate.* there"):
        included_runs(bench.model_copy(update={"include": [str(f)]}), start, regime(cfg))


# The hand-kept list of config keys that merged results could differ in, as bench/learning.py had it before the config
# flagged its fields: the flags must keep exactly these (less those each run sets itself) unless changed on purpose.
NOT_REGIME_BEFORE_FLAGS = {
    "algorithm.estimator",
    "trainer.seed",
    "trainer.eval_every",
    "trainer.save_every",
    "trainer.eval_size",
    "model.lora.enabled",
    "model.path",
    "model.device",
    "model.cache_dir",
    "trainer.out_dir",
    "sft.out_dir",
    "trainer.keep_last",
    "trainer.loggers",
    "trainer.wandb.project",
    "trainer.wandb.entity",
    "trainer.wandb.name",
    "trainer.wandb.tags",
    "trainer.check_invariants",
    "trainer.micro_batch_size",
    "trainer.eval_batch_size",
    "rollout.engine",
    "algorithm.belief_impl",
    "retrieval.cache",
    "retrieval.cache_dir",
    "retrieval.timeout_s",
    "retrieval.retries",
    "retrieval.backoff_s",
    "retrieval.breaker_failures",
    "retrieval.breaker_cooldown_s",
    "rollout.vllm.gpu_memory_utilization",
    "rollout.vllm.enforce_eager",
    "rollout.vllm.check_weights",
    "rollout.vllm.sync_tolerance",
    "trainer.shared_prefix",
    "sft.shared_prefix",
    "algorithm.belief_check_every",
    "algorithm.belief_check_tolerance",
}


def test_the_config_flags_the_keys_results_may_differ_in():
    from igpo.bench.results import RUN_SET
    from igpo.config import Config, config_fields, result_keys

    keys = {k for k, _ in config_fields(Config)}
    assert RUN_SET < NOT_REGIME_BEFORE_FLAGS
    assert keys - set(result_keys()) == NOT_REGIME_BEFORE_FLAGS - RUN_SET
    reg = regime(Config())
    assert set(reg) == set(result_keys()) - RUN_SET and "algorithm.gamma" in reg and "trainer.lr" in reg


def test_a_new_field_is_result_relevant_unless_flagged():
    from pydantic import Field

    from igpo.config import NOT_RESULT, _Strict, result_keys

    class Section(_Strict):
        computes: int = Field(1, description="a setting that changes what a run computes")
        where: str = Field("x", description="where a run writes", json_schema_extra=NOT_RESULT)

    class Model(_Strict):
        section: Section = Section()
        top: float = Field(0.5, description="another")

    assert result_keys(Model) == ["section.computes", "top"]


def test_a_key_renamed_since_is_compared_under_its_new_name(tmp_path, tiny_model_dir, corpus_file, plans_file):
    path = _write_config(tmp_path, tiny_model_dir, corpus_file, plans_file, ["igpo", "grpo"])
    bench, cfg = load_bench_config(path)
    start = {"dev": {"n": 2, "f1": 0.5, "em": 0.5}, "test": None, "model_sha256": "a" * 64}
    older = regime(cfg)
    older["algorithm.scaffold"] = older.pop("algorithm.belief_probe")  # recorded under the old names
    older["algorithm.f1_mode"] = older.pop("algorithm.answer_norm")
    other = {"bench": bench.model_dump(), "start": start, "config": older, "runs": {"grpo": {"0": {"dev_f1": [0.5]}}}}
    f = tmp_path / "older.json"
    f.write_text(json.dumps(other))
    bench = bench.model_copy(update={"include": [str(f)]})
    assert included_runs(bench, start, regime(cfg))["grpo"]["0"]
    older["algorithm.f1_mode"] = "squad"
    f.write_text(json.dumps(other))
    with pytest.raises(ConfigError, match="algorithm.answer_norm is 'squad' there, 'official' here"):
        included_runs(bench, start, regime(cfg))


def _episode(step, group, outcome, turns, igs=None):
    return {
        "step": step,
        "group": group,
        "outcome": outcome,
        "turns": [
            {"advantage": a, "generated_tokens": n, "ig": g} for (a, n), g in zip(turns, igs or [None] * len(turns))
        ],
    }


def test_advantage_signal_splits_update_weight_by_group_kind():
    samples = [
        _episode(0, 0, 0.0, [(0.1, 10)], [0.01]),
        _episode(0, 0, 0.0, [(-0.1, 10)], [-0.03]),  # equal: IG only
        _episode(0, 1, 1.0, [(0.5, 4), (-0.2, 6)], [0.4, None]),  # outcome dev +0.5 / -0.5; the answer turn has no IG
        _episode(0, 1, 0.0, [(-0.5, 10)], [-0.2]),
        _episode(1, 0, 1.0, [(9.0, 100)]),  # a lone episode of a group: no deviation, left out
    ]
    sig = advantage_signal(samples)
    assert sig["groups"] == 2 and sig["zero_variance_groups"] == 0.5
    assert sig["abs_adv_tokens"] == pytest.approx(2.0 + 2.0 + 1.2 + 5.0)
    assert sig["zero_variance_share_of_abs_adv"] == pytest.approx(2.0 / 10.2)
    assert sig["outcome_sign_agreement"] == pytest.approx(14 / 20)  # the -0.2 turn of a winning episode disagrees
    assert sig["zero_variance_all_failed"] == 1.0
    assert sig["median_abs_ig"] == {"zero_variance_groups": pytest.approx(0.02), "other_groups": pytest.approx(0.3)}
    assert advantage_signal(samples[-1:]) is None


def test_steps_to_reach_counts_the_start():
    curve = {"steps": [0, 5, 10], "dev_f1": [0.20, 0.25, 0.30]}
    assert _steps_to_reach(curve, 0.25) == 5 and _steps_to_reach(curve, 0.31) is None
    assert _steps_to_reach(curve, 0.20) == 0  # the starting model is already there


def test_curve_keeps_each_steps_seconds_by_phase(tmp_path):
    rows = [
        {
            "step": 0,
            "generated_tokens": 10,
            "tokens": 30,
            "zero_variance_groups": 0.0,
            "turns": 2.0,
            "f1": 0.1,
            "seconds": {"rollout": 4.0, "update": 6.0},
        },
        {"step": 1, "skipped": {"error": "no trajectories"}},  # trained nothing: no step of the curve
        {
            "step": 1,
            "generated_tokens": 12,
            "tokens": 31,
            "zero_variance_groups": 0.5,
            "turns": 2.5,
            "f1": 0.2,
            "seconds": {"rollout": 5.0, "beliefs": 1.0, "update": 7.0},
        },
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval.jsonl").write_text(json.dumps({"step": 2, "overall": {"f1": 0.3, "em": 0.2}}) + "\n")
    curve = _curve(tmp_path, {"f1": 0.1, "em": 0.0})
    assert curve["seconds_by_phase"] == [
        {"rollout": 4.0, "update": 6.0},
        {"rollout": 5.0, "beliefs": 1.0, "update": 7.0},
    ]
    assert curve["seconds"] == 23.0 and curve["steps"] == [0, 2]


def test_paired_vs_grpo_differences_seed_by_seed():
    def rec(test_f1, dev):
        return {"test": {"overall": {"f1": test_f1}}, "dev_f1": [0.3, dev]}

    runs = {
        "grpo": {"0": rec(0.20, 0.25), "1": rec(0.10, 0.30), "2": rec(0.15, 0.20)},
        "igpo": {"1": rec(0.16, 0.31), "0": rec(0.23, 0.25), "3": rec(0.9, 0.9)},  # seed 3: no grpo run
        "gated": {"0": {**rec(0.5, 0.5), "test": None}},
    }  # no test score: nothing to pair
    out = paired_vs_grpo(runs, "igpo")
    assert out["seeds"] == [0, 1]
    assert out["test_f1"]["per_seed"] == pytest.approx([0.03, 0.06])
    assert out["test_f1"]["mean"] == pytest.approx(0.045) and out["test_f1"]["std"] == pytest.approx(0.03 / 2**0.5)
    assert out["final_dev_f1"]["per_seed"] == pytest.approx([0.0, 0.01])
    assert paired_vs_grpo(runs, "grpo") is None and paired_vs_grpo(runs, "gated") is None
    one = paired_vs_grpo({"grpo": runs["grpo"], "igpo": {"2": rec(0.1, 0.2)}}, "igpo")
    assert one["test_f1"]["per_seed"] == pytest.approx([-0.05]) and one["test_f1"]["std"] is None


def test_include_merges_only_comparable_results(tmp_path, tiny_model_dir, corpus_file, plans_file):
    path = _write_config(tmp_path, tiny_model_dir, corpus_file, plans_file, ["igpo", "grpo"])
    bench, cfg = load_bench_config(path)
    start = {"dev": {"n": 2, "f1": 0.5, "em": 0.5}, "test": None, "model_sha256": "a" * 64}
    good = {
        "bench": bench.model_dump(),
        "start": dict(start),
        "config": regime(cfg),
        "runs": {"grpo": {"0": {"dev_f1": [0.5, 0.6]}, "7": {"dev_f1": [0.1]}}, "gated": {"0": {"dev_f1": [0.2]}}},
    }

    def include(other, **bench_over):
        f = tmp_path / f"other{len(list(tmp_path.glob('other*')))}.json"
        f.write_text(json.dumps(other))
        return included_runs(bench.model_copy(update={"include": [str(f)], **bench_over}), start, regime(cfg)), f

    runs, f = include(good)  # only the grid's runs (estimators x seeds), each saying where it came from
    assert runs == {"grpo": {"0": {"dev_f1": [0.5, 0.6], "from": str(f)}}}
    device = json.loads(json.dumps(good))
    device["config"]["model.device"] = "cuda"  # where it ran is not what it computed
    assert include(device)[0]["grpo"]["0"]["dev_f1"] == [0.5, 0.6]
    cases = [
        (("start", "model_sha256"), "b" * 64, "they started from another model"),
        (("config", "trainer.lr"), 0.5, "trainer.lr is 0.5 there, 0.001 here"),
        (("bench", "eval_every"), 5, "bench.eval_every is 5 there, 1 here"),
    ]
    avx2 = {"torch": "2.13.0", "cpu_capability": "AVX2"}
    other_cpu = {**good, "start": {**start, "model_sha256": "b" * 64, "built_on": avx2}}
    with pytest.raises(ConfigError, match="sha256 bbbbbbbbbbbb, here aaaaaaaaaaaa; an SFT from the same recipe rounds"):
        include(other_cpu)  # what built the model here is not known
    # other CPUs with the same torch build and vector unit: nothing to tell apart in "built with ..."
    start["built_on"] = {**avx2, "cpu_model": "AMD EPYC 7B13"}
    with pytest.raises(ConfigError, match="sha256 bbbbbbbbbbbb, here aaaaaaaaaaaa; an SFT from the same recipe rounds"):
        include({**other_cpu, "start": {**other_cpu["start"], "built_on": {**avx2, "cpu_model": "Intel Xeon"}}})
    start["built_on"] = {**avx2, "cpu_capability": "AVX512"}
    with pytest.raises(
        ConfigError,
        match="built with torch 2.13.0 on CPU capability AVX2 there, torch 2.13.0 on CPU capability AVX512 here",
    ):
        include(other_cpu)
    # same recipe rebuilt elsewhere: merged only on request, and only when both starts scored the same dev and test
    start["test"] = {"n": 3, "f1": 0.25, "em": 0.0}
    rebuilt = {**good, "start": {**start, "model_sha256": "b" * 64, "built_on": avx2}}
    with pytest.raises(ConfigError, match="same dev and test n/F1/EM .* bench.include_equivalent_starts=true would"):
        include(rebuilt)
    merged, f = include(rebuilt, include_equivalent_starts=True)
    assert merged == {"grpo": {"0": {"dev_f1": [0.5, 0.6], "from": str(f), "start_sha256": "b" * 64}}}
    rebuilt["start"]["test"] = {"n": 3, "f1": 0.5, "em": 0.0}
    with pytest.raises(ConfigError, match=r"AVX512 here\); its runs are not comparable"):
        include(rebuilt, include_equivalent_starts=True)  # scored otherwise: not the same start, and no hint
    start["test"] = None
    for (section, key), value, message in cases:
        bad = json.loads(json.dumps(good))
        bad[section][key] = value
        with pytest.raises(ConfigError, match=f"bench.include: .*other.*: {message}"):
            include(bad)
    # an older results.json records no model hash and no config: the starting model's dev scores must match
    old = {k: v for k, v in good.items() if k != "config"}
    old["start"] = {"dev": {"n": 2, "f1": 0.5, "em": 0.5}, "test": None}
    assert "grpo" in include(old)[0]
    old["start"]["dev"]["f1"] = 0.45
    with pytest.raises(ConfigError, match=r"scored dev n/F1/EM \(2, 0.45, 0.5\) against \(2, 0.5, 0.5\)"):
        include(old)
    with pytest.raises(ConfigError, match="bench.include: .*missing.json: cannot read it"):
        included_runs(bench.model_copy(update={"include": [str(tmp_path / "missing.json")]}), start, regime(cfg))
    (tmp_path / "notes.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="notes.json: not a results.json"):
        included_runs(bench.model_copy(update={"include": [str(tmp_path / "notes.json")]}), start, regime(cfg))


def _evaluation(calls: dict[str, float]) -> dict:
    """An `evaluate` result whose sources have these tool calls per question (overall: their mean)."""

    def summary(c: float) -> dict:
        return {"n": 2, "f1": 0.5, "em": 0.5, "tool_calls": c}

    return {
        "overall": summary(sum(calls.values()) / len(calls)),
        "by_source": {s: summary(c) for s, c in calls.items()},
        "rows": [],
    }


def test_results_carry_tool_calls_by_source_for_the_start_and_every_run(
    tmp_path, tiny_model_dir, corpus_file, plans_file
):
    path = _write_config(tmp_path, tiny_model_dir, corpus_file, plans_file, ["grpo"])
    bench, cfg = load_bench_config(path, ["bench.seeds=[0, 1]"])
    out = tmp_path / "bench"
    out.mkdir()
    (out / "step0_dev.json").write_text(json.dumps(_evaluation({"vfb/single": 2.0, "vfb/three": 2.0})))
    (out / "step0_test.json").write_text(json.dumps(_evaluation({"vfb/single": 2.0, "vfb/three": 1.0})))
    for seed, calls in ((0, {"vfb/single": 1.0, "vfb/three": 3.0}), (1, {"vfb/single": 1.5, "vfb/three": 2.0})):
        run = out / f"grpo-s{seed}"
        run.mkdir()
        test = _evaluation(calls)
        (run / "done.json").write_text(json.dumps({"test": {k: test[k] for k in ("overall", "by_source")}}))
    result = aggregate(bench, cfg, *_start_scores(bench))
    assert result["start"]["tool_calls"] == {
        "dev": {"vfb/single": 2.0, "vfb/three": 2.0, "overall": 2.0},
        "test": {"vfb/single": 2.0, "vfb/three": 1.0, "overall": 1.5},
    }
    runs = result["runs"]["grpo"]
    assert runs["0"]["test_tool_calls"] == {"vfb/single": 1.0, "vfb/three": 3.0, "overall": 2.0}
    assert runs["1"]["test_tool_calls"] == {"vfb/single": 1.5, "vfb/three": 2.0, "overall": 1.75}
    assert result["summary"]["grpo"]["test_tool_calls_mean"] == {"vfb/single": 1.25, "vfb/three": 2.5, "overall": 1.875}
    assert json.loads((out / "results.json").read_text())["start"]["tool_calls"] == result["start"]["tool_calls"]


def test_report_only_without_finished_runs_names_the_folder(tmp_path, tiny_model_dir, corpus_file, plans_file):
    path = _write_config(tmp_path, tiny_model_dir, corpus_file, plans_file, ["igpo", "grpo"])
    res = CliRunner().invoke(app, ["bench", "learning", "--config", str(path), "--report-only"])
    assert res.exit_code != 0
    assert "bench.out_dir: no finished run" in res.output and str(tmp_path / "bench") in res.output
    assert not (tmp_path / "bench" / "results.json").exists()


@pytest.mark.integration
def test_estimators_one_seed_two_steps_resume_and_two_jobs(
    tmp_path, tiny_model_dir, corpus_file, plans_file, monkeypatch
):
    import igpo.bench.run
    import igpo.train.sft

    def in_this_process(*_a, **_k):
        raise AssertionError("the bench process itself trained or evaluated the starting model")

    # The shared SFT and the step-0 evaluations run in a child process, whose memory is returned when it ends;
    # these parent-side copies are what the bench process would call if it did them itself.
    monkeypatch.setattr(igpo.train.sft, "run_sft", in_this_process)
    monkeypatch.setattr(igpo.bench.run, "_eval_file", in_this_process)
    path = _write_config(tmp_path, tiny_model_dir, corpus_file, plans_file, ["igpo"])
    runner = CliRunner(env={"COLUMNS": "160"})  # the table on one line per row
    res = runner.invoke(app, ["bench", "learning", "--config", str(path)])
    assert res.exit_code == 0, res.output
    assert (
        "shared SFT warm start and greedy evaluation of the starting model (step 0), in a child process" in res.output
    )
    out = tmp_path / "bench"
    assert (out / "sft" / "sft.json").is_file() and (out / "igpo-s0" / "done.json").is_file()
    done_mtime = (out / "igpo-s0" / "done.json").stat().st_mtime_ns
    sft_mtime = (out / "sft" / "sft.json").stat().st_mtime_ns

    # a worker killed by the OS (here at its first metrics row) stops the pool; the error names the runs
    path = _write_config(tmp_path, tiny_model_dir, corpus_file, plans_file, ["igpo", "grpo", "gated"])
    res = runner.invoke(app, ["bench", "learning", "--config", str(path), "bench.jobs=2"], env={KILL_ENV: "metrics@1"})
    assert res.exit_code == 1, res.output
    assert "gated-s0, grpo-s0: stopped when a worker process was killed" in res.output and "bench.jobs" in res.output
    assert not (out / "grpo-s0" / "done.json").exists()

    # the next invocation trains grpo and gated side by side in 2 worker processes: igpo and the shared SFT
    # are reused, not rerun
    res = runner.invoke(app, ["bench", "learning", "--config", str(path), "bench.jobs=2"])
    assert res.exit_code == 0, res.output
    assert "igpo-s0: done, skipped" in res.output
    assert "2 runs, 2 at a time" in res.output
    assert "grpo-s0: finished" in res.output and "gated-s0: finished" in res.output
    assert "start (SFT)" in res.output  # the table's yardstick row
    assert (out / "igpo-s0" / "done.json").stat().st_mtime_ns == done_mtime
    assert (out / "sft" / "sft.json").stat().st_mtime_ns == sft_mtime

    result = json.loads((out / "results.json").read_text())
    assert set(result["runs"]) == {"igpo", "grpo", "gated"}
    assert result["start"]["test"]["n"] == 3 and result["start"]["dev"]["n"] == 2  # the SFT model, once
    assert (out / "step0_test.json").is_file()
    for est in ("igpo", "grpo", "gated"):
        run = result["runs"][est]["0"]
        assert run["steps"] == [0, 1, 2]  # step 0 = the shared SFT model, then every eval_every steps
        assert run["dev_f1"][0] == result["runs"]["igpo"]["0"]["dev_f1"][0]
        assert len(run["zero_variance_groups"]) == 2 and run["generated_tokens"] > 0
        assert run["generated_tokens_at_step"][-1] == run["generated_tokens"]
        assert run["test"]["overall"]["n"] == 3 and run["test"]["by_source"]
        assert result["summary"][est]["test_f1_mean"] is not None
        assert len(run["turns"]) == 2
        assert result["summary"][est]["turns_first_steps"] == pytest.approx(sum(run["turns"]) / 2)
        assert len(run["seconds_by_phase"]) == 2 and {"rollout", "update"} <= set(run["seconds_by_phase"][0])
        assert run["seconds"] == pytest.approx(sum(sum(s.values()) for s in run["seconds_by_phase"]))
        assert run["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    # where each run trained: grpo and gated in the 2 workers, with cpu_count // jobs threads each
    assert result["runs"]["grpo"]["0"]["machine"]["torch_threads"] == max(1, (os.cpu_count() or 1) // 2)
    assert set(result["start"]["built_on"]) == set(result["runs"]["igpo"]["0"]["machine"])  # one machine record
    assert result["summary"]["grpo"]["steps_to_grpo_final_dev_f1"] is not None
    paired = result["summary"]["igpo"]["vs_grpo"]["test_f1"]
    assert result["summary"]["grpo"]["vs_grpo"] is None and "test F1 − grpo (paired)" in res.output
    assert paired["per_seed"] == [
        result["runs"]["igpo"]["0"]["test"]["overall"]["f1"] - result["runs"]["grpo"]["0"]["test"]["overall"]["f1"]
    ]
    assert (out / "learning.png").stat().st_size > 10_000
    assert result["pending"] == [] and result["summary"]["grpo"]["test_f1_std"] is None  # one seed: no spread
    sig = result["runs"]["grpo"]["0"]["advantage_signal"]  # grpo's advantage is the outcome's deviation itself
    assert sig["groups"] >= 1 and sig["outcome_sign_agreement"] in (None, 1.0)

    # --report-only over a larger grid aggregates what finished, lists the rest, and trains nothing
    res = runner.invoke(
        app,
        [
            "bench",
            "learning",
            "--config",
            str(path),
            "--report-only",
            "bench.estimators=[igpo,grpo,igpo_ig_only]",
            "bench.seeds=[0,1]",
        ],
    )
    assert res.exit_code == 0, res.output
    result = json.loads((out / "results.json").read_text())
    assert result["pending"] == ["igpo_ig_only-s0", "igpo-s1", "grpo-s1", "igpo_ig_only-s1"]
    assert set(result["runs"]) == {"igpo", "grpo"} and result["start"]["test"]["n"] == 3
    assert "not run yet: igpo_ig_only-s0" in res.output
    assert not (out / "igpo_ig_only-s0").exists() and not (out / "igpo-s1").exists()

    # Results carried over from elsewhere (here: this results.json, then grpo's folder lost) count as finished
    assert result["start"]["model_sha256"] and result["config"]["trainer.lr"] == 1e-3
    assert result["start"]["built_on"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    elsewhere = tmp_path / "elsewhere.json"
    shutil.copy(out / "results.json", elsewhere)
    shutil.rmtree(out / "grpo-s0")
    res = runner.invoke(app, ["bench", "learning", "--config", str(path), f"bench.include=[{elsewhere}]"])
    assert res.exit_code == 0, res.output
    assert f"grpo-s0: finished in {elsewhere}, skipped" in res.output and "igpo-s0: done, skipped" in res.output
    assert not (out / "grpo-s0").exists()  # nothing trained
    merged = json.loads((out / "results.json").read_text())
    assert merged["pending"] == [] and merged["runs"]["grpo"]["0"]["from"] == str(elsewhere)
    assert merged["runs"]["grpo"]["0"]["dev_f1"] == result["runs"]["grpo"]["0"]["dev_f1"]
    assert "from" not in merged["runs"]["igpo"]["0"]  # finished here
    assert merged["summary"]["grpo"] == result["summary"]["grpo"]
    # a different training config is refused before anything trains
    res = runner.invoke(
        app, ["bench", "learning", "--config", str(path), f"bench.include=[{elsewhere}]", "trainer.lr=0.5"]
    )
    assert res.exit_code != 0 and "trainer.lr is 0.001 there, 0.5 here" in res.output
    assert not (out / "grpo-s0").exists()
    # a start rebuilt elsewhere (other weights, same scores) is merged only on request, and results.json says so
    rebuilt = json.loads(elsewhere.read_text())
    rebuilt["start"]["model_sha256"] = "c" * 64
    elsewhere.write_text(json.dumps(rebuilt))
    res = runner.invoke(app, ["bench", "learning", "--config", str(path), f"bench.include=[{elsewhere}]"])
    assert res.exit_code != 0 and "bench.include_equivalent_starts=true would merge them" in res.output
    res = runner.invoke(
        app,
        [
            "bench",
            "learning",
            "--config",
            str(path),
            f"bench.include=[{elsewhere}]",
            "bench.include_equivalent_starts=true",
            "--report-only",
        ],
    )
    assert res.exit_code == 0, res.output
    merged = json.loads((out / "results.json").read_text())
    assert merged["start"]["equivalent"] == ["c" * 64] and merged["runs"]["grpo"]["0"]["start_sha256"] == "c" * 64
    assert "start_sha256" not in merged["runs"]["igpo"]["0"]
