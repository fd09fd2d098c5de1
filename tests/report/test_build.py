"""The report of partial runs (no IG, no eval, no samples, a cut-off last line), escaping, and bad run folders."""

import json

import pytest
from typer.testing import CliRunner

from igpo.cli import app
from igpo.report.build import _changed_answers, build_report
from igpo.report.runlog import RunFileError, RunLog, flatten, read_jsonl

GRPO_ROW = {
    "outcome_reward": 0.2,
    "f1": 0.3,
    "em": 0.1,
    "kl": 0.01,
    "entropy": 1.5,
    "format_error_rate": 0.5,
    "tool_error_rate": 0.0,
    "zero_variance_groups": 0.25,
    "seconds": {"rollout": 2.0, "update": 1.0},
    "tokens_per_s": {"rollout": 50.0, "update": None},
}


def write_run(path, n_steps=3, cut_last=False):
    path.mkdir()
    lines = [json.dumps({"step": s, **GRPO_ROW}) for s in range(n_steps)]
    if cut_last:
        lines.append(lines[-1][:20])  # killed while writing
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return path


def test_a_grpo_run_without_eval_or_samples(tmp_path):
    run = write_run(tmp_path / "run", cut_last=True)
    html = build_report(run).read_text()
    assert (run / "report.html").is_file()
    assert 'alt="Outcome reward"' in html and 'alt="Tokens per second"' in html
    assert "IG per turn" not in html and "Belief p" not in html  # GRPO: no beliefs were scored
    assert "No evaluation in this run" in html and "No trajectory samples" in html
    assert '>3</div><div class="k">steps logged' in html  # the cut-off line dropped
    assert '0.300 → 0.300</div><div class="k">rollout F1, first → last step (each on its own questions)' in html
    assert "dev F1, greedy" not in html  # no held-out evaluation, no card that pretends one


def test_demo_results_and_model_text_are_escaped(tmp_path):
    run = write_run(tmp_path / "run")
    evil = "</script><script>alert(1)</script><img src=x>"
    before, after = ({"n": 2, "f1": f1, "em": f1, "format_error_rate": 0.5, "tool_calls": 1.0} for f1 in (0.1, 0.4))
    (run / "demo.json").write_text(
        json.dumps(
            {
                "before": {"overall": before, "by_source": {"nq": before}},
                "after": {"overall": after, "by_source": {"nq": after}},
            }
        )
    )
    turn = {
        "kind": "answer",
        "text": evil,
        "tool": None,
        "arguments": {},
        "call_error": None,
        "tool_result": None,
        "tool_error": None,
        "belief": None,
        "ig": None,
        "advantage": 0.0,
        "generated_tokens": 3,
    }
    sample = {
        "step": 0,
        "group": 0,
        "id": "q",
        "source": "nq",
        "question": evil,
        "golds": [evil],
        "p0": None,
        "turns": [turn],
        "answer": evil,
        "finish": "answer",
        "f1": 0.0,
        "outcome": 0.0,
    }
    (run / "samples.jsonl").write_text(json.dumps(sample) + "\n")
    (run / "config.yaml").write_text("model:\n  path: <b>bold</b>\n")
    html = build_report(run).read_text()
    assert "igpo demo: dev set before and after" in html and '<td class="up">+0.300</td>' in html
    assert '<div class="v">0.100 → 0.400</div><div class="k">dev F1, greedy (before → after)' in html
    assert html.index("dev F1, greedy") < html.index("steps logged")  # the held-out score leads
    assert evil not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    blob = html.split('id="igpo-data">')[1].split("</script>")[0]
    assert json.loads(blob)["samples"][0]["question"] == evil


def test_answers_that_changed_are_listed_with_both_answers_largest_change_first(tmp_path):
    run = write_run(tmp_path / "run")

    def row(qid, answer, f1):
        return {
            "id": qid,
            "source": "vfb/code",
            "question": f"What is the code of {qid}?",
            "golds": [f".{qid}"],
            "answer": answer,
            "f1": f1,
            "em": f1,
        }

    before = [
        row("ng", ".ng", 1.0),
        row("tg", ".tg", 1.0),
        row("bi", ".bi", 0.0),
        row("mf", "Mali", 0.0),
        row("hn", ".hn", 1.0),
    ]
    after = [
        row("ng", "Nigeria internet country code", 0.0),
        row("tg", ".tg", 1.0),
        row("bi", "Burundi franc", 0.0),
        row("mf", "<i>mf</i>", 0.5),
        row("hn", ".hn", 1.0),
    ]
    summary = {"n": 5, "f1": 0.5, "em": 0.5, "format_error_rate": 0.0, "tool_calls": 2.0}
    (run / "demo.json").write_text(
        json.dumps(
            {
                "before": {"overall": summary, "by_source": {}, "rows": before},
                "after": {"overall": summary, "by_source": {}, "rows": after},
            }
        )
    )
    html = build_report(run).read_text()
    table = html.split('<table class="changed">')[1].split("</table>")[0]
    assert "Answers that changed: 3 of 5 questions, 1 gained F1, 1 lost it, 1 kept it" in table
    rows = table.split("<tbody>")[1].split("</tr>")[:-1]
    assert len(rows) == 3  # the two unchanged answers are not listed
    assert ".ng" in rows[0] and "Nigeria internet country code" in rows[0] and '<td class="down">-1.00</td>' in rows[0]
    assert "&lt;i&gt;mf&lt;/i&gt;" in rows[1] and '<td class="up">+0.50</td>' in rows[1]
    assert "Burundi franc" in rows[2] and "<td>+0.00</td>" in rows[2]

    table = _changed_answers({"rows": before}, {"rows": after}, limit=1)
    assert "the 1 largest F1 changes shown" in table and table.count("<tr>") == 2  # the header and one row
    assert _changed_answers({"rows": before}, {"rows": before}) == ""


def test_samples_are_capped_by_whole_steps_spread_over_the_run(tmp_path):
    run = write_run(tmp_path / "run")
    rows = [{"step": s, "turns": []} for s in range(10) for _ in range(4)]
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    html = build_report(run, max_samples=12).read_text()
    samples = json.loads(html.split('id="igpo-data">')[1].split("</script>")[0])["samples"]
    assert sorted({s["step"] for s in samples}) == [0, 4, 9] and len(samples) == 12
    assert "samples of 3 of the 10 logged steps" in html


def test_bad_run_folders_are_errors_naming_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        build_report(tmp_path)
    run = write_run(tmp_path / "run")
    (run / "metrics.jsonl").write_text('{"step": 0}\n{oops\n{"step": 2}\n')
    with pytest.raises(RunFileError, match=r"metrics.jsonl:2: not valid JSON"):
        build_report(run)
    (run / "metrics.jsonl").write_text('{"f1": 1}\n')
    with pytest.raises(RunFileError, match='row 1 has no integer "step"'):
        build_report(run)


def test_cli_writes_the_report(tmp_path):
    run = write_run(tmp_path / "run")
    res = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "out" / "r.html")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "r.html").read_text().startswith("<!doctype html>")
    (run / "metrics.jsonl").write_text("[1]\nnot json\n{}\n")
    res = CliRunner().invoke(app, ["report", str(run)])
    assert res.exit_code == 2 and "metrics.jsonl:2" in res.output


def test_run_log_resume_drops_the_samples_of_steps_that_run_again(tmp_path):
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in (0, 0, 1, 2, 3)))
    with RunLog(tmp_path, start_step=2, tensorboard=False) as log:
        log.step({"step": 2}, [{"step": 2, "x": 1}])
    assert [r["step"] for r in read_jsonl(tmp_path / "samples.jsonl")] == [0, 0, 1, 2]
    assert not list(tmp_path.glob("events.out.tfevents.*"))


def test_flatten_keeps_numbers_only():
    tree = {"a": 1, "b": {"c": 2.5, "d": None, "e": {"f": 3}}, "g": "text", "h": [1]}
    assert dict(flatten(tree)) == {"a": 1.0, "b/c": 2.5, "b/e/f": 3.0}


def test_demo_table_shows_tool_calls_per_question_by_source_before_and_after(tmp_path):
    run = write_run(tmp_path / "run")

    def summary(calls):
        return {"n": 4, "f1": 0.5, "em": 0.5, "format_error_rate": 0.0, "tool_calls": calls}

    def evaluation(single, three):
        return {
            "overall": summary((single + three) / 2),
            "by_source": {
                "vitalfactbook/factbook_field": summary(single),
                "vitalfactbook/place_neighbour_attribute": summary(three),
            },
        }

    (run / "demo.json").write_text(json.dumps({"before": evaluation(2.0, 2.0), "after": evaluation(1.25, 3.0)}))
    html = build_report(run).read_text()
    table = html.split("igpo demo: dev set before and after training")[1].split("</table>")[0]
    assert "<th>tool calls before</th><th>tool calls after</th><th>Δ</th>" in table
    rows = {r.split("<td>")[1].split("</td>")[0]: r for r in table.split("<tbody>")[1].split("</tr>")[:-1]}
    assert set(rows) == {"vitalfactbook/factbook_field", "vitalfactbook/place_neighbour_attribute", "overall"}
    assert rows["vitalfactbook/factbook_field"].endswith("<td>2.000</td><td>1.250</td><td>-0.750</td>")
    assert rows["vitalfactbook/place_neighbour_attribute"].endswith("<td>2.000</td><td>3.000</td><td>+1.000</td>")
    assert rows["overall"].endswith("<td>2.000</td><td>2.125</td><td>+0.125</td>")
