"""Forward passes that score tokens: per-token log-probs (old, reference, current policy) and beliefs.

Belief of the gold answer after a context prefix (IGPO §2): teacher-force `scaffold + answer` after
`ids[:prefix]` and take the mean log-prob of the answer tokens. Tokens after the answer (closing tag,
end of turn) cannot change those log-probs under a causal model, so they are not fed.

Two implementations that must agree (tests assert 1e-4):
- `belief_logprobs_reference`: one plain forward per (prefix, alias). Easy to read, T·K forwards.
- `belief_logprobs_packed`: the trajectory once, followed by every probe block; a block attends to its prefix
  and to itself only (4-D additive mask, explicit position ids), and logits are computed only at the
  positions that predict answer tokens. Cost ≈ one forward over the trajectory.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class BeliefQuery:
    """Beliefs wanted for one trajectory."""

    ids: list[int]  # the trajectory's token ids (only ids[:max(prefixes)] are read)
    prefixes: list[int]  # P context lengths
    answers: list[list[int]]  # K gold-answer token id lists (aliases)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _answer_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits [N, V] predicting targets [N] -> log-probs [N] (fp32)."""
    logits = logits.float()
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


@torch.no_grad()
def belief_logprobs_reference(model, scaffold: list[int], queries: Sequence[BeliefQuery]) -> list[torch.Tensor]:
    """Per query, [P, K] mean log-prob of each alias after each prefix: one forward per (prefix, alias)."""
    dev = _device(model)
    out = []
    for q in queries:
        res = torch.empty(len(q.prefixes), len(q.answers))
        for i, p in enumerate(q.prefixes):
            for k, ans in enumerate(q.answers):
                seq = torch.tensor([q.ids[:p] + scaffold + ans], device=dev)
                logits = model(input_ids=seq).logits[0]
                start = p + len(scaffold)
                lp = _answer_logprobs(logits[start - 1 : start - 1 + len(ans)], seq[0, start : start + len(ans)])
                res[i, k] = lp.mean().cpu()
        out.append(res)
    return out


def _pack(q: BeliefQuery, scaffold: list[int]):
    """One packed row: (tokens, positions, block starts/ends/prefix per block, answer spans)."""
    base_len = max(q.prefixes)
    tokens = list(q.ids[:base_len])
    positions = list(range(base_len))
    blocks = []  # (start col, end col, prefix, answer start col, answer len)
    for p in q.prefixes:
        for ans in q.answers:
            start = len(tokens)
            block = scaffold + ans
            tokens += block
            positions += range(p, p + len(block))
            blocks.append((start, len(tokens), p, start + len(scaffold), len(ans)))
    return tokens, positions, base_len, blocks


@torch.no_grad()
def belief_logprobs_packed(
    model, scaffold: list[int], queries: Sequence[BeliefQuery], max_rows: int = 4
) -> list[torch.Tensor]:
    """Same result as the reference, one forward per `max_rows` trajectories."""
    dev = _device(model)
    dtype = next(model.parameters()).dtype
    neg = torch.finfo(dtype).min
    out: list[torch.Tensor] = []
    for lo in range(0, len(queries), max_rows):
        chunk = queries[lo : lo + max_rows]
        packed = [_pack(q, scaffold) for q in chunk]
        width = max(len(t) for t, *_ in packed)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        pos = torch.zeros((len(chunk), width), dtype=torch.long)
        allowed = torch.zeros((len(chunk), width, width), dtype=torch.bool)
        causal = torch.ones((width, width), dtype=torch.bool).tril()
        keep: set[int] = set()
        for r, (tokens, positions, base_len, blocks) in enumerate(packed):
            n = len(tokens)
            ids[r, :n] = torch.tensor(tokens)
            pos[r, :n] = torch.tensor(positions)
            pos[r, n:] = torch.arange(width - n)
            allowed[r, :base_len, :base_len] = causal[:base_len, :base_len]
            for start, end, p, a0, alen in blocks:
                allowed[r, start:end, :p] = True
                allowed[r, start:end, start:end] = causal[: end - start, : end - start]
                keep.update(range(a0 - 1, a0 - 1 + alen))
            # Padding rows attend to themselves only: no fully masked row, no NaN.
            allowed[r, n:, n:] = torch.eye(width - n, dtype=torch.bool)
        keep_idx = torch.tensor(sorted(keep), dtype=torch.long)
        col = {c: j for j, c in enumerate(keep_idx.tolist())}
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, neg)[:, None]
        logits = model(
            input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
            logits_to_keep=keep_idx.to(dev),
        ).logits
        for r, (_, _, _, blocks) in enumerate(packed):
            q = chunk[r]
            res = torch.empty(len(q.prefixes) * len(q.answers))
            for b, (*_, a0, alen) in enumerate(blocks):
                rows = [col[c] for c in range(a0 - 1, a0 - 1 + alen)]
                lp = _answer_logprobs(logits[r, rows], ids[r, a0 : a0 + alen].to(dev))
                res[b] = lp.mean().cpu()
            out.append(res.view(len(q.prefixes), len(q.answers)))
    return out


def token_logprobs(
    model, ids: torch.Tensor, attention_mask: torch.Tensor, start: int = 1, with_entropy: bool = False,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of each token given the ones before it, under `model` at temperature 1.

    ids, attention_mask: [B, L] (right-padded). Only tokens at positions >= `start` (>= 1) are scored, so the
    logits of a shared prompt are never materialised. Returns logprobs [B, L] (0 before `start` and on
    padding) and, if asked, the entropy of the predictive distribution of each scored token [B, L]
    (carrying gradient only when `entropy_grad`).
    """
    B, L = ids.shape
    start = max(1, min(start, L - 1))
    logits = model(input_ids=ids, attention_mask=attention_mask, logits_to_keep=L - start + 1).logits
    logits = logits[:, :-1].float()  # [B, L - start, V]: position j predicts token j + 1
    targets = ids[:, start:]
    lse = torch.logsumexp(logits, dim=-1)
    lp = logits.gather(-1, targets[..., None]).squeeze(-1) - lse
    lp = torch.nn.functional.pad(lp, (start, 0)) * attention_mask
    ent = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            probs = torch.softmax(logits, dim=-1)
            ent = lse - (probs * logits).sum(-1)
            ent = torch.nn.functional.pad(ent, (start, 0)) * attention_mask
    return lp, ent
