"""QA and corpus loaders: IGPO's parquet schema, JSONL rows, malformed rows."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from igpo.data import DataError, load_corpus, load_qa
from tests.data.conftest import IGPO_QUESTIONS, IGPO_SOURCES


def test_igpo_parquet_loads_as_is(igpo_parquet):
    """A file in the schema of IGPO's released data (tests/data/conftest.py) loads without conversion."""
    qs = load_qa(igpo_parquet)
    assert len(qs) == len(IGPO_SOURCES) * len(IGPO_QUESTIONS)
    assert Counter(q.source for q in qs) == {s: len(IGPO_QUESTIONS) for s in IGPO_SOURCES}
    by_id = {q.id: q for q in qs}
    river = by_id["Bamboogle_0"]
    assert river.question == IGPO_QUESTIONS[0][0] and river.answers == ["Wend", "River Wend"]
    assert river.meta == {"ability": "search & question answering",
                          "extra_info": {"index": "Bamboogle_0", "split": "dev"}}
    assert by_id["tq_2"].answers == ["1874"] and by_id["tq_2"].source == "tq"


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_parquet_rows_in_search_r1_format(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"data_source": "nq", "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "Q1?"}],
         "reward_model": {"ground_truth": "a<|answer_split|>b", "style": "rule"}, "extra_info": {"index": "x1"}},
        {"data_source": "hotpotqa", "prompt": [{"role": "user", "content": "Q2?"}],
         "reward_model": {"ground_truth": "c", "style": "rule"}, "extra_info": {"index": "x2"}},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "s.parquet")
    qs = load_qa(tmp_path / "s.parquet")
    assert [(q.id, q.question, q.answers, q.source) for q in qs] == [
        ("x1", "Q1?", ["a", "b"], "nq"), ("x2", "Q2?", ["c"], "hotpotqa")]


def test_jsonl_keeps_extra_fields_in_meta(tmp_path):
    path = _jsonl(tmp_path / "q.jsonl", [{"id": "1", "question": "Q?", "answers": ["A"], "source": "s",
                                          "type": "t", "oracle_queries": ["a", "b"]}])
    (q,) = load_qa(path)
    assert q.meta == {"type": "t", "oracle_queries": ["a", "b"]}


@pytest.mark.parametrize("bad", [
    {"id": "2", "answers": ["A"]},                      # no question
    {"id": "2", "question": "Q?"},                      # no answer
    {"id": "2", "question": "Q?", "answers": [1]},      # wrong type
    {"id": "2", "question": "Q?", "answers": 7},        # wrong type
    "{not json",
])
def test_malformed_row_names_file_and_row(tmp_path, bad):
    path = _jsonl(tmp_path / "q.jsonl", [{"id": "1", "question": "Q?", "answers": ["A"]}, bad])
    with pytest.raises(DataError, match=rf"{path.name}: row 2: "):
        load_qa(path)


def test_skip_bad_rows_skips_and_counts(tmp_path, caplog):
    path = _jsonl(tmp_path / "q.jsonl", [{"question": "Q?", "answers": ["A"]}, {"question": ""}, "{x",
                                         {"question": "Q2?", "answer": "B"}])
    qs = load_qa(path, skip_bad_rows=True)
    assert [q.answers for q in qs] == [["A"], ["B"]]
    assert "skipped 2 malformed rows" in caplog.text


def test_corpus_formats_and_errors(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [{"id": 1, "contents": "\"Title\"\nBody text"},
                                         {"id": "b", "title": "T2", "text": "Other"}])
    assert [(p.id, p.title, p.text) for p in load_corpus(path)] == [("1", "Title", "Body text"), ("b", "T2", "Other")]
    dup = _jsonl(tmp_path / "d.jsonl", [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    with pytest.raises(DataError, match="d.jsonl: row 2: duplicate id"):
        load_corpus(dup)
    with pytest.raises(DataError, match="not found"):
        load_corpus(tmp_path / "missing.jsonl")
