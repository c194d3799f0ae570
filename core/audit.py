"""The audit log in the catalog: every mutating call and every refused one (README, "Security").

:class:`AuditLog` is mixed into :class:`core.catalog.Catalog`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any


@dataclasses.dataclass(frozen=True)
class AuditEvent:
    """One audited call.

    Attributes:
        action: what was asked, ``<METHOD> <route>`` (``DELETE /v1/documents/{document_id}``).
        outcome: ``ok``, ``refused`` (401/403/429) or ``failed`` (any other error).
        status: the HTTP status answered. target: the object (a document, upload or key id), ``""`` for none.
        request_id, subject, tenant, role: who asked (empty when the caller was not authenticated).
    """

    action: str
    outcome: str
    status: int
    target: str = ""
    request_id: str = ""
    subject: str = ""
    tenant: str = ""
    role: str = ""


class AuditLog:
    """The catalog methods on ``audit_events``, as methods of :class:`Catalog`."""

    def record_audit(self, event: AuditEvent) -> None:
        """Append ``event``."""
        e = dataclasses.asdict(event)
        self._run(lambda conn: conn.execute(
            "INSERT INTO audit_events (request_id, subject, tenant, role, action, target, outcome, status) "
            "VALUES (%(request_id)s, %(subject)s, %(tenant)s, %(role)s, %(action)s, %(target)s, %(outcome)s, "
            "%(status)s)", {k: (v[:500] if isinstance(v, str) else v) for k, v in e.items()}))

    def audit_events(self, tenant: str, *, since: dt.datetime | None = None, until: dt.datetime | None = None,
                     action: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """``tenant``'s events, newest first: at or after ``since``, before ``until``, whose action contains
        ``action`` (case-insensitive), at most ``limit``."""
        return self._run(lambda conn: conn.execute(
            "SELECT id, at, request_id, subject, tenant, role, action, target, outcome, status FROM audit_events "
            "WHERE tenant = %s AND (%s::timestamptz IS NULL OR at >= %s) AND (%s::timestamptz IS NULL OR at < %s) "
            "AND (%s::text IS NULL OR strpos(lower(action), lower(%s)) > 0) ORDER BY id DESC LIMIT %s",
            (tenant, since, since, until, until, action, action, limit)).fetchall())
