"""Beliefs from the real engine (`algorithm.belief_backend: engine`), on CPU (marker `vllm`).

One fp32 engine for the module over the tiny random Llama A (`tests/policy/conftest.py`). A random model calls no tools, so the episodes' turns are
scripted, but played through the engine (it scores each turn's ids after their context, so its prefix cache holds
the trajectories as a rollout leaves it). Measured on these models (fp32, CPU): the engine's mean answer log-probs
are the trainer's packed ones to 5e-7 under A and B, and to 2.5e-5 under a sharp model (A's matrices times 20,
log-probs below -10); `DEFAULT_BELIEF_TOLERANCE` for fp32 is 1e-3. Each test leaves the engine holding A.
"""

from __future__ import annotations

import pytest
import torch

from igpo.agent.build import make_chat_format, make_toolbox
from igpo.agent.generators import Generation
from igpo.policy.scoring import (
    BeliefCheckError,
    BeliefQuery,
    belief_logprobs_engine,
    belief_logprobs_packed,
    token_logprobs,
)
from igpo.policy.vllm_engine import BELIEF_HEADROOM, DEFAULT_BELIEF_TOLERANCE, VLLMEngine, VLLMGenerator
from igpo.testing import SCRIPTS
from igpo.train.trainer import Timer, Trainer
from tests.policy.conftest import MAX_LEN, tiny
from tests.scripted import ScriptedGenerator
from tests.train.test_trainer import make_cfg

pytestmark = pytest.mark.vllm

DROPPED = "model.layers.1.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def engine(engine_env, engine_dir):
    # rollout.max_context plus room for the probe and an answer, as `VLLMGenerator.from_config` builds it
    e = VLLMEngine(str(engine_dir), "float32", MAX_LEN + BELIEF_HEADROOM, 0.3, True, 0, False)
    yield e
    e.close()  # the next module's engines start beside nothing


class ScriptedThroughEngine(VLLMGenerator):
    """The script's turns, scored by the engine after their contexts (so its prefix cache holds the trajectories, as
    after a rollout, and each turn carries the engine's log-probs). `drop`: a weight name its pushes leave out."""

    def __init__(self, engine, scripted, check_weights=True, drop=None):
        super().__init__(engine, check_weights)
        self.scripted, self.drop = scripted, drop
        self.cached: list[int] = []  # per request it was asked to score, the ids the engine read from its cache
        generate = engine.llm.generate

        def counting(*args, **kwargs):
            outs = generate(*args, **kwargs)
            self.cached += [o.num_cached_tokens for o in outs]
            return outs

        engine.llm.generate = counting

    def generate(self, contexts, params, stop_ids):
        ids = self.scripted.generate(contexts, params, stop_ids)
        return [Generation(x, lp) for x, lp in zip(ids, self.engine.continuation_logprobs(contexts, ids))]

    def push_weights(self, weights, model, step=None):
        super().push_weights(((n, t) for n, t in weights if n != self.drop), model, step)


def pairs(model):
    return ((name, p.detach()) for name, p in model.named_parameters())


@pytest.fixture
def trainer_for(engine, model_a, engine_dir, corpus_file, qa_file, tokenizer, tmp_path):
    """`trainer_for(*overrides, **generator_options)`: a Trainer of model A with engine beliefs, over the module's
    engine; the engine holds A again afterwards."""
    generators = []

    def build(*extra, **options):
        cfg = make_cfg(
            tmp_path / f"run{len(generators)}",
            engine_dir,
            corpus_file,
            qa_file,
            "rollout.backend=vllm",
            "rollout.vllm.dtype=float32",
            f"rollout.max_context={MAX_LEN}",
            "algorithm.belief_backend=engine",
            *extra,
        )
        toolbox = make_toolbox(cfg)
        scripted = ScriptedGenerator(tokenizer, make_chat_format(cfg, tokenizer, toolbox), SCRIPTS)
        gen = ScriptedThroughEngine(engine, scripted, **options)
        generators.append(gen)
        return Trainer(cfg, toolbox=toolbox, generator=gen)

    generate = engine.llm.generate
    yield build
    engine.llm.generate = generate
    VLLMGenerator(engine).push_weights(pairs(model_a), model_a)


def step_queries(trainer) -> tuple[list[int], list[BeliefQuery]]:
    """A rollout of the trainer's first step (through the engine) and the belief queries of its episodes."""
    trajs = trainer.collect(0, Timer())
    queries = [
        BeliefQuery(tr.ids, tr.belief_prefixes(), trainer.answer_ids(tr.example)) for tr in trajs if tr.num_turns >= 2
    ]
    assert (
        len(queries) >= 3 and any(len(q.prefixes) >= 2 for q in queries) and any(len(q.answers) >= 2 for q in queries)
    )
    return trainer.fmt.belief_probe_ids, queries


def max_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


def test_engine_beliefs_are_the_trainers_on_real_trajectories_and_read_the_prefix_cache(trainer_for):
    trainer = trainer_for()
    probe, queries = step_queries(trainer)
    gen = trainer.generator
    gen.cached.clear()
    got = belief_logprobs_engine(gen, probe, queries)
    want = belief_logprobs_packed(trainer.model, probe, queries)
    assert [g.shape for g in got] == [(len(q.prefixes), len(q.answers)) for q in queries]
    assert max_diff(got, want) < 1e-4
    # The trajectories' leading blocks (128 ids on CPU: the system prompt and tool schemas) come from the cache.
    assert len(gen.cached) >= sum(len(q.prefixes) * len(q.answers) for q in queries)
    assert sum(c > 0 for c in gen.cached) > len(gen.cached) / 2


def test_engine_beliefs_follow_the_pushed_weights(trainer_for, model_a, model_b):
    trainer = trainer_for()
    probe, queries = step_queries(trainer)
    gen = trainer.generator
    want_a = belief_logprobs_packed(model_a, probe, queries)
    want_b = belief_logprobs_packed(model_b, probe, queries)
    assert max_diff(want_a, want_b) > 0.05  # B is visibly another model
    gen.push_weights(pairs(model_b), model_b)  # resets the prefix cache: nothing of A's is read back
    assert max_diff(belief_logprobs_engine(gen, probe, queries), want_b) < 1e-4
    sharp = tiny(trainer.tok, seed=0)
    with torch.no_grad():
        for p in sharp.parameters():
            if p.dim() == 2:
                p.mul_(20.0)
    gen.push_weights(pairs(sharp), sharp)
    want = belief_logprobs_packed(sharp, probe, queries)
    assert min(w.min().item() for w in want) < -10  # log-probs far from uniform's -6.4
    assert max_diff(belief_logprobs_engine(gen, probe, queries), want) < DEFAULT_BELIEF_TOLERANCE[torch.float32]


def test_a_request_whose_cached_blocks_reach_its_continuation_is_scored_again(engine, model_a):
    # The same context and continuation three times (identical episodes of a group do this): the second and third
    # find 256 of their 260 ids cached, past the context's 250, where vLLM leaves prompt log-probs unset.
    ids = torch.randint(3, model_a.config.vocab_size, (260,), generator=torch.Generator().manual_seed(1)).tolist()
    ctx, cont = ids[:250], ids[250:]
    got = engine.continuation_logprobs([ctx, ctx], [cont, cont]) + engine.continuation_logprobs([ctx], [cont])
    seq = torch.tensor([ids])
    with torch.no_grad():
        want, _ = token_logprobs(model_a, seq, torch.ones_like(seq), start=250)
    for lp in got:
        torch.testing.assert_close(torch.tensor(lp), want[0, 250:], atol=1e-4, rtol=0)


def test_a_prompt_past_the_engines_context_is_refused_by_name(engine):
    with pytest.raises(ValueError, match=r"1281 ids to score, past the engine's context of 1280 .*belief_backend"):
        engine.continuation_logprobs([[5] * 1280], [[6]])


def test_the_cross_check_stops_a_run_whose_engine_scores_with_other_weights(trainer_for, model_b):
    # The engine holds B; the trainer's push of A leaves one matrix out, unchecked: that matrix stays B's.
    trainer = trainer_for("algorithm.belief_check_every=1", check_weights=False, drop=DROPPED)
    VLLMGenerator(trainer.generator.engine).push_weights(pairs(model_b), model_b)
    with pytest.raises(BeliefCheckError, match=r"step 0: the engine's beliefs .* differ from the trainer's by up to"):
        trainer.fit()


def test_three_steps_with_engine_beliefs_log_the_cross_check(trainer_for):
    # lr 1e-3: every step's push changes the weights, and the beliefs follow them.
    trainer = trainer_for("algorithm.belief_check_every=2", "algorithm.tis_cap=2")
    rows = trainer.fit()
    assert [r["step"] for r in rows] == [0, 1, 2] and trainer.generator.pushes == 3
    assert [r["step"] for r in rows if "belief_engine_max_abs_diff" in r] == [0, 2]
    for r in (rows[0], rows[2]):
        assert r["belief_engine_max_abs_diff"] < 1e-4 and r["belief_engine_mean_abs_diff"] < 1e-4
        assert r["seconds"]["belief_check"] > 0
    for r in rows:
        assert r["ig_rollout_share"] > 0 and r["rollout_lp_abs_diff"] < 1e-4
