"""The retrieval server, started for real on a loopback port: Search-R1 format, bounds, API key, batching."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from igpo.retrieval.bm25 import BM25Retriever
from igpo.retrieval.index import load_index
from igpo.retrieval.server import Limits, create_app, index_info

from .conftest import QUERIES


@pytest.fixture
def server(serve, bm25_index):
    retriever = load_index(bm25_index)
    return serve(create_app(retriever, index_info=index_info(retriever.meta)))


def test_health(server, bm25_index):
    r = httpx.get(f"{server.url}/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["index"]["n_passages"] == 11 and body["index"]["kind"] == "bm25"
    assert "path" not in body["index"]


@pytest.mark.parametrize("topk", [1, 3, 5])
def test_results_identical_to_embedded_index(server, passages, topk):
    expected = BM25Retriever(passages).search(QUERIES, topk)
    r = httpx.post(f"{server.url}/retrieve", json={"queries": QUERIES, "topk": topk, "return_scores": True})
    assert r.status_code == 200
    result = r.json()["result"]
    assert len(result) == len(QUERIES)
    for row, hits in zip(result, expected):
        assert [item["document"]["id"] for item in row] == [h.id for h in hits]
        assert [item["score"] for item in row] == [h.score for h in hits]
        for item, h in zip(row, hits):
            assert item["document"]["contents"] == (f"{h.title}\n{h.text}" if h.title else h.text)


def test_search_r1_format_without_scores(server):
    r = httpx.post(f"{server.url}/retrieve", json={"queries": ["capital of France"], "topk": 2})
    row = r.json()["result"][0]
    assert set(row[0]) >= {"id", "contents"} and "score" not in row[0]
    assert row[0]["contents"].startswith("Paris\n")
    default = httpx.post(f"{server.url}/retrieve", json={"queries": ["capital city"]}).json()["result"][0]
    assert len(default) == Limits().default_topk


@pytest.mark.parametrize(
    "payload, status, bound",
    [
        ({"queries": ["q"] * 257, "topk": 3}, 413, "max_queries=256"),
        ({"queries": ["ok", "x" * 4097], "topk": 3}, 413, "max_query_chars=4096"),
        ({"queries": ["q"], "topk": 101}, 422, "max_topk=100"),
        ({"queries": ["q"], "topk": 0}, 422, "max_topk=100"),
        ({"queries": "not a list"}, 422, "queries"),
    ],
)
def test_request_bounds_name_the_bound(server, payload, status, bound):
    r = httpx.post(f"{server.url}/retrieve", json=payload)
    assert r.status_code == status
    assert bound in r.json()["detail"]


def test_body_size_bound(serve, bm25_index):
    s = serve(create_app(load_index(bm25_index), limits=Limits(max_body_bytes=1000)))
    r = httpx.post(f"{s.url}/retrieve", json={"queries": ["x" * 2000]})
    assert r.status_code == 413 and "max_body_bytes=1000" in r.json()["detail"]
    r = httpx.post(f"{s.url}/retrieve", content=b"{" * 2000, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert httpx.post(f"{s.url}/retrieve", content=b"{nope").status_code == 422


def test_api_key(serve, bm25_index):
    s = serve(create_app(load_index(bm25_index), api_key="s3cret"))
    payload = {"queries": ["Puccini"], "topk": 1}
    assert httpx.post(f"{s.url}/retrieve", json=payload).status_code == 401
    wrong = httpx.post(f"{s.url}/retrieve", json=payload, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "API key" in wrong.json()["detail"]
    ok = httpx.post(f"{s.url}/retrieve", json=payload, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json()["result"][0][0]["id"] == "p7"
    assert httpx.post(f"{s.url}/retrieve", json=payload, headers={"X-API-Key": "s3cret"}).status_code == 200
    assert httpx.get(f"{s.url}/health").status_code == 200


class SlowRetriever:
    """The real index, slowed so that concurrent requests pile up while a batch is searched."""

    def __init__(self, inner, delay: float):
        self.inner, self.delay, self.calls = inner, delay, 0
        self.lock = threading.Lock()

    def search(self, queries, topk):
        with self.lock:
            self.calls += 1
        time.sleep(self.delay)
        if "explode" in queries:
            raise RuntimeError("index on fire")
        return self.inner.search(queries, topk)


def test_concurrent_requests_are_batched_and_exact(serve, bm25_index, passages):
    slow = SlowRetriever(load_index(bm25_index), delay=0.3)
    s = serve(create_app(slow))
    embedded = BM25Retriever(passages)
    jobs = [([q], 1 + i % 3) for i, q in enumerate(QUERIES * 2)]

    def call(job):
        queries, k = job
        r = httpx.post(f"{s.url}/retrieve", json={"queries": queries, "topk": k}, timeout=30)
        return [[d["id"] for d in row] for row in r.json()["result"]]

    with ThreadPoolExecutor(len(jobs)) as pool:
        got = list(pool.map(call, jobs))
    for (queries, k), ids in zip(jobs, got):
        assert ids == [[h.id for h in row] for row in embedded.search(queries, k)]
    stats = httpx.get(f"{s.url}/health").json()["stats"]
    assert stats["requests"] == len(jobs)
    assert stats["batches"] < len(jobs)  # requests that arrived during a search shared the next one


def test_search_error_is_a_500_and_the_server_stays_up(serve, bm25_index):
    s = serve(create_app(SlowRetriever(load_index(bm25_index), delay=0)))
    r = httpx.post(f"{s.url}/retrieve", json={"queries": ["explode"]})
    assert r.status_code == 500 and "index on fire" in r.json()["detail"]
    assert httpx.post(f"{s.url}/retrieve", json={"queries": ["Puccini"]}).status_code == 200


def test_igpo_serve_command(bm25_index, corpus_path, tmp_path):
    """The real command in its own process: loopback, API key from the environment, the corpus check."""
    import os
    import subprocess
    import sys

    from .conftest import free_port

    port = free_port()
    env = os.environ | {"IGPO_TEST_RETRIEVAL_KEY": "k3y"}
    cmd = [sys.executable, "-m", "igpo", "serve", "--index", str(bm25_index), "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--api-key-env", "IGPO_TEST_RETRIEVAL_KEY"], env=env, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "igpo serve did not start"
                time.sleep(0.1)
        payload = {"queries": ["Puccini"], "topk": 1}
        assert httpx.post(f"{url}/retrieve", json=payload).status_code == 401
        ok = httpx.post(f"{url}/retrieve", json=payload, headers={"Authorization": "Bearer k3y"})
        assert ok.json()["result"][0][0]["id"] == "p7"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    other = tmp_path / "other.jsonl"
    other.write_text(corpus_path.read_text().replace("Paris", "Lyon"))
    refused = subprocess.run([*cmd, "--corpus", str(other)], capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 1 and "built from another corpus" in refused.stderr
