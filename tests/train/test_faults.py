"""Faults during training: NaN/inf (a step skipped, the run stopped after K in a row), a planted probe leak, and a
retrieval server failing a fifth of its requests."""

import asyncio
import json
import random
from collections import Counter

import pytest
import torch
from fastapi.responses import PlainTextResponse, Response

import igpo.train.trainer as trainer_module
from igpo.agent.build import make_chat_format, make_toolbox
from igpo.agent.tools import SearchTool, Toolbox, ToolResult
from igpo.data.loaders import Passage
from igpo.retrieval.bm25 import BM25Retriever
from igpo.retrieval.server import create_app
from igpo.train import checkpoint as ckpt
from igpo.train.faults import TooManyBadSteps
from igpo.train.invariants import InvariantError
from tests.conftest import FACTS, QUESTIONS
from tests.retrieval.conftest import ThreadServer
from tests.scripted import ScriptedGenerator
from tests.train.test_trainer import SCRIPTS, SEARCH, make_cfg

pytestmark = pytest.mark.integration


def make_trainer(cfg, tokenizer, toolbox=None):
    toolbox = toolbox or make_toolbox(cfg)
    fmt = make_chat_format(cfg, tokenizer, toolbox)
    return trainer_module.Trainer(cfg, toolbox=toolbox, generator=ScriptedGenerator(tokenizer, fmt, SCRIPTS, seed=None))


def rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_nan_step_is_skipped_and_logged(tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer, monkeypatch):
    real = trainer_module.compute_turn_advantages
    calls = []  # one call a step

    def nan_at_step_1(*args, **kw):
        adv = real(*args, **kw)
        calls.append(None)
        return adv * float("nan") if len(calls) == 2 else adv

    monkeypatch.setattr(trainer_module, "compute_turn_advantages", nan_at_step_1)
    trainer = make_trainer(make_cfg(tmp_path, tiny_model_dir, corpus_file, qa_file), tokenizer)
    weights = []
    trainer.fit(progress=lambda m: weights.append([p.detach().clone() for p in trainer.model.parameters()]))

    r = rows(tmp_path / "run")
    assert [x["step"] for x in r] == [0, 1, 2]
    assert r[1]["skipped"]["phase"] == "advantages" and "non-finite advantages" in r[1]["skipped"]["error"]
    assert r[1]["bad_steps_in_a_row"] == 1 and "skipped" not in r[0] and "skipped" not in r[2]
    assert all(torch.equal(a, b) for a, b in zip(weights[0], weights[1]))  # no update in the skipped step
    assert not all(torch.equal(a, b) for a, b in zip(weights[1], weights[2]))
    assert trainer.scheduler.last_epoch == 2 and trainer.bad_steps.in_a_row == 0


@pytest.mark.parametrize("estimator, phase", [("igpo", "beliefs"), ("grpo", "loss")])
def test_nan_weights_stop_the_run_naming_the_phase(
    tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer, estimator, phase
):
    cfg = make_cfg(
        tmp_path,
        tiny_model_dir,
        corpus_file,
        qa_file,
        f"algorithm.estimator={estimator}",
        "trainer.max_bad_steps=2",
        "trainer.steps=5",
    )
    trainer = make_trainer(cfg, tokenizer)
    with torch.no_grad():
        trainer.model.model.norm.weight[0] = float("nan")  # every logit of the policy is NaN from here on
    with pytest.raises(TooManyBadSteps, match=rf"2 bad steps in a row .*step 1: non-finite .* in phase '{phase}'"):
        trainer.fit()
    r = rows(tmp_path / "run")
    assert [(x["step"], x["skipped"]["phase"], x["bad_steps_in_a_row"]) for x in r] == [(0, phase, 1), (1, phase, 2)]
    assert not (tmp_path / "run" / "checkpoints").exists()


def probe_scripts(probe: str) -> dict[str, list[list[str]]]:
    """Every episode searches, then writes the probe's words before its answer."""
    return {q: [[SEARCH.format("Eiffel Tower")], [f"{probe}{answers[0]}</answer>"]] for _, q, answers in QUESTIONS}


def probe_trainer(cfg, tokenizer):
    """A policy and a search tool that both write the probe text (the belief probe + every gold answer)."""
    probes = "\n".join(cfg.algorithm.belief_probe + a for _, _, answers in QUESTIONS for a in answers)

    class Leaky(SearchTool):
        def run_batch(self, arguments):
            return [ToolResult(probes) for _ in arguments]

    toolbox = Toolbox([Leaky(BM25Retriever([Passage(*f) for f in FACTS]))])
    fmt = make_chat_format(cfg, tokenizer, toolbox)
    gen = ScriptedGenerator(tokenizer, fmt, probe_scripts(cfg.algorithm.belief_probe))
    return trainer_module.Trainer(cfg, toolbox=toolbox, generator=gen)


@pytest.mark.parametrize("estimator", ["igpo", "grpo"])
def test_a_policy_and_a_tool_that_write_the_probe_do_not_stop_the_run(
    tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer, estimator
):
    cfg = make_cfg(
        tmp_path, tiny_model_dir, corpus_file, qa_file, f"algorithm.estimator={estimator}", "trainer.steps=2"
    )
    probe_trainer(cfg, tokenizer).fit()
    r = rows(tmp_path / "run")
    assert [x["step"] for x in r] == [0, 1] and all(x["outcome_reward"] == 1.0 and x["tool_calls"] == 6 for x in r)


def test_a_probe_left_in_the_template_stops_the_run(tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer):
    cfg = make_cfg(tmp_path, tiny_model_dir, corpus_file, qa_file)
    trainer = probe_trainer(cfg, tokenizer)
    fmt = trainer.fmt  # a stale probe buffer: every probe of the data set in the ids written after a tool result
    stale = [i for _, _, answers in QUESTIONS for a in answers for i in fmt.belief_probe_ids + fmt.answer_ids(a)]
    fmt.tool_post_ids = stale + fmt.tool_post_ids
    with pytest.raises(InvariantError, match="the belief probe .*appears in the policy context"):
        trainer.fit()
    assert rows(tmp_path / "run") == []  # stopped in step 0, before its row


class FaultyServer(ThreadServer):
    """The real retrieval server behind a middleware that fails a seeded share of /retrieve requests: a hang
    past the client's timeout, a 500, or a 200 whose body is not JSON."""

    def __init__(self, rate: float, seed: int, hang_s: float):
        app = create_app(BM25Retriever([Passage(*f) for f in FACTS]), index_info={"index_id": "facts-v1"})
        rng, self.injected, self.requests = random.Random(seed), Counter(), 0

        @app.middleware("http")
        async def inject(request, call_next):
            if request.url.path != "/retrieve":
                return await call_next(request)
            self.requests += 1
            if rng.random() >= rate:
                return await call_next(request)
            kind = rng.choice(["timeout", "http_500", "garbage"])
            self.injected[kind] += 1
            if kind == "timeout":
                await asyncio.sleep(hang_s)
                return PlainTextResponse("too late", status_code=503)
            if kind == "http_500":
                return PlainTextResponse("injected failure", status_code=500)
            return Response(b"<html>\x00 not json", media_type="application/json")

        super().__init__(app)


def test_twenty_steps_against_a_server_failing_a_fifth_of_requests(
    tmp_path, tiny_model_dir, corpus_file, qa_file, tokenizer
):
    server = FaultyServer(rate=0.2, seed=3, hang_s=1.2)
    try:
        cfg = make_cfg(
            tmp_path,
            tiny_model_dir,
            corpus_file,
            qa_file,
            "retrieval.kind=http",
            f"retrieval.url={server.url}",
            "retrieval.timeout_s=0.5",
            "retrieval.retries=0",
            "retrieval.cache=false",
            "trainer.steps=20",
            "trainer.save_every=10",
        )
        trainer = make_trainer(cfg, tokenizer)
        trainer.fit()
    finally:
        server.stop()

    r = rows(tmp_path / "run")
    assert [x["step"] for x in r] == list(range(20)) and not any("skipped" in x for x in r)
    batch = cfg.rollout.questions_per_step * cfg.rollout.group_size
    assert all(x["episodes"] == batch and sum(x["finish"].values()) == batch for x in r)  # no episode lost
    total = Counter()
    for x in r:
        total.update({k: v for k, v in x["retrieval"].items() if k != "circuit"})
    injected = server.injected
    assert sum(injected.values()) >= 5 and all(injected.values())
    # Every injected fault is counted once, by kind; with no retries each is a failed search, and each failed
    # search is an error observation for every call in it.
    assert (total["timeouts"], total["http_errors"], total["bad_responses"]) == (
        injected["timeout"],
        injected["http_500"],
        injected["garbage"],
    )
    assert total["requests"] == server.requests and total["failures"] == sum(injected.values())
    tool_failed = sum(x["tool_errors"].get("tool_failed", 0) for x in r)
    assert tool_failed >= total["failures"]
    state = torch.load(ckpt.checkpoint_dirs(tmp_path / "run")[-1] / ckpt.STATE, weights_only=False)
    assert state["retrieval"] == {"url": server.url, "index_id": "facts-v1", "cache_dir": None}
    print(
        f"\nrequests {server.requests}, faults injected {dict(injected)}, counted {dict(total)}, "
        f"error observations {tool_failed}"
    )
