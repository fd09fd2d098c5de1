"""Rank 0's view of a step: each rank's results merged (`distributed.gather_step`), without processes."""

import pytest
import torch

from igpo.train.distributed import Dist, gather_step
from igpo.train.metrics import StepResult


class TwoRanks(Dist):
    """Rank 0 of two; rank 1's step results are given."""

    def __init__(self, other):
        super().__init__(rank=0, world_size=2)
        self.other = other

    def gather(self, obj):
        return [obj, self.other]


def step_results(turns: int, losses: dict) -> StepResult:
    rewards = torch.ones(3, max(turns, 1))
    mask = torch.zeros(3, max(turns, 1), dtype=torch.bool)
    mask[:, :turns] = True
    return StepResult(["tr"] * 3, rewards, mask, [-2.0] * 3, rewards * mask, losses, {"rollout": 1.0})


@pytest.mark.parametrize("empty_rank", [0, 1])
def test_a_rank_whose_episodes_had_no_turn_reports_no_rates(empty_rank):
    """Its episodes' prompts filled the context: no token, so no clip fraction, TIS weight or log-prob gap."""
    generated = step_results(
        2,
        {
            "pg_loss": 0.5,
            "entropy": 1.0,
            "grad_norm": 3.0,
            "clip_frac": 0.2,
            "rollout_lp_abs_diff": 1.0,
            "tis_weight": 1.5,
        },
    )
    empty = step_results(0, {"pg_loss": 0.0, "entropy": 0.0, "grad_norm": 3.0})
    mine, other = (empty, generated) if empty_rank == 0 else (generated, empty)
    merged = gather_step(TwoRanks(other), mine)
    assert len(merged.trajs) == 6 and merged.rewards.shape == (6, 2) and int(merged.turn_mask.sum()) == 6
    assert merged.losses == {
        "pg_loss": 0.5,
        "entropy": 1.0,
        "grad_norm": 3.0,
        "clip_frac": 0.2,
        "rollout_lp_abs_diff": 1.0,
        "tis_weight": 1.5,
    }


def test_the_engine_beliefs_largest_difference_is_the_largest_over_the_ranks():
    diffs = [{"belief_engine_max_abs_diff": 2e-5, "belief_engine_mean_abs_diff": 1e-5}]
    diffs.append({"belief_engine_max_abs_diff": 7e-5, "belief_engine_mean_abs_diff": 3e-5})
    merged = gather_step(TwoRanks(step_results(2, diffs[1])), step_results(2, diffs[0]))
    assert merged.losses == pytest.approx({"belief_engine_max_abs_diff": 7e-5, "belief_engine_mean_abs_diff": 2e-5})
