"""How a job shows an ingest run's progress on standard error: one bar, plain lines, or nothing.

Standard output is kept for the job's JSON result (its last line), so progress goes to standard error. A terminal
gets one tqdm bar (documents done of the total, chunks/s, failures); a log file or a pipe gets a plain line now and
then instead, because a redrawn bar there is a stream of carriage returns.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # not at run time: that would load Ray Data before the arguments are even read
    from pipelines.progress import IngestProgress

MODES = ("auto", "bar", "lines", "off")


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    """``--progress {auto,bar,lines,off}`` (auto: a bar on a terminal, lines otherwise)."""
    parser.add_argument("--progress", choices=MODES, default="auto",
                        help="progress on stderr: a bar, a line every few seconds, or none "
                             "(default auto: a bar on a terminal, lines otherwise)")


class ProgressDisplay:
    """Shows :class:`IngestProgress` readings; call it with each reading, then :meth:`close` (or use ``with``).

    Lines mode prints at the first reading, whenever another tenth of the documents is done, at most every
    ``every_s`` seconds in between when the counts changed, and when all are done: enough to follow a long run in a
    log without filling it.

    Args:
        mode: ``auto``, ``bar``, ``lines`` or ``off``. stream: where to draw (default: standard error).
        every_s: lines mode: the most seconds between two lines while the counts change.
        clock: seconds, monotonic (a seam for tests).
    """

    def __init__(self, mode: str = "auto", stream: TextIO | None = None, *, every_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} must be one of {', '.join(MODES)}")
        self.stream = stream or sys.stderr
        if mode == "auto":
            isatty = getattr(self.stream, "isatty", None)
            mode = "bar" if isatty is not None and isatty() else "lines"
        self.mode, self.every_s, self.clock = mode, every_s, clock
        self._lock = threading.Lock()  # readings come from the run's polling thread and from its own
        self._started: float | None = None
        self._printed: tuple[float, int, IngestProgress] | None = None  # lines: when, which tenth, what
        self._last: IngestProgress | None = None
        self._bar = None

    def __call__(self, progress: IngestProgress) -> None:
        with self._lock:
            now = self.clock()
            if self._started is None:
                self._started = now
            self._last = progress
            if self.mode == "bar":
                self._draw(progress, now)
            elif self.mode == "lines":
                self._line(progress, now)

    def _rate(self, progress: IngestProgress, now: float) -> float:
        elapsed = now - (self._started or now)
        return progress.chunks / elapsed if elapsed > 0 else 0.0

    def _draw(self, progress: IngestProgress, now: float) -> None:
        if self._bar is None:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=progress.total, desc="ingest", unit="doc", file=self.stream, dynamic_ncols=True,
                             disable=False)
            # The job's log lines go above the bar instead of through it.
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()
        self._bar.total = progress.total
        self._bar.n = progress.done
        self._bar.set_postfix_str(f"{self._rate(progress, now):.1f} chunks/s, {progress.failed} failed", refresh=False)
        self._bar.refresh()

    def _line(self, progress: IngestProgress, now: float, *, force: bool = False) -> None:
        tenth = progress.done * 10 // progress.total if progress.total else 10
        if self._printed is not None and not force:
            when, last_tenth, last = self._printed
            if progress == last:
                return
            if tenth == last_tenth and now - when < self.every_s and progress.done < progress.total:
                return
        share = f" ({progress.done / progress.total:.0%})" if progress.total else ""
        print(f"ingest: {progress.done}/{progress.total} documents{share}, {self._rate(progress, now):.1f} chunks/s, "
              f"{progress.failed} failed", file=self.stream, flush=True)
        self._printed = (now, tenth, progress)

    def close(self) -> None:
        """Finish the display: the bar's last state stays on screen; lines mode prints a last unprinted reading."""
        with self._lock:
            if self._bar is not None:
                self._redirect.__exit__(None, None, None)
                self._bar.close()
                self._bar = None
            elif self.mode == "lines" and self._last is not None and (
                    self._printed is None or self._printed[2] != self._last):
                self._line(self._last, self.clock(), force=True)

    def __enter__(self) -> "ProgressDisplay":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
