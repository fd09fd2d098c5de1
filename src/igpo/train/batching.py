"""Trajectories → padded tensors for the scoring and update passes (shared by RL and SFT)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from igpo.agent.trajectory import Trajectory


def collate(
    trajs: Sequence[Trajectory], pad_id: int, loss_masks: Sequence[list[bool]] | None = None
) -> dict[str, torch.Tensor]:
    """Right-padded batch: ids [B, L], attn [B, L], loss_mask [B, L] (bool), turns [B, L] (-1 = prompt or pad),
    prompt_len [B], and rollout_lp [B, L] (float, 0 outside generations) when every trajectory that generated
    recorded its sampling log-probs. `loss_masks` overrides each trajectory's own mask (SFT trains on some turns only)."""
    L = max(len(tr.ids) for tr in trajs)
    B = len(trajs)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    attn = torch.zeros((B, L), dtype=torch.long)
    loss_mask = torch.zeros((B, L), dtype=torch.bool)
    turns = torch.full((B, L), -1, dtype=torch.long)
    for b, tr in enumerate(trajs):
        n = len(tr.ids)
        ids[b, :n] = torch.tensor(tr.ids)
        attn[b, :n] = 1
        loss_mask[b, :n] = torch.tensor(loss_masks[b] if loss_masks is not None else tr.loss_mask())
        turns[b, :n] = torch.tensor(tr.token_turns())
    prompt_len = torch.tensor([tr.prompt_len for tr in trajs])
    out = {"ids": ids, "attn": attn, "loss_mask": loss_mask, "turns": turns, "prompt_len": prompt_len}
    # The engine's log-probs (vLLM), for TIS and the mismatch metric. An episode without turns (its prompt filled
    # the context) sampled nothing: it has nothing to record, and its row stays 0.
    sampled = {b: tr.rollout_logprobs() for b, tr in enumerate(trajs) if tr.turns}
    if sampled and all(lp is not None for lp in sampled.values()):
        out["rollout_lp"] = torch.zeros((B, L))
        for b, lp in sampled.items():
            out["rollout_lp"][b, : len(lp)] = torch.tensor(lp)
    return out
