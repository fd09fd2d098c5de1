"""The HTTP retriever the search tool uses against `igpo serve` or Search-R1's retrieval server.

It survives a faulty server instead of crashing training (timeouts, retries with backoff, a circuit breaker:
`igpo.retrieval.resilience`). When the retries are spent, `search` raises `RetrievalError`; the search tool
turns that into a "search failed" observation.

Results are cached on disk (`igpo.retrieval.cache`), addressed by (index, topk, query): the same query against
the same index gives the same passages, so reruns are reproducible and a resumed run replays its searches, even
with the server down. The index is the `index_id` the server announces (on `/health` and in each answer); a server that announces
none (Search-R1's) is identified by its URL.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Self

import httpx

from igpo.retrieval.base import Hit, Retriever
from igpo.retrieval.cache import DEFAULT_CACHE_DIR, ResultCache
from igpo.retrieval.resilience import ResilientHTTP

__all__ = ["DEFAULT_CACHE_DIR", "HTTPRetriever"]


class HTTPRetriever(Retriever):
    """A `Retriever` over HTTP. Thread-safe; `stats()` counts requests, failures, retries and cache use."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.25,
        breaker_failures: int = 5,
        breaker_cooldown_s: float = 30.0,
        cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
        max_queries_per_request: int = 256,
        max_connections: int = 16,
    ):
        url = url.rstrip("/")
        self.base_url = url.removesuffix("/retrieve")  # accept Search-R1's `retrieval_service_url` form too
        self.max_queries_per_request = max_queries_per_request
        self.cache = ResultCache(cache_dir) if cache_dir is not None else None
        self._client = ResilientHTTP(
            self.base_url,
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            timeout_s=timeout_s,
            retries=retries,
            backoff_s=backoff_s,
            breaker_failures=breaker_failures,
            breaker_cooldown_s=breaker_cooldown_s,
            max_connections=max_connections,
        )
        self._http = self._client.http
        self._index_id: str | None = None
        self._probed = False

    @property
    def retries(self) -> int:
        return self._client.retries

    @property
    def cache_dir(self) -> Path | None:
        return self.cache.directory if self.cache is not None else None

    # -- the Retriever interface ------------------------------------------------------------------------------

    def search(self, queries: list[str], topk: int) -> list[list[Hit]]:
        if not queries:
            return []
        self._client.count(searches=1, queries=len(queries))
        index = self._index() if self.cache is not None else None
        results: list[list[Hit] | None] = [None] * len(queries)
        if index is not None:
            results = [self.cache.get(index, q, topk) for q in queries]
            self._client.count(
                cache_hits=sum(r is not None for r in results), cache_misses=sum(r is None for r in results)
            )
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            fetched = self._client.guarded(lambda attempts: self._fetch([queries[i] for i in missing], topk, attempts))
            index = self._index_id if self.cache is not None else None  # the answer may have named the index
            for i, hits in zip(missing, fetched):
                results[i] = hits
                if index is not None:
                    self.cache.put(index, queries[i], topk, hits)
        return results  # type: ignore[return-value]

    def stats(self) -> dict:
        """Counters since creation, plus the circuit state (closed, open, half_open)."""
        return self._client.stats()

    def cache_pointer(self) -> dict:
        """What a checkpoint records to resume with this cache: where it is and which index it answers for.

        Asks no server: the index is the one already seen, else the one this URL served last."""
        index = self._index_id
        if index is None and self.cache is not None:
            index = self.cache.recall("endpoints", self.base_url)
        return {
            "url": self.base_url,
            "index_id": index,
            "cache_dir": str(self.cache_dir) if self.cache_dir is not None else None,
        }

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- fetching ---------------------------------------------------------------------------------------------

    def _fetch(self, queries: list[str], topk: int, attempts: int) -> list[list[Hit]]:
        hits = []
        for start in range(0, len(queries), self.max_queries_per_request):
            chunk = queries[start : start + self.max_queries_per_request]
            payload = {"queries": chunk, "topk": topk, "return_scores": True}
            hits += self._client.post(
                "/retrieve", payload, partial(self._parse_answer, n=len(chunk), topk=topk), attempts
            )
        return hits

    def _parse_answer(self, r: httpx.Response, n: int, topk: int) -> list[list[Hit]]:
        data = r.json()
        hits = _parse(data["result"], n, topk)
        announced = data.get("index_id")
        if isinstance(announced, str) and announced != self._index_id:
            self._remember_index(announced)
        return hits

    # -- the index identity -----------------------------------------------------------------------------------

    def _index(self) -> str | None:
        """The id of the served index: asked once of `/health`; else the one this URL served last; else None."""
        if self._index_id is not None or self._probed:
            return self._index_id
        self._probed = True  # once: a hanging server must not cost every search a timeout
        try:
            r = self._http.get("/health")
            if r.status_code == 404:  # a server that announces no index (Search-R1's): the URL stands for it
                self._remember_index("url:" + self.base_url)
            elif r.status_code == 200:
                announced = (r.json().get("index") or {}).get("index_id")
                if announced:
                    self._remember_index(announced)
        except (httpx.HTTPError, ValueError, AttributeError):
            pass  # the server is down or odd: fall back to what it served before
        if self._index_id is None and self.cache is not None:
            self._index_id = self.cache.recall("endpoints", self.base_url)
        return self._index_id

    def _remember_index(self, index_id: str) -> None:
        self._index_id = index_id
        if self.cache is not None:
            self.cache.remember("endpoints", self.base_url, index_id)


def _parse(result, n: int, topk: int) -> list[list[Hit]]:
    """Hits from a Search-R1 `result`: per query, documents or {"document", "score"} items."""
    if not isinstance(result, list) or len(result) != n:
        raise ValueError(f"`result` should be a list of {n} lists")
    out = []
    for row in result:
        if not isinstance(row, list):
            raise TypeError("a `result` row is not a list")
        hits = []
        for item in row[:topk]:
            doc = item.get("document", item)
            if isinstance(doc.get("title"), str) and isinstance(doc.get("text"), str):
                title, text = doc["title"], doc["text"]
            else:
                title, text = _split_contents(doc["contents"])
            hits.append(Hit(str(doc.get("id", "")), title, text, float(item.get("score", 0.0))))
        out.append(hits)
    return out


def _split_contents(contents: str) -> tuple[str, str]:
    # The corpus convention (see igpo.data.loaders): "title\ntext", Search-R1's titles in double quotes.
    if not isinstance(contents, str):
        raise TypeError("`contents` is not a string")
    title, _, text = contents.partition("\n")
    if not text:
        return "", title.strip()
    return title.strip().strip('"'), text.strip()
