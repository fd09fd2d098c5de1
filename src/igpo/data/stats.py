"""The quality report of a built QA set: counts by type and split, and BM25 answer-recall@5.

Recall@5 is measured three ways per question: (a) searching the whole question as one query; (b) searching
the last oracle query stored with it (last bridge entity + attribute; for a single-hop question, its only query);
(c) the whole oracle chain: every oracle query before the last finds its hop's passage (`answer_passage_ids`) in
its top 5, and the last one the answer. An answer is retrieved when a normalised alias occurs in one of the top 5
passages (see `answers.contains_answer`). Multi-hop questions that need every search show a low (a) and a high
(b) and (c).
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


def _chain_recall(retriever, questions: list[QAExample], plans: list[list[str]]) -> list[bool | None]:
    """Per question: every hop before the last finds its `answer_passage_ids` passage in the top 5 and the last
    hop the answer; None for a question without one passage id per oracle query."""
    ok: list[bool | None] = [None] * len(questions)
    steps = [i for i, q in enumerate(questions)
             if isinstance(p := q.meta.get("answer_passage_ids"), list) and len(p) == len(plans[i])]
    for i, hit in zip(steps, _recall(retriever, [questions[i] for i in steps], [plans[i][-1] for i in steps])):
        ok[i] = hit
    # earlier hops, batched by hop index
    for hop in range(max((len(plans[i]) - 1 for i in steps), default=0)):
        idx = [i for i in steps if hop < len(plans[i]) - 1]
        for i, hits in zip(idx, retriever.search([plans[i][hop] for i in idx], TOPK)):
            found = str(questions[i].meta["answer_passage_ids"][hop]) in {h.id for h in hits}
            ok[i] = bool(ok[i]) and found
    return ok


def compute_stats(data_dir: str | Path) -> dict:
    """Counts and recall@5 of the QA splits in `data_dir` against its `corpus.jsonl`."""
    from igpo.retrieval.bm25 import BM25Retriever

    data_dir = Path(data_dir)
    splits = {s: load_qa(data_dir / f"{s}.jsonl") for s in SPLITS if (data_dir / f"{s}.jsonl").is_file()}
    if not splits:
        raise DataError(f"{data_dir}: no train.jsonl, dev.jsonl or test.jsonl")
    retriever = BM25Retriever(load_corpus(data_dir / "corpus.jsonl"))
    counts: dict[str, dict[str, int]] = {}
    hops: dict[str, int] = {}
    found: dict[str, dict[str, list[int]]] = defaultdict(lambda: {k: [0, 0] for k in ("question", "oracle", "chain")})
    for split, qs in splits.items():
        counts[split] = {}
        for q in qs:
            t = str(q.meta.get("type") or q.source)
            counts[split][t] = counts[split].get(t, 0) + 1
            hops[t] = max(hops.get(t, 0), len(q.meta.get("oracle_queries") or []))
        plans = []
        for q in qs:
            queries = q.meta.get("oracle_queries")
            if not isinstance(queries, list) or not queries:
                raise DataError(f"{data_dir / (split + '.jsonl')}: question {q.id} has no `oracle_queries`")
            plans.append([str(x) for x in queries])
        for kind, ok in (("question", _recall(retriever, qs, [q.question for q in qs])),
                         ("oracle", _recall(retriever, qs, [p[-1] for p in plans])),
                         ("chain", _chain_recall(retriever, qs, plans))):
            for q, hit in zip(qs, ok):
                if hit is not None:
                    t = str(q.meta.get("type") or q.source)
                    found[t][kind][0] += hit
                    found[t][kind][1] += 1
    types = sorted({t for c in counts.values() for t in c})

    def rate(t: str, kind: str) -> float | None:
        hit, n = found[t][kind]
        return round(hit / n, 4) if n else None

    return {
        "counts": {s: {t: counts[s].get(t, 0) for t in types} for s in counts},
        "totals": {s: sum(c.values()) for s, c in counts.items()},
        "recall_at_5": {
            t: {"questions": found[t]["question"][1], "hops": hops[t], "whole_question": rate(t, "question"),
                "oracle_last_query": rate(t, "oracle"), "oracle_chain": rate(t, "chain")}
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

    def pct(x: float | None, width: int) -> str:
        return f"{'-':>{width}}" if x is None else f"{x:>{width}.1%}"

    lines = [f"{'type':<{w}}  hops  " + "  ".join(f"{s:>6}" for s in splits)
             + "  R@5 question  R@5 oracle-last  R@5 oracle-chain"]
    for t in types:
        r = stats["recall_at_5"][t]
        lines.append(f"{t:<{w}}  {r['hops']:>4}  " + "  ".join(f"{stats['counts'][s][t]:>6}" for s in splits)
                     + f"  {pct(r['whole_question'], 12)}  {pct(r['oracle_last_query'], 15)}"
                     + f"  {pct(r['oracle_chain'], 16)}")
    lines.append(f"{'total':<{w}}  {'':>4}  " + "  ".join(f"{stats['totals'][s]:>6}" for s in splits))
    return "\n".join(lines)
