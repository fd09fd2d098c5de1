"""Rewards: the outcome (answer F1 / EM, format penalty) and the information gain of each turn.

Answer normalisation:
- `official` (IGPO's code): lower-case, every punctuation character to a space, collapse whitespace;
  F1 over the *sets* of tokens.
- `squad`: lower-case, drop punctuation and articles, collapse whitespace; F1 over token multisets.
Both take the max over the gold aliases.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str, mode: str = "official") -> str:
    text = text.lower()
    if mode == "official":
        text = "".join(" " if ch in _PUNCT else ch for ch in text)
    elif mode == "squad":
        text = "".join(ch for ch in text if ch not in _PUNCT)
        text = _ARTICLES.sub(" ", text)
    else:
        raise ValueError(f"unknown answer normalisation {mode!r} (official | squad)")
    return " ".join(text.split())


def _f1(pred: str, gold: str, mode: str) -> float:
    p, g = normalize_answer(pred, mode).split(), normalize_answer(gold, mode).split()
    if mode == "official":
        common = len(set(p) & set(g))
        np_, ng = len(set(p)), len(set(g))
    else:
        common = sum((Counter(p) & Counter(g)).values())
        np_, ng = len(p), len(g)
    if common == 0:
        return 0.0
    precision, recall = common / np_, common / ng
    return 2 * precision * recall / (precision + recall)


def answer_f1(prediction: str, golds: Sequence[str], mode: str = "official") -> float:
    """Token F1 of `prediction` (the text inside the answer tags) against the best gold alias."""
    if isinstance(golds, str):
        golds = [golds]
    return max((_f1(prediction, g, mode) for g in golds), default=0.0)


def answer_em(prediction: str, golds: Sequence[str], mode: str = "official") -> float:
    """1.0 when the normalised prediction equals a normalised gold alias."""
    if isinstance(golds, str):
        golds = [golds]
    pred = normalize_answer(prediction, mode)
    return float(any(pred == normalize_answer(g, mode) for g in golds))


def outcome_reward(
    answer: str | None, golds: Sequence[str], format_penalty: float = -2.0, mode: str = "official"
) -> float:
    """F1 of the answer; `format_penalty` when there is no answer (format error, turn or context limit)."""
    return format_penalty if answer is None else answer_f1(answer, golds, mode)


def reduce_aliases(mean_logprobs: torch.Tensor, how: str = "max") -> torch.Tensor:
    """[P, K] mean answer log-prob per prefix and alias -> [P] (largest over aliases, or the first alias)."""
    if how == "first":
        return mean_logprobs[:, 0]
    if how == "max":
        return mean_logprobs.max(dim=1).values
    raise ValueError(f"unknown alias reduction {how!r} (max | first)")


def information_gain(belief_logprobs: torch.Tensor, kind: str = "prob_diff") -> torch.Tensor:
    """[T] mean answer log-probs after the prompt and after turns 1..T-1 -> [T-1] IG of turns 1..T-1.

    prob_diff (paper): r_t = p_t - p_{t-1} with p = exp(mean log-prob); log_prob_diff: difference of the logs.
    """
    if kind == "prob_diff":
        return belief_logprobs.exp().diff()
    if kind == "log_prob_diff":
        return belief_logprobs.diff()
    raise ValueError(f"unknown IG kind {kind!r} (prob_diff | log_prob_diff)")


IG_CLIPS = ("none", "positive")


def shape_ig(
    ig: torch.Tensor,
    clip: str = "none",
    malformed: Sequence[bool] | None = None,
    turn_format_penalty: float | None = None,
) -> torch.Tensor:
    """[T-1] IG of a rollout's non-final turns -> the turn rewards the estimator sees.

    clip `positive`: max(IG, 0), the positive-part belief reward of ΔBelief-RL (arXiv 2602.12342).
    `turn_format_penalty` x: a turn whose tool call was malformed (`malformed[t]`) gets −x in place of its IG.
    """
    if clip not in IG_CLIPS:
        raise ValueError(f"unknown IG clip {clip!r} ({' | '.join(IG_CLIPS)})")
    out = ig.clamp(min=0.0) if clip == "positive" else ig.clone()
    if turn_format_penalty is not None and malformed is not None:
        bad = torch.tensor(list(malformed)[: len(out)], dtype=torch.bool)
        out[: len(bad)][bad] = -turn_format_penalty
    return out


@dataclass
class IGGate:
    """The IG warm-up gate: IG rewards stay off until an EMA of each step's mean outcome F1 first reaches
    `threshold`; from then on they stay on. `threshold` None: always on.

    A step asks `on()` before its rollouts are scored (the EMA of the steps before it decides) and reports
    its mean F1 with `observe()` after. `state_dict()` goes into the checkpoint so a resumed run decides alike.
    """

    threshold: float | None = None
    rate: float = 0.1  # weight of the newest step in the EMA
    ema: float | None = None
    opened: bool = False

    def on(self) -> bool:
        if self.threshold is None or self.opened:
            return True
        self.opened = self.ema is not None and self.ema >= self.threshold
        return self.opened

    def observe(self, mean_f1: float) -> None:
        self.ema = mean_f1 if self.ema is None else self.rate * mean_f1 + (1 - self.rate) * self.ema

    def state_dict(self) -> dict:
        return {"ema": self.ema, "opened": self.opened}

    def load_state_dict(self, state: dict) -> None:
        self.ema, self.opened = state["ema"], bool(state["opened"])
