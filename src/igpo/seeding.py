"""Seeds derived from a run's seed: every random choice of a step (its questions' rollouts, each turn's sampling,
the update's shuffle) draws from a seed that is a fixed function of `trainer.seed` and where it is in the run, so
a resumed run and any rank or batch layout draw the same numbers."""

from __future__ import annotations

from collections.abc import Sequence


def mix(values: Sequence[int], weights: Sequence[int], bits: int) -> int:
    """One seed from several integers: sum(value × weight) mod 2**bits."""
    return sum(v * w for v, w in zip(values, weights, strict=True)) % (1 << bits)


def step_seed(seed: int, step: int) -> int:
    """The seed of a training step (its global RNG state and the update's shuffle)."""
    return mix((seed, step), (1_000_003, 7919), bits=31)


def episode_seed(seed: int, step: int, question: int, k: int) -> int:
    """The sampling seed of rollout k of the step's question: the same on any rank and in any batch."""
    return mix((step_seed(seed, step), question, k), (1_000_033, 4099, 1), bits=62)


def turn_seed(episode: int, turn: int) -> int:
    """The sampling seed of turn `turn` of the episode whose seed is `episode`."""
    return mix((episode, turn), (1_000_003, 7919), bits=62)
