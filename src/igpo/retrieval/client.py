"""The HTTP retriever the search tool uses against `igpo serve` or Search-R1's retrieval server.

It survives a faulty server instead of crashing training: pooled connections, a timeout per attempt, retries
with exponential backoff and jitter on errors that may pass (connection refused or reset, timeout, 5xx, 429,
an answer that is not the expected JSON), and a circuit breaker that fails fast while the server is down
rather than making every episode wait out its retries. When the retries are spent, `search` raises
`RetrievalError`; the search tool turns that into a "search failed" observation.

Results are cached on disk, addressed by (index, topk, query): the same query against the same index gives the
same passages, so reruns are reproducible and a resumed run replays its searches, even with the server down.
The index is the `index_id` the server announces (on `/health` and in each answer); a server that announces
none (Search-R1's) is identified by its URL.
"""
from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Self

import httpx

from igpo.files import atomic_write_text
from igpo.retrieval.base import Hit, RetrievalError

DEFAULT_CACHE_DIR = Path("~/.cache/igpo/retrieval")


class _Retryable(Exception):
    """An attempt failed in a way another attempt may not."""


class HTTPRetriever:
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
        self.retries = retries
        self.backoff_s = backoff_s
        self.breaker_failures = breaker_failures
        self.breaker_cooldown_s = breaker_cooldown_s
        self.max_queries_per_request = max_queries_per_request
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )
        self._lock = threading.Lock()
        self._counts: Counter = Counter()
        self._consecutive_failures = 0
        self._opened_at: float | None = None  # circuit open since (monotonic); None = closed
        self._trial_in_flight = False
        self._index_id: str | None = None
        self._probed = False

    # -- the Retriever interface ------------------------------------------------------------------------------

    def search(self, queries: list[str], topk: int) -> list[list[Hit]]:
        if not queries:
            return []
        self._count(searches=1, queries=len(queries))
        caching = self.cache_dir is not None
        index = self._index() if caching else None
        results: list[list[Hit] | None] = [None] * len(queries)
        if index is not None:
            results = [self._cache_get(index, q, topk) for q in queries]
            self._count(cache_hits=sum(r is not None for r in results), cache_misses=sum(r is None for r in results))
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            fetched = self._fetch([queries[i] for i in missing], topk)
            index = self._index_id if caching else None  # the answer may have named the index for the first time
            for i, hits in zip(missing, fetched):
                results[i] = hits
                if index is not None:
                    self._cache_put(index, queries[i], topk, hits)
        return results  # type: ignore[return-value]

    def stats(self) -> dict:
        """Counters since creation, plus the circuit state (closed, open, half_open)."""
        with self._lock:
            out = dict(self._counts)
            out["circuit"] = self._circuit_state()
        return out

    def cache_pointer(self) -> dict:
        """What a checkpoint records to resume with this cache: where it is and which index it answers for.

        Asks no server: the index is the one already seen, else the one this URL served last."""
        index = self._index_id
        if index is None and self.cache_dir is not None and self._endpoint_file().is_file():
            index = self._endpoint_file().read_text().strip() or None
        return {"url": self.base_url, "index_id": index,
                "cache_dir": str(self.cache_dir) if self.cache_dir is not None else None}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- fetching with retries and a circuit breaker ------------------------------------------------------------

    def _fetch(self, queries: list[str], topk: int) -> list[list[Hit]]:
        attempts = self._admit()
        try:
            hits = []
            for start in range(0, len(queries), self.max_queries_per_request):
                hits += self._request(queries[start : start + self.max_queries_per_request], topk, attempts)
        except RetrievalError as e:
            self._record(ok=False, counts_for_breaker=getattr(e, "server_fault", True))
            raise
        self._record(ok=True)
        return hits

    def _request(self, queries: list[str], topk: int, attempts: int) -> list[list[Hit]]:
        payload = {"queries": queries, "topk": topk, "return_scores": True}
        last = "no attempt"
        for attempt in range(attempts):
            if attempt:
                self._count(retries=1)
                time.sleep(self.backoff_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))
            try:
                return self._attempt(payload, len(queries), topk)
            except _Retryable as e:
                last = str(e)
        raise RetrievalError(f"search failed after {attempts} attempt(s) at {self.base_url}: {last}")

    def _attempt(self, payload: dict, n: int, topk: int) -> list[list[Hit]]:
        self._count(requests=1)
        try:
            r = self._http.post("/retrieve", json=payload)
        except httpx.TimeoutException as e:
            self._count(timeouts=1)
            raise _Retryable(f"timeout ({type(e).__name__})") from None
        except httpx.TransportError as e:
            self._count(connection_errors=1)
            raise _Retryable(f"connection error ({type(e).__name__}: {e})") from None
        if r.status_code >= 500 or r.status_code in (408, 429):
            self._count(http_errors=1)
            raise _Retryable(f"HTTP {r.status_code}: {r.text[:200]}")
        if r.status_code != 200:  # our request is wrong (bounds, API key): another attempt gets the same answer
            self._count(http_errors=1)
            error = RetrievalError(f"{self.base_url} refused the search: HTTP {r.status_code}: {r.text[:300]}")
            error.server_fault = False  # type: ignore[attr-defined]
            raise error
        try:
            data = r.json()
            hits = _parse(data["result"], n, topk)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self._count(bad_responses=1)
            raise _Retryable(f"malformed answer ({type(e).__name__}: {e}): {r.text[:200]!r}") from None
        announced = data.get("index_id")
        if isinstance(announced, str) and announced != self._index_id:
            self._remember_index(announced)
        return hits

    def _admit(self) -> int:
        """How many attempts this call may make: all while the circuit is closed, one trial when half open."""
        with self._lock:
            state = self._circuit_state()
            if state == "closed":
                return 1 + self.retries
            if state == "half_open" and not self._trial_in_flight:
                self._trial_in_flight = True
                return 1
            self._counts["circuit_rejections"] += 1
            self._counts["failures"] += 1
        raise RetrievalError(
            f"circuit open: {self.base_url} failed {self._consecutive_failures} searches in a row; "
            f"next try within {self.breaker_cooldown_s:g} s"
        )

    def _record(self, ok: bool, counts_for_breaker: bool = True) -> None:
        with self._lock:
            self._trial_in_flight = False
            if ok:
                self._consecutive_failures, self._opened_at = 0, None
                return
            self._counts["failures"] += 1
            if not counts_for_breaker:
                return
            self._consecutive_failures += 1
            if self._opened_at is not None or self._consecutive_failures >= self.breaker_failures:
                if self._opened_at is None:
                    self._counts["circuit_opened"] += 1
                self._opened_at = time.monotonic()

    def _circuit_state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "open" if time.monotonic() - self._opened_at < self.breaker_cooldown_s else "half_open"

    def _count(self, **counts: int) -> None:
        with self._lock:
            self._counts.update(counts)

    # -- the index identity and the cache ----------------------------------------------------------------------

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
        if self._index_id is None and self._endpoint_file().exists():
            self._index_id = self._endpoint_file().read_text().strip() or None
        return self._index_id

    def _remember_index(self, index_id: str) -> None:
        self._index_id = index_id
        if self.cache_dir is not None:
            atomic_write_text(self._endpoint_file(), index_id)

    def _endpoint_file(self) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / "endpoints" / hashlib.sha256(self.base_url.encode()).hexdigest()[:32]

    def _cache_path(self, index: str, query: str, topk: int) -> Path:
        assert self.cache_dir is not None
        key = hashlib.sha256(json.dumps([index, topk, query]).encode()).hexdigest()
        return self.cache_dir / "results" / key[:2] / f"{key}.json"

    def _cache_get(self, index: str, query: str, topk: int) -> list[Hit] | None:
        path = self._cache_path(index, query, topk)
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
            return [Hit(str(i), str(t), str(x), float(s)) for i, t, x, s in rows]
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):  # a damaged entry is a miss; the next answer overwrites it
            return None

    def _cache_put(self, index: str, query: str, topk: int, hits: list[Hit]) -> None:
        rows = [[h.id, h.title, h.text, h.score] for h in hits]
        atomic_write_text(self._cache_path(index, query, topk), json.dumps(rows, ensure_ascii=False))


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
