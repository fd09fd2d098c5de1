"""The web_search tool: Serper's format against a fake Serper server written here, the local stand-in, the
cache, the budget, the 3-query cap, and an API key that never reaches a file the run writes."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from igpo.agent.parsing import Action
from igpo.agent.tools import SearchTool, Toolbox, WebSearchTool
from igpo.config import ConfigError, RetrievalConfig, dump_config, load_config
from igpo.retrieval.bm25 import BM25Retriever
from igpo.retrieval.cache import ResultCache
from igpo.retrieval.factory import make_web_search
from igpo.retrieval.render import render_hits
from igpo.retrieval.web import SerperRetriever, WebSearch, parse_serper

KEY = "sk-igpo-test-5e3f9a1c7d"
FAST = {"retries": 2, "backoff_s": 0.01, "timeout_s": 2.0}
ERRORS = {  # Serper's error answers: {"message", "statusCode"}
    "400": (400, "Not enough credits"),
    "500": (500, "Internal server error"),
    "429": (429, "Too many requests"),
}


def link(hit) -> str:
    return f"https://kb.test/{hit.id}"


class FakeSerper:
    """Answers `POST /search` as Serper does: the key in `X-API-KEY` (missing: 401, wrong: 403), a body
    `{"q", "num"}` or a list of them, one `{"searchParameters", "organic", "credits"}` per query. Results are
    BM25 over `passages` (title, link https://kb.test/<id>, snippet = text, position).

    `script`: one behaviour per request, the last repeating: "ok", or an error of `ERRORS` ("429" sends
    `Retry-After`)."""

    def __init__(self, passages, *script: str, retry_after: str = "0.3"):
        self.bm25 = BM25Retriever(passages)
        self.script, self.retry_after = list(script or ["ok"]), retry_after
        self.requests: list[tuple[dict, object]] = []  # (headers, body)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                if self.path != "/search":
                    return self._send(404, {"message": "Not found", "statusCode": 404})
                owner.requests.append((dict(self.headers), body))
                given = self.headers.get("x-api-key")
                if given != KEY:
                    return self._send(
                        401 if given is None else 403,
                        {"message": "Unauthorized.", "statusCode": 401 if given is None else 403},
                    )
                mode = owner.script[min(len(owner.requests), len(owner.script)) - 1]
                if mode in ERRORS:
                    status, message = ERRORS[mode]
                    extra = {"Retry-After": owner.retry_after} if status == 429 else {}
                    return self._send(status, {"message": message, "statusCode": status}, extra)
                queries = body if isinstance(body, list) else [body]
                answers = [owner.answer(q["q"], q.get("num", 10)) for q in queries]
                self._send(200, answers if isinstance(body, list) else answers[0])

            def _send(self, status, obj, headers=None):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/search"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, q: str, num: int) -> dict:
        hits = self.bm25.search([q], num)[0]
        organic = [{"title": h.title, "link": link(h), "snippet": h.text, "position": k} for k, h in enumerate(hits, 1)]
        return {
            "searchParameters": {"q": q, "type": "search", "num": num, "engine": "google"},
            "organic": organic,
            "relatedSearches": [{"query": q + " more"}],
            "credits": 1,
        }

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serper(passages):
    made = []

    def make(*script, **kw):
        made.append(FakeSerper(passages, *script, **kw))
        return made[-1]

    yield make
    for s in made:
        s.close()


def web(server, cache_dir=None, max_calls=None, key=KEY, **http) -> WebSearch:
    backend = SerperRetriever(key, server.url, **{**FAST, **http})
    cache = ResultCache(cache_dir) if cache_dir is not None else None
    return WebSearch(
        backend, name="serper", cache=cache, source=f"serper:{server.url}", max_calls=max_calls, cost_per_call=0.001
    )


def call(*queries) -> Action:
    return Action(kind="tool_call", name="web_search", arguments={"query": list(queries)})


def test_parse_serper_answers():
    answer = {
        "searchParameters": {"q": "eiffel tower", "type": "search", "engine": "google"},
        "knowledgeGraph": {"title": "Eiffel Tower", "description": "ignored"},
        "organic": [
            {
                "title": "Eiffel Tower - Wikipedia",
                "link": "https://en.wikipedia.org/wiki/Eiffel_Tower",
                "snippet": "The Eiffel Tower is a wrought-iron lattice tower.",
                "position": 1,
                "sitelinks": [{"title": "History", "link": "https://x"}],
            },
            {"title": "No snippet", "link": "https://example.org/a", "position": 2},
            {"title": "Third", "link": "https://example.org/b", "snippet": "c", "position": 3},
        ],
        "peopleAlsoAsk": [{"question": "How tall?", "snippet": "330 m"}],
        "credits": 1,
    }
    [hits] = parse_serper(answer, 1, 2)  # a single object for one query; cut to topk
    assert [(h.title, h.url, h.text) for h in hits] == [
        (
            "Eiffel Tower - Wikipedia",
            "https://en.wikipedia.org/wiki/Eiffel_Tower",
            "The Eiffel Tower is a wrought-iron lattice tower.",
        ),
        ("No snippet", "https://example.org/a", ""),
    ]
    assert render_hits(hits) == (
        "[1] Eiffel Tower - Wikipedia (https://en.wikipedia.org/wiki/Eiffel_Tower): "
        "The Eiffel Tower is a wrought-iron lattice tower.\n[2] No snippet (https://example.org/a): "
    )
    assert parse_serper([answer, {"searchParameters": {}}], 2, 5)[1] == []  # no organic results
    with pytest.raises(ValueError, match="list of 2"):
        parse_serper([answer], 2, 3)
    with pytest.raises(TypeError):
        parse_serper({"organic": "x"}, 1, 3)
    with pytest.raises(KeyError):
        parse_serper([{"organic": [{"title": "no link"}]}], 1, 3)


def test_serper_batch_renders_title_url_snippet(serper, passages):
    server = serper()
    tool = WebSearchTool(web(server), topk=2, max_words=8)
    box = Toolbox([tool])
    res = box.execute([call("capital of France", "Puccini"), call("highest mountain")])
    assert [r.error for r in res] == [None, None]
    local = BM25Retriever(passages)
    want = [replace(h, url=link(h)) for h in local.search(["capital of France"], 2)[0]]
    assert res[0].text.startswith(f"Query: capital of France\n{render_hits(want, 8)}\n\nQuery: Puccini\n[1] ")
    assert res[1].text.startswith("Query: highest mountain\n[1] Mount Everest (https://kb.test/p3): Mount Everest")
    # One request for the whole batch, in Serper's batch form, the key in its header.
    assert len(server.requests) == 1
    headers, body = server.requests[0]
    assert body == [{"q": q, "num": 2} for q in ("capital of France", "Puccini", "highest mountain")]
    assert headers["X-API-KEY"] == KEY
    stats = tool.stats()
    assert stats["calls"] == 3 and stats["queries"] == 3 and stats["backend_stats"]["requests"] == 1


def test_query_cap_and_argument_checks(passages):
    box = Toolbox([WebSearchTool(WebSearch(BM25Retriever(passages), name="local"), max_queries=3)])
    bad = [
        call("a", "b", "c", "d"),
        call(),
        Action(kind="tool_call", name="web_search", arguments={"query": "Paris"}),
        call("Paris", 3),
        call("Paris", "  "),
    ]
    res = box.execute(bad + [call("a", "b", "capital city")])
    assert [r.error for r in res] == ["bad_arguments"] * 5 + [None]
    assert [r.text for r in res[:5]] == [
        'Error: web_search: argument "query" takes at most 3 items, not 4.',
        'Error: web_search: argument "query" needs at least 1 item(s).',
        'Error: web_search: argument "query" must be of type array.',
        'Error: web_search: argument "query" item 2 must be of type string.',
        'Error: web_search: argument "query" item 2 is empty.',
    ]
    assert res[5].text.count("Query: ") == 3
    schema = box.schemas()[0]["function"]["parameters"]["properties"]["query"]
    assert schema["maxItems"] == 3 and schema["items"] == {"type": "string"}


def test_local_backend_renders_like_the_search_tool_and_like_serper(serper, passages):
    local = BM25Retriever(passages)
    queries = ["capital of France", "who composed La boheme", "zzzz qqqq"]
    web_text = (
        Toolbox([WebSearchTool(WebSearch(local, name="local"), topk=3, max_words=6)]).execute([call(*queries)])[0].text
    )
    search_box = Toolbox([SearchTool(local, topk=3, max_words=6)])
    blocks = [
        search_box.execute([Action(kind="tool_call", name="search", arguments={"query": q})])[0].text for q in queries
    ]
    assert web_text == "\n\n".join(f"Query: {q}\n{b}" for q, b in zip(queries, blocks))
    # Serper answering with the same documents: the same text, plus each result's URL.
    server = serper()
    serper_text = Toolbox([WebSearchTool(web(server), topk=3, max_words=6)]).execute([call(*queries)])[0].text
    expected = web_text
    for h in (h for hits in local.search(queries, 3) for h in hits):
        expected = expected.replace(f"] {h.title}: ", f"] {h.title} ({link(h)}): ", 1)
    assert serper_text == expected and serper_text != web_text


def test_cache_replays_without_calls_after_the_server_stops(serper, tmp_path):
    server = serper()
    first = WebSearchTool(web(server, tmp_path), topk=3)
    a = first.run_batch([{"query": ["capital of France", "Puccini"]}, {"query": ["Puccini"]}])
    assert len(server.requests) == 1 and server.requests[0][1] == [
        {"q": "capital of France", "num": 3},
        {"q": "Puccini", "num": 3},
    ]
    assert first.stats()["calls"] == 2 and first.stats()["cache_hits"] == 1  # the repeat in the batch
    again = first.run_batch([{"query": ["Puccini"]}])
    assert again[0].text == a[1].text and len(server.requests) == 1
    server.close()
    # A fresh service (a rerun, an evaluation) with the server gone replays from the cache: no call, no spend.
    replay = WebSearchTool(web(server, tmp_path, max_calls=0), topk=3)
    assert [r.text for r in replay.run_batch([{"query": ["capital of France", "Puccini"]}])] == [a[0].text]
    s = replay.stats()
    assert s["calls"] == 0 and s["cache_hits"] == 2 and s["cache_hit_rate"] == 1.0 and s["estimated_spend"] == 0
    # The cache is addressed by topk too.
    other_topk = WebSearchTool(web(server, tmp_path, retries=0), topk=2).run_batch([{"query": ["Puccini"]}])
    assert other_topk[0].error == "tool_failed" and "Search failed" in other_topk[0].text


def test_budget_exhaustion_is_told_to_the_policy_and_the_run_goes_on(serper, tmp_path):
    server = serper()
    tool = WebSearchTool(web(server, tmp_path, max_calls=2), topk=2)
    box = Toolbox([tool])
    r1, r2 = box.execute([call("capital of France", "Puccini"), call("highest mountain")])
    assert r1.error is None and r2.error == "budget_exhausted"
    assert (
        r2.text == "Query: highest mountain\nSearch budget exhausted: no more web searches in this run. "
        "Answer with what you know."
    )
    # Spent: what is cached is still answered; what is not gets the budget message; no request goes out.
    r3, r4 = box.execute([call("Puccini"), call("Puccini", "river through Vienna")])
    assert r3.error is None and "Giacomo Puccini" in r3.text
    assert r4.error == "budget_exhausted" and r4.text.startswith("Query: Puccini\n[1] ")
    assert len(server.requests) == 1
    s = tool.stats()
    assert (s["calls"], s["budget_left"], s["budget_refused"], s["cache_hits"]) == (2, 0, 2, 2)
    assert s["estimated_spend"] == pytest.approx(0.002)


def test_429_waits_for_retry_after_then_succeeds(serper):
    server = serper("429", "ok", retry_after="0.3")
    search = web(server)
    t = time.monotonic()
    [answer] = search.search(["Puccini"], 1)
    assert time.monotonic() - t >= 0.3 and answer.error is None and answer.hits[0].title == "Giacomo Puccini"
    http = search.stats()["backend_stats"]
    assert http["rate_limited"] == 1 and http["retries"] == 1 and http.get("failures", 0) == 0


@pytest.mark.parametrize(
    "script, key, requests, counter",
    [
        (("429",), KEY, 3, "rate_limited"),  # retried, then a failure
        (("500",), KEY, 3, "http_errors"),
        (("400",), KEY, 1, "refused"),  # no credits: another attempt gets the same answer
        (("ok",), "wrong-key", 1, "refused"),  # 403
    ],
)
def test_failures_are_observations_and_refund_the_budget(serper, script, key, requests, counter):
    server = serper(*script, retry_after="0")
    tool = WebSearchTool(web(server, max_calls=5, key=key))
    [res] = Toolbox([tool]).execute([call("Puccini", "Danube")])
    assert (
        res.error == "tool_failed"
        and res.text
        == "Query: Puccini\nSearch failed. Try again or answer.\n\nQuery: Danube\nSearch failed. Try again or answer."
    )
    s = tool.stats()
    assert len(server.requests) == requests and s["backend_stats"][counter] >= 1 and s["backend_stats"]["failures"] == 1
    assert (s["failed"], s["calls"], s["budget_left"], s["estimated_spend"]) == (2, 0, 5, 0)


def test_factory_and_config_errors(serper, corpus_path, tmp_path, monkeypatch):
    server = serper()
    assert httpx.post(server.url, json={"q": "x"}).status_code == 401  # Serper without a key
    local = make_web_search(RetrievalConfig(tool="web_search", corpus=str(corpus_path)))
    assert local.name == "local" and isinstance(local.backend, BM25Retriever) and local.cache is None
    monkeypatch.setenv("IGPO_TEST_SERPER_KEY", KEY)
    cfg = RetrievalConfig(
        tool="web_search",
        cache_dir=str(tmp_path),
        web={"backend": "serper", "endpoint": server.url, "api_key_env": "IGPO_TEST_SERPER_KEY"},
    )
    remote = make_web_search(cfg)
    assert remote.cache.directory == tmp_path and remote.source == f"serper:{server.url}"
    assert remote.search(["Puccini"], 1)[0].hits[0].url == "https://kb.test/p7"
    assert make_web_search(cfg.model_copy(update={"cache": False})).cache is None
    with pytest.raises(ConfigError, match=r"retrieval\.web\.api_key_env: .*IGPO_SURELY_UNSET_KEY"):
        make_web_search(
            cfg.model_copy(update={"web": cfg.web.model_copy(update={"api_key_env": "IGPO_SURELY_UNSET_KEY"})})
        )
    with pytest.raises(ConfigError, match="retrieval.web.max_queries"):
        load_config(None, ["retrieval.web.max_queries=0"])


SEARCH = '<tool_call>{{"name": "web_search", "arguments": {{"query": {}}}}}</tool_call>'


@pytest.mark.integration
def test_a_training_run_never_writes_the_key(serper, tmp_path, tiny_model_dir, qa_file, tokenizer, monkeypatch, caplog):
    from igpo.agent.build import make_chat_format, make_toolbox
    from igpo.train.trainer import Trainer
    from tests.conftest import QUESTIONS
    from tests.scripted import ScriptedGenerator

    monkeypatch.setenv("IGPO_TEST_SERPER_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    server = serper("429", "500", "ok", retry_after="0")  # failures put error messages in the logs too
    run = tmp_path / "run"
    cfg = load_config(
        None,
        [
            f"model.path={tiny_model_dir}",
            f"data.train={qa_file}",
            f"trainer.out_dir={run}",
            "trainer.steps=1",
            "rollout.group_size=2",
            "rollout.questions_per_step=2",
            "rollout.max_turns=3",
            "rollout.max_new_tokens=200",
            "retrieval.tool=web_search",
            "retrieval.web.backend=serper",
            f"retrieval.web.endpoint={server.url}",
            "retrieval.web.api_key_env=IGPO_TEST_SERPER_KEY",
            f"retrieval.cache_dir={run / 'search-cache'}",
            "retrieval.backoff_s=0.01",
            "retrieval.web.max_calls=2",
            "algorithm.kl_coef=0.01",
        ],
    )
    scripts = {
        q: [
            [SEARCH.format(json.dumps(["Eiffel Tower", "capital of France"]))],
            [SEARCH.format(json.dumps(["Italy anthem"]))],
            ["<answer>Paris</answer>"],
        ]
        for _, q, _ in QUESTIONS
    }
    toolbox = make_toolbox(cfg)
    fmt = make_chat_format(cfg, tokenizer, toolbox)
    assert '"web_search"' in tokenizer.decode(fmt.prompt_ids("q"))
    (m,) = Trainer(cfg, toolbox=toolbox, generator=ScriptedGenerator(tokenizer, fmt, scripts)).fit()

    assert server.requests and all(h["X-API-KEY"] == KEY for h, _ in server.requests)  # the key was used
    stats = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["retrieval"]
    assert stats == m["retrieval"] and stats["backend"] == "serper" and stats["calls"] == 2
    assert stats["budget_left"] == 0 and stats["budget_refused"] > 0 and stats["cache_hits"] > 0
    assert stats["backend_stats"]["rate_limited"] == 1 and m["tool_errors"].get("budget_exhausted", 0) > 0
    assert "IGPO_TEST_SERPER_KEY" in (run / "config.yaml").read_text()
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files) and any("search-cache" in str(p) for p in files)
    leaked = [str(p) for p in files if KEY.encode() in p.read_bytes()]
    assert not leaked, f"the API key was written to {leaked}"
    assert KEY not in caplog.text and KEY not in dump_config(cfg)
