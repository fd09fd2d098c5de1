"""The run-folder writer beside `metrics.jsonl`: trajectory samples (`samples.jsonl`) and TensorBoard scalars.

The trainer opens one `RunLog` for a `fit()` and hands it each step's metrics and sample records. On resume
(`start_step` > 0), sample rows of steps that will run again are dropped and TensorBoard purges its events
from `start_step` on, so both match `metrics.jsonl` (and `eval.jsonl`, whose row of `start_step` is logged again).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Self

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


class RunLog:
    """Appends sample records to `out/samples.jsonl` and scalars to TensorBoard event files in `out`."""

    def __init__(self, out: Path, start_step: int = 0, tensorboard: bool = True):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / SAMPLES
        if path.exists():  # resume: steps from start_step on run again
            keep = [r for r in read_jsonl(path) if r["step"] < start_step]
            path.write_text("".join(json.dumps(r) + "\n" for r in keep))
        self._samples = path.open("a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.out), purge_step=start_step)
            # The purge also drops the evaluation of the checkpoint resumed from (an eval row's step counts the
            # steps before it), which eval.jsonl keeps and the resumed run does not redo: log it again.
            evals = self.out / "eval.jsonl"
            if start_step and evals.exists():
                for row in read_jsonl(evals):
                    if row["step"] == start_step:
                        self.eval(row)

    def step(self, metrics: dict, samples: list[dict] = ()) -> None:
        """One training step: its metrics row (to TensorBoard as `train/...`) and its sample records."""
        for rec in samples:
            self._samples.write(json.dumps(rec) + "\n")
        self._samples.flush()
        if self._tb is not None:
            for name, value in flatten(metrics):
                if name != "step":
                    self._tb.add_scalar(f"train/{name}", value, metrics["step"])
            self._tb.flush()

    def eval(self, row: dict) -> None:
        """An eval.jsonl row {step, overall, by_source} to TensorBoard as `eval/overall/f1`, `eval/<source>/f1`..."""
        if self._tb is not None:
            for name, value in flatten({"overall": row["overall"], **row["by_source"]}):
                self._tb.add_scalar(f"eval/{name}", value, row["step"])
            self._tb.flush()

    def close(self) -> None:
        self._samples.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
