"""What a config asks for: the retriever (embedded BM25, a saved index, a retrieval server over HTTP) and the
web search service (Serper, or that retriever standing in for it)."""

from __future__ import annotations

import os

from igpo.config import ConfigError, RetrievalConfig
from igpo.retrieval.base import Retriever
from igpo.retrieval.cache import DEFAULT_CACHE_DIR


def make_retriever(cfg: RetrievalConfig) -> Retriever:
    if cfg.kind == "bm25":
        from igpo.data.loaders import load_corpus
        from igpo.retrieval.bm25 import BM25Retriever

        if not cfg.corpus:
            raise ConfigError("retrieval.corpus: required when retrieval.kind is bm25 (a corpus JSONL)")
        return BM25Retriever(load_corpus(cfg.corpus))
    if cfg.kind == "index":
        from igpo.retrieval.index import load_index

        if not cfg.index_dir:
            raise ConfigError("retrieval.index_dir: required when retrieval.kind is index (see `igpo index build`)")
        return load_index(cfg.index_dir, corpus=cfg.corpus)
    if cfg.kind == "http":
        from igpo.retrieval.client import HTTPRetriever

        if not cfg.url:
            raise ConfigError("retrieval.url: required when retrieval.kind is http")
        api_key = _api_key("retrieval.api_key_env", cfg.api_key_env) if cfg.api_key_env else None
        return HTTPRetriever(url=cfg.url, api_key=api_key, cache_dir=_cache_dir(cfg), **_http_settings(cfg))
    raise ConfigError(f"retrieval.kind: unknown kind {cfg.kind!r}")


def make_web_search(cfg: RetrievalConfig):
    """The `WebSearch` behind the web_search tool: Serper (cached on disk) or the configured retriever."""
    from igpo.retrieval.cache import ResultCache
    from igpo.retrieval.web import SerperRetriever, WebSearch

    web = cfg.web
    budget = {"max_calls": web.max_calls, "cost_per_call": web.cost_per_call}
    if web.backend == "local":
        return WebSearch(make_retriever(cfg), name="local", **budget)
    backend = SerperRetriever(
        _api_key("retrieval.web.api_key_env", web.api_key_env), web.endpoint, **_http_settings(cfg)
    )
    cache_dir = _cache_dir(cfg)
    cache = ResultCache(cache_dir) if cache_dir is not None else None
    return WebSearch(backend, name="serper", cache=cache, source=f"serper:{web.endpoint}", **budget)


def _api_key(key: str, env: str) -> str:
    value = os.environ.get(env)
    if not value:
        raise ConfigError(f"{key}: the environment variable {env} is not set")
    return value


def _cache_dir(cfg: RetrievalConfig):
    return (cfg.cache_dir or DEFAULT_CACHE_DIR) if cfg.cache else None


def _http_settings(cfg: RetrievalConfig) -> dict:
    return {
        "timeout_s": cfg.timeout_s,
        "retries": cfg.retries,
        "backoff_s": cfg.backoff_s,
        "breaker_failures": cfg.breaker_failures,
        "breaker_cooldown_s": cfg.breaker_cooldown_s,
    }
