"""The completion lock: one completion at a time per upload (:class:`CompletionLock`); and the path lock that
serialises the promotion of verified bytes to a document's key (:func:`lock_path`).

A PostgreSQL session-level advisory lock held on a dedicated connection for the whole completion. A process that
dies loses its connection and with it the lock, so an upload left ``completing`` with its lock free is known to be
abandoned (``jobs.janitor`` retries it).
"""

from __future__ import annotations

import time
import uuid

import psycopg
from psycopg.rows import dict_row

from core.retry import call_with_retry
from core.settings import Settings
from core.uploads.state import _TRANSIENT

#: Key class of the completion advisory locks (two-key form; the catalog uses the one-key form).
LOCK_CLASS = 0x511CE
#: Key class of the path (promotion) advisory locks: one per ``(tenant, path)``, i.e. per document id.
PATH_LOCK_CLASS = 0x511CF


def path_lock_key(document_id: str) -> int:
    """The second key of a path lock: the first 4 bytes of the document id (a collision only serialises two paths)."""
    return int.from_bytes(uuid.UUID(document_id).bytes[:4], "big", signed=True)


def lock_path(conn: psycopg.Connection, document_id: str, wait_s: float, poll_s: float = 0.1) -> bool:
    """Take the path lock of ``document_id`` in ``conn``'s transaction, polling for up to ``wait_s`` seconds.

    A transaction-scoped advisory lock (``pg_try_advisory_xact_lock``): it is released by the commit that registers
    the version, or by the rollback of a promotion that failed, and with the session of a process that died. So the
    copy to ``<tenant>/<path>`` and the version that names those bytes are one step for every other promotion of
    the path: the object always holds the bytes of the last version registered. Polling (rather than a blocking
    ``pg_advisory_xact_lock``) keeps the wait bounded without touching the session's ``statement_timeout``.

    Returns:
        ``True`` when held; ``False`` when another promotion of the path held it for all of ``wait_s``.
    """
    key = path_lock_key(document_id)
    deadline = time.monotonic() + wait_s
    while True:
        row = conn.execute("SELECT pg_try_advisory_xact_lock(%s, %s) AS ok", (PATH_LOCK_CLASS, key)).fetchone()
        if row["ok"]:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


class CompletionLock:
    """The advisory lock that allows one completion of an upload at a time.

    A session-level ``pg_try_advisory_lock`` on a dedicated connection (not the pool's: the lock must live exactly
    as long as the completion, and dies with the process that holds it).

    Args:
        settings: ``postgres_dsn`` is used. upload_id: the upload.
    """

    def __init__(self, settings: Settings, upload_id: str) -> None:
        self.settings = settings
        self.key = int.from_bytes(uuid.UUID(upload_id).bytes[:4], "big", signed=True)
        self._conn: psycopg.Connection | None = None
        self.held = False

    def acquire(self, wait_s: float = 0.0, poll_s: float = 0.25) -> bool:
        """Try to take the lock, polling for up to ``wait_s`` seconds; ``True`` when held.

        Raises:
            ServiceUnavailableError: PostgreSQL cannot be reached.
        """
        if self._conn is None:
            self._conn = call_with_retry(
                "postgres",
                lambda: psycopg.connect(self.settings.postgres_dsn, autocommit=True, connect_timeout=5, row_factory=dict_row),
                transient=_TRANSIENT,
            )
        deadline = time.monotonic() + wait_s
        while True:
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s, %s) AS ok", (LOCK_CLASS, self.key)).fetchone()
            if row["ok"]:
                self.held = True
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)

    def release(self) -> None:
        """Release the lock and close the connection (idempotent)."""
        if self._conn is not None:
            try:
                self._conn.close()  # ends the session, which releases its advisory locks
            finally:
                self._conn = None
                self.held = False

    def __enter__(self) -> "CompletionLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
