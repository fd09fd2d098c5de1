"""SFT warm start: demonstrations rendered like rollouts, masks on trained turns only, loss, end to end."""

import json
import random

import pytest
import torch
from typer.testing import CliRunner

from igpo.agent.build import make_chat_format
from igpo.agent.tools import SearchTool, Toolbox
from igpo.cli import app
from igpo.config import Config, SftConfig, load_config
from igpo.data.loaders import QAExample, load_corpus
from igpo.retrieval.bm25 import BM25Retriever
from igpo.train.batching import collate
from igpo.train.sft import TeacherGenerator, plan_demos, play_demos, sample_by_hops, sft_loss, train_sft
from tests.conftest import PLANS


def _examples():
    return [QAExample(i, q, a, "toy", {"bridge": b, "oracle_queries": oq}) for i, q, a, b, oq in PLANS]


@pytest.fixture
def setup(tokenizer, corpus_file):
    toolbox = Toolbox([SearchTool(BM25Retriever(load_corpus(corpus_file)), topk=1, max_words=30)])
    fmt = make_chat_format(Config(), tokenizer, toolbox)
    return fmt, toolbox


def test_plans_cover_every_kind_and_mask_the_failed_first_attempt():
    rng = random.Random(0)
    demos = plan_demos(_examples() * 30, rng, wasted_rate=0.3, malformed_rate=0.3)
    kinds = {d.kind for d in demos}
    assert kinds == {"clean", "wasted_search", "malformed_call"}
    for d in demos:
        n_plan = len(d.example.meta["oracle_queries"]) + 1
        assert d.texts[-1] == f"<answer>{d.example.answers[0]}</answer>"
        if d.kind == "clean":
            assert len(d.texts) == n_plan and all(d.trained)
        else:
            assert len(d.texts) == n_plan + 1 and d.trained == [False] + [True] * n_plan
    assert plan_demos([QAExample("x", "q?", ["a"])], rng, 0, 0) == []  # no plan, no demonstration


def test_played_demos_are_rollouts_with_real_results_and_masks_on_trained_turns(setup, tokenizer):
    fmt, toolbox = setup
    exs = _examples()
    rng = random.Random(1)
    demos = plan_demos(exs[:3], rng, 0, 0) + [d for d in plan_demos(exs[:1] * 20, rng, 0, 1.0)[:1]]
    demos[-1].example = QAExample("q1b", exs[0].question + " Please.", exs[0].answers, "toy", exs[0].meta)
    trajs, masks, counts = play_demos(demos, fmt, toolbox, max_turns=4, max_context=2048, max_new_tokens=64)
    assert counts["kept"] == 4 and counts["by_kind"] == {"clean": 3, "wasted_search": 0, "malformed_call": 1}
    clean = trajs[0]
    assert [t.action.kind for t in clean.turns] == ["tool_call", "tool_call", "answer"]
    assert "France" in clean.turns[0].tool_result and "Paris" in clean.turns[1].tool_result
    assert masks[0] == clean.loss_mask()  # every generation is a target
    broken = trajs[3]
    assert broken.turns[0].tool_error == "malformed_call"
    assert masks[3] != broken.loss_mask()
    first = broken.turns[0]
    assert not any(masks[3][first.gen_start : first.gen_end])  # the broken call is context only
    assert all(masks[3][t.gen_start : t.gen_end] for t in broken.turns[1:])
    # what was trained is exactly the teacher's text, tokenized as untrusted text, plus the end-of-turn token
    gen = clean.ids[clean.turns[2].gen_start : clean.turns[2].gen_end]
    assert gen == fmt.encode_text("<answer>Paris</answer>") + [fmt.eot_ids[0]]


def test_ungrounded_and_too_long_demos_are_dropped(setup):
    fmt, toolbox = setup
    demos = plan_demos(_examples(), random.Random(0), 0, 0)
    _, _, counts = play_demos(demos, fmt, toolbox, max_turns=4, max_context=2048, max_new_tokens=64)
    assert counts["kept"] == 3 and counts["not_grounded"] == 1
    _, _, counts = play_demos(demos, fmt, toolbox, max_turns=2, max_context=2048, max_new_tokens=64)
    assert counts["too_long"] == 3 and counts["kept"] == 1  # only the single-hop plan fits two turns


def test_teacher_refuses_duplicate_questions(setup):
    fmt, _ = setup
    demos = plan_demos(_examples()[:1] * 2, random.Random(0), 0, 0)
    with pytest.raises(ValueError, match="distinct"):
        TeacherGenerator(fmt, demos)


def test_sft_loss_is_the_mean_nll_of_trained_tokens_only(setup, tiny_model, tokenizer):
    fmt, toolbox = setup
    demos = plan_demos(_examples()[:2], random.Random(0), 0, 0)
    trajs, masks, _ = play_demos(demos, fmt, toolbox, 4, 2048, 64)
    batch = collate(trajs, tokenizer.pad_token_id, masks)
    n = float(batch["loss_mask"].sum())
    got = sft_loss(tiny_model, batch, n)
    logits = tiny_model(input_ids=batch["ids"], attention_mask=batch["attn"]).logits.float()
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["ids"][:, 1:, None]).squeeze(-1)
    want = -(lp * batch["loss_mask"][:, 1:]).sum() / n
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_training_lowers_the_loss(setup, tiny_model, tokenizer):
    fmt, toolbox = setup
    demos = plan_demos(_examples()[:3], random.Random(0), 0, 0)
    trajs, masks, _ = play_demos(demos, fmt, toolbox, 4, 2048, 64)
    hist = train_sft(
        tiny_model,
        tokenizer.pad_token_id,
        trajs,
        masks,
        SftConfig(epochs=16, lr=1e-2, batch_size=3, micro_batch_size=2),
    )
    assert len(hist) == 16 and hist[-1]["loss"] < 0.5 * hist[0]["loss"]
    assert hist[0]["trained_tokens"] == sum(sum(m) for m in masks)


@pytest.mark.integration
def test_igpo_sft_command_writes_model_and_heldout_format_report(tmp_path, tiny_model_dir, corpus_file, plans_file):
    qa = plans_file
    out = tmp_path / "sft"
    args = [
        f"model.path={tiny_model_dir}",
        f"retrieval.corpus={corpus_file}",
        "retrieval.topk=1",
        f"data.train={qa}",
        f"data.eval={qa}",
        f"sft.out_dir={out}",
        "sft.eval_size=2",
        "sft.epochs=2",
        "sft.batch_size=2",
        "rollout.max_new_tokens=40",
        "rollout.max_turns=3",
    ]
    res = CliRunner().invoke(app, ["sft", *args])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "sft.json").read_text())
    assert summary["demonstrations"]["kept"] == 3 and len(summary["history"]) == 4
    assert summary["heldout"]["n"] == 2 and 0 <= summary["heldout"]["valid_generation_rate"] <= 1
    cfg = load_config(None, [f"model.path={out / 'model'}"])
    from igpo.policy.loading import load_policy

    model, tok = load_policy(cfg.model)  # the warm-started model loads like any HF checkpoint
    assert tok.chat_template and model.config.vocab_size == len(tok)
    res = CliRunner().invoke(app, ["sft", *args[:-1], "rollout.max_turns=1"])
    assert res.exit_code == 2 and "demonstrations fit" in res.output


# ---- the number of searches follows the question ------------------------------------------------------------


def _hop_examples():
    """Toy plans of one, two and three searches over the shared toy corpus (topk 1)."""
    return [
        QAExample(
            "h1", "In which city is Big Ben?", ["London"], "toy", {"bridge": None, "oracle_queries": ["Big Ben"]}
        ),
        QAExample(
            "h2",
            "What is the capital of the country where the Colosseum is?",
            ["Rome"],
            "toy",
            {"bridge": "Italy", "oracle_queries": ["Colosseum", "Italy capital"]},
        ),
        # Eiffel Tower -> France; France's passage names Paris; the third search reads Italy's capital
        QAExample(
            "h3",
            "Three links?",
            ["Rome"],
            "toy",
            {
                "bridge": "France",
                "bridges": ["France", "Paris"],
                "oracle_queries": ["Eiffel Tower", "France capital", "Italy capital"],
            },
        ),
    ]


def test_a_plan_has_one_search_per_hop_and_failed_attempts_fit_max_turns():
    exs = _hop_examples()
    clean = plan_demos(exs, random.Random(0), 0, 0)
    assert [sum(t.startswith("<tool_call>") for t in d.texts) for d in clean] == [1, 2, 3]
    # with a failed first attempt always asked for, only the plans that leave room for it within 4 turns get one
    demos = plan_demos(exs, random.Random(0), 1.0, 0, max_turns=4)
    assert [d.kind for d in demos] == ["wasted_search", "wasted_search", "clean"]
    assert [len(d.texts) for d in demos] == [3, 4, 4]
    demos = plan_demos(exs, random.Random(0), 0, 1.0, max_turns=5)
    assert [d.kind for d in demos] == ["malformed_call"] * 3


def test_a_plan_whose_bridges_do_not_match_its_searches_is_refused():
    ex = QAExample("bad-7", "q?", ["a"], "toy", {"bridges": ["X"], "oracle_queries": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="bad-7.*3 oracle_queries"):
        plan_demos([ex], random.Random(0), 0, 0)


def test_every_hop_must_find_its_bridge(setup):
    fmt, toolbox = setup
    good = _hop_examples()[2]
    bad = QAExample(
        "h3b", "Three links, wrong bridge?", ["Rome"], "toy", {**good.meta, "bridges": ["France", "Italy"]}
    )  # France's passage does not name Italy
    _, _, counts = play_demos(plan_demos([good, bad], random.Random(0), 0, 0), fmt, toolbox, 4, 4096, 64)
    assert counts["kept"] == 1 and counts["not_grounded"] == 1


def test_sample_by_hops_gives_each_count_an_equal_share():
    pool = [
        QAExample(f"{k}-{i}", f"q{k}-{i}", ["a"], "toy", {"oracle_queries": ["x"] * k})
        for k, n in ((1, 10), (2, 100), (3, 50))
        for i in range(n)
    ]
    chosen = sample_by_hops(pool, 60, random.Random(0))
    by = {k: sum(len(ex.meta["oracle_queries"]) == k for ex in chosen) for k in (1, 2, 3)}
    assert by == {1: 10, 2: 25, 3: 25} and len({ex.id for ex in chosen}) == 60
    assert len(sample_by_hops(pool, 1000, random.Random(0))) == len(pool)


def test_each_vitalfactbook_type_is_demonstrated_with_its_number_of_searches(tmp_path, tokenizer):
    """Version 2 of the builder on its fixture wheels: played through the rollout loop with the real retriever,
    a clean demonstration of a type makes one search per hop (1, 2 or 3), a wasted-search one a search more, and
    a recovered malformed call its plan's searches after the broken one."""
    from igpo.data import vitalfactbook as vfb
    from igpo.data.loaders import load_qa
    from tests.data.conftest import ARTICLES, CHAIN_ARTICLES, CHAIN_COUNTRIES, COUNTRIES, write_fixture_wheels

    wheels = write_fixture_wheels(
        tmp_path / "wheels", countries={**COUNTRIES, **CHAIN_COUNTRIES}, articles={**ARTICLES, **CHAIN_ARTICLES}
    )
    vfb.build(tmp_path / "vfb", seed=3, cache_dir=wheels, version=2)
    rows = [ex for s in vfb.SPLITS for ex in load_qa(tmp_path / "vfb" / f"{s}.jsonl")]
    toolbox = Toolbox([SearchTool(BM25Retriever(load_corpus(tmp_path / "vfb" / "corpus.jsonl")), topk=3, max_words=40)])
    fmt = make_chat_format(Config(), tokenizer, toolbox)
    hops = {t: 1 if t == vfb.SINGLE_HOP else 3 if t in vfb.THREE_HOP_TYPES else 2 for t in vfb.types(2)}
    calls: dict[tuple[str, str], set[int]] = {}
    for kind, wasted, malformed in (("clean", 0, 0), ("wasted_search", 1.0, 0), ("malformed_call", 0, 1.0)):
        demos = plan_demos(rows, random.Random(0), wasted, malformed, max_turns=5)
        assert {d.kind for d in demos} == {kind}
        trajs, _, counts = play_demos(demos, fmt, toolbox, 5, 8192, 400, grounded_only=False)
        assert counts["kept"] == len(demos)
        for d, tr in zip(demos, trajs):
            good = sum(t.action.kind == "tool_call" and t.action.error is None for t in tr.turns)
            calls.setdefault((d.example.meta["type"], kind), set()).add(good)
    assert {t for t, _ in calls} == set(vfb.types(2))
    for (t, kind), seen in calls.items():
        assert seen == {hops[t] + (kind == "wasted_search")}, (t, kind, seen)


def test_the_heldout_evaluation_plays_the_warm_started_weights_with_the_configured_backend(
    tmp_path, tiny_model_dir, corpus_file, plans_file, tokenizer, monkeypatch
):
    # rollout.backend=vllm: the engine, built from model.path (the base), is handed the trained weights and
    # evaluates with them; it is closed before anything else runs (the demo trains next, with an engine of its own).
    from transformers import AutoModelForCausalLM

    from igpo.agent.build import make_toolbox
    from igpo.policy.vllm_engine import VLLMGenerator
    from igpo.train.sft import run_sft
    from tests.policy.test_vllm_engine import FakeEngine
    from tests.scripted import ScriptedGenerator

    built = []

    def from_config(cls, cfg, distributed):
        fmt = make_chat_format(cfg, tokenizer, make_toolbox(cfg))
        answers = ScriptedGenerator(tokenizer, fmt, {q: [["<answer>Paris</answer>"]] for _, q, *_ in PLANS})
        built.append((cfg, FakeEngine(AutoModelForCausalLM.from_pretrained(cfg.model.path), answers)))
        return cls(built[-1][1])

    monkeypatch.setattr(VLLMGenerator, "from_config", classmethod(from_config))
    overrides = [
        f"model.path={tiny_model_dir}",
        f"retrieval.corpus={corpus_file}",
        "retrieval.topk=1",
        f"data.train={plans_file}",
        f"data.eval={plans_file}",
        f"sft.out_dir={tmp_path / 'sft'}",
        "sft.eval_size=2",
        "sft.batch_size=2",
        "sft.lr=1e-2",
        "rollout.max_new_tokens=40",
        "rollout.max_turns=3",
        "rollout.backend=vllm",
    ]
    res = run_sft(load_config(None, overrides))
    [(cfg, engine)] = built
    assert cfg.model.path == str(tiny_model_dir) and cfg.rollout.backend == "vllm"
    held = dict(engine.model.named_parameters())
    trained = AutoModelForCausalLM.from_pretrained(res["model_dir"]).named_parameters()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters()
    assert all(torch.equal(held[name], p) for name, p in trained)  # the saved warm start's weights
    assert not all(torch.equal(held[name], p) for name, p in base)
    assert res["heldout"]["n"] == 2 and res["heldout"]["answer_rate"] == 1.0  # the engine played the questions
    assert engine.closed
