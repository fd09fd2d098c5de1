"""The `igpo` command line: train, eval, and the sub-apps of each concern (data, index, serve)."""

from __future__ import annotations

from pathlib import Path

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


def _run_faults() -> tuple[type[Exception], ...]:
    """Errors that stop a training run (exit 1), as opposed to bad input (exit 2)."""
    from igpo.train.faults import TooManyBadSteps
    from igpo.train.invariants import InvariantError

    return (TooManyBadSteps, InvariantError)


def _fit(trainer, console, label: str) -> None:
    """Run the training loop with its progress (`igpo.progress.fit_with_progress`). A run stopped by a fault exits
    1 with the error that stopped it."""
    from igpo.progress import fit_with_progress

    try:
        fit_with_progress(trainer, label, console=console)
    except _run_faults() as e:
        _fail(e, code=1)


def torchrun_command(nproc: int, config: Path | None, overrides: list[str]) -> list[str]:
    """`igpo train --nproc N ...` as the torchrun command it stands for (one machine, N processes)."""
    import sys

    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "igpo",
        "train",
        *(["--config", str(config)] if config else []),
        *overrides,
    ]


@app.command()
def train(
    overrides: list[str] | None = typer.Argument(None, help="config overrides, e.g. trainer.steps=20"),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config file"),
    nproc: int = typer.Option(
        1, "--nproc", min=1, help="processes on this machine (torchrun); see trainer.parallel and docs/scaling.md"
    ),
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
    overrides: list[str] | None = typer.Argument(None, help="config overrides"),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config file"),
    checkpoint: Path | None = typer.Option(None, help="a checkpoint folder (default: model.path)"),
    data: Path | None = typer.Option(None, help="QA file (default: data.eval)"),
    limit: int | None = typer.Option(None, help="evaluate the first N questions"),
    out: Path | None = typer.Option(None, help="write the results as JSON here"),
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
        table.add_row(
            name,
            str(s["n"]),
            f"{s['f1']:.3f}",
            f"{s['em']:.3f}",
            f"{s['format_error_rate']:.2f}",
            f"{s['tool_calls']:.2f}",
        )
    console.print(table)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))


@app.command()
def sft(
    overrides: list[str] | None = typer.Argument(None, help="config overrides, e.g. sft.examples=128"),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config file"),
) -> None:
    """Supervised warm start on synthesised search demonstrations; writes sft.out_dir/model and sft.json."""
    from rich.console import Console

    from igpo.config import load_config
    from igpo.train.sft import run_sft_with_progress, sft_summary

    console = Console()
    try:
        cfg = load_config(config, overrides)
        res = run_sft_with_progress(cfg, console=console)
    except _user_errors() as e:
        _fail(e)
    for line in sft_summary(res):
        console.print(line)


@app.command()
def demo(
    overrides: list[str] | None = typer.Argument(None, help="config overrides"),
    config: Path = typer.Option(Path("configs/demo.yaml"), "--config", "-c", help="YAML config file"),
    data_dir: Path = typer.Option(Path("data/vitalfactbook"), help="where VitalFactbook is built (cached)"),
) -> None:
    """The whole pipeline: VitalFactbook and its BM25 index (cached), SFT warm start (cached), greedy dev
    evaluation, IGPO training, greedy dev evaluation again, and the HTML report. Rerunning resumes."""
    from rich.console import Console

    from igpo.config import load_config
    from igpo.demo import run_demo
    from igpo.eval.evaluate import format_tool_calls

    console = Console()
    try:
        s = run_demo(load_config(config, overrides), data_dir, console=console)
    except _user_errors() as e:
        _fail(e)
    except _run_faults() as e:
        _fail(e, code=1)
    console.print(format_tool_calls({"before": s["before"], "after": s["after"]}), highlight=False)
    console.print(
        f"[bold]dev F1 {s['f1_before']:.3f} → {s['f1_after']:.3f}[/bold] "
        f"(EM {s['em_before']:.3f} → {s['em_after']:.3f}) after {s['estimator']}, "
        f"in {s['total_seconds'] / 60:.1f} min; report: {s['report']}"
    )


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="a run folder (trainer.out_dir) holding metrics.jsonl"),
    out: Path | None = typer.Option(None, "--out", "-o", help="HTML file to write (default: RUN_DIR/report.html)"),
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
    overrides: list[str] | None = typer.Argument(None, help="overrides: bench.seeds=[0], trainer.steps=20, ..."),
    config: Path = typer.Option(Path("benchmarks/learning.yaml"), "--config", "-c", help="benchmark YAML"),
    small: bool = typer.Option(
        False,
        "--small",
        help="the config's `small:` preset (igpo and grpo, one seed, estimated under an hour on 2 CPU cores)",
    ),
    data_dir: Path = typer.Option(Path("data/vitalfactbook"), help="where VitalFactbook is built (cached)"),
    report_only: bool = typer.Option(
        False, "--report-only", help="train nothing: results.json and learning.png from the runs already finished"
    ),
) -> None:
    """IGPO vs GRPO and ablations from one shared SFT checkpoint; resumable; writes results.json and learning.png."""
    from rich.console import Console
    from rich.table import Table

    from igpo.bench.config import load_bench_config
    from igpo.bench.learning import report_done, run_learning_bench
    from igpo.bench.run import WorkerDied
    from igpo.demo import prepare_data

    console = Console()
    try:
        bench, cfg = load_bench_config(config, overrides, small=small)
        if report_only:
            result = report_done(bench, cfg, log=console.print)
        else:
            prepare_data(cfg, data_dir, console=console)
            result = run_learning_bench(bench, cfg, log=console.print)
    except _user_errors() as e:
        _fail(e)
    except WorkerDied as e:
        _fail(e, 1)
    table = Table(
        "estimator",
        "seeds",
        "test F1 (mean ± std)",
        "test F1 − grpo (paired)",
        "final dev F1",
        "steps to GRPO's dev F1",
        "zero-var groups",
        "their share of |adv|",
    )
    start = result["start"]
    if start["dev"] is not None:
        table.add_row(
            "start (SFT)" if bench.sft else "start (model.path)",
            "-",
            f"{start['test']['f1']:.3f}" if start["test"] else "-",
            "-",
            f"{start['dev']['f1']:.3f}",
            "-",
            "-",
            "-",
        )
    for est, s in result["summary"].items():
        test = "-" if s["test_f1_mean"] is None else _mean_std(s["test_f1_mean"], s["test_f1_std"])
        zv = f"{s['zero_variance_share']:.2f}" if s["zero_variance_share"] is not None else "-"
        zv_adv = (
            f"{s['zero_variance_share_of_abs_adv']:.3f}" if s["zero_variance_share_of_abs_adv"] is not None else "-"
        )
        paired = (
            "-" if not s["vs_grpo"] else _mean_std(s["vs_grpo"]["test_f1"]["mean"], s["vs_grpo"]["test_f1"]["std"], "+")
        )
        table.add_row(
            est,
            str(s["seeds"]),
            test,
            paired,
            f"{s['final_dev_f1_mean']:.3f}",
            str(s["steps_to_grpo_final_dev_f1"]),
            zv,
            zv_adv,
        )
    console.print(table)
    if result["pending"]:
        console.print(f"not run yet: {', '.join(result['pending'])}")
    console.print(f"results: {Path(bench.out_dir) / 'results.json'}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
