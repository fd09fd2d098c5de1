"""The retriever a config asks for: embedded BM25, a saved index, or a retrieval server over HTTP."""
from __future__ import annotations

import os

from igpo.config import ConfigError, RetrievalConfig
from igpo.retrieval.base import Retriever


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
        from igpo.retrieval.client import DEFAULT_CACHE_DIR, HTTPRetriever

        if not cfg.url:
            raise ConfigError("retrieval.url: required when retrieval.kind is http")
        api_key = None
        if cfg.api_key_env:
            api_key = os.environ.get(cfg.api_key_env)
            if not api_key:
                raise ConfigError(f"retrieval.api_key_env: the environment variable {cfg.api_key_env} is not set")
        return HTTPRetriever(
            cfg.url,
            api_key=api_key,
            timeout_s=cfg.timeout_s,
            retries=cfg.retries,
            backoff_s=cfg.backoff_s,
            breaker_failures=cfg.breaker_failures,
            breaker_cooldown_s=cfg.breaker_cooldown_s,
            cache_dir=(cfg.cache_dir or DEFAULT_CACHE_DIR) if cfg.cache else None,
        )
    raise ConfigError(f"retrieval.kind: unknown kind {cfg.kind!r}")
