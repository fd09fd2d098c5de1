"""The policy loss: PPO clip with dual clip, KL to the reference, entropy bonus, and loss aggregation.

All per-token tensors are [B, L] and aligned with the token ids (the log-prob of token j sits at j);
`mask` [B, L] marks the tokens the policy generated.
"""

from __future__ import annotations

import torch


def agg_loss(
    values: torch.Tensor, mask: torch.Tensor, mode: str, num_seqs: float | None = None, num_tokens: float | None = None
) -> torch.Tensor:
    """Aggregate per-token values [B, L] into a scalar.

    `num_seqs` / `num_tokens` are the sizes of the whole mini-batch when it is split into micro-batches, so
    that the accumulated gradient equals the mini-batch's; by default this batch's own sizes.
    - token-mean (DAPO): Σ v / #tokens; every token weighs the same, the divisor varies with the batch's lengths
    - seq-mean-token-mean (GRPO/IGPO papers, 1/|o_i|): Σ_seq mean_tokens(v) / #seqs; a short sequence's tokens
      weigh more (Dr. GRPO's length bias)
    - seq-mean-token-sum: Σ_seq Σ_tokens v / #seqs; no length term (Dr. GRPO's objective, without the constant
      divisor its code adds)
    """
    m = mask.float()
    if mode == "token-mean":
        return (values * m).sum() / (num_tokens if num_tokens is not None else m.sum().clamp(min=1))
    seq_sum = (values * m).sum(-1)
    if mode == "seq-mean-token-mean":
        per_seq = seq_sum / m.sum(-1).clamp(min=1)
    elif mode == "seq-mean-token-sum":
        per_seq = seq_sum
    else:
        raise ValueError(f"unknown loss aggregation {mode!r}")
    has = (m.sum(-1) > 0).float()
    return (per_seq * has).sum() / (num_seqs if num_seqs is not None else has.sum().clamp(min=1))


def ppo_policy_loss(logprobs, old_logprobs, advantages, clip_eps: float = 0.2, dual_clip: float | None = 3.0):
    """Per-token PPO loss [B, L] and the per-token 'was clipped' indicator [B, L].

    Dual clip (Ye et al. 2020): for negative advantages the loss is bounded by −A·c.
    """
    ratio = torch.exp((logprobs - old_logprobs).clamp(-20.0, 20.0))
    loss1 = -advantages * ratio
    loss2 = -advantages * ratio.clamp(1 - clip_eps, 1 + clip_eps)
    loss = torch.maximum(loss1, loss2)
    clipped = (loss2 > loss1).float()
    if dual_clip is not None:
        loss3 = -advantages * dual_clip
        loss = torch.where(advantages < 0, torch.minimum(loss, loss3), loss)
    return loss, clipped


def kl_penalty(logprobs, ref_logprobs, kind: str = "low_var_kl") -> torch.Tensor:
    """Per-token KL estimate between the policy and the reference [B, L]."""
    diff = logprobs - ref_logprobs
    if kind == "kl":
        return diff
    if kind == "abs":
        return diff.abs()
    if kind == "mse":
        return 0.5 * diff.square()
    if kind == "low_var_kl":  # k3 estimator (Schulman), clamped as in verl
        kl = -diff
        return (kl.exp() - kl - 1).clamp(-10.0, 10.0)
    raise ValueError(f"unknown KL type {kind!r}")


def tis_weights(old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance-sampling weights [B, L]: min(π_old / π_rollout, cap), without gradient.

    π_rollout is the sampling engine's probability of the token (vLLM, bf16 kernels), π_old the trainer's for the
    same weights: the PPO ratio is taken against π_old, and this weight corrects for the tokens having been
    drawn from π_rollout. The cap bounds the variance a rare large ratio would add.
    """
    log_ratio = (old_logprobs - rollout_logprobs).detach().clamp(max=20.0)
    return log_ratio.exp().clamp(max=cap)
