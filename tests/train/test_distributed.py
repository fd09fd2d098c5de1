"""Two gloo processes on CPU train exactly like one process with the same global batch and seeds (DDP, FSDP2).

One spawn runs every multi-process scenario (process start-up dominates the cost); the single-process
references run in the test process. Each scenario writes every rank's whole parameters and rank 0's metrics.
"""

import json
import os
import socket
from contextlib import contextmanager, nullcontext

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import AutoTokenizer

import igpo.train.trainer as trainer_module
from igpo.agent.build import make_chat_format, make_toolbox
from igpo.train.trainer import Trainer
from tests.conftest import make_tiny_llama, write_corpus, write_qa
from tests.scripted import ScriptedGenerator
from tests.train.test_trainer import SCRIPTS, make_cfg

pytestmark = pytest.mark.integration

WORLD = 2
# 4 questions × 3 rollouts: 2 questions a rank, 3 micro-batches a rank (gradient accumulation without sync).
COMMON = ("rollout.questions_per_step=4", "trainer.micro_batch_size=2")
SCENARIOS = {  # name: (overrides, scripted generator?, steps of a first run that is then resumed)
    "ddp": (("trainer.parallel=ddp",), True, None),
    # FSDP, stopped after 2 steps and resumed for the third: equal to 3 uninterrupted single-process steps.
    "fsdp_resumed": (("trainer.parallel=fsdp", "trainer.save_every=1"), True, 2),
    # The real sampler under FSDP: generation and beliefs inside gathered weights, different lengths per rank.
    "fsdp_sampled": (("trainer.parallel=fsdp", "trainer.steps=1", "rollout.max_new_tokens=8"), False, None),
    # Rank 1 alone sees NaN advantages in step 1 (`_nan_on_rank_one`): both ranks must skip that step.
    "ddp_nan": (("trainer.parallel=ddp",), True, None),
}


def _run(root, name, overrides, scripted, first_steps=None):
    """Trains in `root/name`; returns the trainer (resuming from a first run of `first_steps` if given)."""
    tok = AutoTokenizer.from_pretrained(root / "model")
    cfg = make_cfg(
        root,
        root / "model",
        root / "corpus.jsonl",
        root / "qa.jsonl",
        *COMMON,
        *overrides,
        f"trainer.out_dir={root / name}",
    )
    toolbox = make_toolbox(cfg)

    def trainer(c):
        gen = ScriptedGenerator(tok, make_chat_format(c, tok, toolbox), SCRIPTS) if scripted else None
        return Trainer(c, toolbox=toolbox, generator=gen)

    if first_steps is not None:
        trainer(cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"steps": first_steps})})).fit()
    t = trainer(cfg)
    t.fit()
    return t


def _params(trainer) -> dict[str, torch.Tensor]:
    return {n: p.clone() for n, p in trainer.dist.full_parameters(trainer.model)}


@contextmanager
def _nan_on_rank_one(rank: int):
    real = trainer_module.compute_turn_advantages
    calls = []  # one call a step

    def advantages(*args, **kw):
        adv = real(*args, **kw)
        calls.append(None)
        return adv * float("nan") if rank == 1 and len(calls) == 2 else adv

    trainer_module.compute_turn_advantages = advantages
    try:
        yield
    finally:
        trainer_module.compute_turn_advantages = real


def _worker(rank: int, port: int, root):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD)
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        for name, (overrides, scripted, first) in SCENARIOS.items():
            with _nan_on_rank_one(rank) if name == "ddp_nan" else nullcontext():
                trainer = _run(root, name, overrides, scripted, first)
            torch.save(_params(trainer), root / f"{name}.rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("dist")
    make_tiny_llama(len(tokenizer)).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    write_corpus(root / "corpus.jsonl")
    write_qa(root / "qa.jsonl")
    init = {n: p.clone() for n, p in make_tiny_llama(len(tokenizer)).named_parameters()}
    single = _params(_run(root, "single", (), True))
    _run(root, "single_sampled", SCENARIOS["fsdp_sampled"][0][1:], False)
    mp.spawn(_worker, args=(_free_port(), root), nprocs=WORLD, join=True)
    ranks = {name: [torch.load(root / f"{name}.rank{r}.pt") for r in range(WORLD)] for name in SCENARIOS}
    return root, init, single, ranks


def _metrics(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("name", ["ddp", "fsdp_resumed"])
def test_two_processes_equal_one_process(runs, name):
    _, init, single, ranks = runs
    assert _max_diff(single, init) > 1e-3  # the three steps moved the weights
    r0, r1 = ranks[name]
    assert _max_diff(r0, r1) == 0.0  # identical on both ranks
    assert _max_diff(r0, single) <= 1e-5


def test_rank_zero_reports_the_whole_batch(runs):
    root, *_ = runs
    single, ddp = _metrics(root / "single"), _metrics(root / "ddp")
    assert [m["step"] for m in ddp] == [0, 1, 2]  # one writer: no duplicate rows
    for s, d in zip(single, ddp):
        for key in (
            "outcome_reward",
            "f1",
            "tool_calls",
            "tokens",
            "generated_tokens",
            "zero_variance_groups",
            "adv_abs_mean",
            "finish",
            "tool_errors",
            "p0_mean",
        ):
            assert d[key] == pytest.approx(s[key], rel=1e-6), key
        for key in ("pg_loss", "kl", "entropy", "grad_norm"):
            assert d[key] == pytest.approx(s[key], rel=1e-4, abs=1e-7), key


def test_resume_with_the_same_number_of_processes(runs):
    root, *_ = runs
    ckpts = sorted(p.name for p in (root / "fsdp_resumed" / "checkpoints").iterdir())
    assert ckpts == ["step_000002", "step_000003"]  # written once, by rank 0
    assert [m["step"] for m in _metrics(root / "fsdp_resumed")] == [0, 1, 2]


def test_sampling_is_per_episode_under_fsdp(runs):
    """The real sampler: each rank samples exactly the single process's episodes of its questions."""
    root, *_, ranks = runs
    one, two = _metrics(root / "single_sampled"), _metrics(root / "fsdp_sampled")
    for key in ("tokens", "generated_tokens", "finish", "outcome_reward"):
        assert two[0][key] == one[0][key]
    # (A random model only makes format errors: zero advantages, an update driven by rounding noise, which
    # Adam amplifies; so the weights are compared across ranks only.)
    assert _max_diff(ranks["fsdp_sampled"][0], ranks["fsdp_sampled"][1]) == 0.0


def test_a_nan_on_one_rank_skips_the_step_on_every_rank(runs):
    root, _, _, ranks = runs
    rows = _metrics(root / "ddp_nan")
    assert [m["step"] for m in rows] == [0, 1, 2] and "skipped" not in rows[0] and "skipped" not in rows[2]
    assert rows[1]["skipped"]["phase"] == "advantages" and "other rank" in rows[1]["skipped"]["error"]
    assert _max_diff(ranks["ddp_nan"][0], ranks["ddp_nan"][1]) == 0.0  # both skipped the update
    assert _max_diff(ranks["ddp_nan"][0], ranks["ddp"][0]) > 0  # and it was skipped


def test_rank_zero_alone_writes_samples_and_tensorboard(runs):
    root, *_ = runs
    samples = [json.loads(line) for line in (root / "ddp" / "samples.jsonl").read_text().splitlines()]
    single = [json.loads(line) for line in (root / "single" / "samples.jsonl").read_text().splitlines()]
    assert [(r["step"], r["group"], r["id"]) for r in samples] == [(r["step"], r["group"], r["id"]) for r in single]
    assert len(list((root / "ddp").glob("events.out.tfevents.*"))) == 1
