"""What the catalog's methods return and raise, and the SQL column lists they share.

:class:`CatalogConflict`, :class:`Registration` and :class:`Claim` are re-exported by :mod:`core.catalog` (import
them from there).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from core.errors import SluiceError
from core.types import Version

_VERSION_COLUMNS = """
    v.document_id::text AS document_id, v.version, d.tenant, d.path, v.object_key, v.sha256, v.size,
    v.content_type, v.status, v.etag, v.chunk_count, v.error, v.created_at, v.written_count, v.metadata, v.properties
"""
_DOCUMENT_COLUMNS = "document_id::text AS document_id, tenant, path, latest_version, deleted, head_version"


class CatalogConflict(SluiceError):
    """A catalog change that the current state forbids (e.g. restoring a version whose points are gone).

    Attributes:
        code: a stable machine-readable code (``not_found``, ``deleted``, ``not_restorable``).
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class Registration:
    """The outcome of :meth:`Catalog.register_version`.

    Attributes:
        version: the version now latest for the path.
        created: ``False`` when the bytes equal the latest version's (nothing new was recorded).
    """

    version: Version
    created: bool


@dataclasses.dataclass(frozen=True)
class Claim:
    """A version claimed for indexing by :meth:`Catalog.claim_versions`.

    Attributes:
        version: the version, now ``indexing``.
        previous_status: its status before the claim: ``pending`` for a first attempt; ``indexing`` when a run that
            died left it (its lease expired; its points may be partly written), or another status under ``force``.
        run_id: the run that holds the claim (``document_versions.claimed_by``).
    """

    version: Version
    previous_status: str
    run_id: str | None = None

    @property
    def first_attempt(self) -> bool:
        """Whether no point of this version can exist yet (so nothing stale needs deleting)."""
        return self.previous_status == "pending"


def _version(row: dict[str, Any]) -> Version:
    return Version(**row)
