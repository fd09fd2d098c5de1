"""How search results are shown to the policy: the same compact text for every backend."""

from __future__ import annotations

from igpo.retrieval.base import Hit


def render_hits(hits: list[Hit], max_words: int = 60) -> str:
    """A numbered list, one passage a line: `[k] title: text`, or `[k] title (url): text` for a web result;
    text cut to `max_words` words."""
    if not hits:
        return "No results."
    lines = []
    for k, hit in enumerate(hits, 1):
        words = hit.text.split()
        text = " ".join(words[:max_words]) + (" ..." if len(words) > max_words else "")
        head = " ".join(part for part in (hit.title, f"({hit.url})" if hit.url else "") if part)
        lines.append(f"[{k}] {head}: {text}" if head else f"[{k}] {text}")
    return "\n".join(lines)
