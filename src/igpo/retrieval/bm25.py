"""The embedded default retriever: an in-process BM25 index (bm25s) over a corpus of passages."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from igpo.data.loaders import Passage
from igpo.retrieval.base import Hit


class BM25Retriever:
    """BM25 over `title + text` of each passage; English stop words removed, Snowball-stemmed."""

    def __init__(self, passages: Sequence[Passage], stemmer: str | None = "english"):
        import bm25s

        if not passages:
            raise ValueError("BM25Retriever needs at least one passage")
        self.passages = list(passages)
        self._stemmer = _stemmer(stemmer)
        tokens = bm25s.tokenize(
            [f"{p.title}\n{p.text}" for p in self.passages], stopwords="en", stemmer=self._stemmer, show_progress=False
        )
        self._index = bm25s.BM25()
        self._index.index(tokens, show_progress=False)

    def search(self, queries: list[str], topk: int) -> list[list[Hit]]:
        import bm25s

        if not queries:
            return []
        k = min(topk, len(self.passages))
        tokens = bm25s.tokenize(list(queries), stopwords="en", stemmer=self._stemmer, show_progress=False)
        docs, scores = self._index.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        out = []
        for row_docs, row_scores in zip(np.asarray(docs), np.asarray(scores)):
            hits = []
            for d, s in zip(row_docs, row_scores):
                if s <= 0:  # no query term matched: not a result
                    continue
                p = self.passages[int(d)]
                hits.append(Hit(p.id, p.title, p.text, float(s)))
            out.append(hits)
        return out


def _stemmer(name: str | None):
    if not name:
        return None
    import Stemmer

    return Stemmer.Stemmer(name)
