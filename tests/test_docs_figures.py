"""The figures quoted in README.md and benchmarks/README.md are the ones in benchmarks/results/*.json.

Each test reads a table of a doc section and formats the JSON values the way the doc prints them: a changed JSON
value or a changed figure in the doc fails here. Beyond those, every number in a speed benchmark's section must be a
value of its JSON at the printed precision, or a figure the test computes from it (`DERIVED`); every other number
of both docs a value of some result or config it ran with, or computed (`LEARNING_DERIVED`). The last test checks
that the docs' links resolve.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BENCH = (ROOT / "benchmarks" / "README.md").read_text()
README = (ROOT / "README.md").read_text()


def result(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def section(doc: str, heading: str) -> str:
    """The text under the heading `heading` (without its #s), up to the next heading."""
    lines = doc.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("#") and line.lstrip("#").strip() == heading]
    assert starts, f"no heading {heading!r}"
    rest = lines[starts[0] + 1 :]
    end = next((i for i, line in enumerate(rest) if line.startswith("#")), len(rest))
    return "\n".join(rest[:end])


def cells(line: str) -> list[str]:
    # `\|` inside a cell is a literal bar; bold markers are presentation, not part of the figure
    return [c.strip().replace("**", "") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def table(text: str, column: str) -> list[dict[str, str]]:
    """The rows of the first markdown table in `text` whose header has `column`, each as {header: cell}."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and column in cells(line):
            header, rows = cells(line), []
            for body in lines[i + 2 :]:
                if not body.startswith("|"):
                    break
                rows.append(dict(zip(header, cells(body))))
            return rows
    raise AssertionError(f"no table with a column {column!r}")


def row(rows: list[dict[str, str]], *lead: str) -> dict[str, str]:
    """The row whose first cells are `lead` (a cell may go on after a space: `2 (start ...)` is seed `2`)."""
    for r in rows:
        first = list(r.values())[: len(lead)]
        if all(c == want or c.startswith(want + " ") for c, want in zip(first, lead)):
            return r
    raise AssertionError(f"no row {lead}")


def f3(x: float) -> str:
    return f"{x:.3f}"


def signed(x: float) -> str:
    """A difference as the docs print it: +0.043, −0.010 (a minus sign), 0.000 when it rounds to nothing."""
    return "0.000" if abs(x) < 0.0005 else f"{x:+.3f}".replace("-", "−")


# --- the learning benchmark ---------------------------------------------------------------------------------


def test_default_preset_summary_table_is_the_json_summary():
    res = result("learning_default.json")
    rows = table(section(BENCH, "Does IGPO beat GRPO?"), "test F1 − grpo, per seed (mean ± std)")
    start = row(rows, "start (SFT)")
    assert (start["test F1"], start["final dev F1"]) == (f3(res["start"]["test"]["f1"]), f3(res["start"]["dev"]["f1"]))
    assert len(rows) == 1 + len(res["summary"])
    for est, s in res["summary"].items():
        r = row(rows, est)
        assert r["seeds"] == str(s["seeds"])
        assert r["test F1"] == f"{s['test_f1_mean']:.3f} ± {s['test_f1_std']:.3f}", est
        assert r["final dev F1"] == f3(s["final_dev_f1_mean"]), est
        assert r["zero-variance groups"] == f"{s['zero_variance_share']:.2f}", est
        if s["vs_grpo"]:
            per_seed = ", ".join(map(signed, s["vs_grpo"]["test_f1"]["per_seed"]))
            assert r["test F1 − grpo, per seed (mean ± std)"].startswith(per_seed), est
    for est in ("igpo", "igpo_ig_only"):  # the paired means the finding rests on
        paired = res["summary"][est]["vs_grpo"]["test_f1"]
        quoted = row(rows, est)["test F1 − grpo, per seed (mean ± std)"]
        assert f"({signed(paired['mean'])} ± {paired['std']:.3f})" in quoted


def test_default_preset_per_run_table_has_every_run_as_in_the_json():
    res = result("learning_default.json")
    rows = table(section(BENCH, "Does IGPO beat GRPO?"), "test F1 (200)")
    runs = [(est, seed, run) for est, seeds in res["runs"].items() for seed, run in seeds.items()]
    assert len(rows) == 1 + len(runs)
    for est, seed, run in runs:
        r = row(rows, est, seed)
        assert r["dev F1 at step 0 / 5 / 10 / 15 / 20 (100 questions)"] == " / ".join(map(f3, run["dev_f1"]))
        assert r["test F1 (200)"] == f3(run["test"]["overall"]["f1"]), (est, seed)
        assert r["step seconds (sum)"] == f"{run['seconds']:,.0f}", (est, seed)
        zero_var = sum(run["zero_variance_groups"]) / len(run["zero_variance_groups"])
        assert r["zero-variance groups"] == f"{zero_var:.2f}", (est, seed)
        if "start_sha256" in run:
            assert run["start_sha256"][:12] in r["seed"]


def test_advantage_signal_table_is_the_json():
    runs = result("learning_default.json")["runs"]
    rows = table(section(BENCH, "Does IGPO beat GRPO?"), "tokens with GRPO's sign")
    for est in ("igpo", "igpo_ig_only"):
        for seed, run in runs[est].items():
            sig, r = run["advantage_signal"], row(rows, est, seed)
            assert r["their share of \\|adv\\|"] == f"{100 * sig['zero_variance_share_of_abs_adv']:.1f}%"
            assert r["tokens with GRPO's sign"] == f"{100 * sig['outcome_sign_agreement']:.1f}%"
            assert r["\\|adv\\| (token-weighted sum)"] == f"{sig['abs_adv_tokens']:,.0f}"


def test_demo_figures_in_both_readmes_are_the_lr_6e6_runs():
    res = result("learning_demo_lr6e-6.json")
    runs = {
        (est, seed): run
        for key, part in res.items()
        if key != "what"
        for est, seeds in part["runs"].items()
        for seed, run in seeds.items()
    }
    rows = table(section(BENCH, "The demo's settings, and why"), "dev F1 (SFT: 0.288)")
    assert len(rows) == len(runs)
    for (est, seed), run in runs.items():
        r = row(rows, est, seed)
        assert (r["dev F1 (SFT: 0.288)"], r["EM (SFT: 0.27)"]) == (f3(run["dev_f1"][-1]), f"{run['dev_em'][-1]:.2f}")
        assert r["step seconds (sum)"] == f"{run['seconds']:,.0f}"
    start = res["igpo_ig_only_seeds_0_1"]["start"]["dev"]
    assert f3(start["f1"]) == "0.288" and f"{start['em']:.2f}" == "0.27"  # the SFT figures in the headers

    demo = table(section(README, "What the demo shows"), "dev F1")
    assert row(demo, "SFT warm start")["dev F1"] == f3(start["f1"])
    ig = [runs[("igpo_ig_only", s)]["dev_f1"][-1] for s in "0123"]
    assert row(demo, "after RL, `igpo_ig_only`, lr 6e-6, seed 0 (`make demo`)")["dev F1"] == f3(ig[0])
    assert row(demo, "after RL, `igpo_ig_only`, lr 6e-6, seeds 1 / 2 / 3")["dev F1"] == " / ".join(map(f3, ig[1:]))
    grpo = [runs[("grpo", s)]["dev_f1"][-1] for s in "01"]
    assert row(demo, "after RL, `grpo`, same settings, seeds 0 / 1")["dev F1"] == " / ".join(map(f3, grpo))
    mean = sum(ig) / 4
    std = (sum((x - mean) ** 2 for x in ig) / 3) ** 0.5
    for doc in (README, BENCH):
        assert f"{mean:.3f} ± {std:.3f}" in doc


def test_small_preset_tables_are_the_json():
    small = result("learning_small.json")
    rows = table(section(BENCH, "The small preset"), "test F1 (100)")
    for est, run in ((e, seeds["0"]) for e, seeds in small["runs"].items()):
        r, by_source = row(rows, est), run["test"]["by_source"]
        assert r["dev F1 at step 0 / 4 / 8 (50 questions)"] == " / ".join(map(f3, run["dev_f1"]))
        assert r["test F1 (100)"] == f3(run["test"]["overall"]["f1"])
        field, unique = (
            by_source[f"vitalfactbook/{k}"]["f1"] for k in ("factbook_field", "unique_value_country_attribute")
        )
        assert r["factbook_field / unique_value test F1 (9 / 64 questions)"] == f"{field:.3f} / {unique:.3f}"
        assert r["zero-variance groups"] == f"{small['summary'][est]['zero_variance_share']:.2f}"
        assert r["step seconds (sum)"] == f"{run['seconds']:,.0f}"

    paper = result("learning_small_paper.json")
    rows = table(section(BENCH, "The demo's settings, and why"), "tool calls a test question")
    for est, run in ((e, seeds["0"]) for e, seeds in paper["runs"].items()):
        r = row(rows, est)
        assert r["dev F1 at step 0 (SFT) / 5 / 10 (50 questions)"] == " / ".join(map(f3, run["dev_f1"]))
        assert r["test F1 (100)"] == f3(run["test"]["overall"]["f1"])
        assert r["tool calls a test question"] == f"{run['test']['overall']['tool_calls']:.2f}"


def test_sft_start_table_is_the_two_files_starts():
    rows = table(section(BENCH, "Is the SFT start reproducible across CPUs?"), "`start.model_sha256`")
    for name in ("learning_default.json", "learning_default_s2.json"):
        start, r = result(name)["start"], row(rows, f"`{name}`")
        assert r["`start.model_sha256`"] == f"`{start['model_sha256'][:12]}…`"
        assert r["dev F1 / EM (100)"] == f"{start['dev']['f1']:.3f} / {start['dev']['em']:.2f}"
        assert r["test F1 / EM (200)"] == f"{start['test']['f1']:.3f} / {start['test']['em']:.3f}"


# --- the speed benchmarks -----------------------------------------------------------------------------------


def test_belief_figures():
    rows = table(section(BENCH, "Belief scoring (`beliefs.py`)"), "(a)/(d)")
    for run in result("beliefs.json")["runs"]:
        r, s = row(rows, str(run["aliases"])), run["median_s"]
        assert r["(a)/(d)"] == f"{run['packed_over_floor']:.2f}"
        assert r["(c)/(a)"] == f"{run['official_over_packed']:.2f}"
        assert [r[k] for k in ("(a) packed", "(c) official way", "(d) plain forward")] == [
            f"{s[k]:.1f} s" for k in ("packed", "official", "floor")
        ]


def test_rollout_figures():
    res = result("rollout.json")
    text = section(BENCH, "Rollout engine (`rollout.py`)")
    rows = table(text, "tokens/s")
    for name, label in (("engine", "engine (ours)"), ("plain_loop", "plain `generate` loop")):
        r = row(rows, label)
        assert (r["seconds"], r["tokens/s"]) == (f"{res['median_s'][name]:.1f}", f"{res['tokens_per_s'][name]:.1f}")
    assert f"**{res['speedup_vs_plain_loop']:.2f} ×** the plain loop" in text
    assert f"{res['generated_tokens']:,} tokens generated" in text
    # the decoding steps: per turn, as many as the longest generation; the docs quote their total, and how many
    # decode only the episodes that ran to the token limit
    rows = decoding_rows(res)
    assert f"take {len(rows)} batched steps" in text
    at_limit = sum(any(g == res["settings"]["max_new_tokens"] for g in ep) for ep in res["generated_per_turn"])
    assert f"{rows.count(at_limit)} of the {len(rows)} steps decode {at_limit} rows" in text
    assert f"{res['engine_ids_computed']:,} ids and reused {res['engine_ids_reused']:,}" in text
    assert f"{res['speedup_vs_batched_generate']:.2f} × batched `generate`" in text


def decoding_rows(res: dict) -> list[int]:
    """The rows (active episodes) of each batched decoding step of `rollout.json`'s engine, turn after turn."""
    per_turn = list(zip(*res["generated_per_turn"]))
    return [sum(g >= s for g in turn) for turn in per_turn for s in range(1, max(turn) + 1)]


def test_train_step_and_update_scoring_figures():
    step = result("train_step.json")
    rows = table(section(BENCH, "Training step vs TRL (`train_step.py`)"), "TRL")
    assert row(rows, "median step")["ours"] == f"{step['ours']['median_step_s']:.1f} s"
    for phase, label in (("rollout", "rollout"), ("ref_logprobs", "reference log-probs"), ("update", "update")):
        for impl, col in (("ours", "ours"), ("trl", "TRL")):
            assert row(rows, label)[col] == f"{step[impl]['median_phase_s'][phase]:.1f} s", (phase, impl)
    assert row(rows, "peak RSS")["ours"] == f"{step['ours']['peak_rss_mb']:,.0f} MiB"
    assert row(rows, "peak RSS")["TRL"] == f"{step['trl']['peak_rss_mb']:,.0f} MiB"
    assert f"**{step['step_ratio_ours_over_trl']:.2f} ×**" in section(BENCH, "Training step vs TRL (`train_step.py`)")

    upd = result("update_scoring.json")
    text = section(BENCH, "Update scoring (`update_scoring.py`)")
    rows = table(text, "policy's tokens only")
    assert row(rows, "peak RSS")["policy's tokens only"] == f"{upd['fast']['peak_rss_mb']:,.0f} MiB"
    assert row(rows, "median pass")["every position after the prompt"] == f"{upd['reference']['median_s']:.1f} s"
    assert f"**{upd['speedup_vs_reference']:.2f} ×** faster" in text


def test_seeded_sampling_and_retrieval_figures():
    seeded = result("seeded_sampling.json")
    text = section(BENCH, "Seeded sampling (`seeded_sampling.py`)")
    r = row(table(text, "seeded (ours)"), "tokens/s")
    assert (r["seeded (ours)"], r["HF batch sampler"]) == (
        f"{seeded['tokens_per_s']['seeded']:.1f}",
        f"{seeded['tokens_per_s']['hf_batch_sampler']:.1f}",
    )
    assert f"{seeded['ratio_seeded_over_hf']:.2f} × HF's time" in text
    rows = table(text, "seeded (ours)")
    best, alone = seeded["best_seconds_per_step"], seeded["sampler_only_ms_per_step"]
    r = row(rows, "seconds a decoding step")
    assert (r["seeded (ours)"], r["HF batch sampler"]) == (f"{best['seeded']:.2f}", f"{best['hf_batch_sampler']:.2f}")
    r = row(rows, "sampling step alone")
    assert r["seeded (ours)"] == f"{alone['seeded']:.1f} ms"
    assert r["HF batch sampler"].startswith(f"{alone['softmax_multinomial']:.1f} ms")

    load = result("retrieval_load.json")
    paced = row(table(section(BENCH, "Retrieval server load (`retrieval_load.py`)"), "req/s"), "paced, 200 req/s")
    assert paced["requests"] == f"{load['paced']['requests']:,}" and paced["errors"] == str(load["paced"]["errors"])
    assert paced["p99"] == f"{load['paced']['latency_ms']['p99']} ms"


@pytest.mark.parametrize(
    "benchmark, figure",
    [
        ("belief scoring", lambda: f"{result('beliefs.json')['runs'][0]['packed_over_floor']:.2f}"),
        ("rollout engine", lambda: f"{result('rollout.json')['speedup_vs_plain_loop']:.2f} ×"),
        ("training step vs TRL", lambda: f"{result('train_step.json')['step_ratio_ours_over_trl']:.2f} ×"),
        ("update scoring", lambda: f"{result('update_scoring.json')['speedup_vs_reference']:.2f} × faster"),
        ("seeded sampling", lambda: f"{result('seeded_sampling.json')['ratio_seeded_over_hf']:.2f} ×"),
    ],
)
def test_speed_summary_table_quotes_each_json(benchmark, figure):
    rows = table(section(BENCH, "Speed benchmarks"), "latest")
    r = next(r for r in rows if r["benchmark"].startswith(f"[{benchmark}]"))
    assert figure() in r["latest"]


# Every number in a speed section: a value of its JSON at the printed precision, or a figure computed from it.
SPEED_SECTIONS = {
    "Belief scoring (`beliefs.py`)": "beliefs.json",
    "Rollout engine (`rollout.py`)": "rollout.json",
    "Training step vs TRL (`train_step.py`)": "train_step.json",
    "Update scoring (`update_scoring.py`)": "update_scoring.json",
    "Seeded sampling (`seeded_sampling.py`)": "seeded_sampling.json",
    "Retrieval server load (`retrieval_load.py`)": "retrieval_load.json",
    "Rollout: vLLM against the engine (`rollout.py --arms engine,vllm`)": "rollout_vllm.json",
    "One step with each rollout backend (`step_backend.py`)": "step_backend.json",
}
# Figures a section computes from its JSON rather than quotes: {heading: {figure as printed: its computation}}.
DERIVED = {
    "Rollout engine (`rollout.py`)": {
        "5,358": lambda r: f"{r['engine_ids_computed'] - r['generated_tokens']:,}",  # the ids prefilled
        "313": lambda r: str(len(decoding_rows(r))),
        "219": lambda r: str(decoding_rows(r).count(2)),
    },
}
# Not figures: code (commands, names, versions), dates, the model's name, each target (a goal, not a result)
# and the tolerances the scripts assert.
NOT_FIGURES = [
    r"```.*?```",
    r"`[^`]*`",
    r"\d{4}-\d{2}-\d{2}",
    r"135M",  # the model's size, in its name
    r"arXiv \d+\.\d+|ICLR \d{4}",  # the paper
    r"\*\*Target\*\*.*?\*\*Verdict",
    r"(?<![\d.])1e-\d(?!\d)",  # a tolerance (1e-4); a measured difference is printed as 1.3e-05
]
# a version (2.13.0+cpu) or a number: 4,302 or 27.7 or 1.3e-05
NUMBER = re.compile(
    r"(?<![\w.])(?:(?P<version>\d+(?:\.\d+){2,}(?:\+\w+)?)|(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<places>\d+))?(?:e-\d+)?)"
)


def json_leaves(x) -> list:
    if isinstance(x, dict):
        return [v for y in x.values() for v in json_leaves(y)]
    if isinstance(x, list):
        return [v for y in x for v in json_leaves(y)]
    return [x]


def unsourced_numbers(text: str, res: dict, derived: dict) -> list[str]:
    """The numbers of `text` that are neither a value of `res` at their printed precision nor in `derived`
    ({figure: computation of it from `res`}, each checked)."""
    for pattern in NOT_FIGURES:
        text = re.sub(pattern, " ", text, flags=re.S)
    leaves = json_leaves(res)
    values = [v for v in leaves if isinstance(v, (int, float)) and not isinstance(v, bool)]
    out = []
    for m in NUMBER.finditer(text):
        fig, places = m.group(0), len(m.group("places") or "")
        if m.group("version"):  # a version is quoted from a string: torch's, Python's, the platform's
            sourced = any(isinstance(v, str) and fig in v for v in leaves)
        elif "e-" in fig:  # 1.3e-05 as Python prints it, or a setting written short: 2e-6
            sourced = any(re.sub(r"e-0*", "e-", f"{v:.{places}e}") == re.sub(r"e-0*", "e-", fig) for v in values)
        else:  # the sign is the table's to check; a percentage is a share times 100
            scale = 100 if re.match(r"(?:–[\d.]+)?%", text[m.end() :]) else 1
            sourced = any(f"{abs(v) * scale:,.{places}f}".replace(",", "") == fig.replace(",", "") for v in values)
        if fig in derived:
            assert derived[fig](res) == fig, f"{fig} is not what it is computed from"
        elif not sourced:
            out.append(fig)
    return out


@pytest.mark.parametrize("heading", SPEED_SECTIONS)
def test_every_number_of_a_speed_section_comes_from_its_json(heading):
    res, derived = result(SPEED_SECTIONS[heading]), DERIVED.get(heading, {})
    text = section(BENCH, heading)
    assert not unsourced_numbers(text, res, derived), heading
    assert all(fig in text for fig in derived), "a derived figure is no longer in the docs: drop it from DERIVED"


def demo_dev_f1(est: str) -> list[float]:
    """The final dev F1 of each seed of `est` in `learning_demo_lr6e-6.json`, by seed."""
    res = result("learning_demo_lr6e-6.json")
    runs = {seed: run for k, part in res.items() if k != "what" for seed, run in part["runs"].get(est, {}).items()}
    return [runs[seed]["dev_f1"][-1] for seed in sorted(runs)]


def sft_dev_f1() -> float:
    return result("learning_demo_lr6e-6.json")["igpo_ig_only_seeds_0_1"]["start"]["dev"]["f1"]


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


# The other sections' figures (the learning benchmark's, the diagnostic's) and README's: from any of the results
# or the configs they ran with, or computed from them (by section; README's under "README.md").
LEARNING_DERIVED = {
    "Does IGPO beat GRPO?": {
        "0.40": lambda: f"{mean(result('learning_default.json')['runs']['igpo']['1']['zero_variance_groups']):.2f}",
        # the runs the file holds: "13 of the 15 runs"
        "13": lambda: str(sum(len(seeds) for seeds in result("learning_default.json")["runs"].values())),
    },
    "The demo's settings, and why": {
        "0.019": lambda: f"{min(demo_dev_f1('igpo_ig_only')) - sft_dev_f1():.3f}",  # the smallest gain over SFT
        "0.322": lambda: f"{mean(demo_dev_f1('igpo_ig_only')):.3f}",
    },
    "Where does the demo's gain go?": {
        "0.539": lambda: f"{other_first_tokens_p_before():.3f}",
    },
    "README.md": {"0.322": lambda: f"{mean(demo_dev_f1('igpo_ig_only')):.3f}"},
}


def other_first_tokens_p_before() -> float:
    """The answer-weighted mean probability, before training, of the first answer tokens other than `>.`."""
    other = [t for tok, t in result("answer_start.json")["by_first_token"].items() if tok != ">."]
    return sum(t["p_before"] * t["answers"] for t in other) / sum(t["answers"] for t in other)


def all_sources() -> dict:
    import yaml

    files = {p.name: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    for path in (ROOT / "configs" / "demo.yaml", ROOT / "benchmarks" / "learning.yaml"):
        files[path.name] = yaml.safe_load(path.read_text())
    return files


STEP_SECTION = "One step, each optimisation off and on (`step.py`)"


def other_sections() -> list[str]:
    """The sections of benchmarks/README.md that are not a speed benchmark's with its own JSON."""
    headings = [line.lstrip("#").strip() for line in BENCH.splitlines() if line.startswith("### ")]
    return [h for h in headings if h not in SPEED_SECTIONS and h != STEP_SECTION]


@pytest.mark.parametrize("heading", [*other_sections(), "README.md"])
def test_every_other_number_of_the_readmes_comes_from_a_result(heading):
    text = README if heading == "README.md" else section(BENCH, heading)
    derived = {fig: (lambda _, f=f: f()) for fig, f in LEARNING_DERIVED.get(heading, {}).items()}
    assert not unsourced_numbers(text, all_sources(), derived), heading
    assert all(fig in text for fig in derived), "a derived figure is no longer in the docs: drop it"


def test_step_section_waits_for_its_json_or_quotes_it():
    text = section(BENCH, STEP_SECTION)
    if (RESULTS / "step.json").is_file():
        assert not unsourced_numbers(text, result("step.json"), {})
    else:
        assert "figures: pending a quiet-machine run" in text


def test_a_number_in_no_json_is_caught():
    res = {"peak_rss_mb": 4301.5, "rows": [2, 2], "ms": 45.08, "diff": 1.3e-5, "torch": "2.13.0+cpu"}
    text = "peak RSS 4,302 MiB, 2 rows, 45.1 ms, 1.3e-05 (`v1.16`, 2026-11-25; torch 2.13.0+cpu)"
    assert unsourced_numbers(text, res, {}) == []
    text = "peak RSS 4.3 GB, 3 rows, 45.2 ms, 1.4e-05, torch 2.12.0"
    assert unsourced_numbers(text, res, {}) == ["4.3", "3", "45.2", "1.4e-05", "2.12.0"]
    with pytest.raises(AssertionError, match="computed"):
        unsourced_numbers("4 rows in all", res, {"4": lambda r: str(sum(r["rows"]) + 1)})


# --- links ----------------------------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but `-` and `_` dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def test_every_link_in_the_docs_resolves():
    docs = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for doc in docs:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve() if file else doc
            if not path.exists() or (anchor and anchor not in anchors(path)):
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not broken, broken
