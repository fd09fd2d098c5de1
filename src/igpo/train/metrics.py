"""A training step's products (`StepResult`) and the row metrics.jsonl gets for it.

Rows are computed on rank 0 from the whole step (`distributed.gather_step` merges the ranks' `StepResult`s). The
loss terms of `Trainer.update` come in three kinds, which say how they combine over micro-batches and ranks:
`SUMMED_LOSSES` are shares of a globally normalised sum, `SHARED_LOSSES` are identical on every rank, and the rest
are per-token rates (means); `MAX_STATS` (a largest difference) take the largest over the ranks.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from igpo.agent.trajectory import Trajectory
from igpo.algo.rewards import IGGate, answer_em, answer_f1, information_gain
from igpo.config import Config

# Loss terms of `Trainer.update`: each rank's value is its share of a globally normalised sum.
SUMMED_LOSSES = ("pg_loss", "kl", "entropy")
# Identical on every rank (computed from all-reduced or sharded-then-reduced gradients).
SHARED_LOSSES = ("grad_norm",)
# Each rank's largest value of something: the step's is the largest over the ranks.
MAX_STATS = ("belief_engine_max_abs_diff",)


@dataclass
class StepResult:
    """What one step produced, per rollout b and turn t (T: the longest episode's turns, at least 1)."""

    trajs: list[Trajectory]
    rewards: torch.Tensor  # [B, T] turn rewards: IG of each turn before the last (when scored), outcome on the last
    turn_mask: torch.Tensor  # [B, T] bool: the turn exists
    outcomes: list[float]  # [B] outcome reward
    turn_adv: torch.Tensor  # [B, T] turn advantages
    losses: dict[str, float]  # loss terms and rates of the update, and the estimator's own statistics
    seconds: dict[str, float]  # time per phase


def f1(tr: Trajectory, mode: str) -> float:
    """The episode's answer F1 against its golds; 0 without an answer."""
    return answer_f1(tr.answer, tr.example.answers, mode) if tr.answer is not None else 0.0


def ig_summary(trajs: list[Trajectory], kind: str) -> dict[str, float]:
    """The step's raw IG (before clipping or penalties): share of rollouts that have any, mean, std, share > 0."""
    raw = [float(x) for tr in trajs if tr.beliefs is not None for x in information_gain(torch.tensor(tr.beliefs), kind)]
    out = {"ig_rollout_share": sum(tr.beliefs is not None and tr.num_turns > 1 for tr in trajs) / len(trajs)}
    if raw:
        out |= {
            "ig_raw_mean": float(np.mean(raw)),
            "ig_raw_std": float(np.std(raw)),
            "ig_raw_positive_share": float(np.mean([x > 0 for x in raw])),
        }
    return out


def step_metrics(
    step: int, res: StepResult, cfg: Config, lr: float, uses_ig: bool, ig_gate: IGGate, retrieval: dict | None
) -> dict:
    """The metrics.jsonl row of step `step`. `lr`: the learning rate after the step; `uses_ig`: the estimator
    reads IG; `retrieval`: this step's retrieval counts (`PerStepCounts`), None without a tool that keeps any."""
    a = cfg.algorithm
    trajs, outcomes = res.trajs, res.outcomes
    n = len(trajs)
    f1s = [f1(tr, a.answer_norm) for tr in trajs]
    em = [answer_em(tr.answer, tr.example.answers, a.answer_norm) if tr.answer is not None else 0.0 for tr in trajs]
    finish = Counter(tr.finish for tr in trajs)
    calls = [t for tr in trajs for t in tr.turns if t.action.kind == "tool_call" and t.tool_result is not None]
    errors = Counter(t.tool_error for t in calls if t.tool_error)
    by_group = defaultdict(list)
    for tr, o in zip(trajs, outcomes):
        by_group[tr.group].append(o)
    zero_var = sum(1 for v in by_group.values() if max(v) - min(v) < 1e-9) / len(by_group)
    gen_tokens = sum(t.gen_end - t.gen_start for tr in trajs for t in tr.turns)
    all_tokens = sum(len(tr.ids) for tr in trajs)
    m = {
        "step": step,
        "episodes": n,
        "outcome_reward": float(np.mean(outcomes)),
        "f1": float(np.mean(f1s)),
        "em": float(np.mean(em)),
        "turns": float(np.mean([tr.num_turns for tr in trajs])),
        "turns_min": min(tr.num_turns for tr in trajs),
        "turns_max": max(tr.num_turns for tr in trajs),
        "format_error_rate": finish["format_error"] / n,
        "finish": dict(sorted(finish.items())),
        "tool_calls": len(calls),
        "tool_error_rate": sum(errors.values()) / max(len(calls), 1),
        "tool_errors": dict(sorted(errors.items())),
        "zero_variance_groups": zero_var,
        "adv_abs_mean": float(res.turn_adv[res.turn_mask].abs().mean()) if res.turn_mask.any() else 0.0,
        "generated_tokens": gen_tokens,
        "tokens": all_tokens,
        **res.losses,
        "lr": lr,
        "seconds": {k: round(v, 4) for k, v in res.seconds.items()},
    }
    believed = [tr for tr in trajs if tr.beliefs is not None]
    if believed:
        m["p0_mean"] = float(np.mean([np.exp(tr.beliefs[0]) for tr in believed]))
    if uses_ig:
        m.update(ig_summary(trajs, a.ig))
        if ig_gate.threshold is not None:
            m["ig_gate_on"] = ig_gate.opened
            m["ig_gate_ema"] = ig_gate.ema
    m.update(_ig_per_turn(res))
    sec = res.seconds
    m["tokens_per_s"] = {
        "rollout": gen_tokens / sec["rollout"] if sec.get("rollout") else None,
        "update": all_tokens * cfg.trainer.ppo_epochs / sec["update"] if sec.get("update") else None,
    }
    if sec.get("beliefs"):
        m["tokens_per_s"]["beliefs"] = sum(len(tr.ids) for tr in believed) / sec["beliefs"]
    if retrieval is not None:
        m["retrieval"] = retrieval
    return m


def _ig_per_turn(res: StepResult) -> dict[str, float]:
    """Mean and std of the IG reward of turn k (1-based) over the rollouts whose beliefs were scored."""
    out = {}
    for k in range(res.rewards.shape[1] - 1):
        vals = [
            float(res.rewards[b, k])
            for b, tr in enumerate(res.trajs)
            if tr.beliefs is not None and k < tr.num_turns - 1
        ]
        if vals:
            out[f"ig_turn{k + 1}_mean"] = float(np.mean(vals))
            out[f"ig_turn{k + 1}_std"] = float(np.std(vals))
    return out


def update_losses(stats: dict[str, list[float]], n_mini: int) -> dict[str, float]:
    """The update's loss terms from their values per micro-batch: `SUMMED_LOSSES` were aggregated against the
    whole mini-batch, so they add up over its micro-batches (then average over the `n_mini` mini-batches of
    the step); the others are means."""
    out = {k: sum(v) / n_mini for k, v in stats.items() if k in SUMMED_LOSSES}
    out.update({k: float(np.mean(v)) for k, v in stats.items() if k not in SUMMED_LOSSES})
    return out


def merge_losses(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """One step's loss terms from each rank's: `SUMMED_LOSSES` summed, `SHARED_LOSSES` taken from the first
    rank, `MAX_STATS` the largest, per-token rates averaged over the ranks that have them (equally sized shares)."""
    merged = {}
    for key in dict.fromkeys(k for losses in per_rank for k in losses):
        # A rate is missing on a rank whose episodes generated no token (their prompts filled the context).
        vals = [losses[key] for losses in per_rank if key in losses]
        if key in SUMMED_LOSSES:
            merged[key] = sum(vals)
        elif key in SHARED_LOSSES:
            merged[key] = vals[0]
        elif key in MAX_STATS:
            merged[key] = max(vals)
        else:
            merged[key] = sum(vals) / len(vals)
    return merged


class PerStepCounts:
    """Per-step increments of cumulative counters; other entries (a circuit state, a hit rate, a budget left)
    pass through. Counters that only grow (a tool's `stats()`) become per-step counts, so that the rows of a
    resumed run are the rows an uninterrupted run writes, and their sum counts every failure."""

    def __init__(self):
        self.seen: dict[str, float] = {}

    def __call__(self, totals: dict) -> dict:
        out = {}
        for key, value in totals.items():
            counter = not key.endswith(("_rate", "_left"))  # rates and budgets left are states, not counts
            if counter and isinstance(value, (int, float)) and not isinstance(value, bool):
                out[key] = value - self.seen.get(key, 0)
                self.seen[key] = value
            else:
                out[key] = value
        return out
