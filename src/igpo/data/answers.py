"""Answer text: normalisation for matching, and the alias variants a gold answer is accepted under.

`normalize` is the one definition of "the same answer text" the benchmark uses: diacritics dropped
("Brasília" == "Brasilia"), lower case, punctuation to spaces, English articles removed. An answer occurs in a
passage when a normalised alias occurs in the normalised passage as whole words.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def strip_accents(text: str) -> str:
    """`text` without combining marks ("Bogotá" -> "Bogota"); other characters are kept."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def normalize(text: str) -> str:
    """Lower case, no diacritics, punctuation to spaces, no articles, single spaces."""
    text = _NON_ALNUM.sub(" ", strip_accents(text).lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def contains_answer(text: str, aliases: Iterable[str]) -> bool:
    """Whether some normalised alias occurs in the normalised `text` as whole words."""
    hay = f" {normalize(text)} "
    return any(n and f" {n} " in hay for n in (normalize(a) for a in aliases))


def dedupe(values: Iterable[str]) -> list[str]:
    """Non-empty values in first-seen order, exact duplicates removed (case and accent variants are kept:
    they are different strings for an exact-match reward)."""
    seen: dict[str, None] = {}
    for v in values:
        v = " ".join(v.split())
        if v and v not in seen:
            seen[v] = None
    return list(seen)


def variants(name: str) -> list[str]:
    """`name` and its accent-free spelling."""
    return dedupe([name, strip_accents(name)])


def title_case_word(word: str) -> str:
    """A Factbook capitalised surname word in title case: "MACRON" -> "Macron", "al-BURHAN" -> "al-Burhan",
    "McNAMARA" -> "McNamara"; roman numerals ("III") stay upper case."""
    if re.fullmatch(r"[IVXLC]+", word):
        return word
    parts = re.split(r"([-'’])", word)
    out = []
    for p in parts:
        if p.isupper() and len(p) > 1:
            p = p[0] + p[1:].lower()
        out.append(p)
    return "".join(out)
