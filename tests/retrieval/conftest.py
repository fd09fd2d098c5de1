"""Shared fixtures: a small corpus written here, its BM25 index, and real servers on free loopback ports."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from igpo.data.loaders import load_corpus
from igpo.retrieval.index import build_index

PASSAGES = [
    ("p0", "Paris", "Paris is the capital and largest city of France, on the Seine."),
    ("p1", "Berlin", "Berlin is the capital of Germany and its most populous city."),
    ("p2", "Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889."),
    ("p3", "Mount Everest", "Mount Everest is Earth's highest mountain above sea level, in the Himalayas."),
    ("p4", "Ottawa", "Ottawa is the capital city of Canada, on the south bank of the Ottawa River."),
    ("p5", "Canberra", "Canberra is the capital city of Australia, founded in 1913."),
    ("p6", "La boheme", "La boheme is an opera in four acts composed by Giacomo Puccini, premiered in 1896."),
    ("p7", "Giacomo Puccini", "Giacomo Puccini was an Italian composer born in Lucca in 1858."),
    ("p8", "Danube", "The Danube is the second-longest river in Europe, flowing through Vienna and Budapest."),
    ("p9", "Vienna", "Vienna is the capital of Austria, on the Danube river."),
    ("p10", "", "A passage without a title.\nIts text spans two lines and mentions the Seine river."),
]
QUERIES = [
    "capital of France",
    "who composed La boheme",
    "highest mountain",
    "river through Vienna",
    "Seine river",
    "zzzz qqqq",  # matches nothing
    "capital city",
]


@pytest.fixture(scope="session")
def corpus_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    rows = [{"id": i, "contents": f"{t}\n{x}"} if t else {"id": i, "title": t, "text": x} for i, t, x in PASSAGES]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def passages(corpus_path):
    return load_corpus(corpus_path)


@pytest.fixture(scope="session")
def bm25_index(corpus_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("index") / "bm25"
    build_index(corpus_path, "bm25", out, show_progress=False)
    return out


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with free_socket() as sock:
        return sock.getsockname()[1]


class ThreadServer:
    """A real uvicorn server running `app` in a thread on a free loopback port."""

    def __init__(self, app):
        import uvicorn

        sock = free_socket()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


@pytest.fixture
def serve():
    """serve(app) -> a started ThreadServer, stopped at teardown."""
    servers = []

    def start(app) -> ThreadServer:
        servers.append(ThreadServer(app))
        return servers[-1]

    yield start
    for s in servers:
        if s.thread.is_alive():
            s.stop()
