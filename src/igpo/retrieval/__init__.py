"""Retrieval: the `Retriever` interface, embedded and saved indexes, the HTTP server and client, rendering.

`make_retriever(cfg.retrieval)` (in `igpo.retrieval.factory`) builds the one a config asks for.
"""

from igpo.retrieval.base import Hit, RetrievalError, Retriever
from igpo.retrieval.render import render_hits

__all__ = ["Hit", "RetrievalError", "Retriever", "render_hits"]
