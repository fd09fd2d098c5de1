"""The batched multi-turn rollout loop.

Each turn generates for all still-active episodes at once, parses each generation, runs all tool calls of
the turn as one batch per tool, and appends the tool messages as ids. Ids are only ever appended: what the
policy sampled is kept exactly, and the tool result ids are those of `ChatFormat.tool_message_ids`.

Given per-episode seeds, each episode samples from its own random stream (seeded by the episode and turn):
what it samples does not depend on which other episodes share its batch, its process or its rank.
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

from igpo.agent.parsing import Action, parse_generation
from igpo.agent.template import ChatFormat
from igpo.agent.tools import Toolbox
from igpo.agent.trajectory import Trajectory, Turn
from igpo.data.loaders import QAExample
from igpo.seeding import turn_seed


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

    - `release()` drops whatever it kept between calls (KV caches); `rollout` calls it when the rollout ends.
      The default keeps nothing.
    - `records_logprobs`: its `generate` returns `Generation`s, which carry the log-prob it sampled each id
      with; `rollout` keeps them per turn (the TIS correction reads them).
    - `OwnWeightsGenerator`: it samples from its own copy of the weights, which the trainer pushes to it.
    """

    records_logprobs: ClassVar[bool] = False

    @abstractmethod
    def generate(self, contexts: list[list[int]], params: SamplingParams, stop_ids: list[int]) -> list[list[int]]:
        """For each context, the sampled continuation ids, ending at (and including) the first stop id."""

    def release(self) -> None:
        """Drop what was kept between calls of one rollout (nothing, unless a backend keeps state)."""


class OwnWeightsGenerator(Generator):
    """A generator that samples from its own copy of the policy's weights (vLLM), not from the trainer's model:
    after each update the trainer hands it the current weights, and it need not gather the trainer's shards."""

    @abstractmethod
    def push_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load (name, whole tensor) pairs, named as in the trainer's model."""


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
            ids[i, width - len(c):] = torch.tensor(c)
            mask[i, width - len(c):] = 1
        sample = params.temperature > 0
        processors = LogitsProcessorList()
        if sample and params.seeds is not None:
            # Per-row streams: HF's own sampler draws for the whole batch from one generator.
            processors.append(SeededSampler(params.seeds, params.temperature, params.top_p))
            sample = False
        # top_k=0: the global default (50) would cut the distribution the loss scores.
        settings = GenerationConfig(
            max_new_tokens=params.max_new_tokens, eos_token_id=list(stop_ids), pad_token_id=self.pad_id,
            do_sample=sample, temperature=params.temperature if sample else None,
            top_p=params.top_p if sample else None, top_k=0 if sample else None,
        )
        was_training = self.model.training
        self.model.eval()
        try:
            with _no_model_generation_defaults(self.model):
                out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                          generation_config=settings, logits_processor=processors)
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


def rollout(
    examples: Sequence[QAExample],
    groups: Sequence[int],
    generator: Generator,
    fmt: ChatFormat,
    toolbox: Toolbox,
    params: SamplingParams,
    max_turns: int,
    max_context: int,
    seeds: Sequence[int] | None = None,
) -> list[Trajectory]:
    """One episode per example (repeat an example G times for a group). Never raises on model output.

    `seeds`: one per episode; turn t of episode i samples with seed `turn_seed(seeds[i], t)`.
    """
    try:
        return _rollout(examples, groups, generator, fmt, toolbox, params, max_turns, max_context, seeds)
    finally:
        generator.release()


def _rollout(examples, groups, generator, fmt, toolbox, params, max_turns, max_context, seeds) -> list[Trajectory]:
    trajs = []
    for ex, g in zip(examples, groups):
        pre, question, post = fmt.prompt_parts(ex.question)
        ids = pre + question + post
        trajs.append(Trajectory(example=ex, group=g, ids=ids, prompt_len=len(ids),
                                question_span=(len(pre), len(pre) + len(question))))
    tok = fmt.tokenizer
    active = []
    for i, tr in enumerate(trajs):
        if len(tr.ids) >= max_context:
            tr.finish = "max_context"
        else:
            active.append(i)
    for turn_no in range(max_turns):
        if not active:
            break
        budgets = {i: min(params.max_new_tokens, max_context - len(trajs[i].ids)) for i in active}
        turn_seeds = None if seeds is None else [turn_seed(seeds[i], turn_no) for i in active]
        p = SamplingParams(max(budgets.values()), params.temperature, params.top_p, turn_seeds)
        outputs = generator.generate([trajs[i].ids for i in active], p, fmt.stop_ids)
        calls: list[tuple[int, Action]] = []
        for i, gen in zip(active, outputs):
            tr = trajs[i]
            logprobs = gen.logprobs if generator.records_logprobs else None
            gen = gen[: budgets[i]]
            start = len(tr.ids)
            tr.ids.extend(gen)
            text = tok.decode(gen, skip_special_tokens=True)
            action = parse_generation(text)
            turn = Turn(gen_start=start, gen_end=len(tr.ids), end=len(tr.ids), text=text, action=action,
                        logprobs=None if logprobs is None else logprobs[: len(gen)])
            tr.turns.append(turn)
            if action.kind == "tool_call" and turn_no + 1 < max_turns:
                calls.append((i, action))
                continue
            close = fmt.close_generation(gen)
            room = max_context - len(tr.ids)
            tr.ids.extend(close[: max(room, 0)])
            turn.end = len(tr.ids)
            tr.finish = {"answer": "answer", "format_error": "format_error"}.get(action.kind, "max_turns")
        results = toolbox.execute([a for _, a in calls]) if calls else []
        still = []
        for (i, _), res in zip(calls, results):
            tr, turn = trajs[i], trajs[i].turns[-1]
            turn.tool_result, turn.tool_error = res.text, res.error
            close = fmt.close_generation(tr.ids[turn.gen_start:turn.gen_end])
            obs = close + fmt.tool_message_ids(res.text)
            if len(tr.ids) + len(obs) >= max_context:
                # No room for the result and a next turn: the episode ends without an answer.
                tr.finish = "max_context"
                continue
            result_start = len(tr.ids) + len(close) + len(fmt.tool_pre_ids)
            tr.ids.extend(obs)
            turn.end = len(tr.ids)
            turn.result_span = (result_start, turn.end - len(fmt.tool_post_ids))
            still.append(i)
        active = still
    return trajs
