"""`benchmarks/decode_compile.py` on the tiny model, eager arms only (compiling takes minutes): the static-shape step
(full-width buffers, a 4-D mask switched on column by column) decodes the engine's step's greedy tokens, and the
JSON names the machine, the load and each arm's figures."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the benchmarks import their `common` module
    return importlib.import_module("decode_compile")


def test_static_step_decodes_the_engine_steps_tokens(bench, tiny_model_dir, corpus_file, tmp_path):
    out = tmp_path / "decode.json"
    argv = ["--model", str(tiny_model_dir), "--corpus", str(corpus_file), "--arms", "grow_eager,static_eager"]
    record = bench.main(
        [
            *argv,
            "--batches",
            "1,3",
            "--context",
            "40",
            "--warmup",
            "1",
            "--steps",
            "6",
            "--repeats",
            "2",
            "--out",
            str(out),
        ]
    )
    assert json.loads(out.read_text()) == record
    assert record["machine"]["torch_threads"] == 1
    assert [len(r["load_average"]) for r in record["repeats"]] == [3, 3]
    for rep in record["repeats"]:
        assert set(rep["runs"]) == {"grow_eager/b1", "static_eager/b1", "grow_eager/b3", "static_eager/b3"}
        for b in (1, 3):
            static = rep["runs"][f"static_eager/b{b}"]
            assert static["identical_tokens"] and static["steps_identical"] == 7
            assert static["max_abs_logit_diff"] < 1e-4
    assert set(record["summary"]) == {"grow_eager/b1", "static_eager/b1", "grow_eager/b3", "static_eager/b3"}


def test_a_step_gives_the_logits_of_a_forward_without_cache(bench, tiny_model_dir, corpus_file):
    """Both arms' first step gives the logits of a forward over the whole context; the static arm attends over the
    whole buffer, so this holds whatever its columns not yet written hold (they are masked)."""
    from igpo.config import ModelConfig
    from igpo.policy.loading import load_policy

    model, tok = load_policy(ModelConfig(path=str(tiny_model_dir)))
    model.eval()
    ctx = bench.context_ids(tok, str(corpus_file), 2, 30)
    grow, static = bench.Arm(model, "grow_eager"), bench.Arm(model, "static_eager")
    with torch.no_grad():
        grow.start(ctx, 40)
        static.start(ctx, 40)
        for layer in static.cache.layers:  # garbage in the unwritten columns
            layer.keys[:, :, 31:] = 1e3
            layer.values[:, :, 31:] = -1e3
        ids = grow.first_logits.argmax(-1)[:, None]
        a, b = grow.step(ids), static.step(ids)
        full = model(input_ids=torch.cat([ctx, ids], dim=1)).logits[:, -1].float()  # no cache: the reference
    assert (a - full).abs().max() < 1e-4
    assert (b - full).abs().max() < 1e-4
