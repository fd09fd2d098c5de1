"""An HTTP client for search services that survives a faulty service instead of crashing training.

Shared by the retrieval client and the web search backends: pooled connections, a timeout per attempt,
retries with exponential backoff and jitter on errors that may pass (connection refused or reset, timeout,
5xx, 408, 429 — waiting at least what `Retry-After` asks, up to a cap — and an answer that is not the
expected JSON), and a circuit breaker that fails fast while the service is down rather than making every
episode wait out its retries. Other 4xx (a bound, a wrong API key, no credits left) fail at once: another
attempt would get the same answer. When the attempts are spent, `RetrievalError` is raised.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

import httpx

from igpo.retrieval.base import RetrievalError

T = TypeVar("T")


class _Retryable(Exception):
    """An attempt failed in a way another attempt may not."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class ResilientHTTP:
    """Thread-safe. `stats()` counts requests, retries, failures by kind and the circuit breaker's actions.

    `headers` are sent with every request and never appear in an error message or a counter, so they may
    carry an API key.
    """

    def __init__(
        self,
        base_url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.25,
        breaker_failures: int = 5,
        breaker_cooldown_s: float = 30.0,
        max_retry_after_s: float = 60.0,
        max_connections: int = 16,
    ):
        self.base_url = base_url
        self.retries = retries
        self.backoff_s = backoff_s
        self.breaker_failures = breaker_failures
        self.breaker_cooldown_s = breaker_cooldown_s
        self.max_retry_after_s = max_retry_after_s
        self.http = httpx.Client(
            base_url=base_url,
            headers=headers or {},
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )
        self._lock = threading.Lock()
        self._counts: Counter = Counter()
        self._consecutive_failures = 0
        self._opened_at: float | None = None  # circuit open since (monotonic); None = closed
        self._trial_in_flight = False

    def guarded(self, work: Callable[[int], T]) -> T:
        """`work(attempts)` under the circuit breaker: `attempts` is what each of its requests may make (all
        while the circuit is closed, one trial when half open). Its `RetrievalError` counts as one failure."""
        attempts = self._admit()
        try:
            out = work(attempts)
        except RetrievalError as e:
            self._record(ok=False, counts_for_breaker=e.server_fault)
            raise
        self._record(ok=True)
        return out

    def post(self, path: str, payload, parse: Callable[[httpx.Response], T], attempts: int) -> T:
        """POST `payload` as JSON to `path` (below the base URL, or a full URL), retrying; `parse` turns a 200 answer into the result and raises ValueError,
        KeyError, TypeError or AttributeError on one of the wrong shape (retried as a bad response)."""
        last = "no attempt"
        wait = 0.0
        for attempt in range(attempts):
            if attempt:
                self.count(retries=1)
                time.sleep(max(wait, self.backoff_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)))
            try:
                return self._attempt(path, payload, parse)
            except _Retryable as e:
                last, wait = str(e), min(e.retry_after or 0.0, self.max_retry_after_s)
        raise RetrievalError(f"search failed after {attempts} attempt(s) at {self.base_url}: {last}")

    def _attempt(self, path: str, payload, parse: Callable[[httpx.Response], T]) -> T:
        self.count(requests=1)
        try:
            r = self.http.post(path, json=payload)
        except httpx.TimeoutException as e:
            self.count(timeouts=1)
            raise _Retryable(f"timeout ({type(e).__name__})") from None
        except httpx.TransportError as e:
            self.count(connection_errors=1)
            raise _Retryable(f"connection error ({type(e).__name__}: {e})") from None
        if r.status_code == 429:
            self.count(http_errors=1, rate_limited=1)
            raise _Retryable(f"HTTP 429 (rate limited): {r.text[:200]}", _retry_after(r.headers.get("retry-after")))
        if r.status_code >= 500 or r.status_code == 408:
            self.count(http_errors=1)
            raise _Retryable(f"HTTP {r.status_code}: {r.text[:200]}")
        if r.status_code != 200:
            self.count(http_errors=1, refused=1)
            raise RetrievalError(
                f"{self.base_url} refused the search: HTTP {r.status_code}: {r.text[:300]}", server_fault=False
            )
        try:
            return parse(r)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self.count(bad_responses=1)
            raise _Retryable(f"malformed answer ({type(e).__name__}: {e}): {r.text[:200]!r}") from None

    def _admit(self) -> int:
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

    def count(self, **counts: int) -> None:
        with self._lock:
            self._counts.update(counts)

    def stats(self) -> dict:
        """Counters since creation, plus the circuit state (closed, open, half_open)."""
        with self._lock:
            out = dict(self._counts)
            out["circuit"] = self._circuit_state()
        return out

    def close(self) -> None:
        self.http.close()


def _retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header: a number of seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
