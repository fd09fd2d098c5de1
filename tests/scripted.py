"""A generator that plays scripted generations (as token ids), so tests reach every branch of an episode."""

from __future__ import annotations

import random

import torch

from igpo.agent.engine import CachedGenerator
from igpo.agent.generators import Generator


class ScriptedGenerator(Generator):
    """Per question, a list of turns; each turn a list of alternative generations (chosen at random).

    The turn number is the number of tool messages already in the context. Generations are encoded once and
    returned as ids ending with the end-of-turn token, exactly like a sampler would return them. Choices come
    from each context's seed when `params.seeds` is given (as the trainer passes them), else from one shared
    stream, or with `seed=None` from torch's global RNG, like a sampler.
    """

    def __init__(self, tokenizer, fmt, scripts: dict[str, list[list[str]]], seed: int | None = 0):
        self.tok, self.fmt, self.scripts = tokenizer, fmt, scripts
        self.rng = random.Random(seed) if seed is not None else None
        self.calls = 0

    def generate(self, contexts, params, stop_ids):
        self.calls += 1
        out = []
        pre = self.fmt.tool_pre_ids
        for i, ctx in enumerate(contexts):
            text = self.tok.decode(ctx)
            question = next(q for q in self.scripts if q in text)
            turn = sum(1 for k in range(len(ctx) - len(pre) + 1) if ctx[k : k + len(pre)] == pre)
            options = self.scripts[question][min(turn, len(self.scripts[question]) - 1)]
            seeds = getattr(params, "seeds", None)
            if seeds is not None:  # the choice depends on the context's seed alone
                pick = random.Random(seeds[i]).randrange(len(options))
            else:
                pick = self.rng.randrange(len(options)) if self.rng else int(torch.randint(len(options), ()))
            ids = self.fmt.encode_text(options[pick]) + [self.fmt.eot_ids[0]]
            out.append(ids[: params.max_new_tokens])
        return out


class ScriptedOverEngine(CachedGenerator):
    """The KV-cache engine run over every context, so that it holds real caches of the episodes' contexts (as
    after a real rollout), returning the script's generations instead of its own: a random model that searches."""

    def __init__(self, model, pad_id: int, script: ScriptedGenerator):
        super().__init__(model, pad_id)
        self.script = script

    def generate(self, contexts, params, stop_ids):
        super().generate(contexts, params, stop_ids)
        return self.script.generate(contexts, params, stop_ids)
