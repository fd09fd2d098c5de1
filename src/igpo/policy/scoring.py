"""Forward passes that score tokens: per-token log-probs (old, reference, current policy) and beliefs.

Belief of the gold answer after a context prefix (IGPO §2): teacher-force `probe + answer` after `ids[:prefix]`
(`probe`: the belief probe, `algorithm.belief_probe`) and take the mean log-prob of the answer tokens. Tokens after
the answer (closing tag, end of turn) cannot change those log-probs under a causal model, so they are not fed.

Three implementations on the trainer's model that must agree (tests assert 1e-4):
- `belief_logprobs_reference`: one plain forward per (prefix, alias). Easy to read, T·K forwards.
- `belief_logprobs_packed`: the trajectory once, then per prefix the probe once and every alias after it; a
  probe attends to its prefix and itself, an alias to its prefix, its probe and itself (4-D additive mask,
  explicit position ids), and logits are computed only at the positions that predict answer ids.
  Cost ≈ one forward over the trajectory.
- `belief_logprobs_cached`: as packed, but the trajectory's keys and values are those the rollout engine kept
  (`Generator.held_kv`): only the probes and aliases are fed, tens of tokens per prefix, no pass over the
  trajectory. In a causal model the keys at position i depend on ids[:i+1] only, so the cache of a trajectory's
  last context holds every shorter prefix's keys as its first columns.

And one on the rollout engine's own copy of the weights (`algorithm.belief_backend: engine`):
`belief_logprobs_engine` asks a `ContinuationScorer` (vLLM: prompt log-probs, the trajectory's blocks read from its
prefix cache) for the answer ids after `ids[:prefix] + probe`, as token ids; `compare_beliefs` is the periodic
cross-check of its result against `belief_logprobs_packed`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache

from igpo.agent.engine import MIN_SHARED_PREFIX, cache_kwarg, returned_cache
from igpo.agent.generators import ContinuationScorer


class BeliefCheckError(RuntimeError):
    """The rollout engine's beliefs differ from the trainer's past the cross-check's tolerance."""


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
def belief_logprobs_reference(model, probe: list[int], queries: Sequence[BeliefQuery]) -> list[torch.Tensor]:
    """Per query, [P, K] mean log-prob of each alias after each prefix: one forward per (prefix, alias)."""
    dev = _device(model)
    out = []
    for q in queries:
        res = torch.empty(len(q.prefixes), len(q.answers))
        for i, p in enumerate(q.prefixes):
            for k, ans in enumerate(q.answers):
                seq = torch.tensor([q.ids[:p] + probe + ans], device=dev)
                logits = model(input_ids=seq).logits[0]
                start = p + len(probe)
                lp = _answer_logprobs(logits[start - 1 : start - 1 + len(ans)], seq[0, start : start + len(ans)])
                res[i, k] = lp.mean().cpu()
        out.append(res)
    return out


@dataclass
class _Packed:
    """One packed row: per prefix a head (the probe), then per alias its answer; in a packed row (not cached)
    the trajectory comes first.

    Columns a row attends to: C context columns (the trajectory's cached keys, C = 0 when the trajectory is fed),
    then its own tokens. A segment (start, end, ctx, also) attends causally to itself, to context columns
    [0, ctx) (in a packed row: the trajectory's own tokens) and to its own tokens in the span `also`. `scores`
    holds, per (prefix, alias) in row-major order, the token indices whose logits predict the answer ids, and
    those ids.
    """

    tokens: list[int]
    positions: list[int]
    segments: list[tuple[int, int, int, tuple[int, int] | None]]
    scores: list[tuple[list[int], list[int]]]


def _pack(q: BeliefQuery, probe: list[int], cached: bool = False) -> _Packed:
    """`cached`: the keys of ids[:p - 1] come from a cache; each prefix's head is its last id ids[p - 1], fed again
    at its own position, then the probe. That id's logits are the ones that predict the first answer id with an
    empty probe, and a cache holds keys, not logits."""
    row = _Packed([], [], [], [])

    def append(ids: list[int], first_pos: int, ctx: int, also: tuple[int, int] | None = None) -> int:
        start = len(row.tokens)
        row.tokens += ids
        row.positions += range(first_pos, first_pos + len(ids))
        row.segments.append((start, len(row.tokens), ctx, also))
        return start

    if not cached:
        append(list(q.ids[: max(q.prefixes)]), 0, 0)
    for p in q.prefixes:
        # The probe is the same for every alias: it is fed once per prefix and the aliases attend to it.
        head = [q.ids[p - 1]] + probe if cached else probe
        ctx = p - 1 if cached else p
        s0 = append(head, ctx, ctx)
        s1 = s0 + len(head)
        # The column that predicts the first answer id: the head's last, or with an empty probe
        # (`algorithm.belief_probe: ''`) in a packed row the prefix's last.
        first = s1 - 1 if head else p - 1
        for ans in q.answers:
            a0 = append(ans, ctx + len(head), ctx, (s0, s1))
            row.scores.append(([first] + list(range(a0, a0 + len(ans) - 1)), list(ans)))
    return row


def _score_packed(model, packed: list[_Packed], held: list[list[tuple[torch.Tensor, torch.Tensor]]] | None):
    """One forward over packed rows; per row, [P·K] mean answer log-probs in `scores` order.

    held: None (packed rows), or per row the per-layer keys and values [1, kv_heads, n_r, head_dim] of its
    context columns (cached rows). They are copied, left-aligned, into a scratch cache [R, kv_heads, C, head_dim]
    (zeros after a row's n_r columns: masked, but finite), so the forward appends to the copy, never to them.
    """
    dev = _device(model)
    dtype = next(model.parameters()).dtype
    neg = torch.finfo(dtype).min
    R = len(packed)
    width = max(len(r.tokens) for r in packed)
    C = max(kv[0][0].shape[2] for kv in held) if held else 0
    ids = torch.zeros((R, width), dtype=torch.long)
    pos = torch.zeros((R, width), dtype=torch.long)
    allowed = torch.zeros((R, width, C + width), dtype=torch.bool)
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    keep: set[int] = set()
    for r, row in enumerate(packed):
        n = len(row.tokens)
        ids[r, :n] = torch.tensor(row.tokens)
        pos[r, :n] = torch.tensor(row.positions)
        pos[r, n:] = torch.arange(width - n)
        for start, end, ctx, also in row.segments:
            allowed[r, start:end, C + start : C + end] = causal[: end - start, : end - start]
            allowed[r, start:end, :ctx] = True
            if also is not None:
                allowed[r, start:end, C + also[0] : C + also[1]] = True
        for cols, _ in row.scores:
            keep.update(cols)
        # Padding rows attend to themselves only: no fully masked row, no NaN.
        allowed[r, n:, C + n :] = torch.eye(width - n, dtype=torch.bool)
    keep_idx = torch.tensor(sorted(keep), dtype=torch.long)
    col = {c: j for j, c in enumerate(keep_idx.tolist())}
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, neg)[:, None]
    extra = {}
    if C:
        layers = []
        for li in range(len(held[0])):
            k0, v0 = held[0][li]
            k = k0.new_zeros((R, k0.shape[1], C, k0.shape[3]))
            v = v0.new_zeros((R, v0.shape[1], C, v0.shape[3]))
            for r, kv in enumerate(held):
                n = kv[li][0].shape[2]
                k[r, :, :n], v[r, :, :n] = kv[li][0][0], kv[li][1][0]
            layers.append((k, v))
        extra[cache_kwarg(model)] = DynamicCache(ddp_cache_data=layers)
    logits = model(
        input_ids=ids.to(dev),
        attention_mask=mask.to(dev),
        position_ids=pos.to(dev),
        logits_to_keep=keep_idx.to(dev),
        use_cache=bool(C),
        **extra,
    ).logits
    out = []
    for r, row in enumerate(packed):
        res = torch.empty(len(row.scores))
        for b, (cols, targets) in enumerate(row.scores):
            lp = _answer_logprobs(logits[r, [col[c] for c in cols]], torch.tensor(targets, device=dev))
            res[b] = lp.mean().cpu()
        out.append(res)
    return out


@torch.no_grad()
def belief_logprobs_packed(
    model, probe: list[int], queries: Sequence[BeliefQuery], max_rows: int = 4
) -> list[torch.Tensor]:
    """Same result as the reference, one forward per `max_rows` trajectories."""
    out: list[torch.Tensor] = []
    for lo in range(0, len(queries), max_rows):
        chunk = queries[lo : lo + max_rows]
        scores = _score_packed(model, [_pack(q, probe) for q in chunk], None)
        out += [res.view(len(q.prefixes), len(q.answers)) for q, res in zip(chunk, scores)]
    return out


@torch.no_grad()
def belief_logprobs_cached(
    model,
    probe: list[int],
    queries: Sequence[BeliefQuery],
    held: Sequence[list[tuple[torch.Tensor, torch.Tensor]] | None],
    max_rows: int = 4,
) -> list[torch.Tensor]:
    """Same result as the reference, from the keys and values the rollout engine holds.

    held[i]: query i's per-layer keys and values [1, kv_heads, n, head_dim] of ids[:n], n >= max(prefixes) - 1,
    computed by `model`'s current weights (`Generator.held_kv`); they are read, never written. None: no cache is
    held for that trajectory, which is scored by `belief_logprobs_packed`.
    """
    out: list[torch.Tensor | None] = [None] * len(queries)
    cached = [i for i, kv in enumerate(held) if kv is not None]
    for lo in range(0, len(cached), max_rows):
        chunk = cached[lo : lo + max_rows]
        rows = []
        for i in chunk:
            n = max(queries[i].prefixes) - 1  # each prefix's last id is fed again (`_pack`), not read from the cache
            rows.append([(k[:, :, :n], v[:, :, :n]) for k, v in held[i]])
        scores = _score_packed(model, [_pack(queries[i], probe, cached=True) for i in chunk], rows)
        for i, res in zip(chunk, scores):
            out[i] = res.view(len(queries[i].prefixes), len(queries[i].answers))
    rest = [i for i, kv in enumerate(held) if kv is None]
    for i, res in zip(rest, belief_logprobs_packed(model, probe, [queries[i] for i in rest], max_rows)):
        out[i] = res
    return out


def belief_logprobs_engine(
    scorer: ContinuationScorer, probe: list[int], queries: Sequence[BeliefQuery]
) -> list[torch.Tensor]:
    """Same result as the reference, from the engine's weights: one request per (prefix, alias), the prefix's
    ids, the probe, then the alias, all as token ids (never text). Per query, [P, K]."""
    contexts, answers = [], []
    for q in queries:
        for p in q.prefixes:
            ctx = list(q.ids[:p]) + probe
            for ans in q.answers:
                contexts.append(ctx)
                answers.append(list(ans))
    means = torch.tensor([sum(lp) / len(lp) for lp in scorer.continuation_logprobs(contexts, answers)])
    shapes = [(len(q.prefixes), len(q.answers)) for q in queries]
    return [m.view(shape) for m, shape in zip(means.split([p * k for p, k in shapes]), shapes)]


def compare_beliefs(engine: Sequence[torch.Tensor], trainer: Sequence[torch.Tensor], tolerance: float, where: str):
    """The cross-check of engine beliefs against the trainer's (per query, [P, K] mean answer log-probs each):
    `belief_engine_max_abs_diff` and `belief_engine_mean_abs_diff` over every (query, prefix, alias), or a
    `BeliefCheckError` (naming `where`) when the largest is past `tolerance` or not finite."""
    diff = torch.cat([(e.double() - t.double()).abs().flatten() for e, t in zip(engine, trainer, strict=True)])
    worst, mean = diff.max().item(), diff.mean().item()
    if not worst <= tolerance:  # NaN fails too
        raise BeliefCheckError(
            f"{where}: the engine's beliefs (mean answer log-probs) differ from the trainer's by up to {worst:.3g} "
            f"(mean {mean:.3g}; algorithm.belief_check_tolerance {tolerance:g}): the engine does not score with the "
            "trainer's weights, or scores other ids"
        )
    return {"belief_engine_max_abs_diff": worst, "belief_engine_mean_abs_diff": mean}


def token_logprobs(
    model,
    ids: torch.Tensor,
    attention_mask: torch.Tensor,
    start: int = 1,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    temperature: float = 1.0,
    score_mask: torch.Tensor | None = None,
    shared_prefix: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of each token given the ones before it, under `model` at `temperature` (the rollout's sampling
    temperature for the PPO ratio and KL, so they are taken under the distribution that sampled; 1 for beliefs).

    ids, attention_mask: [B, L] (right-padded). Only tokens at positions >= `start` (>= 1) are scored, so the
    logits of a shared prompt are never materialised. `score_mask` [B, L] (bool), when given, takes the place
    of `start`: only the tokens it marks (the policy's own) are scored, and the LM head, the log-softmax and the
    entropy run on those positions only, not on tool results (the fast path; `score_mask=None` is the
    reference, and a test asserts they agree where the mask is set). Returns logprobs [B, L] (0 where not scored and on padding)
    and, if asked, the entropy of the predictive distribution of each scored token [B, L] (carrying gradient
    only when `entropy_grad`).

    `shared_prefix`: the leading ids common to every row (the system prompt and tool schemas) are run once, at
    batch 1, and every row's remaining ids attend to their keys and values (`_shared_prefix_len` says when);
    values and gradients are those of the plain forward (tests: 1e-5, fp32). `model` must be the module itself,
    whose forward takes a KV cache, and its caller the only one to decide how many forwards run (not a DDP
    wrapper, not an FSDP-sharded model: see `Trainer`).
    """
    if score_mask is not None:
        return _masked_token_logprobs(
            model, ids, attention_mask, score_mask, with_entropy, entropy_grad, temperature, shared_prefix
        )
    L = ids.shape[1]
    start = max(1, min(start, L - 1))
    P = _shared_prefix_len(ids, attention_mask, start - 1) if shared_prefix else 0
    # Positions start-1 .. L-2 predict tokens start .. L-1. An index tensor (not a count) keeps the gathered hidden
    # states contiguous, so the LM head is one matrix product, and skips the last position's useless logits.
    keep = torch.arange(start - 1, L - 1, device=ids.device)
    logits = model(
        input_ids=ids[:, P:], attention_mask=attention_mask, logits_to_keep=keep - P, **_prefix_kwargs(model, ids, P)
    ).logits  # [B, L - start, V]
    logp = _log_softmax(logits, temperature)
    lp = logp.gather(-1, ids[:, start:, None]).squeeze(-1)
    lp = torch.nn.functional.pad(lp, (start, 0)) * attention_mask
    ent = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            ent = -(logp.exp() * logp).sum(-1)
            ent = torch.nn.functional.pad(ent, (start, 0)) * attention_mask
    return lp, ent


def _shared_prefix_len(ids: torch.Tensor, attention_mask: torch.Tensor, limit: int) -> int:
    """How many leading ids of ids [B, L] to run once for all rows: their longest common prefix among real
    (attention-mask) ids, at most `limit` (the first position whose logits are wanted: the prefix's own logits are
    never computed) and at most each row's length - 1 (every row keeps an id in its suffix). 0 (no sharing) for
    a single row or a prefix shorter than MIN_SHARED_PREFIX, which does not pay for a separate forward."""
    if ids.shape[0] < 2:
        return 0
    common = ((ids == ids[:1]) & attention_mask.bool()).all(0)
    n = int(common.int().cumprod(0).sum())
    n = min(n, limit, int(attention_mask.sum(1).min()) - 1)
    return n if n >= MIN_SHARED_PREFIX else 0


def _prefix_kwargs(model, ids: torch.Tensor, P: int) -> dict:
    """Forward arguments under which a forward over ids[:, P:] sees ids[:, :P] before it: the prefix is run once
    (batch 1, with gradient when enabled) and its keys/values repeated to the B rows, so the gradients of all rows
    add up in the one prefix forward; position ids continue from P. {} when P = 0 (the plain forward)."""
    if P == 0:
        return {}
    B, L = ids.shape
    cache = returned_cache(model(input_ids=ids[:1, :P], use_cache=True, logits_to_keep=1))
    cache.batch_repeat_interleave(B)
    positions = torch.arange(P, L, device=ids.device).expand(B, -1)
    return {cache_kwarg(model): cache, "position_ids": positions, "use_cache": True}


def _log_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1)  # one fused pass over the vocabulary


def _output_embeddings(model):
    inner = getattr(model, "module", model)  # DDP keeps the model in `.module`; FSDP2 shards it in place
    return inner.get_output_embeddings()


def _masked_token_logprobs(
    model, ids, attention_mask, score_mask, with_entropy, entropy_grad, temperature, shared_prefix
):
    """`token_logprobs` on the positions of `score_mask` [B, L] only.

    The model runs its own forward (so any logit post-processing it does still applies), but a pre-hook on
    its output embedding hands the LM head only the N hidden states that predict a marked token: logits
    [1, N, V] instead of [B, L, V]. In a rollout most scored positions are tool results, so this is most of
    the LM head, log-softmax and entropy work, and most of the memory they take. With a shared prefix of P ids
    the hooked forward covers columns P..L-1 only (P is at most the first predicting column).
    """
    B, L = ids.shape
    want = score_mask.bool() & attention_mask.bool()
    want[:, 0] = False  # nothing predicts the first token
    rows, cols = want.nonzero(as_tuple=True)  # [N] each: token (row, col) is predicted at (row, col - 1)
    first = int(cols.min()) if len(cols) else L
    P = _shared_prefix_len(ids, attention_mask, first - 1) if shared_prefix else 0
    prefix = _prefix_kwargs(model, ids, P)  # before the hook: the prefix forward's LM head is not ours

    def gather(module, args):
        return (args[0][rows, cols - 1 - P][None],) + tuple(args[1:])

    handle = _output_embeddings(model).register_forward_pre_hook(gather)
    try:
        # [N, V]
        logits = model(input_ids=ids[:, P:], attention_mask=attention_mask, logits_to_keep=0, **prefix).logits[0]
    finally:
        handle.remove()
    logp = _log_softmax(logits, temperature)
    lp = torch.zeros(B, L, dtype=logp.dtype, device=ids.device)
    lp = lp.index_put((rows, cols), logp.gather(-1, ids[rows, cols, None]).squeeze(-1))
    ent = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            ent = torch.zeros(B, L, dtype=logp.dtype, device=ids.device)
            ent = ent.index_put((rows, cols), -(logp.exp() * logp).sum(-1))
    return lp, ent
