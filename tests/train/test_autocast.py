"""`trainer.autocast: bfloat16`: the trainer's forwards compute in bf16 from fp32 master weights (parameters,
gradients and optimizer states stay fp32), with log-probs and losses in fp32."""

from collections import defaultdict

import pytest
import torch

from igpo.agent.build import make_chat_format, make_toolbox
from igpo.config import ConfigError, load_config
from igpo.policy.loading import load_policy
from igpo.testing import SCRIPTS, ScriptedGenerator, ScriptedOverEngine
from igpo.train.trainer import Timer, Trainer
from tests.train.test_trainer import make_cfg

# Measured on the tiny model (CPU, bf16 autocast against fp32, the same batches, advantages and old log-probs, three
# steps' batches): the policy's tokens' log-probs within 2e-3 of fp32's (bf16 keeps 8 bits of mantissa), the
# micro-batch loss within 5e-3 relative, its gradient within 4.5e-3 relative (the norm of the difference over the
# fp32 gradient's norm). The bounds are 5x those; a wrong dtype, mask or position moves them by far more.
LP_ATOL = 1e-2
LOSS_RTOL = 2.5e-2
GRAD_RTOL = 2.5e-2


def test_autocast_needs_fp32_master_weights_and_is_not_fsdps_setting():
    with pytest.raises(ConfigError, match=r"trainer.autocast=bfloat16 .* model.dtype must be float32, not bfloat16"):
        load_config(None, ["trainer.autocast=bfloat16", "model.dtype=bfloat16"])
    with pytest.raises(ConfigError, match=r"trainer.autocast and trainer.fsdp_param_dtype"):
        load_config(None, ["trainer.autocast=bfloat16", "trainer.fsdp_param_dtype=bfloat16"])
    with pytest.raises(ConfigError, match=r"trainer.autocast: Input should be 'bfloat16'"):
        load_config(None, ["trainer.autocast=float16"])


def make_trainer(tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer, device, *extra):
    """`make_cfg`'s trainer on `device`, and the list of the dtypes of every output of a linear layer (the
    reference's too: a copy of the model with its hook)."""
    cfg = make_cfg(
        tmp_path,
        tiny_model_dir,
        corpus_file,
        qa_file,
        f"model.device={device}",
        "trainer.loggers=[jsonl]",
        "algorithm.entropy_coef=0.01",
        *extra,
    )
    model, _ = load_policy(cfg.model)
    outputs: list[torch.dtype] = []
    model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, args, out: outputs.append(out.dtype))
    toolbox = make_toolbox(cfg)
    # the KV-cache engine runs over every context: the rollout's forwards are the model's own
    script = ScriptedGenerator(tokenizer, make_chat_format(cfg, tokenizer, toolbox), SCRIPTS)
    engine = ScriptedOverEngine(model, tokenizer.pad_token_id, script)
    return Trainer(cfg, model=model, tokenizer=tokenizer, toolbox=toolbox, generator=engine), outputs


def scoring_and_update(trainer, batch):
    """Reference log-probs [B, L] (CPU) and one update micro-batch's loss (against `batch["old_lp"]`) and parameter
    gradients."""
    trainer.model.eval()
    ref_lp = trainer._logprobs_all(trainer.model, batch)
    batch["ref_lp"] = ref_lp
    trainer.model.train()
    rows = trainer._micro_batches(batch, torch.arange(batch["ids"].shape[0]))[0]
    n = batch["loss_mask"][rows]
    agg = {"mode": "seq-mean-token-mean", "num_seqs": float((n.sum(1) > 0).sum()), "num_tokens": float(n.sum())}
    trainer.model.zero_grad()
    loss = trainer._micro_batch_loss(batch, rows, False, agg, defaultdict(list))
    loss.backward()
    return ref_lp, loss.detach(), torch.cat([p.grad.flatten() for p in trainer.model.parameters()])


def test_bf16_autocast_scores_and_updates_close_to_fp32_from_fp32_weights(
    tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer, device
):
    trainer, outputs = make_trainer(tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer, device)
    trajs = trainer.collect(0, Timer())
    batch = trainer.batch_tensors(trajs)
    mask = batch["loss_mask"].bool()
    g = torch.Generator().manual_seed(0)
    batch["adv"] = torch.randn(batch["ids"].shape, generator=g) * mask
    # old log-probs off the policy's, so that the PPO ratio (and the loss) depends on the log-probs
    with torch.no_grad():
        batch["old_lp"] = (
            trainer._logprobs_all(trainer.model, batch) + 0.1 * torch.randn(mask.shape, generator=g) * mask
        )
    got = {}
    for dtype in (None, "bfloat16"):
        trainer.cfg.trainer.autocast = dtype
        outputs.clear()
        got[dtype] = scoring_and_update(trainer, batch)
        assert outputs and set(outputs) == {torch.bfloat16 if dtype else torch.float32}
    (lp32, loss32, grad32), (lp16, loss16, grad16) = got[None], got["bfloat16"]
    assert lp16.dtype == loss16.dtype == grad16.dtype == torch.float32
    assert mask.any() and (lp16 != lp32)[mask].any()  # it computed in another precision
    assert (lp16 - lp32)[mask].abs().max() <= LP_ATOL
    assert abs(float(loss16 - loss32)) <= LOSS_RTOL * abs(float(loss32))
    assert float((grad16 - grad32).norm()) <= GRAD_RTOL * float(grad32.norm())


def test_a_bf16_autocast_step_runs_every_forward_in_bf16_and_keeps_fp32_master_weights(
    tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer, device
):
    trainer, outputs = make_trainer(
        tmp_path,
        tiny_model_dir,
        corpus_file,
        qa_file,
        tokenizer,
        device,
        "trainer.autocast=bfloat16",
        "trainer.steps=1",
    )
    before = [p.detach().clone() for p in trainer.model.parameters()]
    (row,) = trainer.fit()
    # rollout (the engine), beliefs, reference log-probs and the update: every forward in bf16
    assert {"rollout", "beliefs", "ref_logprobs", "update"} <= set(row["seconds"]) and row["tool_calls"] > 0
    assert len(outputs) > 10 and set(outputs) == {torch.bfloat16}
    params = list(trainer.model.parameters())
    assert all(p.dtype == torch.float32 for p in params)
    assert all(v.dtype == torch.float32 for s in trainer.optimizer.state.values() for k, v in s.items() if k != "step")
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, params))
    for key in ("pg_loss", "kl", "entropy", "grad_norm", "p0_mean"):
        assert torch.isfinite(torch.tensor(row[key])), key
