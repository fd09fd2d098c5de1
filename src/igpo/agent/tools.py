"""Tools the policy can call, and the toolbox that validates and runs a batch of calls.

A tool turns a batch of argument dicts into a batch of `ToolResult`s (batched so a retriever answers all
active episodes at once). Anything wrong with a call (unknown tool, missing or mistyped argument) or with the
tool itself (retrieval failed) becomes the result text the policy reads, with `error` set for the metrics.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from igpo.agent.parsing import Action
from igpo.retrieval.base import RetrievalError, Retriever
from igpo.retrieval.render import render_hits

if TYPE_CHECKING:
    from igpo.retrieval.web import Answer, WebSearch

log = logging.getLogger(__name__)
_JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict}
SEARCH_FAILED = "Search failed. Try again or answer."
BUDGET_EXHAUSTED = "Search budget exhausted: no more web searches in this run. Answer with what you know."
# Tool errors that are the policy's fault (the call itself was wrong), unlike a failed search or a spent budget.
MALFORMED_CALL_ERRORS = frozenset({"malformed_call", "unknown_tool", "bad_arguments"})


@dataclass
class ToolResult:
    text: str
    error: str | None = None  # malformed_call | unknown_tool | bad_arguments | tool_failed | budget_exhausted


class Tool(Protocol):
    """A tool the policy can call. `stats()` is optional: a tool that subclasses this protocol reports no
    counters unless it defines it."""

    name: str

    def schema(self) -> dict:
        """The OpenAI-style function schema `{"type": "function", "function": {name, description, parameters}}`."""

    def run_batch(self, arguments: list[dict]) -> list[ToolResult]:
        """One result per (already validated) argument dict."""

    def stats(self) -> dict | None:
        """Counters since creation (the trainer logs a step's share under `retrieval`); None: none kept."""
        return None


class SearchTool(Tool):
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
            return [ToolResult(SEARCH_FAILED, "tool_failed") for _ in arguments]
        return [ToolResult(render_hits(h, self.max_words)) for h in hits]

    def stats(self) -> dict | None:
        """The retriever's counters, when it keeps any (the HTTP client does)."""
        return self.retriever.stats()


class WebSearchTool(Tool):
    """`web_search(query=[...])`, the paper's web search: 1 to `max_queries` queries a call, each answered by
    its top-k results (title, URL, snippet) rendered as the search tool renders passages, under a `Query:`
    line. The same whether Google (Serper) or a local retriever answers (`igpo.retrieval.web.WebSearch`).

    When the run's budget of calls is spent, a query not in the cache is answered with a message saying so
    (`budget_exhausted`); a failed search says only that it failed (`tool_failed`); the episode goes on."""

    name = "web_search"
    max_query_chars = 512

    def __init__(self, search: WebSearch, topk: int = 5, max_words: int = 60, max_queries: int = 3):
        self.search, self.topk, self.max_words, self.max_queries = search, topk, max_words, max_queries

    def schema(self) -> dict:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": f"Search the web; returns the top {self.topk} results (title, URL, snippet) of each query.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "query": {
                            "type": "array",
                            "items": {"type": "string"},
                            "minItems": 1,
                            "maxItems": self.max_queries,
                            "description": f"1 to {self.max_queries} search queries",
                        }
                    },
                    "required": ["query"],
                },
            },
        }

    def run_batch(self, arguments: list[dict]) -> list[ToolResult]:
        per_call = [[q[: self.max_query_chars] for q in a["query"]] for a in arguments]
        answers = iter(self.search.search([q for queries in per_call for q in queries], self.topk))
        results = []
        for queries in per_call:
            mine = [next(answers) for _ in queries]
            text = "\n\n".join(f"Query: {q}\n{self._render(a)}" for q, a in zip(queries, mine))
            errors = {a.error for a in mine}
            error = next((e for e in ("budget_exhausted", "tool_failed") if e in errors), None)
            results.append(ToolResult(text, error))
        return results

    def _render(self, answer: Answer) -> str:
        if answer.error == "budget_exhausted":
            return BUDGET_EXHAUSTED
        if answer.error is not None:
            return SEARCH_FAILED
        return render_hits(answer.hits, self.max_words)

    def stats(self) -> dict:
        """Calls, cache hits and hit rate, failures, budget left, estimated spend, the backend's HTTP counters."""
        return self.search.stats()


def _check_arguments(schema: dict, args: dict) -> str | None:
    params = schema["function"].get("parameters", {})
    props = params.get("properties", {})
    for key in params.get("required", []):
        if key not in args:
            return f'missing argument "{key}"'
    for key, value in args.items():
        if key not in props:
            return f'unknown argument "{key}"'
        if (problem := _check_value(f'argument "{key}"', props[key], value)) is not None:
            return problem
    return None


def _check_value(what: str, spec: dict, value) -> str | None:
    """The JSON-schema checks the tools use: `type`, non-empty strings, and for arrays `items`, `minItems`,
    `maxItems`."""
    want = _JSON_TYPES.get(spec.get("type"))
    if want is not None and (not isinstance(value, want) or (want is not bool and isinstance(value, bool))):
        return f"{what} must be of type {spec['type']}"
    if isinstance(value, str) and not value.strip():
        return f"{what} is empty"
    if isinstance(value, list):
        if len(value) < spec.get("minItems", 0):
            return f"{what} needs at least {spec['minItems']} item(s)"
        if "maxItems" in spec and len(value) > spec["maxItems"]:
            return f"{what} takes at most {spec['maxItems']} items, not {len(value)}"
        for i, item in enumerate(value, 1):
            if (problem := _check_value(f"{what} item {i}", spec.get("items", {}), item)) is not None:
                return problem
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
