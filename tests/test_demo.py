"""The demo pipeline as a library call (`igpo.demo.run_demo`), its progress written as plain lines."""

import json

import pytest

from igpo.config import Config
from igpo.demo import run_demo


@pytest.mark.integration
def test_run_demo_writes_its_progress_through_write(tmp_path, tiny_model_dir, corpus_file, plans_file):
    cfg = Config.model_validate(
        {
            "model": {"path": str(tiny_model_dir)},
            "data": {"train": str(plans_file), "eval": str(plans_file)},
            "retrieval": {"corpus": str(corpus_file), "topk": 1},
            "rollout": {"group_size": 2, "questions_per_step": 1, "max_turns": 3, "max_new_tokens": 40},
            "trainer": {"steps": 1, "out_dir": str(tmp_path / "demo"), "eval_size": 2},
            "sft": {"examples": 4, "batch_size": 2, "eval_size": 0, "out_dir": str(tmp_path / "demo" / "sft")},
        }
    )
    lines = []
    summary = run_demo(cfg, tmp_path / "unused", write=lines.append)
    written = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert {k: v for k, v in summary.items() if k not in ("estimator", "report", "total_seconds")} == written
    assert written["before"]["overall"]["n"] == 2 and written["after"]["overall"]["n"] == 2
    assert summary["estimator"] == "igpo" and summary["report"].endswith("report.html")
    assert any(line.startswith("SFT: ") for line in lines) and any(line.startswith("before: F1") for line in lines)
    assert any(line.startswith("[train (igpo)] step 1/1") for line in lines)  # the training's progress
    assert any(line.startswith("[dev eval (after)] question 2/2") for line in lines)
    assert cfg.model.path == str(tmp_path / "demo" / "sft" / "model")  # RL started from the warm start
    assert not (tmp_path / "unused").exists()
