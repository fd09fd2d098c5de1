"""The config chooses the retriever: embedded BM25, a saved index, or HTTP."""

from __future__ import annotations

import pytest

from igpo.config import ConfigError, RetrievalConfig
from igpo.retrieval.bm25 import BM25Retriever
from igpo.retrieval.client import HTTPRetriever
from igpo.retrieval.factory import make_retriever


def test_bm25_and_index(corpus_path, bm25_index):
    embedded = make_retriever(RetrievalConfig(kind="bm25", corpus=str(corpus_path)))
    assert isinstance(embedded, BM25Retriever)
    saved = make_retriever(RetrievalConfig(kind="index", index_dir=str(bm25_index), corpus=str(corpus_path)))
    assert saved.search(["Puccini"], 2) == embedded.search(["Puccini"], 2)


def test_http(tmp_path, monkeypatch):
    cfg = RetrievalConfig(kind="http", url="http://127.0.0.1:9/retrieve", cache_dir=str(tmp_path), retries=1)
    client = make_retriever(cfg)
    assert isinstance(client, HTTPRetriever) and client.base_url == "http://127.0.0.1:9"
    assert client.retries == 1 and client.cache_dir == tmp_path
    assert make_retriever(cfg.model_copy(update={"cache": False})).cache_dir is None
    monkeypatch.setenv("IGPO_TEST_KEY", "k")
    keyed = make_retriever(cfg.model_copy(update={"api_key_env": "IGPO_TEST_KEY"}))
    assert keyed._http.headers["authorization"] == "Bearer k"


@pytest.mark.parametrize(
    "cfg, key",
    [
        (RetrievalConfig(kind="bm25"), "retrieval.corpus"),
        (RetrievalConfig(kind="index"), "retrieval.index_dir"),
        (RetrievalConfig(kind="http"), "retrieval.url"),
        (RetrievalConfig(kind="http", url="http://127.0.0.1:9", api_key_env="IGPO_SURELY_UNSET"), "IGPO_SURELY_UNSET"),
    ],
)
def test_missing_settings_name_the_key(cfg, key):
    with pytest.raises(ConfigError, match=key):
        make_retriever(cfg)
