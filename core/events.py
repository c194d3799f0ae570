"""The "new version" event: PostgreSQL ``NOTIFY`` on one channel, and a small listener.

A completed upload that created a document version sends :class:`NewVersionEvent` with ``pg_notify`` **in the same
transaction** that marks the upload completed, so the event is delivered exactly when that commit happens and never
for a rolled-back one (PostgreSQL documentation, "NOTIFY": notifications are delivered at commit, and only to
sessions listening at that time). An event is a wake-up call, not the record: the version itself is ``pending`` in
the catalog, so a listener that was down catches up by ingesting pending versions when it starts
(``jobs.watch`` does).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from typing import Any

import psycopg

from core.settings import Settings

logger = logging.getLogger(__name__)

#: The PostgreSQL channel of :class:`NewVersionEvent`.
NEW_VERSION_CHANNEL = "sluice_new_version"
#: ``NOTIFY`` payloads must be shorter than 8000 bytes (PostgreSQL documentation, "NOTIFY").
MAX_PAYLOAD_BYTES = 7999


@dataclasses.dataclass(frozen=True)
class NewVersionEvent:
    """A new document version is ``pending`` and waits to be ingested.

    Attributes:
        tenant: its owner. document_id: the document. version: the new version number. path: the document path.
        upload_id: the upload that created it (``""`` when another path did).
    """

    tenant: str
    document_id: str
    version: int
    path: str
    upload_id: str = ""

    def to_json(self) -> str:
        """The ``NOTIFY`` payload (the path is dropped if the payload would be too long)."""
        payload = json.dumps(dataclasses.asdict(self), ensure_ascii=False, separators=(",", ":"))
        if len(payload.encode("utf-8")) > MAX_PAYLOAD_BYTES:
            payload = json.dumps({**dataclasses.asdict(self), "path": ""}, separators=(",", ":"))
        return payload

    @classmethod
    def from_json(cls, payload: str) -> "NewVersionEvent":
        """Parse a payload written by :meth:`to_json`.

        Raises:
            ValueError: the payload is not such an event.
        """
        try:
            data: dict[str, Any] = json.loads(payload)
            return cls(
                tenant=str(data["tenant"]), document_id=str(data["document_id"]), version=int(data["version"]),
                path=str(data.get("path", "")), upload_id=str(data.get("upload_id", "")),
            )
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a new-version event: {payload[:200]!r}") from exc


def notify_new_version(conn: psycopg.Connection, event: NewVersionEvent) -> None:
    """Send ``event`` on :data:`NEW_VERSION_CHANNEL` within ``conn``'s current transaction (delivered at commit)."""
    conn.execute("SELECT pg_notify(%s, %s)", (NEW_VERSION_CHANNEL, event.to_json()))


class EventListener:
    """Receives :class:`NewVersionEvent` s on a dedicated PostgreSQL connection.

    Use it as a context manager; ``LISTEN`` starts on entry, so events committed after ``__enter__`` are received.

    Args:
        settings: ``postgres_dsn`` is used.
        connect_timeout_s: seconds to wait for the connection.
    """

    def __init__(self, settings: Settings, *, connect_timeout_s: float = 5.0) -> None:
        if not settings.postgres_dsn:
            raise ValueError("settings.postgres_dsn is empty: set SLUICE_POSTGRES_DSN")
        self.settings = settings
        self.connect_timeout_s = connect_timeout_s
        self._conn: psycopg.Connection | None = None

    def __enter__(self) -> "EventListener":
        self._conn = psycopg.connect(
            self.settings.postgres_dsn, autocommit=True, connect_timeout=max(1, int(self.connect_timeout_s))
        )
        self._conn.execute(f"LISTEN {NEW_VERSION_CHANNEL}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop listening and close the connection (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def events(self, timeout_s: float | None = None, *, max_events: int | None = None) -> Iterator[NewVersionEvent]:
        """Yield events as they arrive.

        Args:
            timeout_s: stop after this many seconds (``None``: never).
            max_events: stop after this many events (``None``: no limit).

        Raises:
            RuntimeError: the listener was not entered.
            psycopg.OperationalError: the connection broke (re-enter to listen again).
        """
        if self._conn is None:
            raise RuntimeError("use EventListener as a context manager before reading events")
        for notify in self._conn.notifies(timeout=timeout_s, stop_after=max_events):
            try:
                yield NewVersionEvent.from_json(notify.payload)
            except ValueError as exc:
                logger.warning("ignoring a malformed event on %s: %s", NEW_VERSION_CHANNEL, exc)
