"""The run-folder writer beside `metrics.jsonl`: trajectory samples (`samples.jsonl`) and the scalar loggers of
`trainer.loggers`: TensorBoard event files and a Weights & Biases run (under `out/wandb/`).

The trainer opens one `RunLog` for a `fit()` and hands it each step's metrics and sample records. On resume
(`start_step` > 0), sample rows of steps that will run again are dropped and TensorBoard purges its events
from `start_step` on, so both match `metrics.jsonl` (and `eval.jsonl`, whose row of `start_step` is logged again).
The wandb run is resumed by its id (kept in the checkpoint); the steps it already holds are not sent again: a
resumed run recomputes them bit for bit.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from igpo.config import WandbConfig

log = logging.getLogger(__name__)

SAMPLES = "samples.jsonl"


class RunFileError(ValueError):
    """A run-folder file that cannot be read (the message names the file and line)."""


def flatten(tree: Mapping, prefix: str = "") -> Iterator[tuple[str, float]]:
    """(`a/b`, value) for every number in a nested metrics dict; None, strings and lists are skipped."""
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from flatten(value, name + "/")
        elif isinstance(value, (int, float)):
            yield name, float(value)


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file. A cut-off last line (a run killed mid-write) is dropped; any other bad line is an
    error naming the file and line."""
    lines = path.read_text().splitlines()
    rows = []
    for k, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if k == len(lines):
                log.warning("%s:%d: incomplete last line dropped", path, k)
                break
            raise RunFileError(f"{path}:{k}: not valid JSON ({e.msg})") from None
    return rows


def wandb_mode() -> str:
    """The wandb mode: WANDB_MODE when the user set it; else online when WANDB_API_KEY is set, offline otherwise
    (the default never uses the network)."""
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


def open_wandb(out: Path, run_id: str, opts: WandbConfig, config: dict):
    """The wandb run `run_id` (created, or resumed: `resume="allow"`), writing under `out/wandb/`."""
    import wandb

    mode = wandb_mode()
    if mode == "offline":  # wandb's own error reports would go over the network
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    # console="off": wandb would otherwise wrap stdout and stderr, where the progress lines go
    return wandb.init(
        project=opts.project,
        entity=opts.entity,
        name=opts.name or out.resolve().name,
        tags=opts.tags,
        id=run_id,
        resume="allow",
        dir=str(out),
        config=config,
        mode=mode,
        settings=wandb.Settings(console="off"),
    )


class RunLog:
    """Appends sample records to `out/samples.jsonl` and scalars to TensorBoard event files in `out` and to a
    wandb run (`wandb`: (run id, `trainer.wandb`, the config as a dict); None: no wandb run)."""

    def __init__(
        self,
        out: Path,
        start_step: int = 0,
        tensorboard: bool = True,
        wandb: tuple[str, WandbConfig, dict] | None = None,
    ):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / SAMPLES
        if path.exists():  # resume: steps from start_step on run again
            keep = [r for r in read_jsonl(path) if r["step"] < start_step]
            path.write_text("".join(json.dumps(r) + "\n" for r in keep))
        self._samples = path.open("a")
        self._tb = self._wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out), purge_step=start_step)
            # The purge also drops the evaluation of the checkpoint resumed from (an eval row's step counts the
            # steps before it), which eval.jsonl keeps and the resumed run does not redo: log it again.
            evals = self.out / "eval.jsonl"
            if start_step and evals.exists():  # (before the wandb run opens: it still holds that row)
                for row in read_jsonl(evals):
                    if row["step"] == start_step:
                        self.eval(row)
        if wandb is not None:
            self._wandb = open_wandb(self.out, *wandb)

    def step(self, metrics: dict, samples: list[dict] = ()) -> None:
        """One training step: its metrics row (as `train/...`) and its sample records."""
        for rec in samples:
            self._samples.write(json.dumps(rec) + "\n")
        self._samples.flush()
        self._scalars({f"train/{name}": v for name, v in flatten(metrics) if name != "step"}, metrics["step"])

    def eval(self, row: dict) -> None:
        """An eval.jsonl row {step, overall, by_source} as `eval/overall/f1`, `eval/<source>/f1`..."""
        self._scalars(
            {f"eval/{name}": v for name, v in flatten({"overall": row["overall"], **row["by_source"]})}, row["step"]
        )

    def _scalars(self, values: dict[str, float], step: int) -> None:
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(name, value, step)
            self._tb.flush()
        if self._wandb is not None and step >= self._wandb.step:
            self._wandb.log(values, step=step)

    def close(self, failed: bool = False) -> None:
        self._samples.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish(exit_code=1 if failed else 0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(failed=exc_type is not None)
