"""Dead letters in the catalog: a failed version's ``dead_letters`` row, listing them, replaying them.

:class:`DeadLetters` is mixed into :class:`core.catalog.Catalog`.
"""

from __future__ import annotations

from typing import Any

import psycopg


class DeadLetters:
    """The catalog methods on ``dead_letters``, as methods of :class:`Catalog`.

    Uses the catalog's ``_run(fn, *args)`` (one retried transaction).
    """

    def mark_failed(self, document_id: str, version: int, *, stage: str, reason: str, detail: str = "",
                    keep_indexed: bool = False) -> None:
        """Record a version as ``failed`` and add its ``dead_letters`` row; what search shows does not change.

        Args:
            stage: where it failed (``extract``, ``embed``, ``index``). reason: a stable reason code.
            detail: human-readable text (truncated to 2,000 characters).
            keep_indexed: the failure was a re-index (``--force``) of the version search shows, whose points are
                kept: it stays ``indexed`` with its chunk count (the catalog keeps matching the index), and only
                the dead letter and ``error`` record the failed attempt.
        """
        detail = detail[:2000]
        status_sql = (
            "status = 'indexed'" if keep_indexed else "status = 'failed', written_count = NULL"
        )

        def mark(conn: psycopg.Connection) -> None:
            conn.execute(
                f"UPDATE document_versions SET {status_sql}, error = %s, updated_at = now() "
                "WHERE document_id = %s AND version = %s",
                (f"{reason}: {detail}" if detail else reason, document_id, version),
            )
            conn.execute(
                "INSERT INTO dead_letters (document_id, version, stage, reason, detail) VALUES (%s, %s, %s, %s, %s)",
                (document_id, version, stage, reason, detail),
            )

        self._run(mark)

    def dead_letters(
        self, document_id: str | None = None, *, tenant: str | None = None, include_replayed: bool = True, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Dead-letter rows, newest first: of one document, of one tenant, or all (at most ``limit``)."""
        return self._run(
            lambda conn: conn.execute(
                "SELECT l.id, l.document_id::text AS document_id, d.path, l.version, l.stage, l.reason, l.detail, "
                "l.created_at, l.replayed_at FROM dead_letters l JOIN documents d USING (document_id) "
                "WHERE (%s::uuid IS NULL OR l.document_id = %s::uuid) AND (%s::text IS NULL OR d.tenant = %s) "
                "AND (%s OR l.replayed_at IS NULL) ORDER BY l.id DESC LIMIT %s",
                (document_id, document_id, tenant, tenant, include_replayed, limit),
            ).fetchall()
        )

    def replay_dead_letters(self, tenant: str | None, prefix: str = "") -> int:
        """Set the failed head versions with an open dead letter back to ``pending``; mark those letters replayed.

        Letters of versions that are no longer the head (newer content came, or the document was deleted) are
        marked replayed too: there is nothing left to retry for them.

        Returns:
            How many versions were set back to ``pending``.
        """

        def replay(conn: psycopg.Connection) -> int:
            rows = conn.execute(
                "UPDATE dead_letters l SET replayed_at = now() FROM documents d "
                "WHERE l.document_id = d.document_id AND l.replayed_at IS NULL "
                "AND (%s::text IS NULL OR d.tenant = %s) AND starts_with(d.path, %s) "
                "RETURNING l.document_id::text AS document_id, l.version",
                (tenant, tenant, prefix),
            ).fetchall()
            pending = 0
            for key in {(r["document_id"], r["version"]) for r in rows}:
                row = conn.execute(
                    "UPDATE document_versions v SET status = 'pending', error = NULL, updated_at = now() "
                    "FROM documents d WHERE v.document_id = %s AND v.version = %s AND v.status = 'failed' "
                    "AND d.document_id = v.document_id AND d.head_version = v.version AND NOT d.deleted "
                    "RETURNING v.version",
                    key,
                ).fetchone()
                pending += row is not None
            return pending

        return self._run(replay)
