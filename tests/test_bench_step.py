"""`benchmarks/step.py`: one step's `learn` on the same trajectories under each configuration, and `exact`."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from igpo.agent.build import make_chat_format, make_toolbox
from igpo.policy.loading import load_policy
from igpo.train.trainer import Trainer
from tests.scripted import ScriptedGenerator, ScriptedOverEngine
from tests.train.test_trainer import SCRIPTS, make_cfg

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def step(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the benchmarks import their `common` module
    return importlib.import_module("step")


@pytest.mark.integration
def test_small_run_writes_every_configuration(step, tmp_path, tiny_model_dir, corpus_file, qa_file):
    out = tmp_path / "step.json"
    argv = ["--small", "--model", str(tiny_model_dir), "--config", str(ROOT / "configs" / "demo.yaml")]
    argv += ["--data-dir", str(tmp_path / "vfb"), "--repeats", "2", "--out", str(out)]
    for s in (f"data.train={qa_file}", "data.eval=null", "retrieval.kind=bm25", f"retrieval.corpus={corpus_file}"):
        argv += ["--set", s]
    step.main(argv)
    res = json.loads(out.read_text())

    assert {"cpu_model", "cpu_flags", "cpu_capability", "torch_threads"} <= set(res["machine"])
    assert res["regime"]["estimator"] == "igpo" and res["regime"]["questions"] == 2
    assert res["episodes"] == 4 and res["rollout_s"] > 0 and len(res["load_avg_at_rollout"]) == 3
    configs = res["configurations"]
    assert list(configs) == ["baseline", "shared_prefix", "cached_beliefs", "both"]
    base = configs["baseline"]
    # the baseline's second run against its first: the same trajectories from the same state give the same step
    assert base["available"] and base["exact"] is True
    assert base["max_loss_diff"] <= step.LOSS_TOL and base["learn_ratio_to_baseline"] == 1.0
    assert set(base["losses"]) == {"pg_loss", "kl", "entropy", "grad_norm"}
    for name, c in configs.items():
        on = [step.OPTIMISATIONS[o] for o in step.CONFIGURATIONS[name]]
        if not c["available"]:  # a key the Config does not accept yet: said, with the key
            assert any(key in c["why"] for key, _, _ in on), c["why"]
            continue
        for key, off_value, on_value in step.OPTIMISATIONS.values():
            assert c["settings"].get(key, off_value) == (on_value if (key, off_value, on_value) in on else off_value)
        assert c["exact"] is True, (name, c)
        assert c["learn_s"]["n"] == 2 and len(c["runs"]) == 2
        assert {"ref_logprobs", "update", "other"} <= set(c["phase_s"])
        assert c["step_s"] == pytest.approx(res["rollout_s"] + c["learn_s"]["median"])
    assert res["order"] == [n for _ in range(2) for n, c in configs.items() if c["available"]]


@pytest.mark.integration
def test_a_configuration_that_changes_the_step_is_not_exact(
    step, tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer
):
    """Scripted multi-turn episodes, so that beliefs are scored; each inexact configuration is caught."""
    cfg = make_cfg(tmp_path, tiny_model_dir, corpus_file, qa_file)
    toolbox = make_toolbox(cfg)
    model, _ = load_policy(cfg.model)
    # the engine holds the episodes' real KV caches, so that `cache` scores the beliefs against them
    script = ScriptedGenerator(tokenizer, make_chat_format(cfg, tokenizer, toolbox), SCRIPTS)
    engine = ScriptedOverEngine(model, tokenizer.pad_token_id, script)
    trainer = Trainer(cfg, model=model, tokenizer=tokenizer, toolbox=toolbox, generator=engine)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    configurations = {
        "baseline": {"algorithm.belief_impl": "packed"},
        "reference_beliefs": {"algorithm.belief_impl": "reference"},  # other paths to the same numbers
        "cached_beliefs": {"algorithm.belief_impl": "cache"},
        "hotter": {"rollout.temperature": 1.5},  # scores the same tokens at another temperature
        "missing": {"trainer.no_such_key": True},
    }
    res = step.measure(trainer, configurations, repeats=2)
    c = res["configurations"]

    assert res["episodes_with_beliefs"] > 0 and res["belief_prefixes"] > res["episodes_with_beliefs"]
    assert c["baseline"]["exact"] and c["reference_beliefs"]["exact"] and c["cached_beliefs"]["exact"]
    assert c["reference_beliefs"]["max_belief_diff"] <= step.BELIEF_TOL
    # every run of `cache` found the rollout's caches: none was released before the last run
    assert [r["beliefs_from_cache_share"] for r in c["cached_beliefs"]["runs"]] == [1.0, 1.0]
    assert c["baseline"]["runs"][0]["beliefs_from_cache_share"] is None
    assert not c["hotter"]["exact"] and c["hotter"]["max_loss_diff"] > step.LOSS_TOL
    assert c["hotter"]["max_belief_diff"] <= step.BELIEF_TOL  # beliefs are scored at temperature 1
    assert c["missing"] == {
        "available": False,
        "settings": {"trainer.no_such_key": True},
        "why": "invalid config: trainer.no_such_key: unknown key",
    }
    assert res["order"] == ["baseline", "reference_beliefs", "cached_beliefs", "hotter"] * 2
    # every run started from the same weights, and the trainer is left with them
    after = trainer.model.state_dict()
    assert all((after[k] == v).all() for k, v in before.items())
    assert trainer.step == 0 and trainer.cfg is cfg and engine._stored == []  # the caches released at the end


def test_beliefs_or_loss_terms_that_differ_are_not_exact(step):
    ref = {"losses": {"pg_loss": 0.5, "grad_norm": 1.0}, "beliefs": [[-1.0, -0.5], None]}

    def run(losses=None, beliefs=None):
        return {"losses": losses or dict(ref["losses"]), "beliefs": beliefs or ref["beliefs"]}

    close = run({"pg_loss": 0.5 + 1e-6, "grad_norm": 1.0}, [[-1.0 + 5e-5, -0.5], None])
    assert step.exactness([run(), close], ref) == {
        "exact": True,
        "max_loss_diff": pytest.approx(1e-6),
        "max_belief_diff": pytest.approx(5e-5),
    }
    far_belief = step.exactness([close, run(beliefs=[[-1.0, -0.4], None])], ref)
    assert far_belief == {"exact": False, "max_loss_diff": pytest.approx(1e-6), "max_belief_diff": pytest.approx(0.1)}
    assert not step.exactness([run({"pg_loss": 0.5, "grad_norm": 1.001})], ref)["exact"]
    other_rows = step.exactness([run(beliefs=[None, [-1.0, -0.5]])], ref)
    assert (
        other_rows["exact"] is False and other_rows["max_belief_diff"] is None and "beliefs" in other_rows["mismatch"]
    )
    missing_term = step.exactness([run({"pg_loss": 0.5})], ref)
    assert missing_term["exact"] is False and "grad_norm" in missing_term["mismatch"]
