import math

import pytest
import torch

from igpo.algo.loss import agg_loss, kl_penalty, ppo_policy_loss, tis_weights
from igpo.algo.rewards import answer_em, answer_f1, information_gain, normalize_answer, outcome_reward, reduce_aliases


def test_official_normalisation_and_set_f1():
    assert normalize_answer("  The Eiffel-Tower, Paris! ") == "the eiffel tower paris"
    # sets: {paris, paris} == {paris}: precision 1, recall 1
    assert answer_f1("Paris Paris", ["Paris"]) == 1.0
    assert answer_f1("Paris Paris", ["Paris"], mode="squad") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert answer_f1("the Beatles", ["Beatles"]) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert answer_f1("the Beatles", ["Beatles"], mode="squad") == 1.0
    assert answer_f1("New York City", ["new york", "NYC"]) == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert answer_f1("Rome", ["Paris"]) == 0.0


def test_em_max_over_aliases():
    assert answer_em("paris.", ["London", "Paris"]) == 1.0
    assert answer_em("the Paris", ["Paris"]) == 0.0
    assert answer_em("the Paris", ["Paris"], mode="squad") == 1.0


def test_outcome_reward_format_penalty():
    assert outcome_reward(None, ["x"], format_penalty=-2.0) == -2.0
    assert outcome_reward("x", ["x"]) == 1.0


def test_information_gain_prob_and_log_diff():
    lp = torch.log(torch.tensor([0.1, 0.4, 0.3]))
    torch.testing.assert_close(information_gain(lp, "prob_diff"), torch.tensor([0.3, -0.1]))
    torch.testing.assert_close(information_gain(lp, "log_prob_diff"), torch.tensor([4.0, 0.75]).log())
    m = torch.tensor([[-3.0, -1.0], [-2.0, -4.0]])
    torch.testing.assert_close(reduce_aliases(m, "max"), torch.tensor([-1.0, -2.0]))
    torch.testing.assert_close(reduce_aliases(m, "first"), torch.tensor([-3.0, -2.0]))


def test_ppo_clip_and_dual_clip(device):
    old = torch.zeros(1, 4, device=device)
    lp = torch.log(torch.tensor([[1.5, 0.5, 5.0, 1.0]], device=device))
    adv = torch.tensor([[1.0, 1.0, -1.0, -2.0]], device=device)
    loss, clipped = ppo_policy_loss(lp, old, adv, clip_eps=0.2, dual_clip=3.0)
    # ratio 1.5, A=1: min(1.5, 1.2) objective -> loss -1.2 (clipped)
    # ratio 0.5, A=1: min(0.5, 0.8) -> loss -0.5 (not clipped)
    # ratio 5, A=-1: max(5, 1.2)=5 -> loss 5, dual clip caps at -A*c = 3
    # ratio 1, A=-2: loss 2
    torch.testing.assert_close(loss, torch.tensor([[-1.2, -0.5, 3.0, 2.0]], device=device))
    torch.testing.assert_close(clipped, torch.tensor([[1.0, 0.0, 0.0, 0.0]], device=device))
    loss_nodual, _ = ppo_policy_loss(lp, old, adv, dual_clip=None)
    assert loss_nodual[0, 2] == pytest.approx(5.0)


def test_low_var_kl_is_k3_and_zero_at_equality(device):
    lp = torch.tensor([[-1.0, -2.0]], device=device)
    assert torch.all(kl_penalty(lp, lp) == 0)
    ref = torch.tensor([[-1.5, -1.0]], device=device)
    r = torch.exp(ref - lp)
    torch.testing.assert_close(kl_penalty(lp, ref), r - (ref - lp) - 1)
    assert torch.all(kl_penalty(lp, ref) >= 0)


def test_aggregation_modes_and_microbatch_normalisers(device):
    v = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]], device=device)
    m = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool, device=device)
    assert agg_loss(v, m, "token-mean") == pytest.approx(10 / 4)
    assert agg_loss(v, m, "seq-mean-token-mean") == pytest.approx((2 + 4) / 2)
    assert agg_loss(v, m, "seq-mean-token-sum") == pytest.approx((6 + 4) / 2)
    # Split into micro-batches with the mini-batch normalisers, the parts add up to the whole.
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum"):
        whole = agg_loss(v, m, mode)
        parts = sum(agg_loss(v[i : i + 1], m[i : i + 1], mode, num_seqs=2, num_tokens=4) for i in range(2))
        assert parts == pytest.approx(float(whole))


def test_only_seq_mean_token_sum_weighs_tokens_without_a_length_term():
    """What docs/config.md states for Dr. GRPO: the weight of each token's term in the loss, per mode."""
    m = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)  # |o| = 4 and 1, N = 2
    weights = {}
    for mode in ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum"):
        v = torch.ones(2, 4, requires_grad=True)
        agg_loss(v, m, mode).backward()
        weights[mode] = pytest.approx(v.grad[m].tolist())
    assert [1 / 8] * 4 + [1 / 2] == weights["seq-mean-token-mean"]  # 1/(N |o_i|): the short one's token weighs 4x
    assert [1 / 5] * 5 == weights["token-mean"]  # equal, divided by this batch's 5 tokens
    assert [1 / 2] * 5 == weights["seq-mean-token-sum"]  # 1/N: Dr. GRPO's (1/G) Σ_i Σ_t


def test_tis_weight_is_the_capped_ratio_without_gradient():
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0]], requires_grad=True)
    rollout = torch.tensor([[-1.0, -2.0 - 0.4, -0.5 + 0.3, -3.0 - 5.0]])
    w = tis_weights(old, rollout, cap=2.0)
    assert not w.requires_grad
    torch.testing.assert_close(w, torch.tensor([[1.0, math.exp(0.4), math.exp(-0.3), 2.0]]))
    # multiplied into the PG loss, it scales each token's gradient by its weight
    lp = old.detach().clone().requires_grad_(True)
    adv = torch.ones(1, 4)
    pg, _ = ppo_policy_loss(lp, lp.detach(), adv)
    (pg * w).sum().backward()
    torch.testing.assert_close(lp.grad, -w)


def test_shape_ig_clips_and_penalises_malformed_calls():
    from igpo.algo.rewards import shape_ig

    ig = torch.tensor([0.2, -0.1, 0.0])
    torch.testing.assert_close(shape_ig(ig), ig)
    torch.testing.assert_close(shape_ig(ig, "positive"), torch.tensor([0.2, 0.0, 0.0]))
    # the penalty replaces the IG of the malformed turn, and is not clipped away
    torch.testing.assert_close(shape_ig(ig, "positive", [False, True, False], 0.5), torch.tensor([0.2, -0.5, 0.0]))
    torch.testing.assert_close(shape_ig(ig, "none", [False, True, False], None), ig)
    with pytest.raises(ValueError, match="unknown IG clip 'abs'"):
        shape_ig(ig, "abs")


def test_ig_gate_opens_once_the_ema_reaches_the_threshold_and_stays_open():
    from igpo.algo.rewards import IGGate

    gate = IGGate(threshold=0.3, rate=0.5)
    assert not gate.on()  # no step seen yet
    gate.observe(0.2)  # ema 0.2
    assert not gate.on()
    gate.observe(0.6)  # ema 0.4
    saved = gate.state_dict()
    assert gate.on()
    gate.observe(0.0)  # ema 0.2: below the threshold again, the gate stays open
    assert gate.ema == pytest.approx(0.2) and gate.on()
    resumed = IGGate(threshold=0.3, rate=0.5)
    resumed.load_state_dict(saved)
    assert resumed.ema == pytest.approx(0.4) and resumed.on()
    assert IGGate(threshold=None).on()
