"""A scored trajectory as a JSON-able record, for `samples.jsonl` and the report's trajectory viewer.

Records carry the numbers the trainer computed (turn rewards, turn advantages), not a recomputation, so the
viewer shows what was trained on. Belief after turn k (0-based) is p_{k+1} = exp(beliefs[k+1]); it exists for
every turn but the last, and so does the IG reward of the turn. Text is the turn's decoded generation, kept
for display only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from igpo.agent.trajectory import Trajectory
from igpo.algo.rewards import answer_f1


def trajectory_record(
    tr: Trajectory,
    rewards: Sequence[float],
    advantages: Sequence[float],
    outcome: float,
    step: int,
    answer_norm: str = "official",
) -> dict:
    """One trajectory; `rewards` and `advantages` are its turn rewards and turn advantages ([T] or longer, padded).

    Turn rewards hold the IG of each turn before the last (when beliefs were scored) and the outcome on the last.
    """
    n = tr.num_turns
    beliefs = tr.beliefs
    turns = []
    for k, t in enumerate(tr.turns):
        scored = beliefs is not None and k < n - 1
        turns.append(
            {
                "kind": t.action.kind,
                "text": t.text,
                "tool": t.action.name,
                "arguments": t.action.arguments,
                "call_error": t.action.error,
                "tool_result": t.tool_result,
                "tool_error": t.tool_error,
                "belief": math.exp(beliefs[k + 1]) if scored else None,
                "ig": float(rewards[k]) if scored else None,
                "advantage": float(advantages[k]),
                "generated_tokens": t.gen_end - t.gen_start,
            }
        )
    answer = tr.answer
    ex = tr.example
    return {
        "step": step,
        "group": tr.group,
        "id": ex.id,
        "source": ex.source,
        "question": ex.question,
        "golds": list(ex.answers),
        "p0": math.exp(beliefs[0]) if beliefs is not None else None,
        "turns": turns,
        "answer": answer,
        "finish": tr.finish,
        "f1": answer_f1(answer, ex.answers, answer_norm) if answer is not None else 0.0,
        "outcome": float(outcome),
    }


def sample_records(
    trajs: Sequence[Trajectory],
    rewards: torch.Tensor,
    advantages: torch.Tensor,
    outcomes: Sequence[float],
    step: int,
    n: int,
    answer_norm: str = "official",
) -> list[dict]:
    """Records of the first `n` trajectories of a step (whole groups when n is a multiple of the group size,
    since a group's rollouts are consecutive). rewards, advantages: [B, T] turn rewards and turn advantages."""
    return [
        trajectory_record(tr, rewards[b].tolist(), advantages[b].tolist(), outcomes[b], step, answer_norm)
        for b, tr in enumerate(trajs[:n])
    ]
