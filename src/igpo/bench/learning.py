"""The learning benchmark: IGPO against GRPO and IGPO's own ablations, from one shared SFT checkpoint.

Every run gets the same budget (questions, rollouts per question, steps, learning rate); only the estimator and
the seed change. Each run is a directory `out_dir/<estimator>-s<seed>`: a run with `done.json` is skipped, an
interrupted one resumes from its last checkpoint, so the benchmark can be split over several invocations.
Greedy dev evaluation every `eval_every` steps (step 0 is the shared SFT model, evaluated once), greedy test
evaluation at the end of every run and once of the starting model, then `results.json` and `learning.png` over whatever runs are finished.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from igpo.config import (RENAMED, Config, ConfigError, apply_overrides, check_estimator_options, config_fields,
                         read_yaml, result_keys, validate)
from igpo.data.loaders import load_qa

SMALL = {"bench.estimators": ["igpo", "grpo"], "bench.seeds": [0]}


class BenchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    estimators: list[str] = ["igpo", "grpo", "igpo_ig_only", "igpo_outcome_only", "gated"]
    seeds: list[int] = [0, 1, 2]
    eval_every: int = Field(5, ge=1)  # dev evaluation every k steps (and a checkpoint, so runs resume there)
    dev_size: int = Field(100, ge=1)  # first questions of data.eval
    test: str | None = None  # test QA file, evaluated at the end of every run
    test_size: int = Field(200, ge=1)
    out_dir: str = "runs/bench-learning"
    sft: bool = True  # warm-start once with the `sft` section; False: start every run from model.path
    # Runs trained at once, each in its own process with cpu_count // jobs torch threads. A 135M model does not
    # keep two CPU threads busy: on 2 cores, 2 jobs of 1 thread train more steps an hour than 1 job of 2
    # (measured in benchmarks/README.md). Each job holds its own models and optimizer (~10 GB resident here).
    jobs: int = Field(1, ge=1)
    # results.json files of earlier invocations (another machine, an out_dir since lost): their finished runs in
    # this grid count as done and are aggregated with this out_dir's. Each must record the same starting model,
    # training config and evaluation settings (`_incompatible`); a run finished here wins over an included one.
    include: list[str] = []
    # Also merge `include` files whose starting model has other weights but scored the same dev and test n/F1/EM
    # here: an SFT rebuilt from the same recipe under another torch build or CPU vector unit rounds differently
    # (benchmarks/README.md). Off by default, since such runs share a start only up to rounding; merged runs then
    # record their start's sha256 (`start_sha256`) and results.json lists the starts (`start.equivalent`).
    include_equivalent_starts: bool = False
    # Named variants, runnable like estimators in `estimators`: dotted `algorithm.*` overrides of the shared config
    # (e.g. igpo_raw_ig: {algorithm.norm: raw_ig, algorithm.ig: log_prob_diff}). Only the algorithm may differ
    # between runs; everything else (budget, evaluation) is shared.
    variants: dict[str, dict[str, Any]] = {}


def load_bench_config(path: str | Path, overrides: list[str] | None = None, small: bool = False) -> tuple[BenchConfig, Config]:
    """The file's `bench:` section, and the rest of it as the training `Config` shared by every run.

    Overrides starting with `bench.` go to the former. `small: True` first applies the file's `small:` section
    (dotted keys, e.g. `bench.seeds: [0]`, `trainer.steps: 10`; default: igpo and grpo, one seed), then
    `overrides`, which win."""
    from igpo.algo.advantages import ESTIMATORS

    tree = read_yaml(path)
    preset = tree.pop("small", None)
    if preset is not None and not isinstance(preset, dict):
        raise ConfigError(f"small: expected a mapping of dotted keys to values, got {type(preset).__name__}")
    over = [f"{k}={json.dumps(v)}" for k, v in (preset or SMALL).items()] if small else []
    over += overrides or []
    bench_tree = tree.pop("bench", None) or {}
    apply_overrides(bench_tree, [o[len("bench."):] for o in over if o.startswith("bench.")])
    bench = validate(BenchConfig, bench_tree, prefix="bench.")
    cfg = validate(Config, apply_overrides(tree, [o for o in over if not o.startswith("bench.")]))
    if clash := sorted(set(bench.variants) & set(ESTIMATORS)):
        raise ConfigError(f"bench.variants: {clash} name estimators; give variants names of their own")
    if unknown := [e for e in bench.estimators if e not in ESTIMATORS and e not in bench.variants]:
        raise ConfigError(f"bench.estimators: unknown estimator(s) or variant(s) {unknown}; "
                          f"known: {sorted(ESTIMATORS)} and bench.variants {sorted(bench.variants)}")
    check_estimator_options(cfg, [e for e in bench.estimators if e in ESTIMATORS])
    for name in bench.estimators:
        if name in bench.variants:
            variant = arm_config(bench, cfg, name)
            check_estimator_options(variant, [variant.algorithm.estimator])
    return bench, cfg


def arm_config(bench: BenchConfig, base: Config, arm: str) -> Config:
    """The training config of one arm of the benchmark: `base` with `algorithm.estimator` = arm, or with the
    overrides of the variant `arm` (validated; an error names `bench.variants.<arm>`)."""
    if arm not in bench.variants:
        cfg = base.model_copy(deep=True)
        cfg.algorithm.estimator = arm
        return cfg
    overrides = bench.variants[arm]
    if bad := sorted(k for k in overrides if not k.startswith("algorithm.")):
        raise ConfigError(f"bench.variants.{arm}: only algorithm.* keys may differ between runs (got {bad})")
    # Only the keys written in the base file and the variant count as set (the options check reads that).
    tree = base.model_dump(mode="json", exclude_unset=True)
    try:
        return validate(Config, apply_overrides(tree, [f"{k}={json.dumps(v)}" for k, v in overrides.items()]))
    except ConfigError as e:
        raise ConfigError(f"bench.variants.{arm}: {e}") from None


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _say(line: str) -> None:
    """A line to the bench's output, from a worker process as from the main one."""
    print(line, flush=True)


def _eval_file(cfg: Config, model_dir: str, examples, out: Path) -> dict:
    """Greedy evaluation of a saved model, cached in `out`."""
    if out.is_file():
        return json.loads(out.read_text())
    from igpo.agent.engine import make_generator
    from igpo.eval.evaluate import evaluate
    from igpo.policy.loading import load_policy
    from igpo.progress import Progress
    from igpo.train.trainer import make_chat_format, make_toolbox

    mcfg = cfg.model.model_copy(update={"path": model_dir})
    model, tok = load_policy(mcfg)
    toolbox = make_toolbox(cfg)
    generator = make_generator(cfg.rollout.engine, model, tok.pad_token_id)
    with Progress(f"start: {out.stem}", len(examples), unit="question", write=_say) as bar:
        res = evaluate(generator, make_chat_format(cfg, tok, toolbox), toolbox, examples, cfg, progress=bar.update)
    out.write_text(json.dumps(res))
    return res


def run_dir(bench: BenchConfig, estimator: str, seed: int) -> Path:
    return Path(bench.out_dir) / f"{estimator}-s{seed}"


def is_done(bench: BenchConfig, estimator: str, seed: int) -> bool:
    return (run_dir(bench, estimator, seed) / "done.json").is_file()


def run_one(bench: BenchConfig, base: Config, estimator: str, seed: int, start_model: str, log: Callable[[str], None]) -> Path:
    """Train (or resume) and evaluate one (estimator, seed) run; returns its directory."""
    from igpo.eval.evaluate import evaluate
    from igpo.progress import Progress, per_run
    from igpo.train.trainer import Trainer

    run = run_dir(bench, estimator, seed)
    cfg = arm_config(bench, base, estimator)
    cfg.model.path = start_model
    cfg.model.lora.enabled = False
    cfg.trainer.seed = seed
    cfg.trainer.out_dir = str(run)
    cfg.trainer.eval_every = bench.eval_every
    cfg.trainer.save_every = bench.eval_every
    cfg.trainer.eval_size = bench.dev_size
    t = time.perf_counter()
    trainer = Trainer(cfg)
    log(f"{run.name}: training from step {trainer.step} to {cfg.trainer.steps}")
    # Plain lines, never bars: the runs of a pool write to one output side by side.
    with Progress(run.name, cfg.trainer.steps, done=trainer.step, write=log, every_s=0) as steps:

        def show(m: dict) -> None:
            steps.update(m["step"] + 1, info=f"skipped: {m['skipped']['error']}" if "skipped" in m
                         else f"reward {m['outcome_reward']:+.3f} f1 {m['f1']:.3f}")

        trainer.fit(progress=show, eval_progress=per_run(
            lambda n: Progress(f"{run.name}: dev eval", n, unit="question", write=log)))
    train_s = time.perf_counter() - t
    test = {}
    if bench.test:
        t = time.perf_counter()
        examples = load_qa(bench.test)[: bench.test_size]
        with Progress(f"{run.name}: test eval", len(examples), unit="question", write=log) as bar:
            res = evaluate(trainer.generator, trainer.fmt, trainer.toolbox, examples, cfg, progress=bar.update)
        test = {"overall": res["overall"], "by_source": res["by_source"], "seconds": time.perf_counter() - t}
    (run / "done.json").write_text(json.dumps({"test": test, "train_seconds_this_invocation": train_s}))
    return run


def _exit_with(parent: int) -> None:
    """A worker ends when the bench process that started it is gone (killed, not only interrupted): an orphan
    would go on training with nobody to collect it. Its checkpoints stay, so a rerun resumes the run."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _worker_run(bench: BenchConfig, base: Config, estimator: str, seed: int, start_model: str, threads: int) -> str:
    import torch

    torch.set_num_threads(threads)
    return str(run_one(bench, base, estimator, seed, start_model, _say))


class WorkerDied(RuntimeError):
    """A worker process ended without reporting back: the OS killed it (out of memory, most often). Its pool
    stops with it; every run keeps its checkpoints, so a rerun resumes them."""


def _spawn_pool(workers: int):
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_exit_with, initargs=(os.getpid(),))


def _died(names: list[str], jobs: int) -> WorkerDied:
    return WorkerDied(f"{', '.join(names)}: stopped when a worker process was killed (out of memory is the usual "
                      f"cause: each of the {jobs} process(es) holds its own models and optimizer, ~10 GB for "
                      "SmolLM2-135M; lower bench.jobs). Checkpoints stay: rerun to resume.")


def _in_child(name: str, fn: Callable, *args):
    """fn(*args) in a fresh spawned process (`name`: what it does, for the error if the OS kills it). Models
    loaded there leave with it: a process that has trained or evaluated one keeps most of that memory resident,
    which the workers started after it would not fit beside."""
    from concurrent.futures.process import BrokenProcessPool

    with _spawn_pool(1) as pool:
        try:
            return pool.submit(fn, *args).result()
        except BrokenProcessPool:
            raise _died([name], 1) from None


def _run_parallel(bench: BenchConfig, base: Config, runs: list[tuple[str, int]], start_model: str,
                  log: Callable[[str], None]) -> None:
    """`runs` in `bench.jobs` worker processes, started in the given order. A failed run does not stop the
    others: the first error is raised once every run has ended (checkpoints stay, so a rerun resumes it). A killed
    worker stops the whole pool: `WorkerDied` names the runs it took with it."""
    from concurrent.futures import as_completed
    from concurrent.futures.process import BrokenProcessPool

    threads = max(1, (os.cpu_count() or 1) // bench.jobs)
    log(f"{len(runs)} runs, {bench.jobs} at a time, {threads} torch thread(s) each")
    errors, died = [], []
    with _spawn_pool(bench.jobs) as pool:
        futures = {pool.submit(_worker_run, bench, base, e, s, start_model, threads): f"{e}-s{s}" for e, s in runs}
        for fut in as_completed(futures):
            try:
                fut.result()
                log(f"{futures[fut]}: finished")
            except BrokenProcessPool:
                died.append(futures[fut])
            except Exception as e:  # noqa: BLE001 - reported below, after the other runs
                log(f"{futures[fut]}: failed: {e}")
                errors.append((futures[fut], e))
    if died:
        raise _died(sorted(died), bench.jobs)
    if errors:
        log(f"{len(errors)} of {len(runs)} runs failed: {', '.join(name for name, _ in errors)}")
        raise errors[0][1]


def _curve(run: Path, step0: dict | None) -> dict:
    evals = {row["step"]: row["overall"] for row in _read_jsonl(run / "eval.jsonl")}  # last row per step wins
    if step0 is not None:
        evals.setdefault(0, step0)
    metrics = [m for m in _read_jsonl(run / "metrics.jsonl") if "skipped" not in m]  # skipped steps trained nothing
    tokens = np.cumsum([m["generated_tokens"] for m in metrics]).tolist()
    steps = sorted(evals)
    return {
        "steps": steps,
        "dev_f1": [evals[s]["f1"] for s in steps],
        "dev_em": [evals[s]["em"] for s in steps],
        "generated_tokens_at_step": [0 if s == 0 else tokens[min(s, len(tokens)) - 1] for s in steps],
        "zero_variance_groups": [m["zero_variance_groups"] for m in metrics],
        "turns": [m["turns"] for m in metrics],
        "train_f1": [m["f1"] for m in metrics],
        "generated_tokens": int(tokens[-1]) if tokens else 0,
        "tokens": int(sum(m["tokens"] for m in metrics)),
        "seconds": float(sum(sum(m["seconds"].values()) for m in metrics)),
    }


def advantage_signal(samples: list[dict]) -> dict | None:
    """Where a run's update weight went, from its logged whole groups (`samples.jsonl`): token-weighted |advantage|
    (a turn's advantage applies to each token the policy generated in it), split by whether the group's outcomes
    were all equal, how often a turn's advantage has the sign of its outcome's deviation from the group mean
    (the sign GRPO would give it, whatever `std`), and the median |IG| of a tool turn in either kind of group (None
    for estimators that score no beliefs). None when no whole group was logged."""
    groups: dict[tuple, list[dict]] = {}
    for r in samples:
        groups.setdefault((r["step"], r["group"]), []).append(r)
    total = zero_var = same = counted = 0.0
    n_groups = n_zero = n_zero_failed = 0
    ig: dict[bool, list[float]] = {True: [], False: []}
    for eps in groups.values():
        if len(eps) < 2:  # a partial group has no within-group deviation to speak of
            continue
        n_groups += 1
        outcomes = np.array([e["outcome"] for e in eps])
        flat = bool(np.allclose(outcomes, outcomes[0]))
        n_zero += flat
        n_zero_failed += int(flat and outcomes[0] <= 0)
        for e, dev in zip(eps, outcomes - outcomes.mean()):
            for t in e["turns"]:
                if t.get("ig") is not None:
                    ig[flat].append(abs(t["ig"]))
                w = abs(t["advantage"]) * t["generated_tokens"]
                total += w
                zero_var += w * flat
                if abs(dev) > 1e-9:
                    counted += t["generated_tokens"]
                    same += t["generated_tokens"] * float(np.sign(t["advantage"]) == np.sign(dev))
    if not n_groups:
        return None
    return {"groups": n_groups, "zero_variance_groups": n_zero / n_groups,
            "zero_variance_all_failed": n_zero_failed / n_zero if n_zero else None,
            "abs_adv_tokens": total, "zero_variance_share_of_abs_adv": zero_var / total if total else 0.0,
            "outcome_sign_agreement": same / counted if counted else None,
            "median_abs_ig": {kind: float(np.median(ig[flat])) if ig[flat] else None
                              for kind, flat in (("zero_variance_groups", True), ("other_groups", False))}}


def _steps_to_reach(curve: dict, target: float) -> int | None:
    """The first evaluated step with dev F1 ≥ target; 0 when the starting model already is (then the figure
    says nothing about sample efficiency); None if never."""
    return next((s for s, f in zip(curve["steps"], curve["dev_f1"]) if f >= target), None)


def _turns_trend(per_seed: list[list[float] | None], k: int = 5) -> dict:
    curves = [c for c in per_seed if c]
    if not curves:
        return {"turns_first_steps": None, "turns_last_steps": None}
    return {"turns_first_steps": float(np.mean([np.mean(c[:k]) for c in curves])),
            "turns_last_steps": float(np.mean([np.mean(c[-k:]) for c in curves]))}


def paired_vs_grpo(runs: dict[str, dict[str, dict]], est: str) -> dict | None:
    """`est`'s final test F1 and final dev F1 minus grpo's, seed by seed: a seed fixes the questions of every
    step and the sampling stream, so the two runs of a seed differ only by the estimator, and the paired
    difference has less spread than the two estimators' means over seeds. `runs`: {estimator: {seed: record}}
    as in results.json. Returns {"seeds": [...], "test_f1": {"per_seed", "mean", "std"}, "final_dev_f1": {...}}
    (std: sample std, None for one seed), or None for grpo itself or when no seed has both runs with a test."""
    if est == "grpo":
        return None
    mine, base = runs.get(est, {}), runs.get("grpo", {})
    seeds = sorted((s for s in mine if s in base and mine[s]["test"] and base[s]["test"]), key=int)
    if not seeds:
        return None

    def diff(value: Callable[[dict], float]) -> dict:
        d = [value(mine[s]) - value(base[s]) for s in seeds]
        return {"per_seed": d, "mean": float(np.mean(d)), "std": float(np.std(d, ddof=1)) if len(d) > 1 else None}

    return {"seeds": [int(s) for s in seeds], "test_f1": diff(lambda r: r["test"]["overall"]["f1"]),
            "final_dev_f1": diff(lambda r: r["dev_f1"][-1])}


# Settings each run sets itself (`run_one`; the bench settings behind them are compared as `_BENCH_REGIME`): they
# may differ between merged results, as may those the config flags as not changing what a run computes
# (`igpo.config.result_keys`).
RUN_SET = frozenset({"algorithm.estimator", "trainer.seed", "trainer.eval_every", "trainer.save_every",
                     "trainer.eval_size", "model.lora.enabled", "model.path", "trainer.out_dir"})
_BENCH_REGIME = ("eval_every", "dev_size", "test", "test_size", "sft")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def regime(cfg: Config) -> dict:
    """The training config every run shares, as dotted keys: those that can change what a run computes
    (`result_keys`) less those each run sets itself (`RUN_SET`). What results.json records so that results from
    another invocation can be checked before they are merged."""
    keys = set(result_keys()) - RUN_SET
    return {k: v for k, v in _flat(cfg.model_dump(mode="json")).items() if k in keys}


def start_model_dir(bench: BenchConfig, cfg: Config) -> str:
    """The model every run starts from: the shared SFT model, or `model.path`."""
    return str(Path(bench.out_dir) / "sft" / "model") if bench.sft else cfg.model.path


def model_sha256(model_dir: str) -> str | None:
    """sha256 over a saved model's weight files (sorted by name); None when it is not a local folder of them."""
    import hashlib

    files = sorted(Path(model_dir).glob("*.safetensors")) if Path(model_dir).is_dir() else []
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def _incompatible(other: dict, bench: BenchConfig, start: dict, reg: dict) -> str | None:
    """Why the runs of an earlier results.json (`other`) cannot be merged with these, or None. `start`: this
    out_dir's {"dev", "test", "model_sha256"}; `reg`: `regime(cfg)`. What `other` does not record (older files
    have no config or model hash) is not checked; then the starting model's dev scores must match exactly."""
    mine, theirs = start.get("model_sha256"), other.get("start", {}).get("model_sha256")
    if mine and theirs and mine != theirs:
        same_scores = _same_start_scores(other.get("start", {}), start)
        if not (same_scores and bench.include_equivalent_starts):
            there, here = other.get("start", {}).get("built_on"), start.get("built_on")
            if there and here and there != here:
                why = f"built with {_built(there)} there, {_built(here)} here"
            else:
                why = "an SFT from the same recipe rounds differently under another torch build or CPU vector unit"
            hint = ("; it scored the same dev and test n/F1/EM as the model here, so "
                    "bench.include_equivalent_starts=true would merge them") if same_scores else ""
            return f"they started from another model (weights sha256 {theirs[:12]}, here {mine[:12]}; {why}){hint}"
    dev, their_dev = start.get("dev"), other.get("start", {}).get("dev")
    if not (mine and theirs) and dev and their_dev:
        a, b = (tuple(d.get(k) for k in ("n", "f1", "em")) for d in (their_dev, dev))
        if a != b:
            return (f"its starting model scored dev n/F1/EM {a} against {b} here, so it is not the same model "
                    "(or not the same dev questions)")
    for key in _BENCH_REGIME:
        if key in other.get("bench", {}) and other["bench"][key] != getattr(bench, key):
            return f"bench.{key} is {other['bench'][key]!r} there, {getattr(bench, key)!r} here"
    their_variants = other.get("bench", {}).get("variants", {})
    for name in sorted(set(their_variants) & set(bench.variants)):
        if their_variants[name] != bench.variants[name]:
            return f"bench.variants.{name} is {their_variants[name]!r} there, {bench.variants[name]!r} here"
    if other.get("config") is not None:
        theirs_reg = {RENAMED.get(k, k): v for k, v in other["config"].items()}  # recorded before a rename
        # A key the other file does not record was added since: at its default it computes what it did before. A
        # key it records that the config no longer has is compared (what it did is unknown).
        default, known = regime(Config()), {k for k, _ in config_fields()}
        for key in sorted(set(reg) | set(theirs_reg)):
            there = theirs_reg[key] if key in theirs_reg else default.get(key)
            if (key in default or key not in known) and reg.get(key) != there:
                return f"{key} is {there!r} there, {reg.get(key)!r} here"
    return None


def _same_start_scores(a: dict, b: dict) -> bool:
    """Whether two starts scored the same greedy dev and test n/F1/EM (both must have been evaluated)."""
    key = ("n", "f1", "em")
    return all(a.get(s) and b.get(s) and tuple(a[s].get(k) for k in key) == tuple(b[s].get(k) for k in key)
               for s in ("dev", "test"))


def included_runs(bench: BenchConfig, start: dict, reg: dict) -> dict[str, dict[str, dict]]:
    """The finished runs of `bench.include` that lie in this grid, {estimator: {seed: record}}, each record
    with `"from"`: the file it came from (the first file to have a run wins). Raises ConfigError naming the
    file if one is missing, not a results.json, or not comparable (`_incompatible`)."""
    runs: dict[str, dict[str, dict]] = {}
    for path in bench.include:
        try:
            other = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"bench.include: {path}: cannot read it as a results.json ({e})") from None
        if not isinstance(other, dict) or not isinstance(other.get("runs"), dict):
            raise ConfigError(f"bench.include: {path}: not a results.json of `igpo bench learning` (no `runs`)")
        if why := _incompatible(other, bench, start, reg):
            raise ConfigError(f"bench.include: {path}: {why}; its runs are not comparable with these")
        theirs = other.get("start", {}).get("model_sha256")
        for est, seeds in other["runs"].items():
            for seed, rec in seeds.items():
                if est in bench.estimators and int(seed) in bench.seeds:
                    rec = {**rec, "from": rec.get("from", str(path))}
                    if theirs and theirs != start.get("model_sha256"):
                        rec.setdefault("start_sha256", theirs)
                    runs.setdefault(est, {}).setdefault(seed, rec)
    return runs


def _built(on: dict) -> str:
    return f"torch {on.get('torch')} on CPU capability {on.get('cpu_capability')}"


def _start(bench: BenchConfig, cfg: Config, step0_dev: dict | None, step0_test: dict | None) -> dict:
    """The starting model's scores, its tool calls per question by source on dev and test, weights' sha256 and,
    for the shared SFT, what built it (`sft.json`)."""
    from igpo.eval.evaluate import tool_calls_by_source

    sft_json = Path(start_model_dir(bench, cfg)).parent / "sft.json"
    built_on = json.loads(sft_json.read_text()).get("built_on") if bench.sft and sft_json.is_file() else None

    def calls(path: Path | None) -> dict[str, float] | None:
        return tool_calls_by_source(json.loads(path.read_text())) if path is not None and path.is_file() else None

    dev_file, *test_file = _start_files(bench)
    tool_calls = {"dev": calls(dev_file), "test": calls(test_file[0] if test_file else None)}
    return {"dev": step0_dev, "test": step0_test, "tool_calls": tool_calls,
            "model_sha256": model_sha256(start_model_dir(bench, cfg)), "built_on": built_on}


def mean_tool_calls(tests: list[dict]) -> dict[str, float] | None:
    """Tool calls per question by source (and overall), averaged over runs' test results; a source counts the
    runs that evaluated it. None without any test."""
    from igpo.eval.evaluate import tool_calls_by_source

    per_run = [tool_calls_by_source(t) for t in tests if t]
    if not per_run:
        return None
    keys = sorted({k for r in per_run for k in r if k != "overall"}) + ["overall"]
    return {k: float(np.mean([r[k] for r in per_run if k in r])) for k in keys}


def aggregate(bench: BenchConfig, cfg: Config, step0_dev: dict | None, step0_test: dict | None = None) -> dict:
    """results.json: the starting model's dev and test scores (and weights' sha256), the shared training config;
    per estimator and seed, curves and final test scores (runs of `bench.include` files too); per estimator,
    the summary."""
    start = _start(bench, cfg, step0_dev, step0_test)
    reg = regime(cfg)
    included = included_runs(bench, start, reg)
    runs: dict[str, dict[str, dict]] = {}
    for est in bench.estimators:
        for seed in bench.seeds:
            run = run_dir(bench, est, seed)
            if not is_done(bench, est, seed):
                if str(seed) in included.get(est, {}):
                    runs.setdefault(est, {})[str(seed)] = included[est][str(seed)]
                continue
            rec = _curve(run, step0_dev)
            rec["test"] = json.loads((run / "done.json").read_text())["test"]
            rec["test_tool_calls"] = mean_tool_calls([rec["test"]])  # of one run: its own
            rec["advantage_signal"] = advantage_signal(_read_jsonl(run / "samples.jsonl"))
            runs.setdefault(est, {})[str(seed)] = rec
    others = {r.get("start_sha256") for seeds in runs.values() for r in seeds.values()} - {None, start["model_sha256"]}
    if others:  # merged under bench.include_equivalent_starts
        start["equivalent"] = sorted(others)
    summary = {}
    grpo_final = None
    if "grpo" in runs:
        grpo_final = float(np.mean([r["dev_f1"][-1] for r in runs["grpo"].values()]))
    for est, seeds in runs.items():
        test_f1 = [r["test"]["overall"]["f1"] for r in seeds.values() if r["test"]]
        zv = [np.mean(r["zero_variance_groups"]) for r in seeds.values() if r["zero_variance_groups"]]
        sig = [r["advantage_signal"] for r in seeds.values() if r["advantage_signal"]]
        agree = [x["outcome_sign_agreement"] for x in sig if x["outcome_sign_agreement"] is not None]
        summary[est] = {
            "seeds": len(seeds),
            "test_f1_mean": float(np.mean(test_f1)) if test_f1 else None,
            # sample std over seeds (ddof 1); none for a single seed rather than a misleading 0
            "test_f1_std": float(np.std(test_f1, ddof=1)) if len(test_f1) > 1 else None,
            # tool calls per question by source on test, mean over seeds (start["tool_calls"]["test"]: before)
            "test_tool_calls_mean": mean_tool_calls([r["test"] for r in seeds.values()]),
            "final_dev_f1_mean": float(np.mean([r["dev_f1"][-1] for r in seeds.values()])),
            "zero_variance_share": float(np.mean(zv)) if zv else None,
            # of the update weight (token-weighted |advantage|), the part from groups whose outcomes were all equal
            "zero_variance_share_of_abs_adv": (
                float(np.mean([x["zero_variance_share_of_abs_adv"] for x in sig])) if sig else None),
            "outcome_sign_agreement": float(np.mean(agree)) if agree else None,
            "steps_to_grpo_final_dev_f1": (
                [_steps_to_reach(r, grpo_final) for r in seeds.values()] if grpo_final is not None else None),
            "vs_grpo": paired_vs_grpo(runs, est),
            # turns per episode in the first and the last 5 training steps (mean over steps and seeds): does
            # training shorten the episodes (the joint pool's charge on every extra turn)?
            **_turns_trend([r.get("turns") for r in seeds.values()]),
        }
    pending = [run_dir(bench, e, s).name for s in bench.seeds for e in bench.estimators if str(s) not in runs.get(e, {})]
    result = {"bench": bench.model_dump(), "start": start, "config": reg,
              "grpo_final_dev_f1": grpo_final, "summary": summary, "runs": runs, "pending": pending}
    (Path(bench.out_dir) / "results.json").write_text(json.dumps(result, indent=1))
    return result


def plot(result: dict, path: Path) -> Path:
    """learning.png: mean dev F1 vs step (band: min–max over seeds), and dev F1 vs generated tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    # Runs can coincide (igpo_outcome_only is grpo at γ = 1): a marker and dash per estimator keep both visible.
    styles = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", (0, (5, 1)))]
    for k, (est, seeds) in enumerate(result["runs"].items()):
        marker, dash = styles[k % len(styles)]
        curves = list(seeds.values())
        n = min(len(c["steps"]) for c in curves)
        steps = curves[0]["steps"][:n]
        f1 = np.array([c["dev_f1"][:n] for c in curves])
        label = f"{est} ({len(curves)} seed{'s' * (len(curves) > 1)})"
        (line,) = ax1.plot(steps, f1.mean(0), marker=marker, linestyle=dash, markerfacecolor="none", label=label)
        if len(curves) > 1:
            ax1.fill_between(steps, f1.min(0), f1.max(0), color=line.get_color(), alpha=0.2)
        for c in curves:
            ax2.plot(c["generated_tokens_at_step"], c["dev_f1"], marker=marker, linestyle=dash, markerfacecolor="none",
                     color=line.get_color(), alpha=0.8)
    ax1.set(xlabel="training step", ylabel="dev F1 (greedy)", title="dev F1 vs step")
    ax2.set(xlabel="tokens generated in training", ylabel="dev F1 (greedy)", title="dev F1 vs tokens generated")
    ax1.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _write_results(bench: BenchConfig, cfg: Config, step0_dev: dict | None, step0_test: dict | None) -> dict:
    result = aggregate(bench, cfg, step0_dev, step0_test)
    if result["runs"]:
        plot(result, Path(bench.out_dir) / "learning.png")
    return result


def report_done(bench: BenchConfig, cfg: Config, log: Callable[[str], None] = print) -> dict:
    """results.json and learning.png from the runs already finished (here or in `bench.include`), training and
    evaluating nothing: what a benchmark cut short (or split over machines) has so far. The rest are listed
    under `pending`."""
    out = Path(bench.out_dir)
    if not bench.include and not any(is_done(bench, e, s) for e in bench.estimators for s in bench.seeds):
        raise ConfigError(f"bench.out_dir: no finished run of {bench.estimators} x seeds {bench.seeds} "
                          f"in {out} (a finished run has done.json)")
    out.mkdir(parents=True, exist_ok=True)
    result = _write_results(bench, cfg, *_start_scores(bench))
    log(f"{sum(len(v) for v in result['runs'].values())} finished runs aggregated, {len(result['pending'])} not run")
    return result


def _prepare_start(bench: BenchConfig, cfg: Config, start_model: str) -> None:
    """The shared SFT warm start (when `bench.sft`) and the starting model's greedy dev and test scores, each
    cached in `bench.out_dir` (runs in a child process: see `_in_child`)."""
    from igpo.train.sft import run_sft_with_progress, sft_done

    if bench.sft and not sft_done(cfg.sft.out_dir):
        run_sft_with_progress(cfg, write=_say)
    dev_file, *test_file = _start_files(bench)
    _eval_file(cfg, start_model, load_qa(cfg.data.eval)[: bench.dev_size], dev_file)
    if test_file:  # the yardstick for every run's final test score
        _eval_file(cfg, start_model, load_qa(bench.test)[: bench.test_size], test_file[0])


def _start_files(bench: BenchConfig) -> list[Path]:
    """Where the starting model's dev (and, with `bench.test`, test) evaluation is cached."""
    out = Path(bench.out_dir)
    return [out / "step0_dev.json"] + ([out / "step0_test.json"] if bench.test else [])


def _start_scores(bench: BenchConfig) -> tuple[dict | None, dict | None]:
    """The starting model's overall dev and test scores, None where not evaluated."""
    dev, *test = (json.loads(p.read_text())["overall"] if p.is_file() else None for p in _start_files(bench))
    return dev, (test[0] if test else None)


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
    if not all(p.is_file() for p in _start_files(bench)):
        todo.append("greedy evaluation of the starting model (step 0)")
    if todo:
        log(f"{' and '.join(todo)}, in a child process")
        _in_child("the shared start", _prepare_start, bench, cfg, start_model)
    step0, step0_test = _start_scores(bench)
    # checked before anything trains: a file that cannot be merged should stop the bench now, not in hours
    included = included_runs(bench, _start(bench, cfg, step0, step0_test), regime(cfg))
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
        _run_parallel(bench, cfg, pending, start_model, log)
    else:
        for est, seed in pending:
            run_one(bench, cfg, est, seed, start_model, log)
    return _write_results(bench, cfg, step0, step0_test)
