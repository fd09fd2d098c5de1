"""The embedded default retriever: an in-process BM25 index (bm25s) over a corpus of passages."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from igpo.data.loaders import Passage
from igpo.retrieval.base import Hit, Retriever

STOPWORDS = "en"


class BM25Retriever(Retriever):
    """BM25 over `title + text` of each passage; English stop words removed, Snowball-stemmed.

    `save` writes the bm25s matrices; `load` memory-maps them back, with the passages given by the caller
    (any sequence: the saved index keeps them in an Arrow file, see `igpo.retrieval.index`).
    """

    def __init__(self, passages: Sequence[Passage], stemmer: str | None = "english"):
        import bm25s

        if not passages:
            raise ValueError("BM25Retriever needs at least one passage")
        self.passages = list(passages)
        self.stemmer = stemmer
        self._stemmer = _stemmer(stemmer)
        tokens = bm25s.tokenize(
            [f"{p.title}\n{p.text}" for p in self.passages],
            stopwords=STOPWORDS,
            stemmer=self._stemmer,
            show_progress=False,
        )
        self._index = bm25s.BM25()
        self._index.index(tokens, show_progress=False)

    @classmethod
    def load(
        cls, directory: str | Path, passages: Sequence[Passage], stemmer: str | None = "english", mmap: bool = True
    ) -> BM25Retriever:
        """A retriever over matrices written by `save`; `passages` must be the ones it was built from, in order."""
        import bm25s

        self = cls.__new__(cls)
        self.passages = passages
        self.stemmer = stemmer
        self._stemmer = _stemmer(stemmer)
        self._index = bm25s.BM25.load(str(directory), mmap=mmap, show_progress=False)
        n_docs = self._index.scores["num_docs"]
        if n_docs != len(passages):
            raise ValueError(f"{directory}: the BM25 index holds {n_docs} documents but {len(passages)} passages given")
        return self

    def save(self, directory: str | Path) -> None:
        """Write the BM25 matrices and vocabulary (not the passages) to `directory`."""
        self._index.save(str(directory), show_progress=False)

    @property
    def params(self) -> dict:
        """What decides the scores, recorded in index metadata."""
        return {
            "method": self._index.method,
            "k1": self._index.k1,
            "b": self._index.b,
            "delta": self._index.delta,
            "stopwords": STOPWORDS,
            "stemmer": self.stemmer,
        }

    def search(self, queries: list[str], topk: int) -> list[list[Hit]]:
        import bm25s

        if not queries:
            return []
        k = min(topk, len(self.passages))
        tokens = bm25s.tokenize(list(queries), stopwords=STOPWORDS, stemmer=self._stemmer, show_progress=False)
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
