"""Attempts of a stage at one document, kept where a dying worker cannot take them along.

A file that kills the process working on it (an out-of-memory kill, a crash in a native decoder) leaves nothing
in that process to learn from: Ray restarts the actor and retries the batch, and the file kills it again. So each
stage counts, in the catalog, the documents it has started and not finished (``document_attempts``, one row per
version and stage): a start adds one, a finish takes it back. A count still standing when the document comes round
again is a worker that died on it; past ``settings.max_document_attempts`` the stage gives the document up as
``worker_crash`` instead of starting it once more (``pipelines.attempts``).

Counts survive runs on purpose: a document that takes its whole node (or the driver) down with it ends the run, and
the next run must not meet it with a clean slate. The ingest driver clears a version's rows once it has recorded
its outcome. :class:`DocumentAttempts` is mixed into :class:`core.catalog.Catalog`.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

import psycopg


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One start of a stage at a version, as :meth:`DocumentAttempts.begin_attempt` counted it.

    Attributes:
        attempts: starts not matched by a finish, this one included (1: nobody died on it before).
        previous_worker: the worker that made the start before this one (``""`` when none), i.e. where the last
            crash happened. previous_start: when that start was made (``None`` when none).
    """

    attempts: int
    previous_worker: str = ""
    previous_start: datetime | None = None


class DocumentAttempts:
    """The catalog methods on ``document_attempts``, as methods of :class:`Catalog`.

    Uses the catalog's ``_run(fn, *args)`` (one retried transaction).
    """

    def begin_attempt(self, document_id: str, version: int, stage: str, *, worker: str) -> Attempt:
        """Count one more start of ``stage`` at the version, made by ``worker``; committed before it returns.

        It must be durable before the work starts: the work may kill the process, and the count is what the next
        worker learns from.
        """

        def begin(conn: psycopg.Connection) -> Attempt:
            row = conn.execute(
                "WITH old AS (SELECT worker, started_at FROM document_attempts "
                "WHERE document_id = %(d)s AND version = %(v)s AND stage = %(s)s AND attempts > 0) "
                "INSERT INTO document_attempts AS a (document_id, version, stage, attempts, worker) "
                "VALUES (%(d)s, %(v)s, %(s)s, 1, %(w)s) ON CONFLICT (document_id, version, stage) DO UPDATE "
                "SET attempts = a.attempts + 1, worker = EXCLUDED.worker, started_at = now() "
                "RETURNING a.attempts, (SELECT worker FROM old) AS previous_worker, "
                "(SELECT started_at FROM old) AS previous_start",
                {"d": document_id, "v": version, "s": stage, "w": worker},
            ).fetchone()
            return Attempt(int(row["attempts"]), row["previous_worker"] or "", row["previous_start"])

        return self._run(begin)

    def end_attempt(self, document_id: str, version: int, stage: str) -> None:
        """Take back one start of ``stage`` at the version: the worker finished it (well or with an error row)."""
        self._run(lambda conn: conn.execute(
            "UPDATE document_attempts SET attempts = attempts - 1 "
            "WHERE document_id = %s AND version = %s AND stage = %s AND attempts > 0",
            (document_id, version, stage),
        ))

    def clear_attempts(self, keys: list[tuple[str, int]]) -> None:
        """Forget every stage's count of these ``(document_id, version)``: their outcome is recorded.

        A version queued again later (``--retry-failed``) then starts with a clean slate.
        """
        if not keys:
            return
        self._run(lambda conn: conn.execute(
            "DELETE FROM document_attempts a USING unnest(%s::uuid[], %s::int[]) AS k(document_id, version) "
            "WHERE a.document_id = k.document_id AND a.version = k.version",
            ([d for d, _ in keys], [v for _, v in keys]),
        ))

    def attempts_of(self, document_id: str, version: int) -> dict[str, int]:
        """The standing count of each stage at the version (for tests and inspection)."""
        rows = self._run(lambda conn: conn.execute(
            "SELECT stage, attempts FROM document_attempts WHERE document_id = %s AND version = %s",
            (document_id, version),
        ).fetchall())
        return {r["stage"]: int(r["attempts"]) for r in rows}
