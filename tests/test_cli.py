"""The command line: train, eval, and errors that name what was wrong."""
import json

import pytest
from typer.testing import CliRunner

from igpo.cli import app

runner = CliRunner()


@pytest.mark.integration
def test_train_then_eval(tmp_path, tiny_model_dir, corpus_file, qa_file):
    common = [f"model.path={tiny_model_dir}", f"retrieval.corpus={corpus_file}", "rollout.max_new_tokens=6",
              "rollout.max_turns=2"]
    res = runner.invoke(app, ["train", *common, f"data.train={qa_file}", f"trainer.out_dir={tmp_path / 'run'}",
                              "trainer.steps=1", "rollout.group_size=2", "rollout.questions_per_step=1"])
    assert res.exit_code == 0, res.output
    assert "step 1/1" in res.output
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1
    out = tmp_path / "eval.json"
    res = runner.invoke(app, ["eval", *common, "--checkpoint", str(tmp_path / "run" / "checkpoints" / "step_000001"),
                              "--data", str(qa_file), "--limit", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["overall"]["n"] == 3 and set(result["by_source"]) == {"toy", "toy2"}


@pytest.mark.parametrize("args, fragment", [
    (["train", "rollout.group_sise=4"], "rollout.group_sise: unknown key"),
    (["train", "data.train=/nonexistent.jsonl", "retrieval.corpus=/nonexistent.jsonl", "model.path=/nonexistent"],
     "/nonexistent"),
    (["eval", "trainer.lr=abc"], "trainer.lr"),
    (["report", "/nonexistent-run"], "no metrics.jsonl"),
])
def test_bad_input_exits_2_naming_the_problem(args, fragment):
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert fragment in res.output
