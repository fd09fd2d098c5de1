"""Saved BM25 indexes: same results as the embedded index, metadata, corpus checks, the build command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from igpo.retrieval.bm25 import BM25Retriever
from igpo.retrieval.index import ArrowPassages, RetrievalIndexError, build_index, load_index, read_meta

from .conftest import QUERIES


def test_saved_bm25_matches_embedded(bm25_index, passages):
    loaded = load_index(bm25_index)
    embedded = BM25Retriever(passages)
    for k in (1, 3, 20):
        assert loaded.search(QUERIES, k) == embedded.search(QUERIES, k)
    assert loaded.search(["capital of France"], 1)[0][0].id == "p0"


def test_bm25_loads_memory_mapped(bm25_index):
    loaded = load_index(bm25_index)
    assert isinstance(loaded._index.scores["data"], np.memmap)
    assert isinstance(loaded.passages, ArrowPassages)


def test_meta_records_corpus_and_params(bm25_index, corpus_path):
    meta = read_meta(bm25_index)
    assert meta["kind"] == "bm25"
    assert meta["corpus"]["n_passages"] == 11
    assert len(meta["corpus"]["sha256"]) == 64
    assert meta["params"]["stemmer"] == "english" and meta["params"]["k1"] == 1.5
    assert len(meta["index_id"]) == 16


def test_loading_with_the_same_corpus_works(bm25_index, corpus_path):
    assert load_index(bm25_index, corpus=corpus_path).search(["Puccini"], 1)[0][0].id == "p7"


def test_loading_with_another_corpus_is_an_error(bm25_index, corpus_path, tmp_path):
    other = tmp_path / "other.jsonl"
    other.write_text(corpus_path.read_text().replace("Paris", "Lyon"))
    with pytest.raises(RetrievalIndexError, match="built from another corpus") as e:
        load_index(bm25_index, corpus=other)
    assert str(other) in str(e.value) and "igpo index build" in str(e.value)


def test_not_an_index_and_no_silent_overwrite(bm25_index, corpus_path, tmp_path):
    with pytest.raises(RetrievalIndexError, match="not an index directory"):
        load_index(tmp_path)
    with pytest.raises(RetrievalIndexError, match="already holds an index"):
        build_index(corpus_path, "bm25", bm25_index, show_progress=False)


def test_arrow_passages(bm25_index, passages):
    stored = ArrowPassages(bm25_index / "passages.arrow")
    assert len(stored) == len(passages)
    assert stored[0] == passages[0] and stored[-1] == passages[-1]
    assert stored[1:3] == passages[1:3]
    assert "\n" in stored[-1].text  # a title-less passage keeps its newline


def test_cli_build(corpus_path, tmp_path):
    from igpo.cli import app

    out = tmp_path / "idx"
    result = CliRunner().invoke(
        app, ["index", "build", "--corpus", str(corpus_path), "--kind", "bm25", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "meta.json").read_text())["kind"] == "bm25"
    again = CliRunner().invoke(app, ["index", "build", "--corpus", str(corpus_path), "--out", str(out)])
    assert again.exit_code == 1 and "--overwrite" in again.output
    bad = CliRunner().invoke(app, ["index", "build", "--corpus", str(corpus_path), "--out", str(out), "--kind", "x"])
    assert bad.exit_code != 0
