"""The quality report of a built QA set: counts by type and split, and BM25 answer-recall@5.

Recall@5 is measured twice per question: (a) searching the whole question as one query, (b) searching the
oracle second query stored with it (bridge entity + attribute; for a single-hop question, its only query). An
answer is retrieved when a normalised alias occurs in one of the top 5 passages (see `answers.contains_answer`).
Two-hop questions that need two searches show a low (a) and a high (b).
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from igpo.data.answers import contains_answer
from igpo.data.loaders import DataError, QAExample, load_corpus, load_qa

SPLITS = ("train", "dev", "test")
TOPK = 5


def _recall(retriever, questions: list[QAExample], queries: list[str]) -> list[bool]:
    hits = retriever.search(queries, TOPK)
    return [any(contains_answer(h.text, q.answers) for h in hs) for q, hs in zip(questions, hits)]


def compute_stats(data_dir: str | Path) -> dict:
    """Counts and recall@5 of the QA splits in `data_dir` against its `corpus.jsonl`."""
    from igpo.retrieval.bm25 import BM25Retriever

    data_dir = Path(data_dir)
    splits = {s: load_qa(data_dir / f"{s}.jsonl") for s in SPLITS if (data_dir / f"{s}.jsonl").is_file()}
    if not splits:
        raise DataError(f"{data_dir}: no train.jsonl, dev.jsonl or test.jsonl")
    retriever = BM25Retriever(load_corpus(data_dir / "corpus.jsonl"))
    counts: dict[str, dict[str, int]] = {}
    found: dict[str, dict[str, list[int]]] = defaultdict(lambda: {"question": [0, 0], "oracle": [0, 0]})
    for split, qs in splits.items():
        counts[split] = {}
        for q in qs:
            t = str(q.meta.get("type") or q.source)
            counts[split][t] = counts[split].get(t, 0) + 1
        oracle = []
        for q in qs:
            queries = q.meta.get("oracle_queries")
            if not isinstance(queries, list) or not queries:
                raise DataError(f"{data_dir / (split + '.jsonl')}: question {q.id} has no `oracle_queries`")
            oracle.append(str(queries[-1]))
        for kind, ok in (("question", _recall(retriever, qs, [q.question for q in qs])),
                         ("oracle", _recall(retriever, qs, oracle))):
            for q, hit in zip(qs, ok):
                t = str(q.meta.get("type") or q.source)
                found[t][kind][0] += hit
                found[t][kind][1] += 1
    types = sorted({t for c in counts.values() for t in c})
    return {
        "counts": {s: {t: counts[s].get(t, 0) for t in types} for s in counts},
        "totals": {s: sum(c.values()) for s, c in counts.items()},
        "recall_at_5": {
            t: {"questions": found[t]["question"][1],
                "whole_question": round(found[t]["question"][0] / found[t]["question"][1], 4),
                "oracle_second_query": round(found[t]["oracle"][0] / found[t]["oracle"][1], 4)}
            for t in types
        },
        "topk": TOPK,
        "retriever": "bm25 (igpo.retrieval.bm25.BM25Retriever)",
    }


def write_stats(data_dir: str | Path) -> dict:
    """`compute_stats`, also written to `data_dir/stats.json`."""
    stats = compute_stats(data_dir)
    (Path(data_dir) / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return stats


def format_stats(stats: dict) -> str:
    """A plain-text table of the counts and recalls."""
    splits = list(stats["counts"])
    types = list(stats["recall_at_5"])
    w = max(len(t) for t in [*types, "type"])
    lines = [f"{'type':<{w}}  " + "  ".join(f"{s:>6}" for s in splits) + "  R@5 question  R@5 oracle-2nd"]
    for t in types:
        r = stats["recall_at_5"][t]
        lines.append(f"{t:<{w}}  " + "  ".join(f"{stats['counts'][s][t]:>6}" for s in splits)
                     + f"  {r['whole_question']:>12.1%}  {r['oracle_second_query']:>14.1%}")
    lines.append(f"{'total':<{w}}  " + "  ".join(f"{stats['totals'][s]:>6}" for s in splits))
    return "\n".join(lines)
