"""Progress a person can see: plain lines with elapsed time and ETA when output is not a terminal, a bar when it is."""

import io

from rich.console import Console

from igpo.progress import Progress, duration, per_run, stage


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _plain() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=60), out  # a StringIO is not a terminal


def test_duration():
    assert [duration(s) for s in (0, 42.4, 130, 3599.6, 3720)] == ["0s", "42s", "2m10s", "1h00m", "1h02m"]


def test_plain_lines_with_elapsed_and_eta_at_a_bounded_rate():
    console, out = _plain()
    clock = Clock()
    with Progress("sft", 40, console=console, clock=clock) as p:
        for t, done in [(10, 1), (20, 2), (50, 4), (55, 5), (60, 8), (70, 9), (200, 40)]:
            clock.t = t
            p.update(done, info=f"loss {done / 10:.1f}")
    # opened; the first unit; 30 s later; a new tenth (8 of 40); the last. The ETA is the time per unit since
    # the first unit: (50 - 10) / 3 per step at step 4, (60 - 10) / 7 at step 8.
    assert out.getvalue().splitlines() == [
        "[sft] step 0/40    0%  elapsed 0s",
        "[sft] step 1/40    2%  elapsed 10s  eta 6m30s  loss 0.1",
        "[sft] step 4/40   10%  elapsed 50s  eta 8m00s  loss 0.4",
        "[sft] step 8/40   20%  elapsed 1m00s  eta 3m49s  loss 0.8",
        "[sft] step 40/40  100%  elapsed 3m20s  loss 4.0",
    ]


def test_every_update_a_line_a_resumed_count_and_a_total_set_later():
    lines = []
    clock = Clock()
    p = Progress("train", 10, done=4, write=lines.append, every_s=0, clock=clock)  # resumed at step 4
    clock.t = 30
    p.update(5)
    clock.t = 40
    p.update(6)
    p.close()
    assert lines == [
        "[train] step 4/10   40%  elapsed 0s",
        "[train] step 5/10   50%  elapsed 30s  eta 2m30s",
        "[train] step 6/10   60%  elapsed 40s  eta 40s",
    ]
    lines.clear()
    q = Progress("sft", write=lines.append, clock=clock)
    q.open()
    clock.t = 50
    q.update(2, total=8)
    assert lines == ["[sft] step 0  elapsed 0s", "[sft] step 2/8   25%  elapsed 10s  eta 30s"]


def test_close_shows_where_an_unfinished_stage_stopped():
    lines = []
    clock = Clock()
    with Progress("eval", 100, unit="question", write=lines.append, clock=clock) as p:
        clock.t = 5
        p.update(16)
        clock.t = 7
        p.update(17)  # not a line of its own: 2 s later, the same tenth
    assert lines[-1] == "[eval] question 17/100   17%  elapsed 7s  eta 2m46s" and len(lines) == 3


def test_a_terminal_gets_a_bar_and_no_lines():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    with Progress("eval", 4, unit="question", console=console) as p:
        p.update(2)
        p.update(4)
    text = out.getvalue()
    assert "━" in text and "4/4" in text and "[eval]" not in text


def test_stage_lines():
    lines = []
    clock = Clock()
    with stage("data", "building VitalFactbook", write=lines.append, clock=clock):
        clock.t = 65
    assert lines == ["[data] building VitalFactbook", "[data] done in 1m05s"]


def test_per_run_gives_each_run_its_own_count():
    lines = []
    clock = Clock()
    callback = per_run(lambda n: Progress("dev eval", n, unit="question", write=lines.append, clock=clock))
    for _run in range(2):
        for done in (2, 4):
            clock.t += 10
            callback(done, 4)
    assert [line.split("  ")[0] for line in lines] == [
        "[dev eval] question 0/4",
        "[dev eval] question 2/4",
        "[dev eval] question 4/4",
    ] * 2
    assert "elapsed 10s" in lines[2] and "elapsed 10s" in lines[5]  # each run's own clock
