"""Parsing one generation into a tool call, an answer, or a format error. Never raises.

Conventions (Hermes / Qwen): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` and
`<answer>...</answer>`, optionally after free reasoning. Whichever tag comes first decides the kind. A tool call
that is malformed (unclosed, bad JSON, no name) is still a tool call, with `error` set: the policy is told
what was wrong and the episode goes on. Only a generation with neither tag is a format error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"


@dataclass
class Action:
    kind: Literal["tool_call", "answer", "format_error"]
    name: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    answer: str | None = None
    error: str | None = None  # why a tool call is malformed, or why the generation is a format error


def _parse_tool_call(body: str) -> Action:
    try:
        call = json.loads(body.strip())
    except json.JSONDecodeError as e:
        return Action("tool_call", error=f"the tool call is not valid JSON ({e.msg})")
    except (ValueError, RecursionError) as e:  # an integer past Python's 4300-digit limit; nesting past the stack
        what = "nested too deeply" if isinstance(e, RecursionError) else "a number too long"
        return Action("tool_call", error=f"the tool call is not valid JSON ({what})")
    if not isinstance(call, dict):
        return Action("tool_call", error='the tool call must be a JSON object {"name": ..., "arguments": {...}}')
    name = call.get("name")
    if not isinstance(name, str) or not name:
        return Action("tool_call", error='the tool call has no "name"')
    args = call.get("arguments", call.get("parameters", {}))
    if isinstance(args, str):  # some models encode the arguments as a JSON string
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):
            return Action("tool_call", name=name, error='"arguments" is a string that is not a JSON object')
    if not isinstance(args, dict):
        return Action("tool_call", name=name, error='"arguments" must be a JSON object')
    return Action("tool_call", name=name, arguments=args)


def parse_generation(text: str) -> Action:
    """The action of one assistant generation (special tokens already stripped)."""
    t = text.find(TOOL_OPEN)
    a = text.find(ANSWER_OPEN)
    if t >= 0 and (a < 0 or t < a):
        start = t + len(TOOL_OPEN)
        end = text.find(TOOL_CLOSE, start)
        if end < 0:
            return Action("tool_call", error=f"the tool call is not closed with {TOOL_CLOSE}")
        return _parse_tool_call(text[start:end])
    if a >= 0:
        start = a + len(ANSWER_OPEN)
        end = text.find(ANSWER_CLOSE, start)
        if end < 0:
            return Action("format_error", error=f"the answer is not closed with {ANSWER_CLOSE}")
        return Action("answer", answer=text[start:end].strip())
    return Action("format_error", error="neither a tool call nor an answer")
