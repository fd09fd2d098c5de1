"""Advantage estimators behind one signature and one registry (modelled on verl's `core_algos.py`).

Every estimator maps turn rewards [B, T] to turn advantages [B, T]:
- `turn_rewards[b, t]`: the IG reward of turn t for t before the last valid turn, the outcome reward on the
  last valid turn (the layout `igpo.train` builds; valid turns are left-aligned).
- `turn_mask[b, t]`: True for valid turns. Turn boundaries come from this mask, never from where rewards are
  non-zero (a reward of exactly 0 is a real reward).
- `group_ids`: length B; the rollouts of one question share an id.
Advantages are 0 where `turn_mask` is False. `turn_to_token_advantages` spreads them over generated tokens.

IGPO (paper): z-normalise the rewards of all turns of all rollouts of a question together (`norm="joint"`),
then sum backwards over turns: A_T = r̃_T, A_t = r̃_t + γ·A_{t+1}. The authors' later modes (`scaled_separate`,
`raw_ig`, adaptive γ) are options of the same estimator; see `_igpo`.

Adding an estimator is one function decorated with `@register_estimator(...)`: its keyword-only parameters are
the `algorithm.*` options it reads (the config refuses the others), and the decorator records what it needs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

EPS = 1e-6
NORMS = ("joint", "separate", "scaled_separate", "raw_ig")
# scaled_separate: the batch-wide factor on the normalised IG lies in [.., SCALE_MAX]; the outcome side of its
# ratio is at least SCALE_FLOOR (the authors' constants: a batch of equal outcomes does not silence IG).
SCALE_FLOOR, SCALE_MAX = 0.3, 10.0


@dataclass
class StepInputs:
    """What the trainer knows besides the rewards; every field has a default for callers outside a run.

    turn_tokens [B, T]: tokens the policy generated in each turn (token-level whitening weighs by them).
    all_sum: sums a list of floats over data-parallel ranks (batch-wide statistics stay global); None = one rank.
    ig_on: False while the IG warm-up gate is closed (IG estimators then see outcome rewards only).
    stats: filled by the estimator with per-step diagnostics (`ig_scale`, `gamma_effective`).
    """

    turn_tokens: torch.Tensor | None = None
    all_sum: Callable[[list[float]], list[float]] | None = None
    ig_on: bool = True
    stats: dict[str, float] = field(default_factory=dict)

    def global_sums(self, values: list[float]) -> list[float]:
        return list(self.all_sum(values)) if self.all_sum is not None else values


@dataclass(frozen=True)
class Estimator:
    name: str
    fn: Callable[..., torch.Tensor]
    uses_ig: bool  # reads IG rewards: the trainer computes beliefs for it
    needs_group: bool  # learns only from differences between a question's rollouts: a group of one gives 0
    options: frozenset[str]  # the keyword options `fn` reads (its keyword-only parameters)
    doc: str


ESTIMATORS: dict[str, Estimator] = {}
# Options the trainer supplies from its own state, never from the config.
TRAINER_OPTIONS = frozenset({"step"})
# `algorithm.*` keys of the reward layer (`igpo.algo.rewards.shape_ig`, `IGGate`): read for every estimator
# that uses IG, by the trainer before the estimator runs.
IG_REWARD_OPTIONS = frozenset({"ig_clip", "turn_format_penalty", "ig_gate_threshold", "ig_gate_ema"})


def register_estimator(name: str, *, uses_ig: bool, needs_group: bool):
    """Registers `fn(turn_rewards, turn_mask, group_ids, gamma, norm, std, inputs, *, <options>)`."""

    def deco(fn):
        params = inspect.signature(fn).parameters.values()
        options = frozenset(p.name for p in params if p.kind is p.KEYWORD_ONLY)
        ESTIMATORS[name] = Estimator(name, fn, uses_ig, needs_group, options, inspect.getdoc(fn) or "")
        return fn

    return deco


# ---------------------------------------------------------------- building blocks
def last_turn_mask(turn_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] True at the last valid turn of each rollout (none for a rollout with no valid turn)."""
    n = turn_mask.sum(1)
    idx = (n - 1).clamp(min=0)
    last = torch.zeros_like(turn_mask)
    last[torch.arange(len(n)), idx] = n > 0
    return last


def _group_rows(group_ids: Sequence):
    for g in dict.fromkeys(group_ids):
        yield torch.tensor([gid == g for gid in group_ids])


def _pool_std(pool: torch.Tensor) -> torch.Tensor:
    return pool.std(unbiased=False) if pool.numel() > 1 else torch.tensor(1.0)


def group_normalize(values: torch.Tensor, mask: torch.Tensor, group_ids: Sequence, std: bool = True) -> torch.Tensor:
    """Z-score the masked entries of `values` [B, T] within each group, pooling every masked entry of the
    group's rollouts: (v - mean) / (std + eps), population std, std := 1 when the pool has one value.
    Unmasked entries are 0."""
    out = torch.zeros_like(values, dtype=torch.float32)
    for rows in _group_rows(group_ids):
        sel = mask & rows[:, None]
        pool = values[sel].float()
        if pool.numel() == 0:
            continue
        centred = pool - pool.mean()
        out[sel] = centred / (_pool_std(pool) + EPS) if std else centred
    return out


def group_scale(values: torch.Tensor, mask: torch.Tensor, group_ids: Sequence) -> torch.Tensor:
    """Like `group_normalize`, but the mean is not subtracted: v / (std + eps) within each group's pool."""
    out = torch.zeros_like(values, dtype=torch.float32)
    for rows in _group_rows(group_ids):
        sel = mask & rows[:, None]
        pool = values[sel].float()
        if pool.numel():
            out[sel] = pool / (_pool_std(pool) + EPS)
    return out


def discounted_returns(rewards: torch.Tensor, turn_mask: torch.Tensor, gamma: float | torch.Tensor) -> torch.Tensor:
    """[B, T] A_t = r_t + γ_b·A_{t+1} over valid turns (backwards), 0 on invalid turns; γ a float or [B]."""
    out = torch.zeros_like(rewards, dtype=torch.float32)
    running = torch.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        running = torch.where(turn_mask[:, t], rewards[:, t] + gamma * running, torch.zeros_like(running))
        out[:, t] = running
    return out


def adaptive_gamma(turn_mask: torch.Tensor, gamma: float, min_weight: float) -> torch.Tensor:
    """[B] the discount of each rollout: `gamma`, or w^(1/n) for a rollout of n >= 2 valid turns when
    `min_weight` w > 0 (the first turn then keeps w of the last turn's advantage, whatever the length)."""
    n = turn_mask.sum(1).float()
    out = torch.full((turn_mask.shape[0],), float(gamma))
    if min_weight > 0:
        long = n >= 2
        out[long] = min_weight ** (1.0 / n[long])
    return out


def _outcomes(turn_rewards: torch.Tensor, turn_mask: torch.Tensor) -> torch.Tensor:
    """[B] the outcome reward of each rollout (0 for a rollout with no valid turn)."""
    return (turn_rewards * last_turn_mask(turn_mask)).sum(1)


def _broadcast(per_rollout: torch.Tensor, turn_mask: torch.Tensor) -> torch.Tensor:
    return per_rollout[:, None] * turn_mask


def _ig_scale(out_n, out_mask, ig_n, ig_mask, inputs: StepInputs) -> float:
    """scaled_separate's batch-wide factor: min(10, max(0.3, mean|ñ_outcome|) / (mean|ñ_IG| + eps)); a side
    with no entries counts as mean 1 (the authors' convention)."""
    s_out, n_out, s_ig, n_ig = inputs.global_sums(
        [
            float(out_n[out_mask].abs().sum()),
            float(out_mask.sum()),
            float(ig_n[ig_mask].abs().sum()),
            float(ig_mask.sum()),
        ]
    )
    out_abs = s_out / n_out if n_out else 1.0
    ig_abs = s_ig / n_ig if n_ig else 1.0
    return min(SCALE_MAX, max(SCALE_FLOOR, out_abs) / (ig_abs + EPS))


# ---------------------------------------------------------------- the IGPO family
def _igpo(
    turn_rewards,
    turn_mask,
    group_ids,
    gamma,
    norm,
    std,
    inputs: StepInputs,
    *,
    ig_mask=None,
    outcome_weight=1.0,
    ig_weight=1.0,
    use_outcome=True,
    use_ig=True,
    gamma_min_weight=0.0,
):
    """The IGPO family. Outcome = the last valid turn, IG = the other valid turns (or `ig_mask`).

    norm: joint (paper) — one z-score pool per group; separate — outcomes and IG each z-scored per group;
    scaled_separate — separate, then every normalised IG times one batch-wide factor (`_ig_scale`);
    raw_ig — outcomes z-scored per group, IG divided by its group's std (mean kept, whatever `std` says),
    each non-final turn given its rollout's normalised outcome, and no accumulation over turns.
    The other modes then sum backwards with γ (per rollout with `gamma_min_weight`, see `adaptive_gamma`).
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r} ({' | '.join(NORMS)})")
    if norm == "raw_ig" and (gamma != 1.0 or gamma_min_weight > 0):
        raise ValueError(
            "norm 'raw_ig' does not accumulate over turns: leave gamma at 1.0 and gamma_min_weight "
            f"at 0 (got gamma={gamma}, gamma_min_weight={gamma_min_weight})"
        )
    last = last_turn_mask(turn_mask)
    ig_mask = (turn_mask & ~last) if ig_mask is None else ig_mask
    rewards = turn_rewards.float() * torch.where(last, outcome_weight, ig_weight)
    out_mask = last if use_outcome else torch.zeros_like(last)
    ig_mask = ig_mask if use_ig and inputs.ig_on else torch.zeros_like(ig_mask)
    if norm == "joint":
        normed = group_normalize(rewards, out_mask | ig_mask, group_ids, std)
    else:
        out_n = group_normalize(rewards, out_mask, group_ids, std)
        if norm == "raw_ig":
            ig_n = group_scale(rewards, ig_mask, group_ids)
            inputs.stats["gamma_effective"] = 0.0
            earlier = turn_mask & ~last
            return out_n + (ig_n + out_n.sum(1, keepdim=True)) * earlier
        ig_n = group_normalize(rewards, ig_mask, group_ids, std)
        if norm == "scaled_separate":
            scale = _ig_scale(out_n, out_mask, ig_n, ig_mask, inputs)
            inputs.stats["ig_scale"] = scale
            ig_n = ig_n * scale
        normed = out_n + ig_n
    gammas = adaptive_gamma(turn_mask, gamma, gamma_min_weight)
    if turn_mask.any():
        inputs.stats["gamma_effective"] = float(gammas[turn_mask.any(1)].mean())
    return discounted_returns(normed, turn_mask, gammas)


@register_estimator("igpo", uses_ig=True, needs_group=False)
def igpo(
    turn_rewards,
    turn_mask,
    group_ids,
    gamma,
    norm,
    std,
    inputs,
    *,
    outcome_weight=1.0,
    ig_weight=1.0,
    gamma_min_weight=0.0,
):
    """Outcome + IG, normalised per group (`norm`), then discounted backwards. `outcome_weight` and `ig_weight`
    (default 1) scale the two kinds of reward before normalisation."""
    return _igpo(
        turn_rewards,
        turn_mask,
        group_ids,
        gamma,
        norm,
        std,
        inputs,
        outcome_weight=outcome_weight,
        ig_weight=ig_weight,
        gamma_min_weight=gamma_min_weight,
    )


@register_estimator("igpo_ig_only", uses_ig=True, needs_group=False)
def igpo_ig_only(turn_rewards, turn_mask, group_ids, gamma, norm, std, inputs, *, ig_weight=1.0, gamma_min_weight=0.0):
    """Ablation: IG rewards only (the outcome turn contributes 0 before discounting)."""
    return _igpo(
        turn_rewards,
        turn_mask,
        group_ids,
        gamma,
        norm,
        std,
        inputs,
        use_outcome=False,
        ig_weight=ig_weight,
        gamma_min_weight=gamma_min_weight,
    )


@register_estimator("igpo_outcome_only", uses_ig=False, needs_group=True)
def igpo_outcome_only(
    turn_rewards, turn_mask, group_ids, gamma, norm, std, inputs, *, outcome_weight=1.0, gamma_min_weight=0.0
):
    """Ablation: outcome only, normalised per group, discounted back over the turns. With γ = 1 every turn
    carries the normalised outcome, which is exactly `grpo`; only γ < 1 sets the two apart."""
    return _igpo(
        turn_rewards,
        turn_mask,
        group_ids,
        gamma,
        norm,
        std,
        inputs,
        use_ig=False,
        outcome_weight=outcome_weight,
        gamma_min_weight=gamma_min_weight,
    )


@register_estimator("gated", uses_ig=True, needs_group=True)
def gated(
    turn_rewards,
    turn_mask,
    group_ids,
    gamma,
    norm,
    std,
    inputs,
    *,
    gate_threshold=0.5,
    outcome_weight=1.0,
    ig_weight=1.0,
    gamma_min_weight=0.0,
):
    """Gated Reward Accumulation (arXiv 2508.10548): a rollout's IG rewards count only when its outcome
    reaches `gate_threshold`; otherwise they leave the pool (advantage from the outcome alone)."""
    passed = _outcomes(turn_rewards, turn_mask) >= gate_threshold
    ig_mask = turn_mask & ~last_turn_mask(turn_mask) & passed[:, None]
    return _igpo(
        turn_rewards,
        turn_mask,
        group_ids,
        gamma,
        norm,
        std,
        inputs,
        ig_mask=ig_mask,
        outcome_weight=outcome_weight,
        ig_weight=ig_weight,
        gamma_min_weight=gamma_min_weight,
    )


@register_estimator("igpo_curriculum", uses_ig=True, needs_group=False)
def igpo_curriculum(
    turn_rewards,
    turn_mask,
    group_ids,
    gamma,
    norm,
    std,
    inputs,
    *,
    step=0,
    curriculum_steps=100,
    outcome_weight=1.0,
    ig_weight=1.0,
    gamma_min_weight=0.0,
):
    """The authors' later schedule: outcome weight 0.5→1.0 and IG weight 1.0→0.5 over `curriculum_steps`
    steps, applied before normalisation (on top of any configured `outcome_weight` / `ig_weight`)."""
    frac = min(max(step / curriculum_steps, 0.0), 1.0)
    return _igpo(
        turn_rewards,
        turn_mask,
        group_ids,
        gamma,
        norm,
        std,
        inputs,
        outcome_weight=outcome_weight * (0.5 + 0.5 * frac),
        ig_weight=ig_weight * (1.0 - 0.5 * frac),
        gamma_min_weight=gamma_min_weight,
    )


# ---------------------------------------------------------------- outcome-only baselines
@register_estimator("grpo", uses_ig=False, needs_group=True)
def grpo(turn_rewards, turn_mask, group_ids, gamma, norm, std, inputs):
    """Outcome z-normalised per group, the same advantage on every turn. `std=False` drops the division by the
    group's std (Dr. GRPO's advantage; Dr. GRPO also drops the 1/|o| length term: see `loss_agg`)."""
    outcome = _outcomes(turn_rewards, turn_mask)
    normed = group_normalize(outcome[:, None], turn_mask.any(1, keepdim=True), group_ids, std)[:, 0]
    return _broadcast(normed, turn_mask)


@register_estimator("rloo", uses_ig=False, needs_group=True)
def rloo(turn_rewards, turn_mask, group_ids, gamma, norm, std, inputs):
    """Leave-one-out baseline: r_i − mean_{j≠i} r_j (0 for a group of one)."""
    outcome = _outcomes(turn_rewards, turn_mask)
    adv = torch.zeros_like(outcome)
    for rows in _group_rows(group_ids):
        n = int(rows.sum())
        if n > 1:
            r = outcome[rows]
            adv[rows] = r - (r.sum() - r) / (n - 1)
    return _broadcast(adv, turn_mask)


@register_estimator("reinforce_pp_baseline", uses_ig=False, needs_group=True)
def reinforce_pp_baseline(turn_rewards, turn_mask, group_ids, gamma, norm, std, inputs):
    """REINFORCE++ with baseline: subtract the group mean, then whiten over the batch's generated tokens (as
    the paper, OpenRLHF and verl do): a rollout's value counts once per token it generated, and the mean and
    std are global across data-parallel ranks. Needs `inputs.turn_tokens`."""
    if inputs.turn_tokens is None:
        raise ValueError("reinforce_pp_baseline whitens over generated tokens: pass turn_tokens [B, T]")
    outcome = _outcomes(turn_rewards, turn_mask)
    centred = group_normalize(outcome[:, None], turn_mask.any(1, keepdim=True), group_ids, std=False)[:, 0]
    n = (inputs.turn_tokens.float() * turn_mask).sum(1)
    total, s1, s2 = inputs.global_sums([float(n.sum()), float((n * centred).sum()), float((n * centred**2).sum())])
    if total > 0:
        mean = s1 / total
        sd = max(s2 / total - mean**2, 0.0) ** 0.5
        centred = (centred - mean) / (sd + EPS)
    return _broadcast(centred, turn_mask)


# ---------------------------------------------------------------- entry points
def config_keys(name: str) -> frozenset[str]:
    """The estimator-specific `algorithm.*` keys read when `name` trains: its options (less the trainer's own),
    and the IG reward layer's keys if it uses IG."""
    spec = ESTIMATORS[name]
    return (spec.options - TRAINER_OPTIONS) | (IG_REWARD_OPTIONS if spec.uses_ig else frozenset())


def all_config_keys() -> frozenset[str]:
    """Every estimator-specific `algorithm.*` key (the config refuses one that the chosen estimator ignores)."""
    return frozenset().union(*(config_keys(name) for name in ESTIMATORS))


def compute_turn_advantages(
    turn_rewards: torch.Tensor,
    turn_mask: torch.Tensor,
    group_ids: Sequence,
    estimator: str = "igpo",
    gamma: float = 1.0,
    norm: str = "joint",
    std: bool = True,
    inputs: StepInputs | None = None,
    **options,
) -> torch.Tensor:
    """[B, T] advantage of each turn, 0 where `turn_mask` is False. See the module docstring.

    `options` are the estimator's own (`ESTIMATORS[estimator].options`); any other is refused by name.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    spec = ESTIMATORS[estimator]
    if unknown := sorted(set(options) - spec.options):
        raise ValueError(
            f"estimator {estimator!r} has no option {', '.join(unknown)} "
            f"(its options: {', '.join(sorted(spec.options)) or 'none'})"
        )
    if turn_rewards.shape != turn_mask.shape or turn_rewards.dim() != 2:
        raise ValueError(
            f"turn_rewards {tuple(turn_rewards.shape)} and turn_mask {tuple(turn_mask.shape)} must both be [B, T]"
        )
    if len(group_ids) != turn_rewards.shape[0]:
        raise ValueError(f"group_ids has {len(group_ids)} entries for {turn_rewards.shape[0]} rollouts")
    inputs = inputs if inputs is not None else StepInputs()
    if inputs.turn_tokens is not None and inputs.turn_tokens.shape != turn_mask.shape:
        raise ValueError(f"turn_tokens {tuple(inputs.turn_tokens.shape)} must match turn_mask {tuple(turn_mask.shape)}")
    mask = turn_mask.bool()
    adv = spec.fn(turn_rewards.float(), mask, list(group_ids), gamma, norm, std, inputs, **options)
    return adv * mask


def turn_to_token_advantages(
    turn_adv: torch.Tensor, token_turns: torch.Tensor, loss_mask: torch.Tensor
) -> torch.Tensor:
    """Spread turn advantages [B, T] over tokens: token_turns [B, L] (turn of each token, −1 = none) and
    loss_mask [B, L] (generated by the policy) -> [B, L], 0 off the loss mask."""
    idx = token_turns.clamp(min=0, max=turn_adv.shape[1] - 1)
    return turn_adv.gather(1, idx) * (loss_mask & (token_turns >= 0))
