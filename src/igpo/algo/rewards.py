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


def outcome_reward(answer: str | None, golds: Sequence[str], format_penalty: float = -2.0, mode: str = "official") -> float:
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
