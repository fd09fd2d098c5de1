"""Pinned numerics (torchtune-style): two seeded IGPO steps of a tiny model on scripted trajectories give these
losses. A change that moves them must be deliberate: rerun with `IGPO_PRINT_PINNED=1 pytest -s` and update
PINNED in the same commit, saying why."""

import os

import pytest

from igpo.agent.build import make_chat_format, make_toolbox
from igpo.train.trainer import Trainer
from tests.scripted import ScriptedGenerator
from tests.train.test_trainer import SCRIPTS, make_cfg

pytestmark = pytest.mark.integration
KEYS = ("pg_loss", "kl", "adv_abs_mean")
PINNED = [
    {"pg_loss": 0.117370, "kl": 0.0, "adv_abs_mean": 0.625329},
    {"pg_loss": -0.219025, "kl": 0.015326, "adv_abs_mean": 0.911547},
]


def test_two_seeded_steps_give_the_pinned_losses(tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer):
    cfg = make_cfg(tmp_path, tiny_model_dir, corpus_file, qa_file, "trainer.steps=2")
    toolbox = make_toolbox(cfg)
    trainer = Trainer(
        cfg, toolbox=toolbox, generator=ScriptedGenerator(tokenizer, make_chat_format(cfg, tokenizer, toolbox), SCRIPTS)
    )
    got = [{k: m[k] for k in KEYS} for m in trainer.fit()]
    if os.environ.get("IGPO_PRINT_PINNED"):
        print("\nPINNED =", got)
    for step, (g, want) in enumerate(zip(got, PINNED)):
        for k in KEYS:
            assert g[k] == pytest.approx(want[k], abs=1e-5), (step, k, g[k], want[k])
