"""A generator that plays scripted generations (as token ids), so tests reach every branch of an episode."""
from __future__ import annotations

import random


class ScriptedGenerator:
    """Per question, a list of turns; each turn a list of alternative generations (chosen at random).

    The turn number is the number of tool messages already in the context. Choices come from one shared
    stream, or from each context's seed when `params.seeds` is given. Generations are encoded once and
    returned as ids ending with the end-of-turn token, exactly like a sampler would return them.
    """

    def __init__(self, tokenizer, fmt, scripts: dict[str, list[list[str]]], seed: int = 0):
        self.tok, self.fmt, self.scripts = tokenizer, fmt, scripts
        self.rng = random.Random(seed)
        self.calls = 0

    def generate(self, contexts, params, stop_ids):
        self.calls += 1
        out = []
        pre = self.fmt.tool_pre_ids
        for i, ctx in enumerate(contexts):
            text = self.tok.decode(ctx)
            question = next(q for q in self.scripts if q in text)
            turn = sum(1 for k in range(len(ctx) - len(pre) + 1) if ctx[k:k + len(pre)] == pre)
            options = self.scripts[question][min(turn, len(self.scripts[question]) - 1)]
            # With per-context seeds (as the trainer passes them), the choice depends on the seed alone.
            rng = self.rng if getattr(params, "seeds", None) is None else random.Random(params.seeds[i])
            ids = self.fmt.encode_text(rng.choice(options)) + [self.fmt.eot_ids[0]]
            out.append(ids[: params.max_new_tokens])
        return out
