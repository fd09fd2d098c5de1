"""The `igpo` command line: train, eval, and the sub-apps of each concern (data, index, serve)."""
from __future__ import annotations

import importlib
import sys
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
