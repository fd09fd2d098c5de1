"""The one interface every retriever implements (embedded BM25, dense, HTTP client, web search)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Hit:
    """One retrieved passage; `url` is set by web backends (a local passage has none)."""

    id: str
    title: str
    text: str
    score: float = 0.0
    url: str = ""


@runtime_checkable
class Retriever(Protocol):
    """Batched search: one list of hits (best first, at most `topk`) per query.

    A retriever may raise `RetrievalError` when it cannot answer; the search tool turns that into an
    observation for the policy instead of crashing the episode. The other methods are optional: a retriever
    that subclasses this protocol gets their defaults (no counters, no on-disk cache, nothing to close).
    """

    def search(self, queries: list[str], topk: int) -> list[list[Hit]]: ...

    def stats(self) -> dict | None:
        """Counters since creation (the HTTP retrievers count requests, failures, cache use); None: none kept."""
        return None

    def cache_pointer(self) -> dict | None:
        """What a checkpoint records to resume with this retriever's on-disk cache; None: it has none."""
        return None

    def close(self) -> None:
        """Release connections (the HTTP retrievers hold a pool)."""


class RetrievalError(RuntimeError):
    """The retriever could not answer (server down, timeout, bad response).

    `server_fault` is False when the request itself was refused (a bound, a wrong API key): such a failure
    says nothing about the server's health, so it does not count towards opening a circuit breaker.
    """

    def __init__(self, message: str, *, server_fault: bool = True):
        super().__init__(message)
        self.server_fault = server_fault
