"""Bounded retries of a document whose worker dies: the stages' side of ``core.document_attempts``.

Ray restarts a dead stage actor and retries its batch without end (Ray Data's defaults for actor pools), which is
right for a lost node and wrong for a file that kills every worker it meets: the run would make no progress until
its timeout, commit nothing, and meet the file again next time. So a stage that works on one document at a time
(prepare, image, audio) wraps each document in :meth:`AttemptGuard.begin` / :meth:`AttemptGuard.end`. The count
lives in PostgreSQL, outside the worker that may die; a document found with ``settings.max_document_attempts``
unfinished starts is not started again but becomes the stage's usual error row, reason :data:`WORKER_CRASH`, which
flows to the sink and on to ``failed`` and a dead letter like any other bad file. The other documents of the batch
are simply done again on the retry (their writes are idempotent), and only the one the worker died on keeps a count.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from core.catalog import Catalog
from core.settings import Settings
from pipelines import columns as C

logger = logging.getLogger(__name__)

#: The reason code of a document given up because its worker died on it ``max_document_attempts`` times.
WORKER_CRASH = "worker_crash"


class AttemptGuard:
    """Counts one stage's starts at documents in the catalog, and says when to stop trying one.

    The catalog connection opens on first use, on the worker (a stage actor builds its guard in ``__init__``).

    Args:
        settings: ``postgres_dsn`` and ``max_document_attempts``.
        stage: the stage's name, as the dead letter will show it (``prepare``, ``image``, ``audio``).
    """

    def __init__(self, settings: Settings, stage: str) -> None:
        self.settings = settings
        self.stage = stage
        self._catalog: Catalog | None = None

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = Catalog(self.settings, max_connections=1)
        return self._catalog

    def close(self) -> None:
        """Close the catalog connection, if one was opened (a stage actor's guard lives as long as the actor)."""
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    @staticmethod
    def worker() -> str:
        """``host:pid`` of this process: where a crash happened, for the dead letter."""
        return f"{socket.gethostname()}:{os.getpid()}"

    def begin(self, row: dict[str, Any]) -> tuple[str, str, str] | None:
        """Record a start at the row's version, durably, before any of its work runs.

        Returns:
            ``None``: go on (call :meth:`end` when done, whatever the outcome). Otherwise ``(stage, reason,
            detail)`` of the error row to emit instead: the version's earlier starts all died with their worker.
            Its count is then left standing (the version's other rows in this stage give up at once too) until
            the driver clears it with the outcome.
        """
        document_id, version = str(row[C.DOCUMENT_ID]), int(row[C.VERSION])
        attempt = self.catalog.begin_attempt(document_id, version, self.stage, worker=self.worker())
        limit = self.settings.max_document_attempts
        if attempt.attempts <= limit:
            return None
        died = attempt.attempts - 1
        last = f" the last time on {attempt.previous_worker}" if attempt.previous_worker else ""
        if attempt.previous_start is not None:
            last += f" (started {attempt.previous_start.isoformat(timespec='seconds')})"
        detail = (f"the {self.stage} worker died {died} times while processing {row[C.PATH]} ({int(row[C.SIZE])} "
                  f"bytes, {row[C.CONTENT_TYPE] or 'type not declared'}),{last}; given up after "
                  f"SLUICE_MAX_DOCUMENT_ATTEMPTS={limit}")
        logger.warning("version %s/%d: %s", document_id, version, detail)
        return self.stage, WORKER_CRASH, detail

    def end(self, row: dict[str, Any]) -> None:
        """Take back the start :meth:`begin` recorded: the worker lived through the document."""
        self.catalog.end_attempt(str(row[C.DOCUMENT_ID]), int(row[C.VERSION]), self.stage)
