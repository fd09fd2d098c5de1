"""Greedy evaluation: batches of `trainer.eval_batch_size` questions, the same generations whatever the batch size."""

from igpo.agent.build import make_chat_format, make_generator, make_toolbox
from igpo.agent.generators import Generator
from igpo.config import Config
from igpo.data.loaders import load_qa
from igpo.eval.evaluate import evaluate


class Recording(Generator):
    """Passes calls to a generator and keeps, per question context, the ids it generated."""

    def __init__(self, inner):
        self.inner, self.outputs, self.batch_sizes = inner, {}, []

    def generate(self, contexts, params, stop_ids):
        out = self.inner.generate(contexts, params, stop_ids)
        self.batch_sizes.append(len(contexts))
        self.outputs.update({tuple(c): tuple(o) for c, o in zip(contexts, out)})
        return out


def test_batch_size_changes_batches_not_generations(tokenizer, tiny_model, corpus_file, qa_file):
    examples = load_qa(qa_file)
    results, gens = {}, {}
    for bs in (1, 3):
        cfg = Config.model_validate(
            {
                "retrieval": {"corpus": str(corpus_file), "topk": 1},
                "rollout": {"max_new_tokens": 12, "max_turns": 3},
                "trainer": {"eval_batch_size": bs},
            }
        )
        toolbox = make_toolbox(cfg)
        gens[bs] = Recording(make_generator(cfg, tiny_model, tokenizer.pad_token_id))
        results[bs] = evaluate(gens[bs], make_chat_format(cfg, tokenizer, toolbox), toolbox, examples, cfg)
    assert max(gens[1].batch_sizes) == 1 and max(gens[3].batch_sizes) == 3
    # left-padded in a batch of 3 or alone, each question's greedy ids are the same
    assert gens[1].outputs == gens[3].outputs and len(gens[1].outputs) >= 4
    assert all(len(o) > 1 for o in gens[1].outputs.values())
    assert results[1]["rows"] == results[3]["rows"] and results[1]["overall"]["n"] == 4


def test_tool_calls_per_question_by_source(tokenizer, corpus_file, qa_file):
    """Well-formed calls per question, per source and overall; a broken call is not one."""
    from igpo.eval.evaluate import format_tool_calls, tool_calls_by_source
    from tests.conftest import QUESTIONS
    from tests.scripted import ScriptedGenerator

    call = '<tool_call>{{"name": "search", "arguments": {{"query": "{}"}}}}</tool_call>'
    # write_qa: q1 and q3 are source "toy2", q2 and q4 "toy"
    scripts = {
        QUESTIONS[0][1]: [[call.format("Eiffel Tower")], [call.format("France capital")], ["<answer>Paris</answer>"]],
        QUESTIONS[1][1]: [["<answer>Rome</answer>"]],
        QUESTIONS[2][1]: [[call.format("Big Ben")], ["<answer>London</answer>"]],
        QUESTIONS[3][1]: [['<tool_call>{"name": "search"'], ["<answer>Rome</answer>"]],
    }
    cfg = Config.model_validate(
        {"retrieval": {"corpus": str(corpus_file), "topk": 1}, "rollout": {"max_new_tokens": 64, "max_turns": 4}}
    )
    toolbox = make_toolbox(cfg)
    fmt = make_chat_format(cfg, tokenizer, toolbox)
    res = evaluate(ScriptedGenerator(tokenizer, fmt, scripts), fmt, toolbox, load_qa(qa_file), cfg)
    assert [r["tool_calls"] for r in res["rows"]] == [2, 0, 1, 0]
    assert tool_calls_by_source(res) == {"toy": 0.0, "toy2": 1.5, "overall": 0.75}
    assert res["by_source"]["toy2"]["tool_calls"] == 1.5 and res["overall"]["tool_calls"] == 0.75
    after = {**res, "by_source": {**res["by_source"], "toy": {**res["by_source"]["toy"], "tool_calls": 1.0}}}
    table = format_tool_calls({"before": res, "after": after}).splitlines()
    assert table[0].split() == ["tool", "calls", "/", "question", "before", "after"]
    assert table[1:] == [
        f"{'toy':<21}      0.00      1.00",
        f"{'toy2':<21}      1.50      1.50",
        f"{'overall':<21}      0.75      0.75",
    ]
