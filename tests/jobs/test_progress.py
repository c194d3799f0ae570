"""The ingest job's progress display (``jobs.progress``) and the counting behind it (``pipelines.progress``)."""

from __future__ import annotations

import io

import pytest

from jobs.progress import ProgressDisplay
from pipelines.progress import IngestProgress, _Tally


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_mode_prints_a_line_per_tenth_or_interval_and_the_end():
    out, clock = io.StringIO(), Clock()
    with ProgressDisplay("lines", out, every_s=10, clock=clock) as display:
        display(IngestProgress(total=40))
        clock.now += 2
        display(IngestProgress(40, done=1, chunks=10))  # same tenth, 2 s later: quiet
        clock.now += 2
        display(IngestProgress(40, done=4, chunks=40))  # a new tenth
        clock.now += 11
        display(IngestProgress(40, done=5, failed=1, chunks=50))  # the interval passed
        display(IngestProgress(40, done=5, failed=1, chunks=50))  # unchanged
        clock.now += 1
        display(IngestProgress(40, done=6, failed=1, chunks=60))  # quiet, printed by close
    assert out.getvalue().splitlines() == [
        "ingest: 0/40 documents (0%), 0.0 chunks/s, 0 failed",
        "ingest: 4/40 documents (10%), 10.0 chunks/s, 0 failed",
        "ingest: 5/40 documents (12%), 3.3 chunks/s, 1 failed",
        "ingest: 6/40 documents (15%), 3.8 chunks/s, 1 failed",
    ]


def test_lines_mode_with_nothing_to_do():
    out = io.StringIO()
    with ProgressDisplay("lines", out) as display:
        display(IngestProgress(total=0))
    assert out.getvalue() == "ingest: 0/0 documents, 0.0 chunks/s, 0 failed\n"


def test_auto_draws_one_bar_on_a_terminal():
    out, clock = Terminal(), Clock()
    display = ProgressDisplay("auto", out, clock=clock)
    assert display.mode == "bar"
    display(IngestProgress(total=10))
    clock.now += 4
    display(IngestProgress(10, done=3, failed=1, chunks=20))
    display.close()
    text = out.getvalue()
    assert "\n" not in text.rstrip("\n")  # one bar, redrawn in place
    last = text.rstrip("\n").split("\r")[-1]
    assert "ingest" in last and "3/10" in last and "5.0 chunks/s, 1 failed" in last


def test_auto_prints_lines_when_not_a_terminal_and_off_prints_nothing():
    assert ProgressDisplay("auto", io.StringIO()).mode == "lines"
    out = io.StringIO()
    with ProgressDisplay("off", out) as display:
        display(IngestProgress(total=3))
        display(IngestProgress(3, done=3, chunks=9))
    assert out.getvalue() == ""
    with pytest.raises(ValueError):
        ProgressDisplay("loud")


def test_the_tally_counts_each_version_once_across_write_tasks():
    tally = _Tally()
    tally.add({("a", 1): (2, 5, False), ("b", 1): (0, 0, True)})
    assert tally.reading() == (1, 1, 2)
    tally.add({("a", 1): (3, 5, False)})
    assert tally.reading() == (2, 1, 5)
    tally.add({("a", 1): (3, 5, False)})  # a task run again: its chunks are not counted twice
    assert tally.reading() == (2, 1, 5)
