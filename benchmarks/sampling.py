"""Measuring while a benchmark runs: a daemon thread that takes a sample at a fixed interval (peak memory, ...)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self


class PeriodicSampler:
    """Calls :meth:`sample` every ``interval_s`` seconds on a daemon thread, from ``__enter__`` to ``__exit__``.

    Subclasses implement :meth:`sample` and keep what they measure (a peak) in their own attributes. The first
    sample is taken at once; ``__exit__`` waits for the one in progress.

    Args:
        interval_s: seconds between the end of one sample and the start of the next.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        """Take one sample (called on the sampling thread)."""
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
