"""Generators: what samples the policy's turns.

`Generator` is the interface `rollout` uses, with the capabilities a backend declares (`release`, sampling
log-probs, its own copy of the weights); `SamplingParams` what one call samples with. `HFGenerator` samples from
the trainer's model with `model.generate`. The other backends: the KV-cache engine (`igpo.agent.engine`) and vLLM
(`igpo.policy.vllm_engine`); `igpo.agent.build.make_generator` builds the one a config asks for.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)


@dataclass
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    # One seed per context: row i samples from its own stream seeded by seeds[i], whatever else is in the batch.
    seeds: Sequence[int] | None = None


class Generation(list):
    """The sampled ids of one context, with the engine's log-prob of each (temperature 1, before top-p)."""

    def __init__(self, ids: Sequence[int], logprobs: Sequence[float]):
        super().__init__(ids)
        if len(logprobs) != len(ids):
            raise ValueError(f"Generation: {len(ids)} ids but {len(logprobs)} log-probs")
        self.logprobs = list(logprobs)


class Generator(ABC):
    """Samples continuations of token-id contexts. What a generator can do beyond that is declared here, by
    its class, never probed for:

    - `release()` drops whatever it kept between calls (KV caches); `rollout` calls it when the rollout starts
      and ends. The default keeps nothing.
    - `held_kv(ids, length)`: the keys and values of a context it holds until `release()` (the KV-cache engine),
      which the beliefs are scored against; the default holds none.
    - `records_logprobs`: its `generate` returns `Generation`s, which carry the log-prob it sampled each id
      with; `rollout` keeps them per turn (the TIS correction reads them).
    - `OwnWeightsGenerator`: it samples from its own copy of the weights, which the trainer pushes to it.
    - `close()` frees what it holds for its lifetime (a vLLM engine: its weights and KV cache), so that the next
      one built in the same process has the memory to itself; it generates no more. The default holds nothing.
    - `ContinuationScorer`: it also scores given continuations of given contexts with the weights it samples
      from (`algorithm.belief_backend: engine` takes the beliefs from it).
    """

    records_logprobs: ClassVar[bool] = False

    @abstractmethod
    def generate(self, contexts: list[list[int]], params: SamplingParams, stop_ids: list[int]) -> list[list[int]]:
        """For each context, the sampled continuation ids, ending at (and including) the first stop id."""

    def release(self) -> None:  # noqa: B027 - a default, not abstract: most generators keep nothing between calls
        """Drop what was kept between calls of one rollout (nothing, unless a backend keeps state)."""

    def close(self) -> None:  # noqa: B027 - a default, not abstract: most generators hold nothing of their own
        """Free what it holds for its lifetime (nothing, unless a backend holds an engine)."""

    def held_kv(self, ids: Sequence[int], length: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Per layer, the keys and values [1, kv_heads, length, head_dim] of ids[:length] (keys after the rotary
        embedding, position j in column j), as the model it samples from computed them since the last
        `release()`; None when it holds none for those ids (the default: it keeps none). Views of what it
        holds: the caller reads them and never writes into them."""
        return None


class OwnWeightsGenerator(Generator):
    """A generator that samples from its own copy of the policy's weights (vLLM), not from the trainer's model:
    after each update the trainer hands it the current weights, and it need not gather the trainer's shards."""

    @abstractmethod
    def push_weights(self, weights: Iterable[tuple[str, torch.Tensor]], model, step: int | None = None) -> None:
        """Load (name, whole tensor) pairs, named as in the trainer's model `model` (which holds them, and which a
        generator may score with to check that the push landed; `step`: the trainer's, named in an error)."""


class ContinuationScorer(ABC):
    """A generator that scores given ids (teacher-forced) with the weights it samples from: vLLM's prompt
    log-probs. `algorithm.belief_backend: engine` scores the beliefs through it."""

    @property
    @abstractmethod
    def score_dtype(self) -> torch.dtype:
        """The dtype it computes log-probs in (the cross-check's default tolerance depends on it)."""

    @abstractmethod
    def continuation_logprobs(self, contexts: list[list[int]], continuations: list[list[int]]) -> list[list[float]]:
        """Per pair i, [len(continuations[i])]: log p(c[j] | contexts[i] + c[:j]) for each id c[j] of
        continuations[i], at temperature 1, from its current weights. Contexts are non-empty."""


class HFGenerator(Generator):
    """`model.generate` over a left-padded batch of full contexts.

    It samples exactly the policy the loss scores: softmax at `temperature`, restricted to the top-p nucleus,
    and nothing else, whatever the model's own `generation_config` holds (Qwen2.5-Instruct ships
    `repetition_penalty: 1.05`; others ship `top_k`, `no_repeat_ngram_size`, `suppress_tokens`, ...).
    """

    def __init__(self, model, pad_id: int):
        self.model, self.pad_id = model, pad_id

    @torch.no_grad()
    def generate(self, contexts: list[list[int]], params: SamplingParams, stop_ids: list[int]) -> list[list[int]]:
        device = next(self.model.parameters()).device
        width = max(len(c) for c in contexts)
        ids = torch.full((len(contexts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(contexts), width), dtype=torch.long)
        for i, c in enumerate(contexts):
            ids[i, width - len(c) :] = torch.tensor(c)
            mask[i, width - len(c) :] = 1
        sample = params.temperature > 0
        processors = LogitsProcessorList()
        if sample and params.seeds is not None:
            # Per-row streams: HF's own sampler draws for the whole batch from one generator.
            processors.append(SeededSampler(params.seeds, params.temperature, params.top_p))
            sample = False
        # top_k=0: the global default (50) would cut the distribution the loss scores.
        settings = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            eos_token_id=list(stop_ids),
            pad_token_id=self.pad_id,
            do_sample=sample,
            temperature=params.temperature if sample else None,
            top_p=params.top_p if sample else None,
            top_k=0 if sample else None,
        )
        was_training = self.model.training
        self.model.eval()
        try:
            with _no_model_generation_defaults(self.model):
                out = self.model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    generation_config=settings,
                    logits_processor=processors,
                )
        finally:
            self.model.train(was_training)
        return [cut_at_stop(row.tolist(), stop_ids) for row in out[:, width:].cpu()]


@contextmanager
def _no_model_generation_defaults(model):
    """For the duration, the model's `generation_config` holds the library defaults only.

    `model.generate` fills every setting its `generation_config` argument leaves unset (None) from the model's
    own, and several logits processors are only turned off by leaving them unset (`suppress_tokens`,
    `bad_words_ids`, ...), so passing our settings alone does not keep the model's out. The object is reset in
    place, not replaced: a PEFT wrapper forwards `generation_config` to its base model's and copies it there
    in `generate`, so in-place is what every wrapper sees.
    """
    held = model.generation_config
    saved = dict(vars(held))
    vars(held).clear()
    vars(held).update(vars(GenerationConfig()))
    try:
        yield
    finally:
        vars(held).clear()
        vars(held).update(saved)


class SeededSampler(LogitsProcessor):
    """Sampling with one random stream per row, as a logits processor for greedy decoding.

    Gumbel-max: argmax_v(log p_v + g_v), g_v ~ Gumbel(0, 1), is an exact sample from p (the softmax at
    `temperature`, restricted to the top-p nucleus). Row i's noise at its k-th new token is the k-th draw
    of a CPU generator seeded with seeds[i], so it depends on nothing else in the batch and is the same on
    any device.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float):
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.warpers = [TemperatureLogitsWarper(temperature)] + ([TopPLogitsWarper(top_p)] if top_p < 1 else [])

    def keep(self, rows: Sequence[int]) -> None:
        """Only these rows stay in the batch (in this order); each keeps its own stream where it was."""
        self.gens = [self.gens[r] for r in rows]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """scores [B, V] → log-probs plus Gumbel noise [B, V] (fp32); the caller takes the argmax."""
        for w in self.warpers:
            scores = w(input_ids, scores)
        logp = torch.log_softmax(scores.float(), dim=-1)
        u = torch.stack([torch.rand(scores.shape[-1], generator=g) for g in self.gens]).to(scores.device)
        tiny = torch.finfo(torch.float32).tiny
        return logp - torch.log(-torch.log(u.clamp(min=tiny)))


def cut_at_stop(ids: list[int], stop_ids: Sequence[int]) -> list[int]:
    for k, tok in enumerate(ids):
        if tok in stop_ids:
            return ids[: k + 1]
    return ids
