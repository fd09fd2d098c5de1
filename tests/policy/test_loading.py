import copy
import warnings

import pytest
import torch

from igpo.agent.build import make_chat_format, make_toolbox
from igpo.agent.template import CHATML_TOOLS_TEMPLATE, ChatFormat
from igpo.config import ModelConfig, load_config
from igpo.policy.loading import ModelLoadError, load_checkpoint, load_policy
from igpo.train.trainer import Trainer
from tests.scripted import ScriptedGenerator
from tests.train.test_trainer import SCRIPTS


def test_load_from_directory_and_errors(tiny_model_dir, tmp_path):
    model, tok = load_policy(ModelConfig(path=str(tiny_model_dir)))
    assert model.dtype == torch.float32 and tok.pad_token_id is not None
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_policy(ModelConfig(path=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_policy(ModelConfig(path=str(tmp_path / "empty")))
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_policy(ModelConfig(path=str(tmp_path / "x.gguf")))


def test_tokenizer_without_chat_template_gets_the_fallback(tokenizer):
    bare = copy.deepcopy(tokenizer)  # keep the fixture's tokenizer untouched
    bare.chat_template = None
    fmt = ChatFormat(bare, "sys", [{"type": "function", "function": {"name": "search"}}], "S")
    assert fmt.chat_template == CHATML_TOOLS_TEMPLATE
    text = bare.decode(fmt.prompt_ids("q"))
    assert text.startswith("<|im_start|>system\nsys\n\n# Tools") and text.endswith("<|im_start|>assistant\n")


def test_lora_trains_only_the_adapter_and_checkpoints_it(tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer):
    cfg = load_config(
        None,
        [
            f"model.path={tiny_model_dir}",
            "model.lora.enabled=true",
            "model.lora.r=4",
            f"retrieval.corpus={corpus_file}",
            f"data.train={qa_file}",
            f"trainer.out_dir={tmp_path / 'run'}",
            "trainer.lr=1e-2",
            "trainer.steps=1",
            "rollout.group_size=2",
            "rollout.questions_per_step=2",
            "rollout.max_turns=3",
            "algorithm.kl_coef=0.1",
        ],
    )
    toolbox = make_toolbox(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # peft's deprecated-property probe is silenced at the source
        model, tok = load_policy(cfg.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(
        cfg,
        model=model,
        tokenizer=tok,
        toolbox=toolbox,
        generator=ScriptedGenerator(tok, make_chat_format(cfg, tok, toolbox), SCRIPTS),
    )
    assert trainer.ref is None  # the reference is the base model with the adapter switched off
    (m,) = trainer.fit()
    assert m["kl"] >= 0
    changed = {k for k, v in trainer.model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all("lora_" in k for k in changed)
    ckpt = tmp_path / "run" / "checkpoints" / "step_000001"
    assert (ckpt / "adapter_config.json").is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        reloaded, _ = load_checkpoint(ckpt, cfg.model)
    for k, v in reloaded.state_dict().items():
        if "lora_" in k:
            torch.testing.assert_close(v, trainer.model.state_dict()[k])
