"""Integration: a tiny IGPO run leaves samples and TensorBoard scalars, and its report renders in headless Chromium."""

import json
import math
from pathlib import Path

import pytest

from igpo.agent.build import make_chat_format, make_toolbox
from igpo.report.build import build_report
from igpo.train.trainer import Trainer
from tests.conftest import FACTS, QUESTIONS, make_tiny_llama
from tests.scripted import ScriptedGenerator
from tests.train.test_trainer import SCRIPTS, make_cfg

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tokenizer) -> Path:
    """Two IGPO steps of a tiny random model playing scripted turns, with greedy evaluation after each step."""
    tmp = tmp_path_factory.mktemp("report")
    corpus, qa = tmp / "corpus.jsonl", tmp / "qa.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "contents": f"{t}\n{x}"}) + "\n" for i, t, x in FACTS))
    qa.write_text(
        "".join(
            json.dumps({"id": i, "question": q, "answers": a, "source": f"toy{n % 2}"}) + "\n"
            for n, (i, q, a) in enumerate(QUESTIONS)
        )
    )
    cfg = make_cfg(
        tmp,
        "unused",
        corpus,
        qa,
        "trainer.steps=2",
        f"data.eval={qa}",
        "trainer.eval_every=1",
        "trainer.eval_size=2",
        "trainer.log_samples=6",
    )
    toolbox = make_toolbox(cfg)
    fmt = make_chat_format(cfg, tokenizer, toolbox)
    Trainer(
        cfg,
        model=make_tiny_llama(len(tokenizer)),
        tokenizer=tokenizer,
        toolbox=toolbox,
        generator=ScriptedGenerator(tokenizer, fmt, SCRIPTS),
    ).fit()
    return tmp / "run"


def test_samples_hold_the_trained_beliefs_and_ig(run_dir):
    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0] * 6 + [1] * 6
    scored = [r for r in rows if r["p0"] is not None]
    assert scored, "no sample with beliefs"
    for r in scored:
        beliefs = [r["p0"]] + [t["belief"] for t in r["turns"][:-1]]
        for k, t in enumerate(r["turns"][:-1]):
            assert t["ig"] == pytest.approx(beliefs[k + 1] - beliefs[k], abs=1e-6)
        assert r["turns"][-1]["ig"] is None and r["turns"][-1]["belief"] is None
    assert any(t["tool_result"] and t["kind"] == "tool_call" for r in rows for t in r["turns"])


def test_tensorboard_scalars_beside_metrics(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert list(run_dir.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/outcome_reward", "train/kl", "train/seconds/rollout", "eval/overall/f1"} <= set(tags)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    events = acc.Scalars("train/outcome_reward")
    assert [e.step for e in events] == [0, 1]
    assert [e.value for e in events] == pytest.approx([m["outcome_reward"] for m in metrics])


def test_report_holds_plots_tables_and_samples(run_dir, tmp_path):
    html = build_report(run_dir, tmp_path / "r.html").read_text()
    assert html.count('<img alt="') >= 10 and html.count('src="data:image/png;base64,') >= 10
    for title in (
        "Outcome reward",
        "IG per turn index",
        "Share of zero-variance groups",
        "KL to the reference",
        "Tokens per second",
        "Greedy evaluation F1",
    ):
        assert f'alt="{title}' in html
    assert "step 1 → step 2 (eval.jsonl)" in html and "<td>toy0</td>" in html
    evals = [json.loads(line)["overall"]["f1"] for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    assert f'{evals[0]:.3f} → {evals[-1]:.3f}</div><div class="k">dev F1, greedy (step 1 → 2)' in html
    assert "://" not in html  # no URL of any kind: nothing to fetch
    blob = html.split('<script type="application/json" id="igpo-data">')[1].split("</script>")[0]
    samples = json.loads(blob)["samples"]
    assert len(samples) == 12 and any(t["ig"] is not None for s in samples for t in s["turns"])


def test_report_renders_in_headless_chromium_without_network(run_dir, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent (make test installs the Debian chromium package)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    page_file = build_report(run_dir, tmp_path / "report.html")
    requests = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.on("request", lambda r: requests.append(r.url))
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_file.as_uri())
        page.wait_for_load_state("load")
        decoded = page.eval_on_selector_all("#curves img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)")
        assert len(decoded) >= 10 and all(decoded)
        assert page.locator(".traj").count() == 12
        igs = page.eval_on_selector_all(".traj .ig-bar", "bars => bars.map(b => b.parentElement.dataset.ig)")
        assert igs and all(math.isfinite(float(v)) for v in igs)
        assert page.locator(".traj").first.locator(".turn[data-turn]").count() >= 1
        # The case-study filter: wrong outcome (F1 = 0) and some turn with IG >= threshold
        samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
        lowest = min(t["ig"] for s in samples for t in s["turns"] if t["ig"] is not None)
        expected = sum(s["f1"] == 0 and any(t["ig"] is not None for t in s["turns"]) for s in samples)
        assert expected > 0
        page.fill("#f-thr", str(lowest))
        page.check("#f-case")
        assert page.locator(".traj").count() == expected
        assert page.locator(".traj .badge.case").count() == expected
        browser.close()
    assert not errors
    assert requests == [page_file.as_uri()]
