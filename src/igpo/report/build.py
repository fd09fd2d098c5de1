"""`build_report(run_dir)`: one self-contained HTML page for a training run.

Reads what the trainer leaves in the run folder: `metrics.jsonl` (required), `config.yaml`, `eval.jsonl`,
`samples.jsonl`, and `demo.json` from `igpo demo`; each missing file just drops its part of the page.
Plots are PNG data URIs, CSS and JS are inline, samples are embedded JSON rendered by the page's script with
`textContent` (model text is never parsed as HTML). The page makes no network request.
"""

from __future__ import annotations

import json
from html import escape
from importlib.resources import files
from pathlib import Path

import yaml

from igpo.report.plots import line_plot, training_curves
from igpo.report.runlog import SAMPLES, RunFileError, flatten, read_jsonl

CASE_THRESHOLD = 0.1  # default IG threshold of the viewer's "wrong outcome, but a turn with large IG" filter
CHANGED_LIMIT = 50  # rows of the "answers that changed" table: which greedy answers training moved, and how


def _asset(name: str) -> str:
    return (files("igpo.report") / name).read_text(encoding="utf-8")


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunFileError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None


def _read_config(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RunFileError(f"{path}: not valid YAML: {e}") from None
    return tree if isinstance(tree, dict) else {}


def _by_step(path: Path) -> list[dict]:
    """The rows of a per-step JSONL file, one per step (the last written wins: a resumed run may repeat a
    step), in step order; [] when the file is absent."""
    if not path.is_file():
        return []
    rows = read_jsonl(path)
    for k, r in enumerate(rows, 1):
        if not isinstance(r, dict) or not isinstance(r.get("step"), int):
            raise RunFileError(f'{path}: row {k} has no integer "step"')
    return sorted({r["step"]: r for r in rows}.values(), key=lambda r: r["step"])


def _spread(samples: list[dict], limit: int) -> tuple[list[dict], int, int]:
    """At most `limit` samples, taken as whole steps spread evenly over the run: (samples, shown, logged)."""
    steps = sorted({s["step"] for s in samples})
    if limit <= 0:
        return [], 0, len(steps)
    per_step = max(1, len(samples) // max(len(steps), 1))
    k = min(len(steps), max(1, limit // per_step))
    keep = {steps[round(i * (len(steps) - 1) / max(k - 1, 1))] for i in range(k)} if steps else set()
    return [s for s in samples if s["step"] in keep], len(keep), len(steps)


# ---------------------------------------------------------------- page parts
def _fmt(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _change_class(gain: float | None) -> str:
    """The cell attribute that colours a change: up (better), down (worse), nothing for none."""
    if gain is None or abs(gain) < 1e-12:
        return ""
    return ' class="up"' if gain > 0 else ' class="down"'


def _dev_card(evals: list[dict], demo: dict | None) -> tuple[str, str] | None:
    """The held-out greedy F1 before → after: the demo's, else the first and last rows of eval.jsonl."""
    if demo and demo.get("before") and demo.get("after"):
        return (
            "dev F1, greedy (before → after)",
            f"{_fmt(demo['before']['overall'].get('f1'))} → {_fmt(demo['after']['overall'].get('f1'))}",
        )
    if len(evals) > 1:
        first, last = evals[0], evals[-1]
        return (
            f"dev F1, greedy (step {first['step']} → {last['step']})",
            f"{_fmt(first['overall'].get('f1'))} → {_fmt(last['overall'].get('f1'))}",
        )
    return None


def _header(run_dir: Path, cfg: dict, rows: list[dict], evals: list[dict], demo: dict | None) -> str:
    def get(path: str):
        node = cfg
        for k in path.split("."):
            node = node.get(k) if isinstance(node, dict) else None
        return node

    facts = [
        ("model", get("model.path")),
        ("estimator", get("algorithm.estimator")),
        ("IG", get("algorithm.ig")),
        ("group size", get("rollout.group_size")),
        ("questions / step", get("rollout.questions_per_step")),
        ("max turns", get("rollout.max_turns")),
        ("temperature", get("rollout.temperature")),
        ("norm", get("algorithm.norm")),
        ("std", get("algorithm.std")),
        ("KL β", get("algorithm.kl_coef")),
        ("lr", get("trainer.lr")),
    ]
    chips = "".join(f'<span class="chip"><b>{escape(k)}</b> {escape(str(v))}</span>' for k, v in facts if v is not None)
    planned = get("trainer.steps")
    steps = f"{len(rows)}" + (f" / {planned}" if planned is not None else "")
    seconds = sum(v for r in rows for k, v in flatten(r.get("seconds", {})))
    cards = [("steps logged", steps), ("training time", f"{seconds / 60:.1f} min")]
    if dev := _dev_card(evals, demo):
        cards.insert(0, dev)
    if rows:
        # Each step samples its own questions, so its first and last values differ by the questions' difficulty
        # as much as by the policy (the demo's fall to 0 at step 6 is the questions'): the label says so.
        first, last = rows[0], rows[-1]
        for key, label in (("outcome_reward", "outcome reward"), ("f1", "rollout F1")):
            if key in last:
                cards.append(
                    (
                        f"{label}, first → last step (each on its own questions)",
                        f"{_fmt(first.get(key))} → {_fmt(last.get(key))}",
                    )
                )
    stats = "".join(
        f'<div class="stat"><div class="v">{escape(v)}</div><div class="k">{escape(k)}</div></div>' for k, v in cards
    )
    return (
        f"<header><h1>IGPO run <code>{escape(run_dir.resolve().name)}</code></h1>"
        f'<p class="chips">{chips}</p><div class="stats">{stats}</div></header>'
    )


def _curves(rows: list[dict], evals: list[dict]) -> str:
    panels = training_curves([{"step": r["step"], **dict(flatten(r))} for r in rows])
    if len(evals) >= 2:
        sources = sorted({s for e in evals for s in e.get("by_source", {})})
        lines = {"overall": ([e["step"] for e in evals], [e["overall"]["f1"] for e in evals])}
        for s in sources:
            pts = [(e["step"], e["by_source"][s]["f1"]) for e in evals if s in e.get("by_source", {})]
            lines[s] = ([p[0] for p in pts], [p[1] for p in pts])
        title = "Greedy evaluation F1"
        panels.append((title, line_plot(title, lines, rate=True)))
    if not panels:
        return (
            '<section id="curves"><h2>Training curves</h2><p class="empty">No training step logged yet.</p></section>'
        )
    figs = "".join(
        f'<figure><img alt="{escape(t)}" src="{uri}"><figcaption>{escape(t)}</figcaption></figure>' for t, uri in panels
    )
    return f'<section id="curves"><h2>Training curves</h2><div class="grid">{figs}</div></section>'


def _compare_table(caption: str, before: dict | None, after: dict, before_label: str, after_label: str) -> str:
    """Per source and overall: F1 / EM / format errors, before → after (or one column set without `before`)."""
    sources = sorted(set(after.get("by_source", {})) | set((before or {}).get("by_source", {})))
    # (key, header, +1 when higher is better, -1 when lower is, 0 neither): colours the change
    cols = [("f1", "F1", 1), ("em", "EM", 1), ("format_error_rate", "format err", -1), ("tool_calls", "tool calls", 0)]
    head = "<th>source</th><th>n</th>" + "".join(
        f"<th>{name} {escape(before_label)}</th><th>{name} {escape(after_label)}</th><th>Δ</th>"
        if before
        else f"<th>{name}</th>"
        for _, name, _ in cols
    )
    body = []
    for name in [*sources, "overall"]:
        a = after["overall"] if name == "overall" else after.get("by_source", {}).get(name, {})
        b = (before["overall"] if name == "overall" else before.get("by_source", {}).get(name, {})) if before else None
        cells = [f"<td>{escape(name)}</td><td>{a.get('n', (b or {}).get('n', '–'))}</td>"]
        for key, _, better in cols:
            if b is None:
                cells.append(f"<td>{_fmt(a.get(key))}</td>")
                continue
            va, vb = a.get(key), b.get(key)
            delta = va - vb if va is not None and vb is not None else None
            sign = _change_class(None if delta is None else better * delta)
            change = "–" if delta is None else f"{delta:+.3f}"
            cells.append(f"<td>{_fmt(vb)}</td><td>{_fmt(va)}</td><td{sign}>{change}</td>")
        body.append(f"<tr{' class=total' if name == 'overall' else ''}>{''.join(cells)}</tr>")
    return (
        f"<table><caption>{escape(caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _changed_answers(before: dict, after: dict, limit: int = CHANGED_LIMIT) -> str:
    """The questions (matched by id) whose greedy answer changed between two evaluations with rows: a count
    of those that gained, lost or kept their F1, then up to `limit` of them, largest F1 change first."""
    was = {r["id"]: r for r in before.get("rows", []) if "id" in r}
    changed = [
        (was[r["id"]], r)
        for r in after.get("rows", [])
        if r.get("id") in was and was[r["id"]].get("answer") != r.get("answer")
    ]
    if not changed:
        return ""
    delta = [(a.get("f1") or 0.0) - (b.get("f1") or 0.0) for b, a in changed]
    up, down = sum(d > 1e-12 for d in delta), sum(d < -1e-12 for d in delta)
    order = sorted(range(len(changed)), key=lambda i: (-abs(delta[i]), changed[i][1]["id"]))[:limit]

    def cell(text) -> str:
        return "<td>–</td>" if text is None else f"<td>{escape(str(text))}</td>"

    body = []
    for i in order:
        b, a = changed[i]
        sign = _change_class(delta[i])
        golds = " | ".join(str(g) for g in a.get("golds", []))
        body.append(
            f"<tr>{cell(a.get('source'))}{cell(a.get('question'))}{cell(golds)}{cell(b.get('answer'))}"
            f"<td>{_fmt(b.get('f1'), 2)}</td>{cell(a.get('answer'))}<td>{_fmt(a.get('f1'), 2)}</td>"
            f"<td{sign}>{delta[i]:+.2f}</td></tr>"
        )
    shown = f"; the {len(order)} largest F1 changes shown" if len(order) < len(changed) else ""
    caption = (
        f"Answers that changed: {len(changed)} of {len(after.get('rows', []))} questions, "
        f"{up} gained F1, {down} lost it, {len(changed) - up - down} kept it{shown}"
    )
    head = "".join(
        f"<th>{h}</th>" for h in ("source", "question", "gold", "answer before", "F1", "answer after", "F1", "Δ")
    )
    return (
        f'<table class="changed"><caption>{escape(caption)}</caption><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _evaluation(evals: list[dict], demo: dict | None) -> str:
    parts = []
    if evals:
        first, last = evals[0], evals[-1]
        if len(evals) == 1:
            caption = f"Greedy evaluation after step {last['step']} (eval.jsonl)"
            parts.append(_compare_table(caption, None, last, "", ""))
        else:
            parts.append(
                _compare_table(
                    f"Greedy evaluation, step {first['step']} → step {last['step']} (eval.jsonl)",
                    first,
                    last,
                    f"@{first['step']}",
                    f"@{last['step']}",
                )
            )
    if demo and "after" in demo:
        parts.append(
            _compare_table(
                "igpo demo: dev set before and after training (demo.json)",
                demo.get("before"),
                demo["after"],
                "before",
                "after",
            )
        )
        if demo.get("before"):
            parts.append(_changed_answers(demo["before"], demo["after"]))
    if not parts:
        parts.append(
            '<p class="empty">No evaluation in this run (set <code>trainer.eval_every</code> and '
            "<code>data.eval</code>, or run <code>igpo demo</code>).</p>"
        )
    return f'<section id="evaluation"><h2>Evaluation</h2>{"".join(parts)}</section>'


def _viewer(samples: list[dict], shown: int, logged: int, ig_kind: str) -> str:
    if not samples:
        body = (
            '<p class="empty">No trajectory samples in this run (<code>trainer.log_samples</code> = 0, '
            "or a run folder from before samples were logged).</p>"
        )
    else:
        note = f" (samples of {shown} of the {logged} logged steps, spread over the run)" if shown < logged else ""
        log = "" if ig_kind == "prob_diff" else "log "
        body = (
            f'<p class="hint">Rollouts of training steps as sampled{escape(note)}. Each turn shows the belief '
            f"p<sub>t</sub> in the gold answer after the turn and its information gain r<sub>t</sub> "
            f"({log}p<sub>t</sub> − {log}p<sub>t−1</sub>; "
            "green: the turn raised the belief, red: it lowered it), then the turn advantage A<sub>t</sub>.</p>"
            '<div class="controls">'
            '<label>step <select id="f-step"><option value="">all</option></select></label>'
            '<label><input type="checkbox" id="f-case"> wrong outcome (F1 = 0) but some turn with IG ≥ '
            f'<input type="number" id="f-thr" value="{CASE_THRESHOLD}" step="0.01"></label>'
            '<label>search <input type="search" id="f-text" placeholder="question, answer, query"></label>'
            '<span id="f-count"></span></div><div id="traj-list"></div>'
        )
    return f'<section id="trajectories"><h2>Trajectories</h2>{body}</section>'


def render(
    run_dir: Path,
    cfg: dict,
    rows: list[dict],
    evals: list[dict],
    demo: dict | None,
    samples: list[dict],
    max_samples: int = 400,
) -> str:
    samples, shown, logged = _spread(samples, max_samples)
    ig_kind = (cfg.get("algorithm") or {}).get("ig", "prob_diff")
    data = {"samples": samples, "threshold": CASE_THRESHOLD}
    # `<` escaped so no text inside the JSON can close the <script> element
    blob = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>igpo report: {escape(run_dir.resolve().name)}</title>"
        f"<style>{_asset('report.css')}</style></head><body>"
        + _header(run_dir, cfg, rows, evals, demo)
        + '<nav><a href="#curves">curves</a><a href="#evaluation">evaluation</a>'
        '<a href="#trajectories">trajectories</a></nav>'
        + _curves(rows, evals)
        + _evaluation(evals, demo)
        + _viewer(samples, shown, logged, ig_kind)
        + f'<script type="application/json" id="igpo-data">{blob}</script>'
        + f"<script>{_asset('viewer.js')}</script></body></html>"
    )


def build_report(run_dir: str | Path, out: str | Path | None = None, max_samples: int = 400) -> Path:
    """Write the report of `run_dir` to `out` (default `run_dir/report.html`) and return its path."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl here (is it a training run folder, trainer.out_dir?)")
    rows = _by_step(metrics)
    evals = _by_step(run_dir / "eval.jsonl")
    samples = read_jsonl(run_dir / SAMPLES) if (run_dir / SAMPLES).is_file() else []
    page = render(
        run_dir,
        _read_config(run_dir / "config.yaml"),
        rows,
        evals,
        _read_json(run_dir / "demo.json"),
        samples,
        max_samples,
    )
    out = Path(out) if out is not None else run_dir / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
