"""The batched multi-turn rollout loop.

Each turn generates for all still-active episodes at once, parses each generation, runs all tool calls of
the turn as one batch per tool, and appends the tool messages as ids. Ids are only ever appended: what the
policy sampled is kept exactly, and the tool result ids are those of `ChatFormat.tool_message_ids`.

Given per-episode seeds, each episode samples from its own random stream (seeded by the episode and turn):
what it samples does not depend on which other episodes share its batch, its process or its rank. What samples
is a `Generator` (`igpo.agent.generators`).
"""

from __future__ import annotations

from collections.abc import Sequence

from igpo.agent.generators import Generator, SamplingParams
from igpo.agent.parsing import Action, parse_generation
from igpo.agent.template import ChatFormat
from igpo.agent.tools import Toolbox
from igpo.agent.trajectory import Trajectory, Turn
from igpo.data.loaders import QAExample
from igpo.seeding import turn_seed


def rollout(
    examples: Sequence[QAExample],
    groups: Sequence[int],
    generator: Generator,
    fmt: ChatFormat,
    toolbox: Toolbox,
    params: SamplingParams,
    max_turns: int,
    max_context: int,
    seeds: Sequence[int] | None = None,
    release: bool = True,
) -> list[Trajectory]:
    """One episode per example (repeat an example G times for a group). Never raises on model output.

    `seeds`: one per episode; turn t of episode i samples with seed `turn_seed(seeds[i], t)`.
    The generator's caches are released when the rollout starts (they may hold older weights) and when it ends;
    `release=False` keeps this rollout's until the caller calls `generator.release()` (the trainer scores the
    beliefs against them first).
    """
    generator.release()
    try:
        return _rollout(examples, groups, generator, fmt, toolbox, params, max_turns, max_context, seeds)
    finally:
        if release:
            generator.release()


def _rollout(examples, groups, generator, fmt, toolbox, params, max_turns, max_context, seeds) -> list[Trajectory]:
    trajs = []
    for ex, g in zip(examples, groups):
        pre, question, post = fmt.prompt_parts(ex.question)
        ids = pre + question + post
        trajs.append(
            Trajectory(
                example=ex, group=g, ids=ids, prompt_len=len(ids), question_span=(len(pre), len(pre) + len(question))
            )
        )
    tok = fmt.tokenizer
    active = []
    for i, tr in enumerate(trajs):
        if len(tr.ids) >= max_context:
            tr.finish = "max_context"
        else:
            active.append(i)
    for turn_no in range(max_turns):
        if not active:
            break
        budgets = {i: min(params.max_new_tokens, max_context - len(trajs[i].ids)) for i in active}
        turn_seeds = None if seeds is None else [turn_seed(seeds[i], turn_no) for i in active]
        p = SamplingParams(max(budgets.values()), params.temperature, params.top_p, turn_seeds)
        outputs = generator.generate([trajs[i].ids for i in active], p, fmt.stop_ids)
        calls: list[tuple[int, Action]] = []
        for i, gen in zip(active, outputs):
            tr = trajs[i]
            logprobs = gen.logprobs if generator.records_logprobs else None
            gen = gen[: budgets[i]]
            start = len(tr.ids)
            tr.ids.extend(gen)
            text = tok.decode(gen, skip_special_tokens=True)
            action = parse_generation(text)
            turn = Turn(
                gen_start=start,
                gen_end=len(tr.ids),
                end=len(tr.ids),
                text=text,
                action=action,
                logprobs=None if logprobs is None else logprobs[: len(gen)],
            )
            tr.turns.append(turn)
            if action.kind == "tool_call" and turn_no + 1 < max_turns:
                calls.append((i, action))
                continue
            close = fmt.close_generation(gen)
            room = max_context - len(tr.ids)
            tr.ids.extend(close[: max(room, 0)])
            turn.end = len(tr.ids)
            tr.finish = {"answer": "answer", "format_error": "format_error"}.get(action.kind, "max_turns")
        results = toolbox.execute([a for _, a in calls]) if calls else []
        still = []
        for (i, _), res in zip(calls, results):
            tr, turn = trajs[i], trajs[i].turns[-1]
            turn.tool_result, turn.tool_error = res.text, res.error
            close = fmt.close_generation(tr.ids[turn.gen_start : turn.gen_end])
            obs = close + fmt.tool_message_ids(res.text)
            if len(tr.ids) + len(obs) >= max_context:
                # No room for the result and a next turn: the episode ends without an answer.
                tr.finish = "max_context"
                continue
            result_start = len(tr.ids) + len(close) + len(fmt.tool_pre_ids)
            tr.ids.extend(obs)
            turn.end = len(tr.ids)
            turn.result_span = (result_start, turn.end - len(fmt.tool_post_ids))
            still.append(i)
        active = still
    return trajs
