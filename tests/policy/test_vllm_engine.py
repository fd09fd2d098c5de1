"""The vLLM backend without vLLM: a fake engine with its own copy of the weights stands in for the real one."""

import importlib.util
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from igpo.agent.build import build_agent, make_chat_format, make_toolbox
from igpo.config import Config, ConfigError, load_config
from igpo.data.loaders import load_qa
from igpo.policy import vllm_engine
from igpo.policy.loading import ModelLoadError
from igpo.policy.scoring import (
    BeliefCheckError,
    BeliefQuery,
    belief_logprobs_engine,
    belief_logprobs_packed,
    compare_beliefs,
    token_logprobs,
)
from igpo.policy.vllm_engine import (
    BELIEF_HEADROOM,
    DEFAULT_SYNC_TOLERANCE,
    VLLMEngine,
    VLLMGenerator,
    WeightSyncError,
)
from igpo.train.trainer import Trainer
from tests.scripted import ScriptedGenerator
from tests.train.test_trainer import SCRIPTS, make_cfg, prompt_lengths


class FakeEngine:
    """Holds its own model copy, stored rounded to `dtype` like an engine's; plays scripted generations and
    scores them with its own weights (plus `offset`, to simulate a sampler that disagrees with the trainer).
    `drop`: names whose pushed tensors it ignores; `stale`: it ignores every push; `belief_offset`: added to the
    log-probs of the continuations it scores (an engine whose beliefs are off). `scored`: what it was asked to score."""

    def __init__(self, model, scripted=None, dtype=torch.float32, offset=0.0, drop=(), stale=False, belief_offset=0.0):
        self.model = AutoModelForCausalLM.from_config(model.config)
        self.model.load_state_dict(model.state_dict())
        self.scripted, self.dtype, self.offset, self.drop, self.stale = scripted, dtype, offset, set(drop), stale
        self.vocab_size = model.config.vocab_size
        self.closed = False
        self.belief_offset, self.scored = belief_offset, []

    def generate(self, contexts, params, stop_ids):
        out = []
        for ctx, ids in zip(contexts, self.scripted.generate(contexts, params, stop_ids)):
            seq = torch.tensor([ctx + ids])
            with torch.no_grad():
                # vLLM's processed log-probs: under the sampling temperature, as the trainer scores them
                lp, _ = token_logprobs(
                    self.model, seq, torch.ones_like(seq), start=len(ctx), temperature=params.temperature or 1.0
                )
            out.append((ids, (lp[0, len(ctx) :] + self.offset).tolist()))
        return out

    def load_weights(self, weights):
        params = dict(self.model.named_parameters())
        for name, t in weights:  # consumed in full, as vLLM's loader does
            if name not in self.drop and not self.stale:
                params[name].data.copy_(t.to(self.dtype))

    def close(self):
        self.closed = True

    def prompt_logprobs(self, ids):
        seq = torch.tensor([ids])
        with torch.no_grad():
            lp, _ = token_logprobs(self.model, seq, torch.ones_like(seq))
        return lp[0, 1:].tolist()

    def continuation_logprobs(self, contexts, continuations):
        self.scored += list(zip(contexts, continuations))
        out = []
        for ctx, cont in zip(contexts, continuations):
            seq = torch.tensor([ctx + cont])
            with torch.no_grad():
                lp, _ = token_logprobs(self.model, seq, torch.ones_like(seq), start=len(ctx))
            out.append((lp[0, len(ctx) :] + self.belief_offset).tolist())
        return out


def _update(model, scale):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))


@pytest.mark.parametrize(
    "failure", [{"drop": ["model.layers.0.self_attn.o_proj.weight"]}, {"drop": ["model.norm.weight"]}, {"stale": True}]
)
def test_a_push_that_did_not_land_is_an_error(tiny_model, failure):
    gen = VLLMGenerator(FakeEngine(tiny_model, **failure))
    _update(tiny_model, 0.05)
    with pytest.raises(WeightSyncError, match=r"weight push 1 \(after trainer step 3\).*differ.*by up to"):
        gen.push_weights(tiny_model.named_parameters(), tiny_model, step=3)


def test_a_push_that_landed_passes(tiny_model):
    gen = VLLMGenerator(FakeEngine(tiny_model))
    _update(tiny_model, 0.05)
    gen.push_weights(tiny_model.named_parameters(), tiny_model)
    assert gen.pushes == 1 and gen.last_sync_diff < 1e-5


def test_a_16_bit_engine_is_checked_within_its_dtypes_tolerance(tiny_model):
    # Weights rounded to bf16 by the engine: not the trainer's log-probs to 1e-4, but within the bf16 bound.
    gen = VLLMGenerator(FakeEngine(tiny_model, dtype=torch.bfloat16))
    _update(tiny_model, 0.05)
    gen.push_weights(tiny_model.named_parameters(), tiny_model)
    assert 1e-6 < gen.last_sync_diff < gen.tolerance == DEFAULT_SYNC_TOLERANCE[torch.bfloat16]
    strict = VLLMGenerator(FakeEngine(tiny_model, dtype=torch.bfloat16), sync_tolerance=1e-7)
    with pytest.raises(WeightSyncError, match="sync_tolerance 1e-07"):
        strict.push_weights(tiny_model.named_parameters(), tiny_model)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_missing_vllm_is_a_clear_error():
    with pytest.raises(ModelLoadError, match=r"pip install 'igpo\[vllm\]'.*make install-vllm"):
        VLLMEngine("smollm2", "bfloat16", 2048, 0.3, False, 0, False)


def test_engine_beliefs_are_the_trainers_from_the_same_ids(tiny_model):
    # Prefix ids, probe ids, answer ids: the engine is asked for exactly these, and scores them as the trainer does.
    g = torch.Generator().manual_seed(0)
    V = tiny_model.config.vocab_size
    queries = [
        BeliefQuery(torch.randint(3, V, (n,), generator=g).tolist(), prefixes, [[5, 6, 7], [9]])
        for n, prefixes in ((30, [4, 11, 29]), (18, [6, 18]))
    ]
    probe = [40, 41, 42]
    engine = FakeEngine(tiny_model)
    got = belief_logprobs_engine(VLLMGenerator(engine), probe, queries)
    want = belief_logprobs_packed(tiny_model, probe, queries)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    q = queries[0]
    assert engine.scored[:2] == [(q.ids[:4] + probe, [5, 6, 7]), (q.ids[:4] + probe, [9])] and len(engine.scored) == 10
    assert compare_beliefs(got, want, 1e-5, "here")["belief_engine_max_abs_diff"] < 1e-5


@pytest.mark.parametrize("off", [1e-2, float("nan")])
def test_the_cross_check_refuses_beliefs_past_its_tolerance(off):
    want = [torch.zeros(2, 1), torch.full((1, 3), -2.0)]
    got = [w.clone() for w in want]
    got[1][0, 2] += off
    with pytest.raises(
        BeliefCheckError, match=r"step 4: .* differ from the trainer's by up to .*belief_check_tolerance 0.001"
    ):
        compare_beliefs(got, want, 1e-3, "step 4")
    got[1][0, 2] = -2.0 + 5e-4
    assert compare_beliefs(got, want, 1e-3, "step 4") == pytest.approx(
        {"belief_engine_max_abs_diff": 5e-4, "belief_engine_mean_abs_diff": 1e-4}, rel=1e-3
    )


def test_engine_beliefs_need_the_vllm_backend(corpus_file):
    with pytest.raises(
        ConfigError, match=r"algorithm.belief_backend=engine .* needs rollout.backend=vllm \(got rollout.backend=hf\)"
    ):
        load_config(None, [f"retrieval.corpus={corpus_file}", "algorithm.belief_backend=engine"])
    cfg = load_config(None, ["rollout.backend=vllm", "algorithm.belief_backend=engine"])
    assert cfg.algorithm.belief_backend == "engine" and cfg.algorithm.belief_check_every == 10


@pytest.mark.parametrize("backend, room", [("trainer", 0), ("engine", BELIEF_HEADROOM)])
def test_an_engine_for_engine_beliefs_has_room_for_the_probe_and_answer(tiny_model_dir, monkeypatch, backend, room):
    built = {}

    def engine(path, dtype, max_model_len, *rest):
        built["len"] = max_model_len
        return SimpleNamespace(dtype=torch.float32)

    monkeypatch.setattr(vllm_engine, "VLLMEngine", engine)
    cfg = load_config(
        None,
        [
            f"model.path={tiny_model_dir}",
            "rollout.backend=vllm",
            "rollout.max_context=700",
            f"algorithm.belief_backend={backend}",
        ],
    )
    VLLMGenerator.from_config(cfg, distributed=False)
    assert built["len"] == 700 + room


def _trainer(tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer, *extra, offset=-1.0, belief_offset=0.0):
    cfg = make_cfg(
        tmp_path,
        tiny_model_dir,
        corpus_file,
        qa_file,
        "rollout.backend=vllm",
        "algorithm.kl_coef=0",
        "trainer.steps=2",
        *extra,
    )
    toolbox = make_toolbox(cfg)
    scripted = ScriptedGenerator(tokenizer, make_chat_format(cfg, tokenizer, toolbox), SCRIPTS)
    engine = FakeEngine(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        scripted,
        torch.float32,
        offset,
        belief_offset=belief_offset,
    )
    return Trainer(cfg, toolbox=toolbox, generator=VLLMGenerator(engine))


@pytest.mark.integration
def test_a_trainer_with_engine_beliefs_checks_them_every_n_steps(
    tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer
):
    trainer = _trainer(
        tmp_path,
        tiny_model_dir,
        corpus_file,
        qa_file,
        tokenizer,
        "algorithm.belief_backend=engine",
        "algorithm.belief_check_every=2",
        "trainer.steps=3",
    )
    rows = trainer.fit()
    assert trainer.generator.engine.scored  # the engine scored the beliefs
    checked = [r["step"] for r in rows if "belief_engine_max_abs_diff" in r]
    assert checked == [0, 2] and all("belief_check" in rows[s]["seconds"] for s in checked)
    for s in checked:
        assert rows[s]["belief_engine_max_abs_diff"] < 1e-5 and rows[s]["belief_engine_mean_abs_diff"] < 1e-5
    assert "beliefs_from_cache_share" not in rows[0] and "ig_raw_mean" in rows[1]


@pytest.mark.integration
def test_engine_beliefs_off_by_more_than_the_tolerance_stop_the_run(
    tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer
):
    # 1e-3 is the fp32 bound (engine and trainer in fp32); an engine 2e-3 off on every answer id is past it.
    trainer = _trainer(
        tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer, "algorithm.belief_backend=engine", belief_offset=2e-3
    )
    with pytest.raises(BeliefCheckError, match=r"step 0: .* by up to 0.002 .*belief_check_tolerance 0.001"):
        trainer.fit()


@pytest.mark.parametrize(
    "extra, tolerance",
    [((), 1e-3), (("trainer.autocast=bfloat16",), 1.0), (("algorithm.belief_check_tolerance=0.5",), 0.5)],
)
def test_the_cross_checks_tolerance_is_that_of_the_less_precise_side(
    tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer, extra, tolerance
):
    # fp32 engine; the trainer's forwards in fp32, or in bf16 under autocast: the bf16 bound then
    trainer = _trainer(
        tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer, "algorithm.belief_backend=engine", *extra
    )
    assert trainer._belief_tolerance() == tolerance


@pytest.mark.integration
def test_engine_beliefs_need_a_generator_that_scores(tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer):
    cfg = make_cfg(
        tmp_path, tiny_model_dir, corpus_file, qa_file, "rollout.backend=vllm", "algorithm.belief_backend=engine"
    )
    toolbox = make_toolbox(cfg)
    gen = ScriptedGenerator(tokenizer, make_chat_format(cfg, tokenizer, toolbox), SCRIPTS)
    with pytest.raises(ConfigError, match="algorithm.belief_backend: engine needs .*ScriptedGenerator does not"):
        Trainer(cfg, toolbox=toolbox, generator=gen)


@pytest.mark.integration
def test_trainer_pushes_every_update_and_applies_tis(tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer):
    # The engine's log-probs are the trainer's minus 1: π_old/π_rollout = e ≈ 2.7, capped at 1.5 on every token.
    tis = _trainer(tmp_path / "tis", tiny_model_dir, corpus_file, qa_file, tokenizer, "algorithm.tis_cap=1.5")
    plain = _trainer(tmp_path / "plain", tiny_model_dir, corpus_file, qa_file, tokenizer)
    m_tis, m_plain = tis.fit(), plain.fit()
    assert tis.generator.pushes == 2 and "weight_push" in m_tis[0]["seconds"]  # before each step's rollout
    tis._push_weights()  # the final weights land too (checked on the probe sequence)
    assert tis.generator.pushes == 3
    for m in m_tis:
        assert m["tis_weight"] == pytest.approx(1.5)
        assert m["rollout_lp_abs_diff"] == pytest.approx(1.0, abs=1e-4)
    assert "tis_weight" not in m_plain[0] and m_plain[0]["rollout_lp_abs_diff"] == pytest.approx(1.0, abs=1e-4)
    # Same rollouts, same initial weights: the first step's PG loss is scaled by the weight exactly.
    assert m_tis[0]["pg_loss"] == pytest.approx(1.5 * m_plain[0]["pg_loss"], rel=1e-5)


@pytest.mark.integration
def test_tis_without_rollout_logprobs_is_a_config_error(tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer):
    cfg = make_cfg(tmp_path, tiny_model_dir, corpus_file, qa_file, "algorithm.tis_cap=2", "trainer.steps=1")
    toolbox = make_toolbox(cfg)
    gen = ScriptedGenerator(tokenizer, make_chat_format(cfg, tokenizer, toolbox), SCRIPTS)
    with pytest.raises(ConfigError, match="algorithm.tis_cap"):
        Trainer(cfg, toolbox=toolbox, generator=gen).fit()


@pytest.mark.integration
def test_an_episode_without_turns_keeps_the_batchs_sampling_logprobs(
    tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer
):
    # The longest prompt alone fills the context: that question's episodes have no turn, the others generate.
    lengths = prompt_lengths(tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer)
    full = max(lengths)
    assert sorted(lengths)[-2] < full
    trainer = _trainer(
        tmp_path,
        tiny_model_dir,
        corpus_file,
        qa_file,
        tokenizer,
        "algorithm.tis_cap=1.5",
        f"rollout.max_context={full}",
    )
    rows = trainer.fit()  # two steps: all four questions, one of them without turns
    assert sum(r["finish"].get("max_context", 0) for r in rows) >= 3
    for r in rows:
        assert r["generated_tokens"] > 0
        assert r["tis_weight"] == pytest.approx(1.5)
        assert r["rollout_lp_abs_diff"] == pytest.approx(1.0, abs=1e-4)


def test_an_agent_built_for_a_model_samples_with_that_models_weights(tiny_model, tokenizer, corpus_file, monkeypatch):
    # The engine starts from other weights (those of model.path, for vLLM): building the agent pushes the model's.
    other = AutoModelForCausalLM.from_config(tiny_model.config)
    engine = FakeEngine(other, dtype=torch.float32)
    monkeypatch.setattr(VLLMGenerator, "from_config", classmethod(lambda cls, cfg, distributed: cls(engine)))
    cfg = Config.model_validate({"retrieval": {"corpus": str(corpus_file)}, "rollout": {"backend": "vllm"}})
    agent = build_agent(cfg, tiny_model, tokenizer)
    assert isinstance(agent.generator, VLLMGenerator) and agent.generator.pushes == 1
    held = dict(engine.model.named_parameters())
    assert all(torch.equal(held[name], p) for name, p in tiny_model.named_parameters())


@pytest.mark.integration
def test_evaluating_the_trainer_pushes_its_weights_first(tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer):
    trainer = _trainer(tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer)
    trainer.fit()  # pushes before each step's rollout: the engine has the weights of before the last update
    assert trainer.generator.pushes == 2
    res = trainer.evaluate(load_qa(qa_file)[:2])
    assert trainer.generator.pushes == 3 and res["overall"]["n"] == 2
    held = dict(trainer.generator.engine.model.named_parameters())
    assert all(torch.equal(held[name], p.detach()) for name, p in trainer.model.named_parameters())


def test_the_trainer_closes_the_engine_it_built_and_not_one_it_was_given(
    tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer, monkeypatch
):
    # A learning benchmark's worker trains its runs one after another: each run's engine is closed before the next
    # starts its own. An engine handed to the trainer is its caller's to close.
    given = _trainer(tmp_path / "given", tiny_model_dir, corpus_file, qa_file, tokenizer)
    given.close()
    assert not given.generator.engine.closed
    engine = FakeEngine(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    monkeypatch.setattr(VLLMGenerator, "from_config", classmethod(lambda cls, cfg, distributed: cls(engine)))
    built = Trainer(make_cfg(tmp_path / "built", tiny_model_dir, corpus_file, qa_file, "rollout.backend=vllm"))
    assert built.generator.engine is engine and not engine.closed
    built.close()
    assert engine.closed
