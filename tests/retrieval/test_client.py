"""The HTTP client against the real server, and against a small misbehaving server written here."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from igpo.agent.parsing import Action
from igpo.agent.tools import SearchTool, Toolbox
from igpo.retrieval.base import RetrievalError
from igpo.retrieval.bm25 import BM25Retriever
from igpo.retrieval.client import HTTPRetriever
from igpo.retrieval.index import load_index
from igpo.retrieval.render import render_hits
from igpo.retrieval.server import create_app, index_info

from .conftest import QUERIES, free_port

FAST = {"retries": 2, "backoff_s": 0.01, "timeout_s": 2.0}
GOOD_ANSWER = {"result": [[{"document": {"id": "d1", "contents": '"Some Title"\nsome text'}, "score": 1.5}]]}


@pytest.fixture
def server(serve, bm25_index):
    retriever = load_index(bm25_index)
    return serve(create_app(retriever, index_info=index_info(retriever.meta)))


class Misbehaving:
    """A tiny HTTP server answering /retrieve as told by `script`: one behaviour per request, the last repeats.

    Behaviours: "500", "garbage" (200, not JSON), "shape" (200, JSON of the wrong shape), "slow" (answers well,
    too late), "ok" (a Search-R1 answer). It has no /health (404), like Search-R1's server.
    """

    def __init__(self, *script: str):
        self.script, self.requests = list(script), 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_error(404)

            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                owner.requests += 1
                mode = owner.script[min(owner.requests, len(owner.script)) - 1]
                if mode == "500":
                    return self._send(500, b"internal error")
                if mode == "garbage":
                    return self._send(200, b"<html>definitely not json")
                if mode == "shape":
                    return self._send(200, json.dumps({"result": "nope"}).encode())
                if mode == "slow":
                    time.sleep(1.0)
                self._send(200, json.dumps(GOOD_ANSWER).encode())

            def _send(self, status, body):
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def misbehaving():
    made = []

    def make(*script):
        made.append(Misbehaving(*script))
        return made[-1]

    yield make
    for m in made:
        m.close()


def test_client_matches_embedded_and_renders_the_same(server, passages, tmp_path):
    embedded = BM25Retriever(passages)
    with HTTPRetriever(server.url, cache_dir=tmp_path) as client:
        for k in (1, 3, 5):
            got = client.search(QUERIES, k)
            assert got == embedded.search(QUERIES, k)
            assert [render_hits(h, 8) for h in got] == [render_hits(h, 8) for h in embedded.search(QUERIES, k)]
        assert client.stats().get("failures", 0) == 0


def test_search_r1_url_form_and_no_cache(server, passages):
    with HTTPRetriever(server.url + "/retrieve", cache_dir=None) as client:
        for _ in range(2):  # the second search, after the server named its index, still goes to the server
            assert client.search(["Puccini"], 2) == BM25Retriever(passages).search(["Puccini"], 2)
        assert client.stats().get("cache_hits", 0) == 0 and client.stats()["requests"] == 2


def test_cache_replays_after_the_server_stops(server, tmp_path):
    with HTTPRetriever(server.url, cache_dir=tmp_path, **FAST) as client:
        first = client.search(["capital of France", "Puccini"], 3)
        assert client.search(["Puccini"], 3) == [first[1]]
        assert client.stats()["cache_hits"] == 1
    server.stop()
    # A fresh client (a resumed run) with the server gone: what was searched before replays from the cache.
    with HTTPRetriever(server.url, cache_dir=tmp_path, **FAST) as client:
        assert client.search(["capital of France", "Puccini"], 3) == first
        assert client.stats()["cache_hits"] == 2 and client.stats().get("requests", 0) == 0
        with pytest.raises(RetrievalError, match="connection error"):
            client.search(["never asked before"], 3)
        stats = client.stats()
        assert stats["failures"] == 1 and stats["connection_errors"] == 3 and stats["retries"] == 2


def test_cache_is_addressed_by_index_and_topk(server, bm25_index, serve, tmp_path, corpus_path):
    with HTTPRetriever(server.url, cache_dir=tmp_path) as client:
        one = client.search(["capital city"], 1)
        assert len(client.search(["capital city"], 3)[0]) == 3
        assert client.stats()["cache_hits"] == 0
    # Another server of the same index: same content address, so the answers replay.
    same = load_index(bm25_index)
    twin = serve(create_app(same, index_info=index_info(same.meta)))
    with HTTPRetriever(twin.url, cache_dir=tmp_path) as client:
        assert client.search(["capital city"], 1) == one and client.stats().get("requests", 0) == 0
    # A server of another index: nothing replays.
    other_corpus = tmp_path / "other.jsonl"
    other_corpus.write_text(corpus_path.read_text().replace("capital", "seat of government"))
    from igpo.retrieval.index import build_index

    build_index(other_corpus, "bm25", tmp_path / "other", show_progress=False)
    other = load_index(tmp_path / "other")
    s = serve(create_app(other, index_info=index_info(other.meta)))
    with HTTPRetriever(s.url, cache_dir=tmp_path) as client:
        client.search(["capital city"], 1)
        assert client.stats().get("cache_hits", 0) == 0 and client.stats()["requests"] == 1


def test_stopped_server_fails_without_crashing(tmp_path):
    with HTTPRetriever(f"http://127.0.0.1:{free_port()}", cache_dir=tmp_path, **FAST) as client:
        for _ in range(2):
            with pytest.raises(RetrievalError):
                client.search(["anything"], 3)
        stats = client.stats()
        assert stats["failures"] == 2 and stats["connection_errors"] == 6 and stats["retries"] == 4


def test_slow_server_times_out(misbehaving, tmp_path):
    slow = misbehaving("slow")
    with HTTPRetriever(slow.url, cache_dir=tmp_path, retries=1, backoff_s=0.01, timeout_s=0.2) as client:
        with pytest.raises(RetrievalError, match="timeout"):
            client.search(["q"], 3)
        assert client.stats()["timeouts"] == 2 and client.stats()["failures"] == 1


@pytest.mark.parametrize(
    "mode, counter", [("500", "http_errors"), ("garbage", "bad_responses"), ("shape", "bad_responses")]
)
def test_errors_and_garbage_are_retried_then_counted(misbehaving, tmp_path, mode, counter):
    bad = misbehaving(mode)
    with HTTPRetriever(bad.url, cache_dir=tmp_path, **FAST) as client:
        with pytest.raises(RetrievalError, match="after 3 attempt"):
            client.search(["q"], 3)
        stats = client.stats()
        assert stats[counter] == 3 and stats["failures"] == 1 and bad.requests == 3


def test_a_retry_recovers_and_the_answer_is_cached(misbehaving, tmp_path):
    flaky = misbehaving("500", "garbage", "ok")
    with HTTPRetriever(flaky.url, cache_dir=tmp_path, **FAST) as client:
        hits = client.search(["q"], 3)
        assert hits[0][0].id == "d1" and hits[0][0].title == "Some Title" and hits[0][0].text == "some text"
        assert client.stats()["retries"] == 2 and client.stats().get("failures", 0) == 0
        assert client.search(["q"], 3) == hits and flaky.requests == 3  # replayed: keyed by the URL (no /health)


def test_circuit_breaker_fails_fast_then_recovers(misbehaving, tmp_path):
    bad = misbehaving("500", "500", "ok")
    client = HTTPRetriever(bad.url, cache_dir=None, retries=0, breaker_failures=2, breaker_cooldown_s=0.3)
    for _ in range(2):
        with pytest.raises(RetrievalError, match="HTTP 500"):
            client.search(["q"], 3)
    assert client.stats()["circuit"] == "open"
    with pytest.raises(RetrievalError, match="circuit open"):
        client.search(["q"], 3)
    assert bad.requests == 2 and client.stats()["circuit_rejections"] == 1
    time.sleep(0.35)
    assert client.stats()["circuit"] == "half_open"
    assert client.search(["q"], 3)[0][0].id == "d1"  # the trial call succeeds: closed again
    assert client.stats()["circuit"] == "closed" and client.stats()["failures"] == 3
    client.close()


def test_refused_requests_are_not_retried(serve, bm25_index, tmp_path):
    s = serve(create_app(load_index(bm25_index), api_key="k"))
    with HTTPRetriever(s.url, cache_dir=tmp_path, **FAST) as client:
        with pytest.raises(RetrievalError, match="HTTP 401"):
            client.search(["q"], 3)
        assert client.stats()["requests"] == 1 and client.stats()["circuit"] == "closed"
    with HTTPRetriever(s.url, api_key="k", cache_dir=tmp_path) as client:
        assert client.search(["Puccini"], 1)[0][0].id == "p7"


def test_search_tool_reports_failure_and_the_episode_goes_on(tmp_path):
    client = HTTPRetriever(f"http://127.0.0.1:{free_port()}", cache_dir=tmp_path, **FAST)
    tools = Toolbox([SearchTool(client, topk=3)])
    [result] = tools.execute([Action(kind="tool_call", name="search", arguments={"query": "Paris"})])
    assert result.error == "tool_failed" and "failed" in result.text.lower()
    assert client.stats()["failures"] == 1
