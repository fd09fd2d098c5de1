"""Running the learning benchmark's pieces: one (estimator, seed) run, the shared start, and the worker processes
that run them (a killed worker is reported as `WorkerDied`)."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path

from igpo.bench.config import BenchConfig, arm_config, run_dir, start_files
from igpo.config import Config
from igpo.data.loaders import load_qa
from igpo.machine import load_average, machine_record


def _say(line: str) -> None:
    """A line to the bench's output, from a worker process as from the main one."""
    print(line, flush=True)


def run_config(bench: BenchConfig, base: Config, estimator: str, seed: int, start_model: str) -> Config:
    """The training config of one (estimator, seed) run: the arm's config with the settings each run sets itself
    (`results.RUN_SET`): the shared start, the seed, its folder, and the evaluation and checkpoint cadence."""
    cfg = arm_config(bench, base, estimator)
    cfg.model.path = start_model
    cfg.model.lora.enabled = False
    cfg.trainer.seed = seed
    cfg.trainer.out_dir = str(run_dir(bench, estimator, seed))
    cfg.trainer.eval_every = bench.eval_every
    cfg.trainer.save_every = bench.save_every
    cfg.trainer.eval_size = bench.dev_size
    return cfg


def run_one(
    bench: BenchConfig, base: Config, estimator: str, seed: int, start_model: str, log: Callable[[str], None]
) -> Path:
    """Train (or resume) and evaluate one (estimator, seed) run; returns its directory."""
    from igpo.progress import Progress, per_run
    from igpo.train.trainer import Trainer

    run = run_dir(bench, estimator, seed)
    cfg = run_config(bench, base, estimator, seed, start_model)
    t = time.perf_counter()
    trainer = Trainer(cfg)
    try:
        log(f"{run.name}: training from step {trainer.step} to {cfg.trainer.steps}")
        # Plain lines, never bars: the runs of a pool write to one output side by side.
        with Progress(run.name, cfg.trainer.steps, done=trainer.step, write=log, every_s=0) as steps:

            def show(m: dict) -> None:
                steps.update(
                    m["step"] + 1,
                    info=f"skipped: {m['skipped']['error']}"
                    if "skipped" in m
                    else f"reward {m['outcome_reward']:+.3f} f1 {m['f1']:.3f}",
                )

            trainer.fit(
                progress=show,
                eval_progress=per_run(lambda n: Progress(f"{run.name}: dev eval", n, unit="question", write=log)),
            )
        train_s = time.perf_counter() - t
        test = {}
        if bench.test:
            t = time.perf_counter()
            examples = load_qa(bench.test)[: bench.test_size]
            with Progress(f"{run.name}: test eval", len(examples), unit="question", write=log) as bar:
                res = trainer.evaluate(examples, bar.update)
            test = {"overall": res["overall"], "by_source": res["by_source"], "seconds": time.perf_counter() - t}
    finally:
        trainer.close()  # the worker's next run starts its own engine (rollout.backend: vllm)
    # The machine that finished the run (a run resumed elsewhere trained its earlier steps on another one).
    (run / "done.json").write_text(
        json.dumps(
            {
                "test": test,
                "train_seconds_this_invocation": train_s,
                "machine": machine_record(),
                "load_avg_at_end": load_average(),
            }
        )
    )
    return run


def _eval_file(cfg: Config, model_dir: str, examples, out: Path) -> dict:
    """Greedy evaluation of a saved model, cached in `out`."""
    if out.is_file():
        return json.loads(out.read_text())
    from igpo.eval.evaluate import evaluate_model
    from igpo.policy.loading import load_policy
    from igpo.progress import Progress

    model, tok = load_policy(cfg.model.model_copy(update={"path": model_dir}))
    with Progress(f"start: {out.stem}", len(examples), unit="question", write=_say) as bar:
        res = evaluate_model(cfg, model, tok, examples, progress=bar.update)
    out.write_text(json.dumps(res))
    return res


def prepare_start(bench: BenchConfig, cfg: Config, start_model: str) -> None:
    """The shared SFT warm start (when `bench.sft`) and the starting model's greedy dev and test scores, each
    cached in `bench.out_dir`. Run it in a child process (`in_child`)."""
    from igpo.train.sft import run_sft_with_progress, sft_done

    if bench.sft and not sft_done(cfg.sft.out_dir):
        run_sft_with_progress(cfg, write=_say)
    dev_file, *test_file = start_files(bench)
    _eval_file(cfg, start_model, load_qa(cfg.data.eval)[: bench.dev_size], dev_file)
    if test_file:  # the yardstick for every run's final test score
        _eval_file(cfg, start_model, load_qa(bench.test)[: bench.test_size], test_file[0])


# ---------------------------------------------------------------------- worker processes
class WorkerDied(RuntimeError):
    """A worker process ended without reporting back: the OS killed it (out of memory, most often). Its pool
    stops with it; every run keeps its checkpoints, so a rerun resumes them."""


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


def _spawn_pool(workers: int):
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_exit_with, initargs=(os.getpid(),)
    )


def _died(names: list[str], jobs: int) -> WorkerDied:
    return WorkerDied(
        f"{', '.join(names)}: stopped when a worker process was killed (out of memory is the usual "
        f"cause: each of the {jobs} process(es) holds its own models and optimizer, ~10 GB for "
        "SmolLM2-135M; lower bench.jobs). Checkpoints stay: rerun to resume."
    )


def in_child(name: str, fn: Callable, *args):
    """fn(*args) in a fresh spawned process (`name`: what it does, for the error if the OS kills it). Models
    loaded there leave with it: a process that has trained or evaluated one keeps most of that memory resident,
    which the workers started after it would not fit beside."""
    from concurrent.futures.process import BrokenProcessPool

    with _spawn_pool(1) as pool:
        try:
            return pool.submit(fn, *args).result()
        except BrokenProcessPool:
            raise _died([name], 1) from None


def run_parallel(
    bench: BenchConfig, base: Config, runs: list[tuple[str, int]], start_model: str, log: Callable[[str], None]
) -> None:
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
