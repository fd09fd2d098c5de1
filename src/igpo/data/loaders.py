"""Loaders for QA examples and corpora.

QA formats: the Search-R1 / verl / IGPO parquet (`prompt` chat messages, `reward_model.ground_truth`,
`data_source`) and JSONL `{"id", "question", "answers", "source"}`. Corpus format: JSONL `{"id", "contents"}`
(`contents = "title\\ntext"`) or `{"id", "title", "text"}`. A bad row is an error naming the file and row
number (1-based), unless `skip_bad_rows`, which skips and counts.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ANSWER_SPLIT = "<|answer_split|>"


class DataError(ValueError):
    """A dataset or corpus file is missing or holds a malformed row."""


@dataclass
class QAExample:
    id: str
    question: str
    answers: list[str]
    source: str = "unknown"
    meta: dict[str, Any] = field(default_factory=dict)  # extra fields (bridge entity, oracle queries, type...)


@dataclass(frozen=True)
class Passage:
    id: str
    title: str
    text: str


def _rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based row number, row) for JSONL or parquet; a line that is not JSON yields the raw error."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield i, row
        return
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                yield i, DataError(f"not valid JSON ({e.msg})")


def _question_from_prompt(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if not isinstance(prompt, (list, tuple)):
        raise DataError("`prompt` is neither a string nor a list of chat messages")
    users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1], str):
        raise DataError("`prompt` has no user message with string content")
    return users[-1]


def _answers(value: Any, key: str) -> list[str]:
    if isinstance(value, str):
        answers = value.split(ANSWER_SPLIT)
    elif isinstance(value, (list, tuple)) or (hasattr(value, "tolist") and not isinstance(value, dict)):
        answers = list(value.tolist() if hasattr(value, "tolist") else value)
    else:
        raise DataError(f"`{key}` must be a string or a list of strings, got {type(value).__name__}")
    if not all(isinstance(a, str) for a in answers):
        raise DataError(f"`{key}` holds a non-string answer")
    answers = [a.strip() for a in answers if a.strip()]
    if not answers:
        raise DataError(f"`{key}` holds no answer")
    return answers


def _qa_from_row(row: Any, row_no: int) -> QAExample:
    if not isinstance(row, dict):
        raise DataError(f"row is a {type(row).__name__}, not an object")
    if "prompt" in row and "reward_model" in row:  # Search-R1 / verl / IGPO parquet
        question = _question_from_prompt(row["prompt"])
        rm = row["reward_model"]
        if not isinstance(rm, dict) or "ground_truth" not in rm:
            raise DataError("`reward_model` has no `ground_truth`")
        gt = rm["ground_truth"]
        if isinstance(gt, dict) and "target" in gt:  # Search-R1 stores {"target": [...]}
            gt = gt["target"]
        answers = _answers(gt, "reward_model.ground_truth")
        extra = row.get("extra_info") or {}
        ex_id = str(extra.get("index", row_no)) if isinstance(extra, dict) else str(row_no)
        meta = {k: v for k, v in row.items() if k not in ("prompt", "reward_model", "data_source")}
        return QAExample(ex_id, question.strip(), answers, str(row.get("data_source") or "unknown"), meta)
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise DataError("no `question` (a non-empty string)")
    if "answers" not in row and "answer" not in row:
        raise DataError("no `answers`")
    answers = _answers(row.get("answers", row.get("answer")), "answers")
    meta = {k: v for k, v in row.items() if k not in ("id", "question", "answers", "answer", "source")}
    return QAExample(str(row.get("id", row_no)), question.strip(), answers, str(row.get("source") or "unknown"), meta)


def _parse_rows(path: Path, parse: Callable[[Any, int], Any], skip_bad_rows: bool, empty: str) -> list:
    """Parse every row; a bad row raises with the file and row number, or is skipped and counted."""
    out, bad = [], 0
    for row_no, row in _rows(path):
        try:
            if isinstance(row, Exception):
                raise row
            out.append(parse(row, row_no))
        except DataError as e:
            if not skip_bad_rows:
                raise DataError(f"{path}: row {row_no}: {e}") from None
            bad += 1
    if bad:
        log.warning("%s: skipped %d malformed rows", path, bad)
    if not out:
        raise DataError(f"{path}: {empty}")
    return out


def load_qa(path: str | Path, skip_bad_rows: bool = False) -> list[QAExample]:
    """All QA examples of a parquet or JSONL file, in file order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"QA file not found: {path}")
    return _parse_rows(path, _qa_from_row, skip_bad_rows, "no QA examples")


def load_corpus(path: str | Path, skip_bad_rows: bool = False) -> list[Passage]:
    """All passages of a corpus JSONL; ids must be unique."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"corpus file not found: {path}")
    seen: set[str] = set()

    def parse(row: Any, row_no: int) -> Passage:
        if not isinstance(row, dict) or "id" not in row:
            raise DataError("no `id`")
        if "contents" in row and isinstance(row["contents"], str):
            title, _, text = row["contents"].partition("\n")
            title, text = (title, text) if text else ("", title)
        elif isinstance(row.get("text"), str):
            title, text = str(row.get("title") or ""), row["text"]
        else:
            raise DataError("no `contents` or `text` string")
        pid = str(row["id"])
        if pid in seen:
            raise DataError(f"duplicate id {pid!r}")
        seen.add(pid)
        return Passage(pid, title.strip().strip('"'), text.strip())

    return _parse_rows(path, parse, skip_bad_rows, "the corpus is empty")
