"""The commands that roll out, with `rollout.backend: vllm` on the real CPU engine (marker `vllm`): the SFT's held-out
evaluation, the learning benchmark (the starting model's evaluations, a run's training and evaluations) and the
demo pipeline, each at tiny scale over a tiny random Llama written here.

Every engine they build is recorded (`engines`): what it generated, and how many were open at once. An engine
built from `model.path` plays the model it was handed (a warm start's weights, pushed); each is closed when its
work is done, so a process never holds two.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from transformers import AutoModelForCausalLM

from igpo.agent.generators import SamplingParams
from igpo.config import Config
from igpo.policy.vllm_engine import VLLMEngine, VLLMGenerator
from tests.policy.conftest import MAX_LEN, hf_greedy

pytestmark = pytest.mark.vllm

# The engine settings of every config here: fp32 (the engine's greedy tokens are the trainer's), eager.
VLLM = {"backend": "vllm", "max_context": MAX_LEN, "vllm": {"dtype": "float32", "enforce_eager": True}}
# A warm start that visibly changes the tiny model's greedy generations.
SFT = {"examples": 4, "epochs": 2, "batch_size": 2, "lr": 1e-2}


@dataclass
class Call:
    engine: int  # which engine, in the order they were built
    contexts: list[list[int]]
    params: SamplingParams
    stop_ids: list[int]
    out: list[list[int]]


@dataclass
class Engines:
    """The engines built through `VLLMGenerator.from_config` (what `rollout.backend: vllm` builds)."""

    built: list[VLLMGenerator] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    open: int = 0
    most_open: int = 0

    def greedy(self, engine: int) -> list[Call]:
        return [c for c in self.calls if c.engine == engine and c.params.temperature == 0]


@pytest.fixture
def engines(engine_env, monkeypatch) -> Engines:
    seen = Engines()
    build, generate, close = VLLMGenerator.from_config.__func__, VLLMGenerator.generate, VLLMEngine.close

    def from_config(cls, cfg, distributed):
        gen = build(cls, cfg, distributed)
        seen.built.append(gen)
        seen.open += 1
        seen.most_open = max(seen.most_open, seen.open)
        return gen

    def recorded(self, contexts, params, stop_ids):
        copies = [list(c) for c in contexts]  # a rollout extends its contexts in place
        out = generate(self, contexts, params, stop_ids)
        seen.calls.append(Call(seen.built.index(self), copies, params, list(stop_ids), [list(g) for g in out]))
        return out

    def closing(self):
        seen.open -= self.llm is not None
        close(self)

    monkeypatch.setattr(VLLMGenerator, "from_config", classmethod(from_config))
    monkeypatch.setattr(VLLMGenerator, "generate", recorded)
    monkeypatch.setattr(VLLMEngine, "close", closing)
    return seen


def plays(model, calls: list[Call]) -> bool:
    """Whether every greedy generation of `calls` is `model`'s own greedy continuation."""
    model.eval()
    return all(
        out == hf_greedy(model, ctx, c.params.max_new_tokens, c.stop_ids)
        for c in calls
        for ctx, out in zip(c.contexts, c.out)
    )


def config(base_dir, corpus_file, plans_file, out, **sections) -> Config:
    tree = {
        "model": {"path": str(base_dir)},
        "data": {"train": str(plans_file), "eval": str(plans_file)},
        "retrieval": {"corpus": str(corpus_file), "topk": 1},
        "rollout": {"group_size": 2, "questions_per_step": 1, "max_turns": 3, "max_new_tokens": 40, **VLLM},
        "trainer": {"steps": 1, "out_dir": str(out), "eval_size": 2},
        "sft": {**SFT, "eval_size": 0, "out_dir": str(out / "sft")},
    }
    for name, keys in sections.items():
        tree[name] = {**tree[name], **keys}
    return Config.model_validate(tree)


def test_the_sfts_heldout_evaluation_plays_the_warm_started_weights(
    engines, base_dir, corpus_file, plans_file, tmp_path
):
    from igpo.train.sft import run_sft

    cfg = config(base_dir, corpus_file, plans_file, tmp_path, sft={"eval_size": 2})
    res = run_sft(cfg)
    assert res["heldout"]["n"] == 2
    # one engine, built from model.path (the base) and handed the trained weights: its probe log-probs are theirs
    [gen] = engines.built
    assert gen.pushes == 1 and gen.last_sync_diff < 1e-4
    calls = engines.greedy(0)
    assert calls and calls == engines.calls  # the evaluation is greedy, and all the engine generated
    trained = AutoModelForCausalLM.from_pretrained(res["model_dir"])
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    assert plays(trained, calls)  # every generation is the SFT model's
    assert not plays(base, calls)  # and not the base model's: the warm start changed what was evaluated
    assert engines.open == 0  # closed once the evaluation is done: what runs next has its memory


def test_a_learning_benchmark_evaluates_and_trains_with_one_engine_at_a_time(
    engines, base_dir, corpus_file, plans_file, tmp_path, monkeypatch
):
    import igpo.bench.learning
    from igpo.bench.config import load_bench_config
    from tests.test_bench_learning import _write_config

    # The shared start runs here rather than in a child process, so that its engines are recorded.
    monkeypatch.setattr(igpo.bench.learning, "in_child", lambda _name, fn, *args: fn(*args))
    path = _write_config(tmp_path, base_dir, corpus_file, plans_file, ["grpo"])
    vllm = ["rollout.backend=vllm", f"rollout.max_context={MAX_LEN}", "rollout.vllm.dtype=float32"]
    sft = [f"sft.{k}={v}" for k, v in SFT.items()]
    bench, cfg = load_bench_config(path, [*vllm, "rollout.vllm.enforce_eager=true", *sft, "trainer.steps=1"])
    result = igpo.bench.learning.run_learning_bench(bench, cfg, log=lambda _line: None)

    out = tmp_path / "bench"
    assert result["start"]["dev"]["n"] == 2 and result["start"]["test"]["n"] == 3
    # the starting model's dev and test evaluations (an engine each), then the run's engine
    assert len(engines.built) == 3 and engines.most_open == 1 and engines.open == 0
    start = engines.greedy(0) + engines.greedy(1)
    assert plays(AutoModelForCausalLM.from_pretrained(out / "sft" / "model"), start)  # the SFT model's
    assert not plays(AutoModelForCausalLM.from_pretrained(base_dir), start)  # not model.path's
    # the run trained on the engine's samples (their log-probs are the trainer's) and evaluated with it
    [row] = [json.loads(line) for line in (out / "grpo-s0" / "metrics.jsonl").read_text().splitlines()]
    assert row["rollout_lp_abs_diff"] < 1e-4
    assert any(c.params.temperature > 0 for c in engines.calls if c.engine == 2) and engines.greedy(2)
    run = result["runs"]["grpo"]["0"]
    assert run["steps"] == [0, 1] and run["test"]["overall"]["n"] == 3


def test_the_demo_pipeline_warm_starts_evaluates_and_trains_with_one_engine_at_a_time(
    engines, base_dir, corpus_file, plans_file, tmp_path
):
    from igpo.demo import run_demo

    cfg = config(base_dir, corpus_file, plans_file, tmp_path / "demo", sft={"eval_size": 2})
    summary = run_demo(cfg, tmp_path / "unused", write=lambda _line: None)
    assert summary["before"]["overall"]["n"] == 2 and summary["after"]["overall"]["n"] == 2
    assert summary["sft_heldout"]["n"] == 2
    # the SFT's evaluation, then the trainer's engine (started from the warm start), never side by side
    assert len(engines.built) == 2 and engines.most_open == 1 and engines.open == 0
    trainer_calls = [c for c in engines.calls if c.engine == 1]
    before = trainer_calls[: next(i for i, c in enumerate(trainer_calls) if c.params.temperature > 0)]
    assert before and plays(AutoModelForCausalLM.from_pretrained(tmp_path / "demo" / "sft" / "model"), before)
    [row] = [json.loads(line) for line in (tmp_path / "demo" / "metrics.jsonl").read_text().splitlines()]
    assert row["rollout_lp_abs_diff"] < 1e-4  # trained on the engine's samples
