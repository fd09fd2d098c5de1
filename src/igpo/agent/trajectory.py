"""The trajectory: token ids exactly as sampled and as tool results were tokenized, never re-tokenized.

Layout of `ids`: prompt | turn 1: generated ids, template close, tool message, next assistant opening | turn 2 ...
Each `Turn` records the span of ids the policy sampled and the span of its tool result's own ids; the loss
mask, the per-token turn index and the ids the rollout wrote from the template are derived from those spans, so they
cannot drift from the ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from igpo.agent.parsing import Action
from igpo.data.loaders import QAExample


@dataclass
class Turn:
    gen_start: int  # ids[gen_start:gen_end] were sampled by the policy in this turn
    gen_end: int
    end: int  # len(ids) once the turn is complete (after the tool message, if any)
    text: str  # the generation decoded, for parsing and display only
    action: Action
    tool_result: str | None = None
    tool_error: str | None = None
    result_span: tuple[int, int] | None = None  # ids[a:b]: the tool result's text, without the template around it
    logprobs: list[float] | None = None  # the rollout engine's log-prob of each id in ids[gen_start:gen_end]


@dataclass
class Trajectory:
    example: QAExample
    group: int  # rollouts of the same question share a group
    ids: list[int]
    prompt_len: int
    turns: list[Turn] = field(default_factory=list)
    finish: str = "running"  # answer | format_error | max_turns | max_context
    beliefs: list[float] | None = None  # p_0 .. p_{T-1}: belief after the prompt and after each non-final turn
    question_span: tuple[int, int] | None = None  # ids[a:b]: the question's text, inside the prompt

    @property
    def num_turns(self) -> int:
        return len(self.turns)

    @property
    def answer(self) -> str | None:
        return self.turns[-1].action.answer if self.finish == "answer" else None

    def belief_prefixes(self) -> list[int]:
        """Context lengths at which beliefs are taken: after the prompt, then after each turn but the last."""
        return [self.prompt_len] + [t.end for t in self.turns[:-1]]

    def loss_mask(self) -> list[bool]:
        """[L] True where the policy sampled the token."""
        mask = [False] * len(self.ids)
        for t in self.turns:
            mask[t.gen_start : t.gen_end] = [True] * (t.gen_end - t.gen_start)
        return mask

    def rollout_spans(self) -> list[tuple[int, int]]:
        """[(a, b)] the runs of ids the rollout wrote from the chat template: the prompt around the question and
        the ids between turns (end of a generation, tool message around its result, next assistant opening);
        not the text of the question, of what the policy sampled or of a tool result."""
        texts = [t.result_span for t in self.turns] + [self.question_span]
        other = sorted([(t.gen_start, t.gen_end) for t in self.turns] + [s for s in texts if s is not None])
        spans, pos = [], 0
        for a, b in other + [(len(self.ids), len(self.ids))]:
            if a > pos:
                spans.append((pos, a))
            pos = max(pos, b)
        return spans

    def rollout_logprobs(self) -> list[float] | None:
        """[L] the rollout engine's log-prob of each generated token, 0 elsewhere; None if it recorded none."""
        if not self.turns or any(t.logprobs is None for t in self.turns):
            return None
        out = [0.0] * len(self.ids)
        for t in self.turns:
            out[t.gen_start : t.gen_end] = t.logprobs
        return out

    def token_turns(self) -> list[int]:
        """[L] 0-based turn of each token (tool results included), -1 for the prompt."""
        out = [-1] * len(self.ids)
        start = self.prompt_len
        for k, t in enumerate(self.turns):
            out[start : t.end] = [k] * (t.end - start)
            start = t.end
        return out
