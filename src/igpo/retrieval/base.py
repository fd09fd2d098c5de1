"""The one interface every retriever implements (embedded BM25, dense, HTTP client)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Hit:
    """One retrieved passage."""

    id: str
    title: str
    text: str
    score: float = 0.0


@runtime_checkable
class Retriever(Protocol):
    """Batched search: one list of hits (best first, at most `topk`) per query.

    A retriever may raise `RetrievalError` when it cannot answer; the search tool turns that into an
    observation for the policy instead of crashing the episode.
    """

    def search(self, queries: list[str], topk: int) -> list[list[Hit]]: ...


class RetrievalError(RuntimeError):
    """The retriever could not answer (server down, timeout, bad response)."""
