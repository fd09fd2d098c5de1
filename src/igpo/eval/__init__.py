"""Evaluation: greedy rollouts (n = 1) and answer F1 / EM per data source. Beliefs are never computed here."""

from igpo.eval.evaluate import evaluate

__all__ = ["evaluate"]
