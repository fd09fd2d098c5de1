"""Greedy evaluation over a QA set: F1 / EM / tool calls per question, overall and per `source`, of an agent
(`evaluate`) or of a model (`evaluate_model`, which builds the agent the config describes)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
import torch

from igpo.agent.build import build_agent
from igpo.agent.generators import Generator, SamplingParams
from igpo.agent.rollout import rollout
from igpo.agent.template import ChatFormat
from igpo.agent.tools import Toolbox
from igpo.algo.rewards import answer_em, answer_f1
from igpo.config import Config
from igpo.data.loaders import QAExample


def _summary(rows: list[dict]) -> dict:
    return {
        "n": len(rows),
        "f1": float(np.mean([r["f1"] for r in rows])),
        "em": float(np.mean([r["em"] for r in rows])),
        "format_error_rate": float(np.mean([r["finish"] == "format_error" for r in rows])),
        "answer_rate": float(np.mean([r["answer"] is not None for r in rows])),
        "turns": float(np.mean([r["turns"] for r in rows])),
        "tool_calls": float(np.mean([r["tool_calls"] for r in rows])),  # well-formed calls per question
        # format validity: generations that are a well-formed tool call or a closed answer
        "valid_generation_rate": sum(r["valid_generations"] for r in rows) / max(1, sum(r["turns"] for r in rows)),
        "tool_call_rate": float(np.mean([r["tool_calls"] > 0 for r in rows])),  # questions with a well-formed call
    }


@torch.no_grad()
def evaluate(
    generator: Generator,
    fmt: ChatFormat,
    toolbox: Toolbox,
    examples: Sequence[QAExample],
    cfg: Config,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """{"overall": {...}, "by_source": {source: {...}}, "rows": [per question]} with greedy decoding, in batches
    of `cfg.trainer.eval_batch_size` questions.

    `progress(done, total)` is called after each batch of questions."""
    r = cfg.rollout
    batch_size = cfg.trainer.eval_batch_size
    params = SamplingParams(r.max_new_tokens, temperature=0.0)
    rows = []
    for lo in range(0, len(examples), batch_size):
        chunk = list(examples[lo : lo + batch_size])
        trajs = rollout(
            chunk, list(range(lo, lo + len(chunk))), generator, fmt, toolbox, params, r.max_turns, r.max_context
        )
        for tr in trajs:
            ans = tr.answer
            rows.append(
                {
                    "id": tr.example.id,
                    "source": tr.example.source,
                    "question": tr.example.question,
                    "golds": tr.example.answers,
                    "answer": ans,
                    "finish": tr.finish,
                    "turns": tr.num_turns,
                    "tool_calls": sum(t.action.kind == "tool_call" and t.action.error is None for t in tr.turns),
                    "valid_generations": sum(
                        t.action.kind != "format_error" and t.action.error is None for t in tr.turns
                    ),
                    "f1": answer_f1(ans, tr.example.answers, cfg.algorithm.answer_norm) if ans is not None else 0.0,
                    "em": answer_em(ans, tr.example.answers, cfg.algorithm.answer_norm) if ans is not None else 0.0,
                }
            )
        if progress is not None:
            progress(len(rows), len(examples))
    by_source = defaultdict(list)
    for row in rows:
        by_source[row["source"]].append(row)
    return {
        "overall": _summary(rows),
        "by_source": {s: _summary(v) for s, v in sorted(by_source.items())},
        "rows": rows,
    }


def evaluate_model(
    cfg: Config,
    model,
    tokenizer,
    examples: Sequence[QAExample],
    toolbox: Toolbox | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """`evaluate` of the agent `cfg` describes playing `model` (`igpo.agent.build.build_agent`: the generator of
    `rollout.backend` and `rollout.engine`; `toolbox`: one already built, to share its retriever). The generator
    is closed afterwards: a vLLM engine's memory is free for whatever the process runs next (the SFT's evaluation
    is followed by training, the learning benchmark's by another evaluation)."""
    agent = build_agent(cfg, model, tokenizer, toolbox)
    try:
        return evaluate(agent.generator, agent.fmt, agent.toolbox, examples, cfg, progress)
    finally:
        agent.generator.close()


def tool_calls_by_source(res: dict) -> dict[str, float]:
    """{source: mean well-formed tool calls per question, ..., "overall": ...} of an `evaluate` result."""
    return {**{s: v["tool_calls"] for s, v in res["by_source"].items()}, "overall": res["overall"]["tool_calls"]}


def format_tool_calls(results: dict[str, dict]) -> str:
    """A plain-text table of tool calls per question by source, one column per named `evaluate` result
    ({"before": ..., "after": ...})."""
    cols = {name: tool_calls_by_source(res) for name, res in results.items()}
    sources = sorted({s for c in cols.values() for s in c if s != "overall"}) + ["overall"]
    w = max(len(s) for s in [*sources, "tool calls / question"])
    lines = [f"{'tool calls / question':<{w}}" + "".join(f"  {name:>8}" for name in cols)]
    for s in sources:
        lines.append(f"{s:<{w}}" + "".join(f"  {c[s]:>8.2f}" if s in c else f"  {'-':>8}" for c in cols.values()))
    return "\n".join(lines)
