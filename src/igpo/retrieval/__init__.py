"""Retrieval: the `Retriever` interface, the embedded BM25 index, and result rendering for the policy."""
from igpo.retrieval.base import Hit, Retriever
from igpo.retrieval.render import render_hits

__all__ = ["Hit", "Retriever", "render_hits"]
