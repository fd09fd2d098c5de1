"""Web search as the paper uses it: Google through the Serper API, or any local retriever standing in for it.

`WebSearch` is what the `web_search` tool asks. Per query it answers from the on-disk cache when it can, else
from the backend while the run's budget of calls lasts; a query repeated within a batch (the G rollouts of a
question often search the same thing) is sent once. Backends:

- `SerperRetriever`: `POST https://google.serper.dev/search` with the key in the `X-API-KEY` header and a batch
  body `[{"q": query, "num": k}, ...]`, answered by one object per query,
  `{"searchParameters": {...}, "organic": [{"title", "link", "snippet", "position"}, ...], "credits": 1, ...}`.
  Only the organic results are used: title, URL and snippet of the top k.
- any `Retriever` (embedded BM25, a saved index, `igpo serve` over HTTP): the same tool and rendering offline.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass
from functools import partial

import httpx

from igpo.retrieval.base import Hit, RetrievalError, Retriever
from igpo.retrieval.cache import ResultCache
from igpo.retrieval.resilience import ResilientHTTP

log = logging.getLogger(__name__)
SERPER_URL = "https://google.serper.dev/search"


class SerperRetriever(Retriever):
    """A `Retriever` over the Serper API (Google results). Thread-safe; `stats()` gives the HTTP counters.

    The API key goes only into the request header: never into a message, a counter or a file.
    """

    def __init__(self, api_key: str, endpoint: str = SERPER_URL, *, max_queries_per_request: int = 100, **http):
        """`http`: the `ResilientHTTP` settings (timeout_s, retries, backoff_s, breaker_failures, ...)."""
        if not api_key:
            raise ValueError("SerperRetriever needs an API key")
        self.endpoint = endpoint
        self.max_queries_per_request = max_queries_per_request
        self._client = ResilientHTTP(endpoint, headers={"X-API-KEY": api_key}, **http)

    def search(self, queries: list[str], topk: int) -> list[list[Hit]]:
        if not queries:
            return []

        def fetch(attempts: int) -> list[list[Hit]]:
            out = []
            for start in range(0, len(queries), self.max_queries_per_request):
                chunk = queries[start : start + self.max_queries_per_request]
                body = [{"q": q, "num": topk} for q in chunk]
                out += self._client.post(
                    self.endpoint, body, partial(_parse_response, n=len(chunk), topk=topk), attempts
                )
            return out

        return self._client.guarded(fetch)

    def stats(self) -> dict:
        return self._client.stats()

    def close(self) -> None:
        self._client.close()


def _parse_response(r: httpx.Response, n: int, topk: int) -> list[list[Hit]]:
    return parse_serper(r.json(), n, topk)


def parse_serper(answer, n: int, topk: int) -> list[list[Hit]]:
    """Hits from Serper's answer to a batch of `n` queries (a single object is accepted for one query)."""
    if isinstance(answer, dict) and n == 1:
        answer = [answer]
    if not isinstance(answer, list) or len(answer) != n:
        raise ValueError(f"expected a list of {n} search results")
    out = []
    for one in answer:
        organic = one.get("organic", [])
        if not isinstance(organic, list):
            raise TypeError("`organic` is not a list")
        hits = []
        for item in organic[:topk]:
            link = item["link"]
            title, snippet = item.get("title", ""), item.get("snippet", "")
            if not all(isinstance(x, str) for x in (link, title, snippet)):
                raise TypeError("an organic result's title, link or snippet is not a string")
            hits.append(Hit(link, title, snippet, url=link))
        out.append(hits)
    return out


@dataclass(frozen=True)
class Answer:
    """What one query got: its hits, or why not (`budget_exhausted`, `tool_failed`)."""

    hits: list[Hit]
    error: str | None = None


class WebSearch:
    """Cache, then budget, then backend, per query. Thread-safe.

    `max_calls` bounds the queries sent to the backend in this process (None: no bound); a query past it gets
    `budget_exhausted` while cached queries are still answered. `cost_per_call` prices a query sent, for the
    estimated spend. A backend failure fails the queries it was sent (`tool_failed`), refunds their budget
    and is logged; the run goes on.
    """

    def __init__(
        self,
        backend: Retriever,
        *,
        name: str,
        cache: ResultCache | None = None,
        source: str | None = None,
        max_calls: int | None = None,
        cost_per_call: float = 0.0,
    ):
        if cache is not None and not source:
            raise ValueError("a cached WebSearch needs a `source` naming what answers (part of the cache address)")
        self.backend, self.name, self.cache, self.source = backend, name, cache, source
        self.max_calls, self.cost_per_call = max_calls, cost_per_call
        self._lock = threading.Lock()
        self._counts: Counter = Counter()
        self._reserved = 0  # calls counted against the budget, including those in flight

    def search(self, queries: list[str], topk: int) -> list[Answer]:
        answers: dict[str, Answer] = {}
        for q in dict.fromkeys(queries):
            hits = self.cache.get(self.source, q, topk) if self.cache is not None else None
            if hits is not None:
                answers[q] = Answer(hits)
        missing = [q for q in dict.fromkeys(queries) if q not in answers]
        allowed = self._reserve(len(missing))
        for q in missing[allowed:]:
            answers[q] = Answer([], "budget_exhausted")
        send, sent = missing[:allowed], 0
        if send:
            try:
                fetched = self.backend.search(send, topk)
            except RetrievalError as e:
                self._refund(len(send))
                log.warning("%s failed for %d queries: %s", self.name, len(send), e)
                answers.update((q, Answer([], "tool_failed")) for q in send)
            else:
                sent = len(send)
                for q, hits in zip(send, fetched):
                    answers[q] = Answer(hits)
                    if self.cache is not None:
                        self.cache.put(self.source, q, topk, hits)
        out = [answers[q] for q in queries]
        errors = Counter(a.error for a in out)
        with self._lock:
            self._counts.update(
                queries=len(queries),
                calls=sent,
                cache_hits=errors[None] - sent,
                budget_refused=errors["budget_exhausted"],
                failed=errors["tool_failed"],
            )
        return out

    def _reserve(self, n: int) -> int:
        with self._lock:
            allowed = n if self.max_calls is None else max(0, min(n, self.max_calls - self._reserved))
            self._reserved += allowed
        return allowed

    def _refund(self, n: int) -> None:
        with self._lock:
            self._reserved -= n

    def stats(self) -> dict:
        """Counters since creation: `queries` asked, `calls` sent to the backend (billed), `cache_hits` (from disk
        or a repeat in the same batch) and `cache_hit_rate`, `failed` and `budget_refused` queries,
        `budget_left` (None: no bound), `estimated_spend`, and the backend's own counters under `backend_stats`."""
        with self._lock:
            c = self._counts
            out = {
                "backend": self.name,
                "queries": c["queries"],
                "calls": c["calls"],
                "cache_hits": c["cache_hits"],
                "cache_hit_rate": c["cache_hits"] / c["queries"] if c["queries"] else None,
                "failed": c["failed"],
                "budget_refused": c["budget_refused"],
                "budget_left": None if self.max_calls is None else self.max_calls - self._reserved,
                "estimated_spend": round(c["calls"] * self.cost_per_call, 6),
            }
        if (backend_stats := self.backend.stats()) is not None:
            out["backend_stats"] = backend_stats
        return out

    def close(self) -> None:
        self.backend.close()
