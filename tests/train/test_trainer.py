"""Integration: the whole IGPO step (rollout → beliefs → rewards → advantages → update) at tiny scale."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from igpo.agent.build import make_chat_format, make_toolbox
from igpo.config import load_config
from igpo.policy.loading import load_policy
from igpo.testing import QUESTIONS, SCRIPTS, SEARCH
from igpo.train.trainer import Timer, Trainer
from tests.scripted import ScriptedGenerator, ScriptedOverEngine

pytestmark = pytest.mark.integration


def make_cfg(tmp_path, tiny_model_dir, corpus_file, qa_file, *extra):
    return load_config(
        None,
        [
            f"model.path={tiny_model_dir}",
            f"retrieval.corpus={corpus_file}",
            f"data.train={qa_file}",
            f"trainer.out_dir={tmp_path / 'run'}",
            "trainer.lr=1e-3",
            "trainer.steps=3",
            "trainer.micro_batch_size=3",
            "rollout.group_size=3",
            "rollout.questions_per_step=2",
            "rollout.max_turns=3",
            "rollout.max_new_tokens=40",
            "algorithm.kl_coef=0.01",
            *extra,
        ],
    )


def test_three_igpo_steps_train_and_checkpoint(tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer, device):
    cfg = make_cfg(tmp_path, tiny_model_dir, corpus_file, qa_file, f"model.device={device}")
    toolbox = make_toolbox(cfg)
    fmt = make_chat_format(cfg, tokenizer, toolbox)
    trainer = Trainer(cfg, toolbox=toolbox, generator=ScriptedGenerator(tokenizer, fmt, SCRIPTS))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    history = trainer.fit()

    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and rows == history
    for r in rows:
        assert set(r["seconds"]) >= {"rollout", "update", "ref_logprobs"}
        assert {
            "outcome_reward",
            "f1",
            "kl",
            "entropy",
            "pg_loss",
            "zero_variance_groups",
            "tool_error_rate",
            "format_error_rate",
            "tokens_per_s",
        } <= set(r)
        assert r["tool_calls"] > 0
    assert any("ig_turn1_mean" in r for r in rows)
    assert any(r["seconds"].get("beliefs", 0) > 0 for r in rows)
    assert any(r["tool_errors"] for r in rows)  # the unknown tool / unclosed call became observations

    ckpts = sorted((tmp_path / "run" / "checkpoints").iterdir())
    assert [c.name for c in ckpts] == ["step_000003"]
    reloaded = AutoModelForCausalLM.from_pretrained(ckpts[0])
    after = trainer.model.state_dict()
    for k, v in reloaded.state_dict().items():
        torch.testing.assert_close(v, after[k].cpu())
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_resume_continues_from_the_checkpoint(tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer):
    cfg = make_cfg(tmp_path, tiny_model_dir, corpus_file, qa_file, "trainer.steps=2", "trainer.save_every=1")
    toolbox = make_toolbox(cfg)
    fmt = make_chat_format(cfg, tokenizer, toolbox)
    Trainer(cfg, toolbox=toolbox, generator=ScriptedGenerator(tokenizer, fmt, SCRIPTS)).fit()
    cfg3 = cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"steps": 3})})
    trainer = Trainer(cfg3, toolbox=toolbox, generator=ScriptedGenerator(tokenizer, fmt, SCRIPTS))
    assert trainer.step == 2
    trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]


def test_sampling_rollouts_with_a_random_model(tmp_path, tiny_model_dir, corpus_file, qa_file):
    """The real sampler: a random model emits no tags, so every episode ends as a format error; no crash."""
    cfg = make_cfg(
        tmp_path,
        tiny_model_dir,
        corpus_file,
        qa_file,
        "trainer.steps=1",
        "algorithm.kl_coef=0",
        "rollout.max_new_tokens=8",
    )
    (m,) = Trainer(cfg).fit()
    assert m["format_error_rate"] == 1.0 and m["outcome_reward"] == cfg.algorithm.format_penalty
    assert "ref_logprobs" not in m["seconds"]  # β = 0: no reference forward
    assert "old_logprobs" not in m["seconds"]  # one epoch, one mini-batch: on-policy


def test_the_authors_later_options_in_a_step(tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer):
    """scaled_separate + log_prob_diff + adaptive γ + a per-turn format penalty: the malformed call's turn gets −x
    in place of its IG, and the step logs the new diagnostics."""
    cfg = make_cfg(
        tmp_path,
        tiny_model_dir,
        corpus_file,
        qa_file,
        "trainer.steps=1",
        "algorithm.norm=scaled_separate",
        "algorithm.ig=log_prob_diff",
        "algorithm.gamma=0.95",
        "algorithm.gamma_min_weight=0.5",
        "algorithm.turn_format_penalty=0.7",
        "algorithm.ig_clip=positive",
    )
    toolbox = make_toolbox(cfg)
    trainer = Trainer(
        cfg, toolbox=toolbox, generator=ScriptedGenerator(tokenizer, make_chat_format(cfg, tokenizer, toolbox), SCRIPTS)
    )
    trajs = trainer.collect(0, Timer())
    trainer.score_beliefs(trajs, Timer())
    rewards, mask, _ = trainer.turn_rewards(trajs)
    malformed = [
        (b, k)
        for b, tr in enumerate(trajs)
        for k, t in enumerate(tr.turns[:-1])
        if t.tool_error in ("unknown_tool", "malformed_call", "bad_arguments")
    ]
    assert malformed, "the scripts hold an unknown tool"
    assert all(rewards[b, k] == -0.7 for b, k in malformed)
    ig_turns = [(b, k) for b, tr in enumerate(trajs) for k in range(tr.num_turns - 1) if (b, k) not in malformed]
    assert ig_turns and all(rewards[b, k] >= 0 for b, k in ig_turns)  # clipped at 0

    (m,) = trainer.fit()
    assert 0 < m["ig_scale"] <= 10
    assert 0.5**0.5 - 1e-6 <= m["gamma_effective"] <= 0.95 + 1e-6
    assert m["turns_min"] <= m["turns"] <= m["turns_max"]
    assert 0 < m["ig_rollout_share"] <= 1 and {"ig_raw_mean", "ig_raw_std", "ig_raw_positive_share"} <= set(m)


def test_empty_belief_probe_packed_beliefs_equal_reference(tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer):
    """`algorithm.belief_probe: ''` in a trainer step: both belief implementations score the same probe."""
    cfg = make_cfg(tmp_path, tiny_model_dir, corpus_file, qa_file, "algorithm.belief_probe=''")
    toolbox = make_toolbox(cfg)
    trainer = Trainer(
        cfg, toolbox=toolbox, generator=ScriptedGenerator(tokenizer, make_chat_format(cfg, tokenizer, toolbox), SCRIPTS)
    )
    assert trainer.fmt.belief_probe_ids == []
    trajs = trainer.collect(0, Timer())
    beliefs = {}
    for impl in ("packed", "reference"):
        trainer.cfg = cfg.model_copy(update={"algorithm": cfg.algorithm.model_copy(update={"belief_impl": impl})})
        trainer.score_beliefs(trajs, Timer())
        beliefs[impl] = torch.tensor([b for tr in trajs for b in tr.beliefs or []])
    assert len(beliefs["packed"]) > 0
    torch.testing.assert_close(beliefs["packed"], beliefs["reference"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("probe", [[], ["algorithm.belief_probe=''"]], ids=["probe", "empty_probe"])
def test_beliefs_from_the_engine_cache_equal_packed_in_a_step(
    tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer, probe
):
    """Episodes played through the KV-cache engine: the beliefs scored against its caches are the packed pass's,
    and so is the whole step (rewards, advantages, losses); scoring leaves the engine's caches as they were, and
    the step releases them."""
    beliefs, rows = {}, {}
    for impl in ("cache", "packed"):
        cfg = make_cfg(
            tmp_path,
            tiny_model_dir,
            corpus_file,
            qa_file,
            "trainer.steps=1",
            f"trainer.out_dir={tmp_path / impl}",
            f"algorithm.belief_impl={impl}",
            *probe,
        )
        toolbox = make_toolbox(cfg)
        model, _ = load_policy(cfg.model)
        script = ScriptedGenerator(tokenizer, make_chat_format(cfg, tokenizer, toolbox), SCRIPTS)
        engine = ScriptedOverEngine(model, tokenizer.pad_token_id, script)
        trainer = Trainer(cfg, model=model, tokenizer=tokenizer, toolbox=toolbox, generator=engine)
        trajs = trainer.collect(0, Timer())
        held = [[t.clone() for kv in s.kv for t in kv] for s in engine._stored]
        stats = trainer.score_beliefs(trajs, Timer())
        assert stats == ({"beliefs_from_cache_share": 1.0} if impl == "cache" else {})
        assert all(
            torch.equal(a, b) for s, h in zip(engine._stored, held) for a, b in zip([t for kv in s.kv for t in kv], h)
        )
        beliefs[impl] = torch.tensor([b for tr in trajs for b in tr.beliefs or []])
        (rows[impl],) = trainer.fit()
        assert engine._stored == []
    assert len(beliefs["cache"]) > 4 and rows["cache"]["beliefs_from_cache_share"] == 1.0
    torch.testing.assert_close(beliefs["cache"], beliefs["packed"], atol=1e-4, rtol=0)
    assert {"pg_loss", "kl", "p0_mean", "ig_raw_mean", "ig_turn1_mean"} <= set(rows["packed"])
    for key, want in rows["packed"].items():  # every figure of the step but its timings
        if key not in ("seconds", "tokens_per_s"):
            assert rows["cache"][key] == (pytest.approx(want, abs=1e-4) if isinstance(want, float) else want), key


def prompt_lengths(tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer) -> list[int]:
    """The prompt length of each question of `QUESTIONS` under `make_cfg`'s chat format."""
    cfg = make_cfg(tmp_path, tiny_model_dir, corpus_file, qa_file)
    fmt = make_chat_format(cfg, tokenizer, make_toolbox(cfg))
    return [len(fmt.prompt_ids(q)) for _, q, _ in QUESTIONS]


@pytest.mark.parametrize("estimator", ["igpo", "grpo"])
def test_a_step_whose_prompts_fill_the_context_scores_the_format_penalty(
    tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer, estimator
):
    """Every prompt alone fills `rollout.max_context`: episodes without a turn, no token to train on."""
    full = min(prompt_lengths(tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer))
    cfg = make_cfg(
        tmp_path,
        tiny_model_dir,
        corpus_file,
        qa_file,
        f"rollout.max_context={full}",
        f"algorithm.estimator={estimator}",
        "trainer.steps=1",
    )
    toolbox = make_toolbox(cfg)
    gen = ScriptedGenerator(tokenizer, make_chat_format(cfg, tokenizer, toolbox), SCRIPTS)
    trainer = Trainer(cfg, toolbox=toolbox, generator=gen)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    (m,) = trainer.fit()
    assert gen.calls == 0 and m["finish"] == {"max_context": 6} and m["turns"] == 0 and m["generated_tokens"] == 0
    assert m["outcome_reward"] == cfg.algorithm.format_penalty and m["adv_abs_mean"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))  # nothing to learn from


def test_three_search_episodes_log_ig_of_turn_three(tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer):
    """Episodes of three searches and an answer (four turns): the step's metrics carry the IG of turns 1 to 3,
    which the report's IG-per-turn panel plots, and none of turn 4 (the answer's reward is the outcome)."""
    three = [
        [SEARCH.format("Eiffel Tower")],
        [SEARCH.format("France")],
        [SEARCH.format("capital")],
        ["<answer>Paris</answer>"],
    ]
    cfg = make_cfg(tmp_path, tiny_model_dir, corpus_file, qa_file, "trainer.steps=1", "rollout.max_turns=4")
    toolbox = make_toolbox(cfg)
    fmt = make_chat_format(cfg, tokenizer, toolbox)
    scripts = {q: three for _, q, _ in QUESTIONS}
    trainer = Trainer(cfg, toolbox=toolbox, generator=ScriptedGenerator(tokenizer, fmt, scripts))
    (row,) = trainer.fit()
    assert row["turns"] == 4 and row["tool_calls"] == 3 * cfg.rollout.group_size * cfg.rollout.questions_per_step
    assert all(f"ig_turn{k}_mean" in row and f"ig_turn{k}_std" in row for k in (1, 2, 3))
    assert "ig_turn4_mean" not in row
