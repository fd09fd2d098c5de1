"""The command line: train, eval, and errors that name what was wrong."""

import json
import re

import pytest
from typer.testing import CliRunner

from igpo.cli import app

runner = CliRunner()


@pytest.mark.integration
def test_train_then_eval(tmp_path, tiny_model_dir, corpus_file, qa_file):
    common = [
        f"model.path={tiny_model_dir}",
        f"retrieval.corpus={corpus_file}",
        "rollout.max_new_tokens=6",
        "rollout.max_turns=2",
    ]
    res = runner.invoke(
        app,
        [
            "train",
            *common,
            f"data.train={qa_file}",
            f"trainer.out_dir={tmp_path / 'run'}",
            "trainer.steps=1",
            "rollout.group_size=2",
            "rollout.questions_per_step=1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "step 1/1" in res.output
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1
    out = tmp_path / "eval.json"
    res = runner.invoke(
        app,
        [
            "eval",
            *common,
            "--checkpoint",
            str(tmp_path / "run" / "checkpoints" / "step_000001"),
            "--data",
            str(qa_file),
            "--limit",
            "3",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["overall"]["n"] == 3 and set(result["by_source"]) == {"toy", "toy2"}


def test_eval_into_a_log_shows_progress_before_its_table(tiny_model_dir, corpus_file, qa_file):
    res = runner.invoke(
        app,
        [
            "eval",
            f"model.path={tiny_model_dir}",
            f"retrieval.corpus={corpus_file}",
            "rollout.max_new_tokens=4",
            "rollout.max_turns=1",
            "trainer.eval_batch_size=2",
            "--data",
            str(qa_file),
        ],
    )
    assert res.exit_code == 0, res.output
    shown = list(re.finditer(r"\[eval\] question (\d+)/4 .*", res.output))
    assert [m.group(1) for m in shown] == ["0", "2", "4"], res.output  # opened, then after each batch of 2
    assert "elapsed" in shown[1].group(0) and "eta" in shown[1].group(0)
    assert shown[-1].end() < res.output.index("overall")  # before the final table


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train", "rollout.group_sise=4"], "rollout.group_sise: unknown key"),
        (
            [
                "train",
                "data.train=/nonexistent.jsonl",
                "retrieval.corpus=/nonexistent.jsonl",
                "model.path=/nonexistent",
            ],
            "/nonexistent",
        ),
        (["eval", "trainer.lr=abc"], "trainer.lr"),
        (["report", "/nonexistent-run"], "no metrics.jsonl"),
    ],
)
def test_bad_input_exits_2_naming_the_problem(args, fragment):
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert fragment in res.output


def test_nproc_runs_torchrun_on_the_same_arguments(monkeypatch, tmp_path):
    import subprocess
    import sys

    calls = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: calls.append(cmd) or subprocess.CompletedProcess(cmd, 3))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("trainer:\n  steps: 2\n")
    res = runner.invoke(app, ["train", "--nproc", "2", "--config", str(cfg), "rollout.questions_per_step=4"])
    assert res.exit_code == 3  # torchrun's exit status
    assert calls == [
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "igpo",
            "train",
            "--config",
            str(cfg),
            "rollout.questions_per_step=4",
        ]
    ]
    res = runner.invoke(app, ["train", "--nproc", "2", "rollout.questions_per_step=3"])
    assert res.exit_code == 2 and "multiple of the number of processes (2)" in res.output and len(calls) == 1


@pytest.mark.integration
def test_demo_pipeline_at_tiny_scale_and_rerun_resumes(tmp_path, tiny_model_dir, corpus_file, plans_file):
    import yaml

    cfg = {
        "model": {"path": str(tiny_model_dir)},
        "data": {"train": str(plans_file), "eval": str(plans_file)},
        "retrieval": {"kind": "index", "corpus": str(corpus_file), "index_dir": str(tmp_path / "bm25"), "topk": 1},
        "rollout": {"group_size": 2, "questions_per_step": 1, "max_turns": 3, "max_new_tokens": 40},
        "trainer": {"steps": 1, "out_dir": str(tmp_path / "demo"), "eval_size": 2},
        "sft": {"examples": 4, "batch_size": 2, "eval_size": 0, "out_dir": str(tmp_path / "demo" / "sft")},
    }
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["demo", "--config", str(path), "--data-dir", str(tmp_path / "unused")])
    assert res.exit_code == 0, res.output
    out = tmp_path / "demo"
    assert (tmp_path / "bm25" / "meta.json").is_file()  # the index was built
    demo = json.loads((out / "demo.json").read_text())
    assert demo["before"]["overall"]["n"] == 2 and "valid_generation_rate" in demo["after"]["overall"]
    assert set(demo["seconds"]) >= {"data", "index", "sft", "eval_before", "train", "eval_after"}
    # tool calls per question by source, before and after training: in demo.json and in the printed summary
    for tag in ("before", "after"):
        calls = demo["tool_calls"][tag]
        assert calls == {
            "toy": demo[tag]["by_source"]["toy"]["tool_calls"],
            "overall": demo[tag]["overall"]["tool_calls"],
        }
    toy = [f"{demo['tool_calls'][tag]['toy']:.2f}" for tag in ("before", "after")]
    assert "tool calls / question    before     after" in res.output
    assert ["toy", *toy] in [line.split() for line in res.output.splitlines()]
    assert (out / "report.html").is_file() and "dev F1" in res.output and "report.html" in res.output
    assert "after igpo," in " ".join(res.output.split())  # the summary names the estimator that trained
    assert not (tmp_path / "unused").exists()  # nothing to build: the config reads no VitalFactbook file

    res = runner.invoke(app, ["demo", "--config", str(path)])  # rerun: SFT, "before" and training are reused
    assert res.exit_code == 0, res.output
    assert "reusing" in res.output
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert json.loads((out / "demo.json").read_text())["before"] == demo["before"]
