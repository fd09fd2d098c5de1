"""Faults a run survives instead of crashing or silently training on garbage.

- Non-finite numbers: `require_finite` raises `NumericalFault` naming the phase (beliefs, rewards, advantages,
  loss, gradients); the trainer skips that step (no optimizer step, a `skipped` row in metrics.jsonl) and
  `BadStepGuard` stops the run with `TooManyBadSteps` after `trainer.max_bad_steps` skipped steps in a row.
- Several processes: `agree` (one small all-reduce) makes every rank raise when any rank found a NaN, so all
  ranks skip the same steps and stop at the same step. (The gradient norm is global already.)
- Kill points: `kill_point(name)` SIGKILLs this process at the n-th time it passes point `name` when the
  environment variable `IGPO_KILL_AT=name@n` is set (a test hook for exact resume; a no-op otherwise).
"""

from __future__ import annotations

import logging
import os
import signal
from collections import Counter
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

KILL_ENV = "IGPO_KILL_AT"
_passes: Counter = Counter()


class NumericalFault(RuntimeError):
    """A NaN or inf in one phase of a step: the step is skipped."""

    def __init__(self, step: int, phase: str, what: str):
        super().__init__(f"step {step}: non-finite {what} in phase '{phase}'")
        self.step, self.phase = step, phase


class TooManyBadSteps(RuntimeError):
    """`trainer.max_bad_steps` steps in a row were skipped: the run stops; the message names the last phase."""


def finite_or_fault(value: torch.Tensor | list[float], step: int, phase: str, what: str) -> NumericalFault | None:
    """The `NumericalFault` to raise when any element of `value` (a tensor or list of floats, any shape) is NaN
    or inf; None when all are finite."""
    t = torch.as_tensor(value).detach()
    bad = int((~torch.isfinite(t)).sum())
    return NumericalFault(step, phase, f"{what} ({bad} of {t.numel()} values)") if bad else None


def require_finite(value: torch.Tensor | list[float], step: int, phase: str, what: str) -> None:
    """Raise `NumericalFault` when any element of `value` is NaN or inf (see `finite_or_fault`)."""
    if (fault := finite_or_fault(value, step, phase, what)) is not None:
        raise fault


PHASES = ("beliefs", "rewards", "advantages", "loss", "gradients")


def agree(fault: NumericalFault | None, step: int, all_sum: Callable[[list[float]], list[float]]) -> None:
    """Raise on every rank when any rank found a fault, so that all ranks skip the same step (and the run stops
    at the same step on all). `all_sum` sums a list over ranks (`Dist.all_sum`: one small all-reduce; the
    identity in a single process). Every rank must call it at the same point of the step. A rank that found
    nothing raises a fault naming the first faulty phase and how many ranks saw it."""
    counts = all_sum([float(fault is not None and fault.phase == p) for p in PHASES])
    if fault is None:
        first = next((i for i, c in enumerate(counts) if c), None)
        if first is None:
            return
        fault = NumericalFault(step, PHASES[first], f"{PHASES[first]} on {int(counts[first])} other rank(s)")
    raise fault


class BadStepGuard:
    """Counts skipped steps in a row; the count is part of a checkpoint, so a resumed run counts on."""

    def __init__(self, max_bad_steps: int, in_a_row: int = 0):
        self.max_bad_steps, self.in_a_row = max_bad_steps, in_a_row
        self.last: NumericalFault | None = None

    def passed(self) -> None:
        self.in_a_row, self.last = 0, None

    def skipped(self, fault: NumericalFault) -> dict:
        """Record a skipped step; returns its metrics row."""
        self.in_a_row += 1
        self.last = fault
        log.warning("%s: step skipped (%d in a row; the run stops at %d)", fault, self.in_a_row, self.max_bad_steps)
        return {
            "step": fault.step,
            "skipped": {"phase": fault.phase, "error": str(fault)},
            "bad_steps_in_a_row": self.in_a_row,
        }

    def check(self) -> None:
        """Stop the run once `max_bad_steps` steps in a row were skipped."""
        if self.last is not None and self.in_a_row >= self.max_bad_steps:
            raise TooManyBadSteps(
                f"{self.in_a_row} bad steps in a row (trainer.max_bad_steps={self.max_bad_steps}); "
                f"the last: {self.last}"
            )


def kill_point(name: str) -> None:
    """SIGKILL this process here when `IGPO_KILL_AT` is `name@n` and this is the n-th pass (n defaults to 1)."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    point, _, nth = spec.partition("@")
    if point != name:
        return
    _passes[name] += 1
    if _passes[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
