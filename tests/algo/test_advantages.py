"""Hand-computed values for every estimator."""

import math

import pytest
import torch

from igpo.algo.advantages import (
    ESTIMATORS,
    StepInputs,
    adaptive_gamma,
    compute_turn_advantages,
    turn_to_token_advantages,
)

# Rollout A: IG 0.2 then outcome 1.0.  Rollout B: IG -0.1, IG exactly 0.0 (a real reward), outcome 0.0.
R = torch.tensor([[0.2, 1.0, 0.0], [-0.1, 0.0, 0.0]])
M = torch.tensor([[True, True, False], [True, True, True]])
G = ["q", "q"]


def z(values):
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)) if len(values) > 1 else 1.0
    return [(v - mean) / (std + 1e-6) for v in values]


def close(a, b):
    torch.testing.assert_close(a, torch.tensor(b, dtype=torch.float32), atol=1e-5, rtol=0)


def test_igpo_joint_normalises_all_turns_of_the_group_then_sums_backwards():
    a1, a2, b1, b2, b3 = z([0.2, 1.0, -0.1, 0.0, 0.0])
    adv = compute_turn_advantages(R, M, G, "igpo")
    close(adv, [[a1 + a2, a2, 0.0], [b1 + b2 + b3, b2 + b3, b3]])
    # The zero IG on B's middle turn is a turn of its own, not merged with the last one.
    assert adv[1, 1] != adv[1, 2]


def test_igpo_gamma_below_one():
    a1, a2, b1, b2, b3 = z([0.2, 1.0, -0.1, 0.0, 0.0])
    g = 0.5
    adv = compute_turn_advantages(R, M, G, "igpo", gamma=g)
    close(adv, [[a1 + g * a2, a2, 0.0], [b1 + g * (b2 + g * b3), b2 + g * b3, b3]])


def test_igpo_separate_normalises_outcomes_and_ig_in_their_own_pools():
    oa, ob = z([1.0, 0.0])
    ia, ib1, ib2 = z([0.2, -0.1, 0.0])
    adv = compute_turn_advantages(R, M, G, "igpo", norm="separate")
    close(adv, [[ia + oa, oa, 0.0], [ib1 + ib2 + ob, ib2 + ob, ob]])


def test_equal_outcomes_give_zero_grpo_but_nonzero_igpo():
    r = torch.tensor([[0.3, 1.0], [-0.2, 1.0]])
    m = torch.ones(2, 2, dtype=torch.bool)
    assert torch.all(compute_turn_advantages(r, m, G, "grpo") == 0)
    igpo = compute_turn_advantages(r, m, G, "igpo")
    assert igpo.abs().sum() > 0.5
    assert igpo[0, 0] > 0 > igpo[1, 0]  # the turn that gained information is credited


def test_single_rollout_groups():
    r = torch.tensor([[0.5, 1.0], [0.7, 0.0]])
    m = torch.ones(2, 2, dtype=torch.bool)
    groups = ["a", "b"]
    assert torch.all(compute_turn_advantages(r, m, groups, "grpo") == 0)
    assert torch.all(compute_turn_advantages(r, m, groups, "rloo") == 0)
    x1, x2 = z([0.5, 1.0])
    y1, y2 = z([0.7, 0.0])
    close(compute_turn_advantages(r, m, groups, "igpo"), [[x1 + x2, x2], [y1 + y2, y2]])
    one = compute_turn_advantages(torch.tensor([[0.4]]), torch.tensor([[True]]), ["a"], "igpo")
    close(one, [[0.0]])  # a pool of one value: centred to 0, std taken as 1


def test_grpo_and_dr_grpo():
    r = torch.tensor([[0.0, 1.0], [0.5, 0.0], [0.2, 0.0]])
    m = torch.tensor([[True, True], [True, False], [True, False]])
    # outcomes: 1.0 (last valid turn of row 0), 0.5, 0.2
    o = z([1.0, 0.5, 0.2])
    close(compute_turn_advantages(r, m, ["g"] * 3, "grpo"), [[o[0], o[0]], [o[1], 0.0], [o[2], 0.0]])
    mean = (1.0 + 0.5 + 0.2) / 3
    close(
        compute_turn_advantages(r, m, ["g"] * 3, "grpo", std=False),
        [[1.0 - mean, 1.0 - mean], [0.5 - mean, 0.0], [0.2 - mean, 0.0]],
    )


def test_rloo():
    r = torch.tensor([[1.0], [0.0], [0.5]])
    m = torch.ones(3, 1, dtype=torch.bool)
    close(compute_turn_advantages(r, m, [1, 1, 1], "rloo"), [[0.75], [-0.75], [0.0]])


def test_reinforce_pp_baseline_centres_per_group_then_whitens_the_batch():
    r = torch.tensor([[1.0], [0.0], [0.4], [0.2]])
    m = torch.ones(4, 1, dtype=torch.bool)
    centred = [0.5, -0.5, 0.1, -0.1]
    w = z(centred)
    equal = StepInputs(turn_tokens=torch.full((4, 1), 5))  # rollouts of equal length: one value each
    close(compute_turn_advantages(r, m, ["a", "a", "b", "b"], "reinforce_pp_baseline", inputs=equal), [[v] for v in w])


def test_reinforce_pp_baseline_whitens_over_generated_tokens_globally():
    """Whitening over the batch's tokens (REINFORCE++, OpenRLHF, verl): with 1, 9, 1, 1 generated tokens the
    long rollout's value dominates the mean and std: [2.65, -0.53, 1.38, 0.74], not [1.39, -1.39, 0.28, -0.28]."""
    r = torch.tensor([[1.0], [0.0], [0.4], [0.2]])
    m = torch.ones(4, 1, dtype=torch.bool)
    tokens = torch.tensor([[1], [9], [1], [1]])
    adv = compute_turn_advantages(
        r, m, ["a", "a", "b", "b"], "reinforce_pp_baseline", inputs=StepInputs(turn_tokens=tokens)
    )
    torch.testing.assert_close(adv, torch.tensor([[2.6502], [-0.5300], [1.3781], [0.7420]]), atol=1e-3, rtol=0)
    # Two ranks holding half the batch each whiten with the global statistics: the same values as one rank.
    halves = [(slice(0, 2), ["a", "a"]), (slice(2, 4), ["b", "b"])]
    sums = [0.0, 0.0, 0.0]
    for part, g in halves:  # first pass: collect each rank's sums
        probe = StepInputs(
            turn_tokens=tokens[part],
            all_sum=lambda v: (sums.__setitem__(slice(None), [a + b for a, b in zip(sums, v)]), v)[1],
        )
        compute_turn_advantages(r[part], m[part], g, "reinforce_pp_baseline", inputs=probe)
    for part, g in halves:
        ranked = StepInputs(turn_tokens=tokens[part], all_sum=lambda v: list(sums))
        out = compute_turn_advantages(r[part], m[part], g, "reinforce_pp_baseline", inputs=ranked)
        torch.testing.assert_close(out, adv[part], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="turn_tokens"):
        compute_turn_advantages(r, m, ["a", "a", "b", "b"], "reinforce_pp_baseline")


def test_ablations():
    a1, b1, b2 = z([0.2, -0.1, 0.0])
    close(compute_turn_advantages(R, M, G, "igpo_ig_only"), [[a1, 0.0, 0.0], [b1 + b2, b2, 0.0]])
    oa, ob = z([1.0, 0.0])
    close(compute_turn_advantages(R, M, G, "igpo_outcome_only"), [[oa, oa, 0.0], [ob, ob, ob]])
    close(
        compute_turn_advantages(R, M, G, "igpo_outcome_only", gamma=0.5),
        [[0.5 * oa, oa, 0.0], [0.25 * ob, 0.5 * ob, ob]],
    )


def test_gated_drops_ig_of_rollouts_below_the_threshold():
    # B's outcome 0.0 < 0.5: its IG rewards leave the pool; A's stay.
    ia, oa, ob = z([0.2, 1.0, 0.0])
    close(compute_turn_advantages(R, M, G, "gated", gate_threshold=0.5), [[ia + oa, oa, 0.0], [ob, ob, ob]])


def test_curriculum_moves_weight_from_ig_to_outcome():
    start = compute_turn_advantages(R, M, G, "igpo_curriculum", step=0, curriculum_steps=10)
    a1, a2, b1, b2, b3 = z([0.2 * 1.0, 1.0 * 0.5, -0.1, 0.0, 0.0])
    close(start, [[a1 + a2, a2, 0.0], [b1 + b2 + b3, b2 + b3, b3]])
    end = compute_turn_advantages(R, M, G, "igpo_curriculum", step=10, curriculum_steps=10)
    a1, a2, b1, b2, b3 = z([0.2 * 0.5, 1.0, -0.05, 0.0, 0.0])
    close(end, [[a1 + a2, a2, 0.0], [b1 + b2 + b3, b2 + b3, b3]])


def test_outcome_weight_scales_the_outcome_before_normalisation():
    # Without the std, separate pools: the weighted advantage is IG-only plus w times the outcome-only part.
    w = 0.1
    kw = dict(norm="separate", std=False)
    weighted = compute_turn_advantages(R, M, G, "igpo", outcome_weight=w, **kw)
    ig = compute_turn_advantages(R, M, G, "igpo_ig_only", **kw)
    out = compute_turn_advantages(R, M, G, "igpo_outcome_only", **kw)
    close(weighted, (ig + w * out).tolist())
    # Jointly z-scored, the weights change the mix: A's outcome 1.0 enters the pool as 0.1, the IGs doubled.
    a1, a2, b1, b2, b3 = z([0.2 * 2, 1.0 * w, -0.1 * 2, 0.0, 0.0])
    joint = compute_turn_advantages(R, M, G, "igpo", outcome_weight=w, ig_weight=2.0)
    close(joint, [[a1 + a2, a2, 0.0], [b1 + b2 + b3, b2 + b3, b3]])
    assert not torch.allclose(joint, compute_turn_advantages(R, M, G, "igpo"))


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_options_registry_lists_exactly_the_keys_an_estimator_reads(estimator):
    # The config refuses a key the estimator does not read (`check_estimator_options`), so the registry must be
    # right both ways: changing a listed option changes the advantages, an unlisted one is refused by name.
    changed = {
        "outcome_weight": 0.3,
        "ig_weight": 2.0,
        "gate_threshold": 0.0,
        "curriculum_steps": 10,
        "gamma_min_weight": 0.5,
        "step": 50,
    }
    assert set(changed) == set().union(*(e.options for e in ESTIMATORS.values()))
    inputs = StepInputs(turn_tokens=torch.ones_like(M, dtype=torch.long))
    opts = ESTIMATORS[estimator].options
    base = {"step": 50} if "step" in opts else {}
    ref = compute_turn_advantages(R, M, G, estimator, norm="joint", std=False, inputs=inputs, **base)
    for key, value in changed.items():
        if key in opts and key != "step":
            moved = compute_turn_advantages(
                R, M, G, estimator, norm="joint", std=False, inputs=inputs, **{**base, key: value}
            )
            assert not torch.allclose(ref, moved), (estimator, key)
        elif key not in opts:
            with pytest.raises(ValueError, match=f"has no option {key}"):
                compute_turn_advantages(R, M, G, estimator, inputs=inputs, **{key: value})


def test_groups_are_independent():
    r = torch.cat([R, R * 3])
    m = torch.cat([M, M])
    adv = compute_turn_advantages(r, m, ["x", "x", "y", "y"], "igpo")
    torch.testing.assert_close(adv[:2], compute_turn_advantages(R, M, G, "igpo"))
    torch.testing.assert_close(adv[2:], adv[:2], atol=1e-4, rtol=0)  # z-scores are scale-free


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown estimator 'ppo'"):
        compute_turn_advantages(R, M, G, "ppo")
    with pytest.raises(ValueError, match="group_ids"):
        compute_turn_advantages(R, M, ["q"], "igpo")


def test_turn_to_token_advantages_only_on_generated_tokens():
    adv = torch.tensor([[2.0, -1.0]])
    turns = torch.tensor([[-1, -1, 0, 0, 0, 1, 1, 1]])
    gen = torch.tensor([[False, False, True, True, False, True, False, False]])
    out = turn_to_token_advantages(adv, turns, gen)
    close(out, [[0.0, 0.0, 2.0, 2.0, 0.0, -1.0, 0.0, 0.0]])


def test_igpo_first_turn_advantage_charges_each_turn_the_pool_mean():
    """With γ = 1 and joint normalisation, A_1 = (Σ_t r_t − n·μ)/σ: two rollouts with the same outcome and the
    same total IG differ by μ/σ for every turn one has more than the other (the length effect measured in
    benchmarks/README.md, 'Learning benchmark')."""
    # Same outcome (0.5) and the same total IG (0.3): one turn of IG 0.3 vs three turns of IG 0.1.
    r = torch.tensor([[0.3, 0.5, 0.0, 0.0], [0.1, 0.1, 0.1, 0.5], [0.0, 1.0, 0.0, 0.0]])
    m = torch.tensor([[True, True, False, False], [True, True, True, True], [True, True, False, False]])
    adv = compute_turn_advantages(r, m, ["q"] * 3, "igpo")
    pool = r[m]
    mu, sigma = pool.mean(), pool.std(unbiased=False) + 1e-6
    for b in range(3):
        n = int(m[b].sum())
        torch.testing.assert_close(adv[b, 0], (r[b, :n].sum() - n * mu) / sigma, atol=1e-5, rtol=0)
    assert mu > 0
    torch.testing.assert_close(adv[0, 0] - adv[1, 0], 2 * mu / sigma, atol=1e-5, rtol=0)


def test_std_normalisation_blows_ig_differences_at_noise_level_up_to_unit_advantages():
    """What `std: false` is for (docs/config.md): a group whose answers all fail (outcome 0) and whose beliefs
    barely move (IG ~1e-3, a 135M policy with p_t ~ 0) has nothing to learn, yet z-scoring divides by the pool's
    tiny std and hands its turns advantages as large as a group with a real outcome difference."""
    r = torch.tensor([[-0.001, 0.0], [0.0005, 0.0], [0.0, 0.0]])
    m = torch.ones(3, 2, dtype=torch.bool)
    g = ["q"] * 3
    scaled = compute_turn_advantages(r, m, g, "igpo")
    assert scaled.abs().max() > 1.0
    raw = compute_turn_advantages(r, m, g, "igpo", std=False)
    assert raw.abs().max() < 2e-3
    # without std the advantages are the centred rewards, summed backwards: A_T = r_T - mean, A_1 = A_T + r_1 - mean
    mean = r.mean()
    close(
        raw,
        [
            [(-0.001 - mean) + (0.0 - mean), 0.0 - mean],
            [(0.0005 - mean) + (0.0 - mean), 0.0 - mean],
            [2 * (0.0 - mean), 0.0 - mean],
        ],
    )


@pytest.mark.parametrize("std", [True, False])
def test_outcome_only_ablation_is_grpo_when_gamma_is_one(std):
    """With γ = 1 every turn of `igpo_outcome_only` carries the normalised outcome, which is GRPO's advantage:
    the two estimators give the same update (the learning bench measured the two runs identical step for step);
    only γ < 1 sets them apart."""
    r = torch.tensor([[0.3, 0.9, 0.0], [0.1, -0.2, 0.4], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])
    m = torch.tensor([[True, True, False], [True, True, True], [True, True, False], [True, False, False]])
    g = ["a", "a", "b", "b"]
    grpo = compute_turn_advantages(r, m, g, "grpo", std=std)
    torch.testing.assert_close(compute_turn_advantages(r, m, g, "igpo_outcome_only", std=std), grpo, atol=1e-6, rtol=0)
    assert not torch.allclose(compute_turn_advantages(r, m, g, "igpo_outcome_only", gamma=0.9, std=std), grpo)


# ---------------------------------------------------------------- the authors' later modes (DR-Venus)
def test_scaled_separate_scales_ig_by_one_batch_wide_factor():
    """Group q: the fixture (outcomes 1, 0; IG 0.2, -0.1 and an exact 0.0 in B's middle turn). Group p: equal
    outcomes (z-scored to 0), a single-turn rollout D, and one IG value (a pool of one: centred to 0). The
    factor s = min(10, max(0.3, mean|ñ_out|) / (mean|ñ_IG| + eps)) runs over both groups."""
    r = torch.cat([R, torch.tensor([[0.5, 0.4, 0.0], [0.4, 0.0, 0.0]])])
    m = torch.cat([M, torch.tensor([[True, True, False], [True, False, False]])])
    g = ["q", "q", "p", "p"]
    oa, ob = z([1.0, 0.0])
    ia, ib1, ib2 = z([0.2, -0.1, 0.0])
    out_abs = (abs(oa) + abs(ob) + 0 + 0) / 4
    ig_abs = (abs(ia) + abs(ib1) + abs(ib2) + 0) / 4
    s = min(10.0, max(0.3, out_abs) / (ig_abs + 1e-6))
    inputs = StepInputs()
    adv = compute_turn_advantages(r, m, g, "igpo", norm="scaled_separate", inputs=inputs)
    close(adv, [[s * ia + oa, oa, 0.0], [s * (ib1 + ib2) + ob, s * ib2 + ob, ob], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert inputs.stats["ig_scale"] == pytest.approx(s)
    # The factor is batch-wide: group q alone gets another one (mean |ñ_out| 1, its own IG).
    alone = StepInputs()
    compute_turn_advantages(R, M, G, "igpo", norm="scaled_separate", inputs=alone)
    assert alone.stats["ig_scale"] == pytest.approx(
        min(10.0, (abs(oa) + abs(ob)) / 2 / ((abs(ia) + abs(ib1) + abs(ib2)) / 3 + 1e-6))
    )
    assert alone.stats["ig_scale"] != pytest.approx(s)


def test_scaled_separate_floor_and_cap():
    # Equal outcomes everywhere: the outcome side is floored at 0.3. Tiny IG differences: the factor is capped.
    r = torch.tensor([[0.001, 1.0], [0.0, 1.0]])
    m = torch.ones(2, 2, dtype=torch.bool)
    floored = StepInputs()
    compute_turn_advantages(r, m, G, "igpo", norm="scaled_separate", inputs=floored)
    ig_abs = sum(abs(v) for v in z([0.001, 0.0])) / 2
    assert floored.stats["ig_scale"] == pytest.approx(0.3 / (ig_abs + 1e-6))
    capped = StepInputs()
    compute_turn_advantages(r, m, G, "igpo", norm="scaled_separate", std=False, inputs=capped)
    assert capped.stats["ig_scale"] == 10.0


def test_raw_ig_divides_by_the_group_std_keeps_the_mean_and_adds_the_outcome():
    oa, ob = z([1.0, 0.0])
    pool = torch.tensor([0.2, -0.1, 0.0])
    s = float(pool.std(unbiased=False)) + 1e-6
    inputs = StepInputs()
    adv = compute_turn_advantages(R, M, G, "igpo", norm="raw_ig", inputs=inputs)
    # no accumulation: each turn its own value; B's zero-IG middle turn still gets B's outcome
    close(adv, [[0.2 / s + oa, oa, 0.0], [-0.1 / s + ob, 0.0 + ob, ob]])
    assert inputs.stats["gamma_effective"] == 0.0
    close(compute_turn_advantages(R, M, G, "igpo_ig_only", norm="raw_ig"), [[0.2 / s, 0.0, 0.0], [-0.1 / s, 0.0, 0.0]])
    # A single-rollout group: the outcome centres to 0, a single IG is divided by std 1.
    one = compute_turn_advantages(
        torch.tensor([[0.3, 1.0]]), torch.ones(1, 2, dtype=torch.bool), ["a"], "igpo", norm="raw_ig"
    )
    close(one, [[0.3 / (1 + 1e-6), 0.0]])
    # A group of equal outcomes: only IG moves the advantages.
    eq = compute_turn_advantages(
        torch.tensor([[0.2, 1.0], [0.0, 1.0]]), torch.ones(2, 2, dtype=torch.bool), G, "igpo", norm="raw_ig"
    )
    close(eq, [[0.2 / (0.1 + 1e-6), 0.0], [0.0, 0.0]])


def test_raw_ig_refuses_a_discount():
    with pytest.raises(ValueError, match="gamma=0.95"):
        compute_turn_advantages(R, M, G, "igpo", gamma=0.95, norm="raw_ig")
    with pytest.raises(ValueError, match="gamma_min_weight=0.5"):
        compute_turn_advantages(R, M, G, "igpo", norm="raw_ig", gamma_min_weight=0.5)


def test_adaptive_gamma_by_number_of_turns():
    m = torch.tensor([[True, False, False], [True, True, False], [True, True, True]])
    torch.testing.assert_close(adaptive_gamma(m, 0.95, 0.5), torch.tensor([0.95, 0.5**0.5, 0.5 ** (1 / 3)]))
    torch.testing.assert_close(adaptive_gamma(m, 0.95, 0.0), torch.tensor([0.95, 0.95, 0.95]))
    r = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.0, 0.0], [0.1, -0.1, 0.5]])
    inputs = StepInputs()
    adv = compute_turn_advantages(r, m, ["q"] * 3, "igpo", gamma=0.95, std=False, gamma_min_weight=0.5, inputs=inputs)
    mean = float(r[m].mean())
    c = {k: v - mean for k, v in {"a": 1.0, "b1": 0.2, "b2": 0.0, "c1": 0.1, "c2": -0.1, "c3": 0.5}.items()}
    g2, g3 = 0.5**0.5, 0.5 ** (1 / 3)
    close(
        adv,
        [
            [c["a"], 0.0, 0.0],
            [c["b1"] + g2 * c["b2"], c["b2"], 0.0],
            [c["c1"] + g3 * (c["c2"] + g3 * c["c3"]), c["c2"] + g3 * c["c3"], c["c3"]],
        ],
    )
    # the first turn of a 3-turn rollout keeps w of the last turn's reward: g3^2 * g3 = 0.5 over three turns
    assert g3**3 == pytest.approx(0.5)
    assert inputs.stats["gamma_effective"] == pytest.approx((0.95 + g2 + g3) / 3)


def test_closed_ig_gate_leaves_the_outcome_alone():
    """While the IG warm-up gate is closed the IG estimators see outcome rewards only."""
    for norm in ("joint", "scaled_separate", "raw_ig"):
        off = compute_turn_advantages(R, M, G, "igpo", norm=norm, inputs=StepInputs(ig_on=False))
        close(off, compute_turn_advantages(R, M, G, "igpo_outcome_only", norm=norm).tolist())
    assert torch.all(compute_turn_advantages(R, M, G, "igpo_ig_only", inputs=StepInputs(ig_on=False)) == 0)


def test_unknown_options_are_refused_by_name():
    with pytest.raises(ValueError, match="has no option gamma_min_weight"):
        compute_turn_advantages(R, M, G, "grpo", gamma_min_weight=0.5)
    with pytest.raises(ValueError, match="has no option gamma_min_wieght"):
        compute_turn_advantages(R, M, G, "igpo", gamma_min_wieght=0.5)
