"""Live counts of an ingest run for a progress display: versions done of the total, chunks written, failures.

The driver learns the sink's outcomes only once the whole dataset is written (Ray Data's ``write_datasink``
materializes every write task before it calls ``on_write_complete``), which would leave a progress display at 0 %
until the very end. So while a display listens, each write task also reports what it wrote to a small actor, and a
driver thread reads that actor's totals about once a second. Without a listener none of this runs.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Any

from core.settings import Settings
from pipelines.sink import QdrantDatasink

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class IngestProgress:
    """One reading of a run.

    Attributes:
        total: versions this run indexes (those it claimed). done: those finished, indexed or failed.
        failed: those failed so far. chunks: chunks embedded and written so far.
    """

    total: int
    done: int = 0
    failed: int = 0
    chunks: int = 0


#: What a listener gets: called from the polling thread during the dataset, from the caller's thread otherwise.
ProgressCallback = Callable[[IngestProgress], None]


class _Tally:
    """The actor that sums what the write tasks report, per version (a version's chunks may span several tasks)."""

    def __init__(self) -> None:
        self.versions: dict[tuple[str, int], list[Any]] = {}

    def add(self, outcomes: dict[tuple[str, int], tuple[int, int, bool]]) -> None:
        for key, (written, chunk_count, failed) in outcomes.items():
            seen = self.versions.setdefault(key, [0, 0, False])
            seen[0] += written
            seen[1] = max(seen[1], chunk_count)
            seen[2] = seen[2] or failed

    def reading(self) -> tuple[int, int, int]:
        """``(done, failed, chunks)``; a version is done once it failed or all its chunks were written."""
        done = failed = chunks = 0
        for written, chunk_count, error in self.versions.values():
            done += error or (chunk_count > 0 and written >= chunk_count)
            failed += error
            chunks += min(written, chunk_count) if chunk_count else written  # a retried task must not count twice
        return done, failed, chunks


class _ReportingSink(QdrantDatasink):
    """The Qdrant sink that also tells the tally what each write task wrote (fire and forget)."""

    def __init__(self, settings: Settings, *, shown: frozenset[tuple[str, int]], tally: Any) -> None:
        super().__init__(settings, shown=shown)
        self.tally = tally

    def write(self, blocks, ctx) -> dict:
        outcomes = super().write(blocks, ctx)
        self.tally.add.remote({k: (o.written, o.chunk_count, o.error is not None) for k, o in outcomes.items()})
        return outcomes


class LiveProgress:
    """Reports a dataset's progress to ``on_progress`` while it runs (a context manager around the run).

    Args:
        on_progress: the listener; ``None``: nothing is started and :meth:`sink` is the plain sink.
        total: the run's versions. done: those already finished before the dataset starts (resumed versions whose
            points were all written). interval_s: seconds between readings.
    """

    def __init__(self, on_progress: ProgressCallback | None, *, total: int, done: int = 0,
                 interval_s: float = 1.0) -> None:
        self.on_progress = on_progress
        self.total, self.done, self.interval_s = total, done, interval_s
        self._tally: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sink(self, settings: Settings, *, shown: frozenset[tuple[str, int]]) -> QdrantDatasink:
        """The sink for the dataset: one that reports to the tally while a listener is set."""
        if self._tally is None:
            return QdrantDatasink(settings, shown=shown)
        return _ReportingSink(settings, shown=shown, tally=self._tally)

    def __enter__(self) -> "LiveProgress":
        if self.on_progress is not None:
            import ray

            self._tally = ray.remote(num_cpus=0)(_Tally).remote()
            self._thread = threading.Thread(target=self._poll, name="ingest-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        import ray

        ray.kill(self._tally)

    def _poll(self) -> None:
        import ray

        while not self._stop.wait(self.interval_s):
            try:
                done, failed, chunks = ray.get(self._tally.reading.remote(), timeout=max(5.0, self.interval_s))
            except Exception as exc:  # a slow or lost reading only delays the display
                logger.debug("progress reading failed: %s", exc)
                continue
            self.on_progress(IngestProgress(self.total, min(self.total, self.done + done), failed, chunks))
