"""Per-step checks of what must never happen; a violation stops the run with `InvariantError`."""

from __future__ import annotations

import torch

from igpo.agent.trajectory import Trajectory


class InvariantError(RuntimeError):
    """A training invariant was violated; the message says which and where."""


def check_batch_tokens(trajs: list[Trajectory], ids: torch.Tensor, loss_mask: torch.Tensor) -> None:
    """Trained ids are the sampled ids, and the loss mask covers exactly the tokens the policy generated."""
    for b, tr in enumerate(trajs):
        n = len(tr.ids)
        if ids[b, :n].tolist() != tr.ids:
            raise InvariantError(f"rollout {b}: the ids fed to the update differ from the trajectory's ids")
        generated = sum(t.gen_end - t.gen_start for t in tr.turns)
        if int(loss_mask[b].sum()) != generated or loss_mask[b, n:].any():
            raise InvariantError(
                f"rollout {b}: the loss mask covers {int(loss_mask[b].sum())} tokens, the policy generated {generated}"
            )
        spans = torch.zeros(ids.shape[1], dtype=torch.bool)
        for t in tr.turns:
            spans[t.gen_start : t.gen_end] = True
        if not torch.equal(loss_mask[b].bool(), spans):
            raise InvariantError(f"rollout {b}: the loss mask covers tokens the policy did not generate")


def check_ig_telescopes(belief_logprobs: torch.Tensor, ig: torch.Tensor, kind: str, where: str) -> None:
    """Σ_t IG_t equals p_last − p_0 (or the log-prob difference)."""
    total = ig.sum()
    ends = belief_logprobs[[-1, 0]]
    expect = ends.exp() if kind == "prob_diff" else ends
    expect = expect[0] - expect[1]
    if not torch.isclose(total, expect, atol=1e-5):
        raise InvariantError(f"{where}: Σ IG = {total:.6f} but p_last − p_0 = {expect:.6f}")


def _norm(text: str) -> str:
    return " ".join(text.split())


def check_no_probe_leak(
    tr: Trajectory, tokenizer, probe: str, probe_ids: list[int], answers_ids: list[list[int]], where: str
) -> None:
    """The belief probe followed by a gold answer was never written into a policy context by us.

    It is built only by belief scoring, as `probe_ids + answer ids` after a copy of a context prefix;
    the defect this guards against is that buffer leaking into the context the next turn is generated from (the
    official code left stale probe tokens there). Such a leak lands among the ids the rollout writes from the
    chat template: the prompt around the question and the ids between turns (`Trajectory.rollout_spans`), so
    only those are searched, each run on its own, on the ids and on the decoded text (a leak could be tokenized
    differently). The text of the question, of the policy's own generations and of tool results is not
    searched: the policy may well write the probe's words ("Now there's enough information to answer
    </think> <answer> London"), a retrieved page may hold them, and a question may hold its answer (with an
    empty probe the probed text is the bare answer); none of them is the probe, and stopping the run on them would
    stop it on model output or data."""
    for a, b in tr.rollout_spans():
        ids = tr.ids[a:b]
        for ans_ids in answers_ids:
            probed = probe_ids + ans_ids
            n = len(probed)
            for k in range(len(ids) - n + 1):
                if ids[k] == probed[0] and ids[k : k + n] == probed:
                    raise InvariantError(f"{where}: the belief probe appears in the policy context at token {a + k}")
        text = _norm(tokenizer.decode(ids))
        for ans in tr.example.answers:
            if _norm(probe + ans) in text:
                raise InvariantError(
                    f"{where}: the belief probe text {_norm(probe + ans)!r} appears in the policy "
                    f"context (tokens {a}..{b})"
                )
