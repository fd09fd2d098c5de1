"""The learning benchmark: IGPO against GRPO and IGPO's own ablations, from one shared SFT checkpoint.

Every run gets the same budget (questions, rollouts per question, steps, learning rate); only the estimator and
the seed change. Each run is a directory `out_dir/<estimator>-s<seed>`: a run with `done.json` is skipped, an
interrupted one resumes from its last checkpoint, so the benchmark can be split over several invocations.
Greedy dev evaluation every `eval_every` steps (step 0 is the shared SFT model, evaluated once), greedy test
evaluation at the end of every run and once of the starting model, then `results.json` and `learning.png` over
whatever runs are finished.

The pieces: `bench.config` (settings, each arm's config, file layout), `bench.run` (one run, the shared start,
worker processes), `bench.results` (results.json, merging `bench.include`), `bench.plots` (learning.png).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from igpo.bench.config import BenchConfig, is_done, start_files, start_model_dir
from igpo.bench.plots import plot
from igpo.bench.results import aggregate, included_runs, regime, start_record
from igpo.bench.run import in_child, prepare_start, run_one, run_parallel
from igpo.config import Config, ConfigError


def run_learning_bench(bench: BenchConfig, cfg: Config, log: Callable[[str], None] = print) -> dict:
    """The whole benchmark (resumable); returns results.json's content."""
    from igpo.train.sft import sft_done

    out = Path(bench.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.data.eval:
        raise ConfigError("data.eval: the learning benchmark needs a dev QA file")
    start_model = start_model_dir(bench, cfg)
    if bench.sft:
        cfg.sft.out_dir = str(out / "sft")
    todo = ["shared SFT warm start"] if bench.sft and not sft_done(cfg.sft.out_dir) else []
    if not all(p.is_file() for p in start_files(bench)):
        todo.append("greedy evaluation of the starting model (step 0)")
    if todo:
        log(f"{' and '.join(todo)}, in a child process")
        in_child("the shared start", prepare_start, bench, cfg, start_model)
    step0, step0_test = _start_scores(bench)
    # checked before anything trains: a file that cannot be merged should stop the bench now, not in hours
    included = included_runs(bench, start_record(bench, cfg, step0, step0_test), regime(cfg))
    # Seed-major: a benchmark cut short still has every estimator at its first seeds, side by side.
    order = [(est, seed) for seed in bench.seeds for est in bench.estimators]
    pending = []
    for est, seed in order:
        if is_done(bench, est, seed):
            log(f"{est}-s{seed}: done, skipped")
        elif str(seed) in included.get(est, {}):
            log(f"{est}-s{seed}: finished in {included[est][str(seed)]['from']}, skipped")
        else:
            pending.append((est, seed))
    if bench.jobs > 1 and len(pending) > 1:
        run_parallel(bench, cfg, pending, start_model, log)
    else:
        for est, seed in pending:
            run_one(bench, cfg, est, seed, start_model, log)
    return _write_results(bench, cfg, step0, step0_test)


def report_done(bench: BenchConfig, cfg: Config, log: Callable[[str], None] = print) -> dict:
    """results.json and learning.png from the runs already finished (here or in `bench.include`), training and
    evaluating nothing: what a benchmark cut short (or split over machines) has so far. The rest are listed
    under `pending`."""
    out = Path(bench.out_dir)
    if not bench.include and not any(is_done(bench, e, s) for e in bench.estimators for s in bench.seeds):
        raise ConfigError(
            f"bench.out_dir: no finished run of {bench.estimators} x seeds {bench.seeds} "
            f"in {out} (a finished run has done.json)"
        )
    out.mkdir(parents=True, exist_ok=True)
    result = _write_results(bench, cfg, *_start_scores(bench))
    log(f"{sum(len(v) for v in result['runs'].values())} finished runs aggregated, {len(result['pending'])} not run")
    return result


def _write_results(bench: BenchConfig, cfg: Config, step0_dev: dict | None, step0_test: dict | None) -> dict:
    result = aggregate(bench, cfg, step0_dev, step0_test)
    if result["runs"]:
        plot(result, Path(bench.out_dir) / "learning.png")
    return result


def _start_scores(bench: BenchConfig) -> tuple[dict | None, dict | None]:
    """The starting model's overall dev and test scores, None where not evaluated."""
    dev, *test = (json.loads(p.read_text())["overall"] if p.is_file() else None for p in start_files(bench))
    return dev, (test[0] if test else None)
