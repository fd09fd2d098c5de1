"""The KV-cache rollout engine: each episode's keys and values are kept from one turn to the next.

`model.generate` over the full context (`HFGenerator`) prefills every episode's whole conversation again at
every turn and keeps finished episodes in the batch until the longest one stops. `CachedGenerator` is a
drop-in `Generator` that instead
- keeps, after each call, the KV cache of every context it generated for, keyed by its token ids. A context of
  the next call reuses the cache of its longest stored prefix, so only the new ids (the close of the last
  generation, the tool message, the next assistant opening) are prefilled. Matching is by token ids, so a
  context that is not a continuation simply gets no reuse;
- prefills a prefix shared by all fresh contexts (the system prompt and tool schemas) once, not once a row;
- decodes all active contexts together, one forward per step, and drops a context from the batch as soon as
  it samples a stop id;
- given per-context seeds (`SamplingParams.seeds`), samples each context from its own stream exactly as
  `HFGenerator` does (`SeededSampler`), so the engine choice does not change what a seeded rollout samples.

Layout of one call's batch (B rows, W = Wc + Wn columns, then one column per decoding step):
    row i: [pad ... | cached ids of row i]  [pad ... | new ids of row i]  [decoded ids ...]
           <------------- Wc ------------>  <----------- Wn ----------->
Pads (in the cache part and before the new ids) are masked holes; position ids count the real ids before a
token (cumulative sum of the attention mask), so a token gets the same position, and the same keys, as in
an unpadded forward over its context.

The batch's keys and values live in one preallocated buffer per layer (`_GrowingLayer`), sized at the start of a
call for its longest possible length (cache part, new ids, `max_new_tokens`): a decoding step writes its column in
place, where `DynamicCache` would copy the whole cache (`torch.cat`) at every step. The model sees the same values
through a view of the filled columns, so it computes what it computed over the concatenated cache. Every layer
is full attention: keys are kept and reused column by column, which a sliding-window layer does not hold.

Caches hold the weights of the moment: they live for one rollout, and `release()` drops them (`rollout` calls it
when it starts, and when it ends unless its caller reads them first: the trainer scores beliefs against them,
`held_kv`). A stored cache is dropped as soon as a context of a later call extends its whole context (the cache
kept for that context covers the same ids); the caches of episodes that ended stay held until `release()`, so after
a rollout every episode's last context has its keys and values here. Stored caches have no holes: column j holds
the keys of id j, at position j.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch
from transformers.cache_utils import Cache, DynamicLayer
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from igpo.agent.generators import Generator, SamplingParams, SeededSampler
from igpo.policy.loading import is_lora

MIN_SHARED_PREFIX = 16  # shorter common prefixes of fresh contexts are not worth a separate forward


def cache_kwarg(model) -> str:
    """The forward argument that takes a KV cache: `cache` from transformers 5.24 on (`past_key_values`,
    its older name, is deprecated there), `past_key_values` before. A LoRA adapter's forward passes **kwargs
    through, so its base model's signature decides."""
    forward = model.get_base_model().forward if is_lora(model) else model.forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def returned_cache(out):
    """The KV cache a forward returned, under either name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


class _GrowingLayer(DynamicLayer):
    """One layer's keys and values [B, kv_heads, n, head_dim] as a view of the first n columns of a buffer with
    `capacity` columns: `update` writes the new columns in place, and a buffer that is full is replaced by one of
    twice the capacity (so an append costs amortised O(1) a column, not a copy of the whole cache)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    @classmethod
    def holding(cls, capacity: int, rows: list[tuple[torch.Tensor, torch.Tensor] | None], width: int) -> _GrowingLayer:
        """A layer of len(rows) rows whose first `width` columns hold each row's keys and values [1, kv_heads, n,
        head_dim] right-aligned (None: a row with none), zeros in the holes before them (masked, but attention
        multiplies them: they must be finite)."""
        k0, v0 = next(r for r in rows if r is not None)
        layer = cls(capacity)
        layer._allocate(len(rows), k0, v0)
        layer._buf_k[:, :, :width].zero_()
        layer._buf_v[:, :, :width].zero_()
        for i, row in enumerate(rows):
            if row is not None:
                n = row[0].shape[2]
                layer._buf_k[i, :, width - n : width] = row[0][0]
                layer._buf_v[i, :, width - n : width] = row[1][0]
        layer._set_length(width)
        return layer

    def _allocate(self, batch: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Buffers of `batch` rows and `capacity` columns, with the heads, head size, dtype and device of `keys` and
        `values`; their content is undefined."""
        self.device = keys.device
        self._buf_k = keys.new_empty((batch, keys.shape[1], self.capacity, keys.shape[3]))
        self._buf_v = values.new_empty((batch, values.shape[1], self.capacity, values.shape[3]))
        self.is_initialized = True

    def _set_length(self, n: int) -> None:
        self.keys, self.values = self._buf_k[:, :, :n], self._buf_v[:, :, :n]
        self._views = (self.keys, self.values)

    def _in_buffer(self) -> bool:
        """Whether `keys`/`values` are still the views `_set_length` made (DynamicLayer's crop,
        batch_repeat_interleave and reorder_cache put other tensors there, which `update` copies into a buffer)."""
        return self.keys is self._views[0] and self.values is self._views[1]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self._allocate(key_states.shape[0], key_states, value_states)
        self._set_length(0)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, new = self.keys.shape[2], key_states.shape[2]
        full = n + new > self.capacity
        if full:
            self.capacity = max(2 * self.capacity, n + new)
        if full or not self._in_buffer():
            keys, values = self.keys, self.values
            self._allocate(keys.shape[0], keys, values)
            self._buf_k[:, :, :n], self._buf_v[:, :, :n] = keys, values
        self._buf_k[:, :, n : n + new] = key_states
        self._buf_v[:, :, n : n + new] = value_states
        self._set_length(n + new)
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            n = self.keys.shape[2]
            self._buf_k, self._buf_v = self._buf_k[indices], self._buf_v[indices]
            self._set_length(n)


@dataclass
class _Stored:
    """The keys/values of `ids` (every id that was fed to the model) for one context."""

    ids: np.ndarray  # [n]
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [1, heads, n, head_dim]
    context_len: int  # ids[:context_len] is the context a call generated for (then the ids it sampled)


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


class CachedGenerator(Generator):
    """A `Generator` that reuses each episode's KV cache across turns (see the module docstring)."""

    def __init__(self, model, pad_id: int):
        self.model, self.pad_id = model, pad_id
        self._stored: list[_Stored] = []
        # Ids whose keys were computed (prefill, decoding) vs taken from a stored cache, over this object's life.
        self.stats = {"computed_ids": 0, "reused_ids": 0}

    def release(self) -> None:
        """Drop every stored cache (they hold the current weights' keys; the rollout is over)."""
        self._stored = []

    def held_kv(self, ids, length: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """A stored cache's first `length` columns (views: read them, never write) if it was computed for
        ids[:length] (the same token ids), else None."""
        want = np.asarray(ids[:length], dtype=np.int64)
        if len(want) < length:
            return None
        for s in self._stored:
            if len(s.ids) >= length and np.array_equal(s.ids[:length], want):
                return [(k[:, :, :length], v[:, :, :length]) for k, v in s.kv]
        return None

    @torch.no_grad()
    def generate(self, contexts: list[list[int]], params: SamplingParams, stop_ids: list[int]) -> list[list[int]]:
        was_training = self.model.training
        self.model.eval()
        try:
            return self._generate([np.asarray(c, dtype=np.int64) for c in contexts], params, stop_ids)
        finally:
            self.model.train(was_training)

    # ------------------------------------------------------------------ cache reuse
    def _reuse(self, ctx: np.ndarray, stored: list[_Stored]) -> tuple[_Stored | None, int]:
        """The stored cache sharing the longest prefix with `ctx`, and how many of its ids to reuse.

        At least the last id of `ctx` is always fed: its logits give the first new token.
        """
        best, n = None, 0
        for s in stored:
            k = _common_prefix(ctx, s.ids)
            if k > n:
                best, n = s, k
        return best, min(n, len(ctx) - 1)

    def _shared_prefix(self, contexts: list[np.ndarray], reuse: list[int]) -> _Stored | None:
        """For fresh contexts (nothing reused), prefill the prefix common to all of them once."""
        if len(contexts) < 2 or max(reuse) > 0:
            return None
        n = min(len(c) for c in contexts) - 1
        for c in contexts[1:]:
            n = min(n, _common_prefix(contexts[0], c))
        if n < MIN_SHARED_PREFIX:
            return None
        ids = contexts[0][:n]
        out = self.model(input_ids=torch.as_tensor(ids[None], device=self._device), use_cache=True, logits_to_keep=1)
        self.stats["computed_ids"] += n
        kv = [(k, v) for k, v, *_ in returned_cache(out)]
        return _Stored(ids, kv, n)

    # ------------------------------------------------------------------ one call
    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _generate(self, contexts: list[np.ndarray], params: SamplingParams, stop_ids: list[int]) -> list[list[int]]:
        dev = self._device
        stored = self._stored
        matches = [self._reuse(c, stored) for c in contexts]
        shared = self._shared_prefix(contexts, [n for _, n in matches])
        if shared is not None:
            matches = [self._reuse(c, [shared]) for c in contexts]
        B = len(contexts)
        reuse = [n for _, n in matches]
        new = [len(c) - n for c, n in zip(contexts, reuse)]
        Wc, Wn = max(reuse), max(new)
        self.stats["reused_ids"] += sum(reuse)
        self.stats["computed_ids"] += sum(new)

        # Cache part: row i's reused keys/values right-aligned in the first Wc columns of buffers that hold every
        # column this call can feed (the last sampled token is not fed).
        capacity = Wc + Wn + params.max_new_tokens - 1
        layers = []
        for li in range(self.model.config.get_text_config(decoder=True).num_hidden_layers):
            if Wc == 0:
                layers.append(_GrowingLayer(capacity))  # allocated by the first forward
            else:
                rows = [(s.kv[li][0][:, :, :n], s.kv[li][1][:, :, :n]) if n else None for s, n in matches]
                layers.append(_GrowingLayer.holding(capacity, rows, Wc))
        cache = Cache(layers=layers)
        mask = torch.zeros((B, Wc + Wn), dtype=torch.long)
        ids = torch.full((B, Wn), self.pad_id, dtype=torch.long)
        for i, (c, n) in enumerate(zip(contexts, reuse)):
            mask[i, Wc - n : Wc] = 1
            mask[i, Wc + Wn - new[i] :] = 1
            ids[i, Wn - new[i] :] = torch.as_tensor(c[n:])
        mask, ids = mask.to(dev), ids.to(dev)
        # The stored caches are copied into the batch: let them go before decoding, but those of contexts no
        # context of this call extends (episodes that ended): `held_kv` reads them after the rollout.
        self._stored = [s for s in stored if all(_common_prefix(c, s.ids) < s.context_len for c in contexts)]
        del matches, layers, stored, shared

        warpers, seeded = [], None
        if params.temperature > 0 and params.seeds is not None:
            # One stream per context, as `HFGenerator` draws them: same seeds, same tokens.
            seeded = SeededSampler(params.seeds, params.temperature, params.top_p)
        elif params.temperature > 0:
            warpers.append(TemperatureLogitsWarper(params.temperature))
            if params.top_p < 1.0:
                warpers.append(TopPLogitsWarper(params.top_p))
        stops = torch.tensor(sorted(set(stop_ids)), device=dev)
        rows = list(range(B))  # batch row -> context index
        outputs: list[list[int]] = [[] for _ in range(B)]
        kept: list[_Stored | None] = [None] * B
        step_ids = ids
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, Wc:]
        cache_kw = cache_kwarg(self.model)
        for step in range(params.max_new_tokens):
            logits = (
                self.model(
                    input_ids=step_ids,
                    attention_mask=mask,
                    position_ids=positions,
                    use_cache=True,
                    logits_to_keep=1,
                    **{cache_kw: cache},
                )
                .logits[:, -1]
                .float()
            )
            if seeded is not None:
                tokens = seeded(None, logits).argmax(-1)
            elif warpers:
                for w in warpers:
                    logits = w(None, logits)
                tokens = torch.multinomial(torch.softmax(logits, dim=-1), 1)[:, 0]
            else:
                tokens = logits.argmax(-1)
            self.stats["computed_ids"] += len(rows) if step else 0
            done = torch.isin(tokens, stops)
            if step == params.max_new_tokens - 1:
                done[:] = True
            for r, tok in enumerate(tokens.tolist()):
                outputs[rows[r]].append(tok)
            if done.any():
                for r in done.nonzero()[:, 0].tolist():
                    kept[rows[r]] = self._keep(cache, mask, r, contexts[rows[r]], outputs[rows[r]])
                live = (~done).nonzero()[:, 0]
                if len(live) == 0:
                    break
                cache.batch_select_indices(live)
                mask, tokens, positions = mask[live], tokens[live], positions[live]
                if seeded is not None:
                    seeded.keep(live.tolist())
                rows = [rows[r] for r in live.tolist()]
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            positions = positions[:, -1:] + 1
            step_ids = tokens[:, None]
        self._stored += [s for s in kept if s is not None]
        return outputs

    @staticmethod
    def _keep(cache: Cache, mask: torch.Tensor, r: int, ctx: np.ndarray, out: list[int]) -> _Stored:
        """Row r's keys/values without the padding holes: those of ctx + out[:-1] (the last token was not fed)."""
        cols = mask[r].nonzero()[:, 0]
        kv = [
            (layer.keys[r : r + 1].index_select(2, cols), layer.values[r : r + 1].index_select(2, cols))
            for layer in cache.layers
        ]
        return _Stored(np.concatenate([ctx, np.asarray(out[:-1], dtype=np.int64)]), kv, len(ctx))
