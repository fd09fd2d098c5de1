"""Tools the policy can call, and the toolbox that validates and runs a batch of calls.

A tool turns a batch of argument dicts into a batch of `ToolResult`s (batched so a retriever answers all
active episodes at once). Anything wrong with a call (unknown tool, missing or mistyped argument) or with the
tool itself (retrieval failed) becomes the result text the policy reads, with `error` set for the metrics.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol

from igpo.agent.parsing import Action
from igpo.retrieval.base import RetrievalError, Retriever
from igpo.retrieval.render import render_hits

log = logging.getLogger(__name__)
_JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict}


@dataclass
class ToolResult:
    text: str
    error: str | None = None  # malformed_call | unknown_tool | bad_arguments | tool_failed


class Tool(Protocol):
    name: str

    def schema(self) -> dict:
        """The OpenAI-style function schema `{"type": "function", "function": {name, description, parameters}}`."""

    def run_batch(self, arguments: list[dict]) -> list[ToolResult]:
        """One result per (already validated) argument dict."""


class SearchTool:
    """`search(query)`: the top-k passages of a retriever, rendered as a compact numbered list.

    Queries are cut to `max_query_chars`, so that one runaway query cannot make a server refuse the whole
    batch. A failed search tells the policy only that it failed; the cause goes to the log."""

    name = "search"
    max_query_chars = 512

    def __init__(self, retriever: Retriever, topk: int = 3, max_words: int = 60):
        self.retriever, self.topk, self.max_words = retriever, topk, max_words

    def schema(self) -> dict:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": "Search the knowledge base; returns the most relevant passages.",
                "parameters": {
                    "type": "object",
                    "properties": {"query": {"type": "string", "description": "what to search for"}},
                    "required": ["query"],
                },
            },
        }

    def run_batch(self, arguments: list[dict]) -> list[ToolResult]:
        try:
            hits = self.retriever.search([a["query"][: self.max_query_chars] for a in arguments], self.topk)
        except RetrievalError as e:
            log.warning("search failed for %d queries: %s", len(arguments), e)
            return [ToolResult("Search failed. Try again or answer.", "tool_failed") for _ in arguments]
        return [ToolResult(render_hits(h, self.max_words)) for h in hits]


def _check_arguments(schema: dict, args: dict) -> str | None:
    params = schema["function"].get("parameters", {})
    props = params.get("properties", {})
    for key in params.get("required", []):
        if key not in args:
            return f'missing argument "{key}"'
    for key, value in args.items():
        if key not in props:
            return f'unknown argument "{key}"'
        want = _JSON_TYPES.get(props[key].get("type"))
        if want is not None and (not isinstance(value, want) or (want is not bool and isinstance(value, bool))):
            return f'argument "{key}" must be of type {props[key]["type"]}'
        if isinstance(value, str) and not value.strip():
            return f'argument "{key}" is empty'
    return None


class Toolbox:
    def __init__(self, tools: list[Tool]):
        self.tools = {t.name: t for t in tools}

    def schemas(self) -> list[dict]:
        return [t.schema() for t in self.tools.values()]

    def execute(self, actions: list[Action]) -> list[ToolResult]:
        """Results for a batch of tool-call actions, in order; valid calls to one tool run as one batch."""
        results: list[ToolResult | None] = [None] * len(actions)
        batches: dict[str, list[int]] = defaultdict(list)
        for i, act in enumerate(actions):
            if act.error is not None:
                results[i] = ToolResult(f"Error: {act.error}.", "malformed_call")
            elif act.name not in self.tools:
                known = ", ".join(sorted(self.tools))
                results[i] = ToolResult(f'Error: unknown tool "{act.name}"; available: {known}.', "unknown_tool")
            elif (problem := _check_arguments(self.tools[act.name].schema(), act.arguments)) is not None:
                results[i] = ToolResult(f"Error: {act.name}: {problem}.", "bad_arguments")
            else:
                batches[act.name].append(i)
        for name, idx in batches.items():
            for i, res in zip(idx, self.tools[name].run_batch([actions[i].arguments for i in idx])):
                results[i] = res
        return results  # type: ignore[return-value]
