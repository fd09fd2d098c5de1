"""Progress a person can see wherever the output goes: a rich bar on a terminal; elsewhere (a log file, CI, `nohup`)
plain lines with the elapsed time and an ETA, written at a bounded rate and flushed:

    [sft] step 4/40   10%  elapsed 50s  eta 8m00s  loss 0.4

`Progress` is a counted stage (steps, questions, passages), `stage` an uncounted one (a line when it starts and one
with its duration when it ends). Library code reports through callbacks (`progress(done, total)`, a metrics row);
the command line turns them into these.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich import get_console
from rich.console import Console


def duration(seconds: float) -> str:
    """`42s`, `2m05s`, `1h02m`."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """`done` of `total` units of a stage named `label` (`total` None: not known yet; `update` may set it).

    On a terminal (`console.is_terminal`) a rich bar; otherwise, or when `write` is given (a function taking a
    line: the learning benchmark's workers), plain lines: one when the stage opens, then on an update when it is
    the first or the last, when `every_s` seconds have passed since the last line, or when another tenth of the
    total is done (`every_s=0`: every update), and at `close` if the last line does not show the final count.

    The ETA is the time per unit since the first update (the first unit alone when there is one), so setup
    before the first unit (loading a model) does not inflate it. A stage resumed at `done` > 0 counts from there.
    `clock` is for tests.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        unit: str = "step",
        done: int = 0,
        console: Console | None = None,
        write: Callable[[str], None] | None = None,
        every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label, self.total, self.unit, self.done = label, total, unit, done
        self.info = ""
        self.every_s = every_s
        self._write = write
        self._console = console or get_console()  # one console: a bar inside a stage draws as one display
        self._clock = clock
        self._t0 = clock()
        self._start = (self._t0, done)
        self._first: tuple[float, int] | None = None  # (time, done) at the first update
        self._now = self._t0  # time of the latest update
        self._shown: tuple[float, int] | None = None  # (time, done) of the last plain line
        self._bar = None
        self._task = None
        self._open = self._closed = False

    @property
    def is_bar(self) -> bool:
        return self._write is None and self._console.is_terminal

    def __enter__(self) -> Progress:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        if self._open:
            return
        self._open = True
        if self.is_bar:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[eta]}"),
                TextColumn("{task.fields[info]}"),
                console=self._console,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total, completed=self.done, eta="", info="")
        else:
            self._emit()

    def update(self, done: int, total: int | None = None, info: str = "") -> None:
        """`done` units so far (of `total`, when it was not known or has changed); `info` ends the line."""
        self.open()
        self.done, self.info = done, info
        if total is not None:
            self.total = total
        self._now = self._clock()
        first = self._first is None
        if first:
            self._first = (self._now, done)
        if self._bar is not None:
            eta = self.eta()
            self._bar.update(
                self._task,
                completed=done,
                total=self.total,
                info=info,
                eta="" if eta is None else f"eta {duration(eta)}",
            )
        elif first or self._due():
            self._emit()

    def eta(self) -> float | None:
        """Seconds left at the rate so far; None before the rate is known or without a total."""
        if self.total is None or self._first is None:
            return None
        (t_from, d_from) = self._first if self.done > self._first[1] else self._start
        if self.done <= d_from:
            return None
        return (self._now - t_from) / (self.done - d_from) * max(0, self.total - self.done)

    def line(self) -> str:
        parts = [f"[{self.label}] {self.unit} {self.done}" + (f"/{self.total}" if self.total is not None else "")]
        if self.total:
            parts.append(f"{100 * self.done / self.total:3.0f}%")
        parts.append(f"elapsed {duration(self._now - self._t0)}")
        eta = self.eta()
        if eta is not None and self.done != self.total:
            parts.append(f"eta {duration(eta)}")
        if self.info:
            parts.append(self.info)
        return "  ".join(parts)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.stop()
        elif self._open and (self._shown is None or self._shown[1] != self.done):
            self._emit()

    def _due(self) -> bool:
        t, d = self._shown
        if self.every_s == 0 or self.done == self.total or self._now - t >= self.every_s:
            return True
        return bool(self.total) and 10 * self.done // self.total > 10 * d // self.total

    def _emit(self) -> None:
        self._shown = (self._now, self.done)
        _plain(self.line(), self._console, self._write)


def _plain(line: str, console: Console, write: Callable[[str], None] | None) -> None:
    if write is not None:
        write(line)
    else:  # rich flushes after each print; soft_wrap keeps a long line one line
        console.print(line, markup=False, highlight=False, soft_wrap=True)


@contextmanager
def stage(
    label: str,
    what: str,
    *,
    console: Console | None = None,
    write: Callable[[str], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[None]:
    """An uncounted stage: `[label] what` when it starts (a spinner on a terminal) and `[label] done in 12s` when
    it ends."""
    console = console or get_console()
    t0 = clock()
    if write is None and console.is_terminal:
        with console.status(what):
            yield
    else:
        _plain(f"[{label}] {what}", console, write)
        yield
    _plain(f"[{label}] done in {duration(clock() - t0)}", console, write)


def per_run(make: Callable[[int], Progress]) -> Callable[[int, int], None]:
    """A `progress(done, total)` callback for a loop that runs again and again (the trainer's evaluations): each
    run gets its own `make(total)`, closed when `done` reaches `total`."""
    current: list[Progress] = []

    def callback(done: int, total: int) -> None:
        if not current:
            current.append(make(total))
        current[0].update(done, total)
        if done >= total:
            current.pop().close()

    return callback


def fit_with_progress(
    trainer, label: str, *, console: Console | None = None, write: Callable[[str], None] | None = None
) -> list[dict]:
    """`trainer.fit()` with its progress shown (on rank 0, which reports the steps): a bar on a terminal, else a
    line a step with its metrics, and each evaluation during training. Returns what `fit` returns."""
    from contextlib import nullcontext

    main = trainer.dist.is_main
    with (
        Progress(label, trainer.cfg.trainer.steps, done=trainer.step, console=console, write=write, every_s=0)
        if main
        else nullcontext() as bar
    ):

        def show(m: dict) -> None:
            if "skipped" in m:
                info = f"skipped: {m['skipped']['error']}"
            elif bar.is_bar:
                info = f"reward {m['outcome_reward']:+.2f}  f1 {m['f1']:.2f}  turns {m['turns']:.1f}"
            else:
                secs = " ".join(f"{k}={v:.1f}s" for k, v in m["seconds"].items())
                info = (
                    f"reward={m['outcome_reward']:+.3f}  f1={m['f1']:.3f}  turns={m['turns']:.2f}  "
                    f"format_err={m['format_error_rate']:.2f}  {secs}"
                )
            bar.update(m["step"] + 1, info=info)

        evals = per_run(lambda n: Progress(f"{label}: dev eval", n, unit="question", console=console, write=write))
        return trainer.fit(progress=show, eval_progress=evals)
