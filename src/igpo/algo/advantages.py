"""Advantage estimators behind one signature (modelled on verl's `core_algos.py`).

Every estimator maps turn rewards [B, T] to turn advantages [B, T]:
- `turn_rewards[b, t]`: the IG reward of turn t for t before the last valid turn, the outcome reward on the
  last valid turn (the layout `igpo.train` builds; valid turns are left-aligned).
- `turn_mask[b, t]`: True for valid turns. Turn boundaries come from this mask, never from where rewards are
  non-zero (a reward of exactly 0 is a real reward).
- `group_ids`: length B; the rollouts of one question share an id.
Advantages are 0 where `turn_mask` is False. `turn_to_token_advantages` spreads them over generated tokens.

IGPO (paper): z-normalise the rewards of all turns of all rollouts of a question together (`norm="joint"`),
then sum backwards over turns: A_T = r̃_T, A_t = r̃_t + γ·A_{t+1}.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

EPS = 1e-6


# ---------------------------------------------------------------- building blocks
def last_turn_mask(turn_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] True at the last valid turn of each rollout (none for a rollout with no valid turn)."""
    n = turn_mask.sum(1)
    idx = (n - 1).clamp(min=0)
    last = torch.zeros_like(turn_mask)
    last[torch.arange(len(n)), idx] = n > 0
    return last


def group_normalize(values: torch.Tensor, mask: torch.Tensor, group_ids: Sequence, std: bool = True) -> torch.Tensor:
    """Z-score the masked entries of `values` [B, T] within each group, pooling every masked entry of the
    group's rollouts: (v - mean) / (std + eps), population std, std := 1 when the pool has one value.
    Unmasked entries are 0."""
    out = torch.zeros_like(values, dtype=torch.float32)
    for g in dict.fromkeys(group_ids):
        rows = torch.tensor([gid == g for gid in group_ids])
        sel = mask & rows[:, None]
        pool = values[sel].float()
        if pool.numel() == 0:
            continue
        centred = pool - pool.mean()
        if std:
            s = pool.std(unbiased=False) if pool.numel() > 1 else torch.tensor(1.0)
            centred = centred / (s + EPS)
        out[sel] = centred
    return out


def discounted_returns(rewards: torch.Tensor, turn_mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """[B, T] A_t = r_t + γ·A_{t+1} over valid turns (backwards), 0 on invalid turns."""
    out = torch.zeros_like(rewards, dtype=torch.float32)
    running = torch.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        running = torch.where(turn_mask[:, t], rewards[:, t] + gamma * running, torch.zeros_like(running))
        out[:, t] = running
    return out


def _outcomes(turn_rewards: torch.Tensor, turn_mask: torch.Tensor) -> torch.Tensor:
    """[B] the outcome reward of each rollout (0 for a rollout with no valid turn)."""
    return (turn_rewards * last_turn_mask(turn_mask)).sum(1)


def _broadcast(per_rollout: torch.Tensor, turn_mask: torch.Tensor) -> torch.Tensor:
    return per_rollout[:, None] * turn_mask


# ---------------------------------------------------------------- estimators
def _igpo(turn_rewards, turn_mask, group_ids, gamma, norm, std, ig_mask=None, outcome_weight=1.0, ig_weight=1.0,
          use_outcome=True, use_ig=True, **_):
    last = last_turn_mask(turn_mask)
    ig_mask = (turn_mask & ~last) if ig_mask is None else ig_mask
    rewards = turn_rewards.float() * torch.where(last, outcome_weight, ig_weight)
    out_mask = last if use_outcome else torch.zeros_like(last)
    ig_mask = ig_mask if use_ig else torch.zeros_like(ig_mask)
    if norm == "joint":
        normed = group_normalize(rewards, out_mask | ig_mask, group_ids, std)
    elif norm == "separate":
        normed = group_normalize(rewards, out_mask, group_ids, std) + group_normalize(rewards, ig_mask, group_ids, std)
    else:
        raise ValueError(f"unknown norm {norm!r} (joint | separate)")
    return discounted_returns(normed, turn_mask, gamma)


def igpo(turn_rewards, turn_mask, group_ids, gamma=1.0, norm="joint", std=True, **opts):
    """Outcome + IG, normalised per group (jointly or separately), then discounted backwards. `outcome_weight`
    and `ig_weight` (default 1) scale the two kinds of reward before normalisation."""
    return _igpo(turn_rewards, turn_mask, group_ids, gamma, norm, std, **opts)


def igpo_ig_only(turn_rewards, turn_mask, group_ids, gamma=1.0, norm="joint", std=True, **opts):
    """Ablation: IG rewards only (the outcome turn contributes 0 before discounting)."""
    return _igpo(turn_rewards, turn_mask, group_ids, gamma, norm, std, use_outcome=False, **opts)


def igpo_outcome_only(turn_rewards, turn_mask, group_ids, gamma=1.0, norm="joint", std=True, **opts):
    """Ablation: outcome only, normalised per group, discounted back over the turns. With γ = 1 every turn
    carries the normalised outcome, which is exactly `grpo`; only γ < 1 sets the two apart."""
    return _igpo(turn_rewards, turn_mask, group_ids, gamma, norm, std, use_ig=False, **opts)


def gated(turn_rewards, turn_mask, group_ids, gamma=1.0, norm="joint", std=True, gate_threshold=0.5, **opts):
    """Gated Reward Accumulation (arXiv 2508.10548): a rollout's IG rewards count only when its outcome
    reaches `gate_threshold`; otherwise they leave the pool (advantage from the outcome alone)."""
    passed = _outcomes(turn_rewards, turn_mask) >= gate_threshold
    ig_mask = turn_mask & ~last_turn_mask(turn_mask) & passed[:, None]
    return _igpo(turn_rewards, turn_mask, group_ids, gamma, norm, std, ig_mask=ig_mask, **opts)


def igpo_curriculum(turn_rewards, turn_mask, group_ids, gamma=1.0, norm="joint", std=True, step=0,
                    curriculum_steps=100, outcome_weight=1.0, ig_weight=1.0, **opts):
    """The authors' later schedule: outcome weight 0.5→1.0 and IG weight 1.0→0.5 over `curriculum_steps`
    steps, applied before normalisation (on top of any configured `outcome_weight` / `ig_weight`)."""
    frac = min(max(step / curriculum_steps, 0.0), 1.0)
    return _igpo(turn_rewards, turn_mask, group_ids, gamma, norm, std,
                 outcome_weight=outcome_weight * (0.5 + 0.5 * frac), ig_weight=ig_weight * (1.0 - 0.5 * frac), **opts)


def grpo(turn_rewards, turn_mask, group_ids, gamma=1.0, norm="joint", std=True, **_):
    """Outcome z-normalised per group, the same advantage on every turn (`std=False`: Dr. GRPO)."""
    outcome = _outcomes(turn_rewards, turn_mask)
    normed = group_normalize(outcome[:, None], turn_mask.any(1, keepdim=True), group_ids, std)[:, 0]
    return _broadcast(normed, turn_mask)


def rloo(turn_rewards, turn_mask, group_ids, gamma=1.0, norm="joint", std=True, **_):
    """Leave-one-out baseline: r_i − mean_{j≠i} r_j (0 for a group of one)."""
    outcome = _outcomes(turn_rewards, turn_mask)
    adv = torch.zeros_like(outcome)
    for g in dict.fromkeys(group_ids):
        rows = torch.tensor([gid == g for gid in group_ids])
        n = int(rows.sum())
        if n > 1:
            r = outcome[rows]
            adv[rows] = (r - (r.sum() - r) / (n - 1))
    return _broadcast(adv, turn_mask)


def reinforce_pp_baseline(turn_rewards, turn_mask, group_ids, gamma=1.0, norm="joint", std=True, **_):
    """REINFORCE++ with baseline: subtract the group mean, then whiten across the whole batch."""
    outcome = _outcomes(turn_rewards, turn_mask)
    centred = group_normalize(outcome[:, None], turn_mask.any(1, keepdim=True), group_ids, std=False)[:, 0]
    valid = turn_mask.any(1)
    if valid.sum() > 1:
        v = centred[valid]
        centred = torch.where(valid, (centred - v.mean()) / (v.std(unbiased=False) + EPS), centred)
    return _broadcast(centred, turn_mask)


ESTIMATORS: dict[str, Callable[..., torch.Tensor]] = {
    "igpo": igpo,
    "igpo_ig_only": igpo_ig_only,
    "igpo_outcome_only": igpo_outcome_only,
    "igpo_curriculum": igpo_curriculum,
    "gated": gated,
    "grpo": grpo,
    "rloo": rloo,
    "reinforce_pp_baseline": reinforce_pp_baseline,
}
NEEDS_BELIEFS = {"igpo", "igpo_ig_only", "igpo_curriculum", "gated"}
# The estimator-specific options (`algorithm.*` keys) each estimator reads; the config refuses one set for an
# estimator that would ignore it. `step` is the trainer's, not the user's. (Shared keys, gamma/norm/std, are not listed.)
OPTIONS: dict[str, frozenset[str]] = {
    "igpo": frozenset({"outcome_weight", "ig_weight"}),
    "igpo_ig_only": frozenset({"ig_weight"}),
    "igpo_outcome_only": frozenset({"outcome_weight"}),
    "igpo_curriculum": frozenset({"outcome_weight", "ig_weight", "curriculum_steps"}),
    "gated": frozenset({"outcome_weight", "ig_weight", "gate_threshold"}),
    "grpo": frozenset(),
    "rloo": frozenset(),
    "reinforce_pp_baseline": frozenset(),
}
ALL_OPTIONS = frozenset().union(*OPTIONS.values())


def compute_turn_advantages(
    turn_rewards: torch.Tensor,
    turn_mask: torch.Tensor,
    group_ids: Sequence,
    estimator: str = "igpo",
    gamma: float = 1.0,
    norm: str = "joint",
    std: bool = True,
    **options,
) -> torch.Tensor:
    """[B, T] advantage of each turn, 0 where `turn_mask` is False. See the module docstring."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    if turn_rewards.shape != turn_mask.shape or turn_rewards.dim() != 2:
        raise ValueError(f"turn_rewards {tuple(turn_rewards.shape)} and turn_mask {tuple(turn_mask.shape)} must both be [B, T]")
    if len(group_ids) != turn_rewards.shape[0]:
        raise ValueError(f"group_ids has {len(group_ids)} entries for {turn_rewards.shape[0]} rollouts")
    mask = turn_mask.bool()
    adv = ESTIMATORS[estimator](turn_rewards.float(), mask, list(group_ids), gamma=gamma, norm=norm, std=std, **options)
    return adv * mask


def turn_to_token_advantages(turn_adv: torch.Tensor, token_turns: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Spread turn advantages [B, T] over tokens: token_turns [B, L] (turn of each token, −1 = none) and
    loss_mask [B, L] (generated by the policy) -> [B, L], 0 off the loss mask."""
    idx = token_turns.clamp(min=0, max=turn_adv.shape[1] - 1)
    return turn_adv.gather(1, idx) * (loss_mask & (token_turns >= 0))
