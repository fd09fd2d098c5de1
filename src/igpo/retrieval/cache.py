"""The on-disk, content-addressed cache of search results shared by the HTTP client and web search.

An entry is addressed by sha256 of (source, topk, query), where the source names what answers: an index id,
a retrieval server's URL, or a web search endpoint. The same query to the same source gives the same
results, so reruns are reproducible and cost nothing, and a resumed run replays its searches even while
the source is down. Entries are written aside and renamed into place, so that several processes
(data-parallel ranks) can share one directory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from igpo.files import atomic_write_text
from igpo.retrieval.base import Hit

DEFAULT_CACHE_DIR = Path("~/.cache/igpo/retrieval")


class ResultCache:
    """`results/<2 hex>/<sha256>.json`: one JSON list of hits per (source, topk, query); `notes/`: small facts."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory).expanduser()

    def get(self, source: str, query: str, topk: int) -> list[Hit] | None:
        """The cached hits, or None when absent (a damaged entry is absent: the next answer overwrites it)."""
        try:
            rows = json.loads(self._path(source, query, topk).read_text(encoding="utf-8"))
            return [Hit(str(r[0]), str(r[1]), str(r[2]), float(r[3]), str(r[4]) if len(r) > 4 else "") for r in rows]
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, IndexError):
            return None

    def put(self, source: str, query: str, topk: int, hits: list[Hit]) -> None:
        rows = [[h.id, h.title, h.text, h.score] + ([h.url] if h.url else []) for h in hits]
        atomic_write_text(self._path(source, query, topk), json.dumps(rows, ensure_ascii=False))

    def recall(self, kind: str, key: str) -> str | None:
        """A small fact remembered under (kind, key), e.g. the index a URL served last."""
        try:
            return self._note(kind, key).read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None

    def remember(self, kind: str, key: str, value: str) -> None:
        atomic_write_text(self._note(kind, key), value)

    def _path(self, source: str, query: str, topk: int) -> Path:
        key = hashlib.sha256(json.dumps([source, topk, query]).encode()).hexdigest()
        return self.directory / "results" / key[:2] / f"{key}.json"

    def _note(self, kind: str, key: str) -> Path:
        return self.directory / kind / hashlib.sha256(key.encode()).hexdigest()[:32]
