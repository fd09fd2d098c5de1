"""Derived seeds stay what they were: resumed runs and recorded runs replay only if every formula is unchanged."""

import pytest

from igpo.seeding import episode_seed, mix, step_seed, turn_seed

CASES = [(0, 0, 0, 0), (1, 2, 3, 4), (7, 123, 45, 15), (2**31 - 1, 10_000, 511, 63), (-3, 5, 0, 1)]


@pytest.mark.parametrize("seed, step, question, k", CASES)
def test_seeds_equal_the_formulas_runs_were_recorded_with(seed, step, question, k):
    s = (seed * 1_000_003 + step * 7919) % (2**31)
    e = (s * 1_000_033 + question * 4099 + k) % (2**62)
    assert step_seed(seed, step) == s
    assert episode_seed(seed, step, question, k) == e
    for turn in (0, 1, 9):
        assert turn_seed(e, turn) == (e * 1_000_003 + turn * 7919) % (2**62)


def test_known_values():
    assert step_seed(1, 2) == 1_015_841
    assert episode_seed(1, 2, 3, 4) == 1_015_841 * 1_000_033 + 3 * 4099 + 4
    assert turn_seed(5, 1) == 5 * 1_000_003 + 7919
    assert mix((2**62 + 5,), (1,), bits=62) == 5  # reduced into [0, 2**bits)
    with pytest.raises(ValueError):
        mix((1, 2), (3,), bits=31)  # a value without a weight is a mistake, not a silent drop
