"""The version life cycle in the catalog: register, claim, write, commit, retain, restore, delete, reset.

The transitions of ``document_versions.status`` drawn in :mod:`core.catalog` (``mark_failed``, which also writes a
dead letter, is in :mod:`core.dead_letters`). :class:`VersionLifecycle` is mixed into :class:`core.catalog.Catalog`.
"""

from __future__ import annotations

import psycopg
from psycopg.types.json import Jsonb

from core.catalog_records import _DOCUMENT_COLUMNS, _VERSION_COLUMNS, CatalogConflict, Claim, Registration, _version
from core.ids import document_id as make_document_id
from core.ids import normalise_path
from core.types import Document, Version

#: Seconds a run's claim on a version holds unless renewed (``settings.ingest_lease_s`` is what runs use).
DEFAULT_LEASE_S = 120.0


def new_run_id() -> str:
    """A fresh id for an ingest run (``document_versions.claimed_by``)."""
    import uuid

    return uuid.uuid4().hex


class VersionLifecycle:
    """The catalog methods that move versions through their life cycle, as methods of :class:`Catalog`.

    Uses the catalog's ``_run(fn, *args)`` (one retried transaction).
    """

    def register_version(
        self, tenant: str, path: str, *, object_key: str, sha256: str, size: int, content_type: str = "", etag: str = "",
        metadata: dict | None = None, metadata_source: str = "upload",
    ) -> Registration:
        """Record new content of a path as a new ``pending`` head version, unless it equals the head version.

        The document row is locked (``SELECT ... FOR UPDATE``) so concurrent registrations of one path number their
        versions without gaps or duplicates; a retry after a lost commit finds the version already there. Numbers
        only grow: a path deleted and uploaded again continues after its last version. What search shows
        (``latest_version``) does not change until the new version is committed by an ingest.

        Args:
            tenant, path: the document (the path is normalised: NFC and NFD spellings are one document).
            object_key: where the bytes are. sha256: hex digest of the bytes. size: bytes.
            content_type: MIME type, ``""`` if unknown. etag: the object's S3 ETag.
            metadata: the new version's user metadata, already checked (``core.metadata.validate_metadata``);
                ``None``: the head version's (of a live document), else none. Bytes equal to the head's keep the
                head's metadata (``set_metadata`` changes it). metadata_source: ``upload`` or ``scan``, for the
                history (``metadata_changes``).

        Raises:
            InvalidPathError: a bad path.
        """
        return self._run(lambda conn: self.register_version_in(
            conn, tenant, path, object_key=object_key, sha256=sha256, size=size, content_type=content_type, etag=etag,
            metadata=metadata, metadata_source=metadata_source,
        ))

    def register_version_in(
        self, conn: psycopg.Connection, tenant: str, path: str, *, object_key: str, sha256: str, size: int,
        content_type: str = "", etag: str = "", metadata: dict | None = None, metadata_source: str = "upload",
    ) -> Registration:
        """:meth:`register_version` inside the caller's transaction ``conn`` (no retry: the caller owns it).

        An upload's promotion registers its version in the same transaction that holds the path's lock and marks the
        upload completed, so that the version, the upload's answer and its event commit together or not at all.
        """
        path = normalise_path(path)
        doc_id = make_document_id(tenant, path)
        conn.execute(
            "INSERT INTO documents (document_id, tenant, path) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            (doc_id, tenant, path),
        )
        doc = conn.execute(
            "SELECT head_version, deleted FROM documents WHERE document_id = %s FOR UPDATE", (doc_id,)
        ).fetchone()
        head = doc["head_version"]
        if head and not doc["deleted"]:
            row = conn.execute(
                f"SELECT {_VERSION_COLUMNS} FROM document_versions v JOIN documents d USING (document_id) "
                "WHERE v.document_id = %s AND v.version = %s",
                (doc_id, head),
            ).fetchone()
            if row["sha256"] == sha256:
                if etag and row["etag"] != etag or row["object_key"] != object_key:
                    conn.execute(
                        "UPDATE document_versions SET etag = %s, object_key = %s, updated_at = now() "
                        "WHERE document_id = %s AND version = %s",
                        (etag or row["etag"], object_key, doc_id, head),
                    )
                    row = {**row, "etag": etag or row["etag"], "object_key": object_key}
                return Registration(_version(row), created=False)
        top = conn.execute(
            "SELECT coalesce(max(version), 0) AS n FROM document_versions WHERE document_id = %s", (doc_id,)
        ).fetchone()["n"]
        new = top + 1
        fields, source = metadata, metadata_source
        if fields is None:
            inherited = conn.execute(
                "SELECT metadata FROM document_versions WHERE document_id = %s AND version = %s",
                (doc_id, head),
            ).fetchone() if head and not doc["deleted"] else None
            fields, source = (dict(inherited["metadata"]), "inherited") if inherited else ({}, metadata_source)
        conn.execute(
            "INSERT INTO document_versions (document_id, version, object_key, sha256, size, content_type, etag, "
            "metadata) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (doc_id, new, object_key, sha256, size, content_type, etag, Jsonb(fields)),
        )
        if fields:
            conn.execute(
                "INSERT INTO metadata_changes (document_id, version, metadata, source) VALUES (%s, %s, %s, %s)",
                (doc_id, new, Jsonb(fields), source),
            )
        # Older versions nobody indexed yet are never indexed now: only the newest content is.
        conn.execute(
            "UPDATE document_versions SET status = 'superseded', written_count = NULL, updated_at = now() "
            "WHERE document_id = %s AND version < %s AND status IN ('pending', 'indexing')",
            (doc_id, new),
        )
        conn.execute(
            "UPDATE documents SET head_version = %s, deleted = false, deleted_at = NULL, updated_at = now() "
            "WHERE document_id = %s",
            (new, doc_id),
        )
        return Registration(
            Version(document_id=doc_id, version=new, tenant=tenant, path=path, object_key=object_key,
                    sha256=sha256, size=size, content_type=content_type, etag=etag, metadata=dict(fields)),
            created=True,
        )

    def claim_versions(self, tenant: str | None, prefix: str = "", *, force: bool = False, run_id: str | None = None,
                       lease_s: float = DEFAULT_LEASE_S) -> list[Claim]:
        """Mark the versions this run must index as ``indexing`` under its lease and return them.

        Claimed: the head version of each live document (of ``tenant``, or of every tenant when ``None``) under
        ``prefix`` that is ``pending``, or ``indexing`` with an expired lease (left so by a run that died: it is
        resumed), or, with ``force``, ``indexed`` (re-embedded in place) or ``failed``. A version another run is
        indexing, its lease alive, is left to it (:meth:`held_elsewhere` counts them); two runs claiming at once
        never both get a version (the rows are locked, and rechecked once the first claim commits).

        Args:
            run_id: the claiming run (a new id when ``None``; it is on every :class:`Claim`).
            lease_s: seconds the claim holds unless renewed (:meth:`renew_lease`).
        """
        statuses = ["pending"] + (["indexed", "failed"] if force else [])
        run_id = run_id or new_run_id()

        def claim(conn: psycopg.Connection) -> list[Claim]:
            rows = conn.execute(
                "WITH target AS ("
                "  SELECT v.document_id, v.version, v.status AS previous_status FROM document_versions v "
                "  JOIN documents d ON v.document_id = d.document_id AND v.version = d.head_version "
                "  WHERE NOT d.deleted AND (%s::text IS NULL OR d.tenant = %s) AND starts_with(d.path, %s) "
                "  AND (v.status = ANY(%s) OR (v.status = 'indexing' AND (v.lease_until IS NULL OR v.lease_until < now()))) "
                "  FOR UPDATE OF v) "
                "UPDATE document_versions v SET status = 'indexing', error = NULL, updated_at = now(), "
                "  claimed_by = %s, lease_until = now() + make_interval(secs => %s), "
                "  written_count = CASE WHEN t.previous_status = 'indexing' THEN v.written_count END "
                f"FROM target t, documents d WHERE v.document_id = t.document_id AND v.version = t.version "
                f"AND d.document_id = v.document_id RETURNING {_VERSION_COLUMNS}, t.previous_status",
                (tenant, tenant, prefix, statuses, run_id, float(lease_s)),
            ).fetchall()
            claims = [Claim(_version({k: r[k] for k in r if k != "previous_status"}), r["previous_status"], run_id)
                      for r in rows]
            return sorted(claims, key=lambda c: (c.version.tenant, c.version.path))

        return self._run(claim)

    def held_elsewhere(self, tenant: str | None, prefix: str, run_id: str) -> int:
        """Head versions in scope that another run is indexing under a live lease (this run leaves them alone)."""
        row = self._run(lambda conn: conn.execute(
            "SELECT count(*) AS n FROM document_versions v "
            "JOIN documents d ON v.document_id = d.document_id AND v.version = d.head_version "
            "WHERE NOT d.deleted AND (%s::text IS NULL OR d.tenant = %s) AND starts_with(d.path, %s) "
            "AND v.status = 'indexing' AND v.lease_until >= now() AND v.claimed_by IS DISTINCT FROM %s",
            (tenant, tenant, prefix, run_id)).fetchone())
        return int(row["n"])

    def renew_lease(self, run_id: str, lease_s: float = DEFAULT_LEASE_S) -> int:
        """Extend the lease of every version ``run_id`` is still indexing; returns how many it holds."""
        return self._run(lambda conn: conn.execute(
            "UPDATE document_versions SET lease_until = now() + make_interval(secs => %s) "
            "WHERE claimed_by = %s AND status = 'indexing'", (float(lease_s), run_id)).rowcount)

    def release_lease(self, run_id: str) -> int:
        """End the lease of the versions ``run_id`` leaves ``indexing`` (a run that stops early), so that the next
        run resumes them at once instead of after the lease."""
        return self._run(lambda conn: conn.execute(
            "UPDATE document_versions SET lease_until = NULL WHERE claimed_by = %s AND status = 'indexing'",
            (run_id,)).rowcount)

    def claimed_by(self, keys: list[tuple[str, int]]) -> dict[tuple[str, int], str | None]:
        """The run that holds (or last held) the claim of each ``(document_id, version)``."""
        if not keys:
            return {}
        rows = self._run(lambda conn: conn.execute(
            "SELECT document_id::text AS document_id, version, claimed_by FROM document_versions "
            "WHERE (document_id, version) IN (SELECT * FROM unnest(%s::uuid[], %s::int[]))",
            ([d for d, _ in keys], [v for _, v in keys])).fetchall())
        return {(r["document_id"], r["version"]): r["claimed_by"] for r in rows}

    def mark_written(self, outcomes: list[tuple[str, int, int]]) -> None:
        """Record that every point of these ``(document_id, version, chunk_count)`` is written (not committed yet)."""
        if not outcomes:
            return

        def mark(conn: psycopg.Connection) -> None:
            with conn.cursor() as cur:
                cur.executemany(
                    "UPDATE document_versions SET written_count = %s, updated_at = now() "
                    "WHERE document_id = %s AND version = %s AND status = 'indexing'",
                    [(count, doc, version) for doc, version, count in outcomes],
                )

        self._run(mark)

    def commit_versions(self, outcomes: list[tuple[str, int, int]], run_id: str | None = None) -> list[tuple[str, int, int]]:
        """Make written versions the ones search shows, in one transaction.

        For each ``(document_id, version, chunk_count)`` whose version is still ``indexing`` (claimed by ``run_id``,
        when given), the head, and whose document was not deleted meanwhile: the version becomes ``indexed`` (its
        lease ends; ``claimed_by`` stays, naming the run that indexed it) with its chunk count and
        ``documents.latest_version``; the version shown before becomes ``superseded`` (its points stay, with
        ``is_latest`` false, while it is retained).

        Returns:
            The outcomes that were committed (the others lost a race with a delete or a newer version; their points
            must be removed by the caller).
        """
        if not outcomes:
            return []

        def commit(conn: psycopg.Connection) -> list[tuple[str, int, int]]:
            done = []
            for doc, version, count in outcomes:
                row = conn.execute(
                    "UPDATE document_versions v SET status = 'indexed', chunk_count = %s, written_count = NULL, "
                    "error = NULL, indexed_at = now(), updated_at = now(), lease_until = NULL FROM documents d "
                    "WHERE v.document_id = %s AND v.version = %s AND v.status = 'indexing' "
                    "AND (%s::text IS NULL OR v.claimed_by = %s) "
                    "AND d.document_id = v.document_id AND d.head_version = v.version AND NOT d.deleted "
                    "RETURNING v.version",
                    (count, doc, version, run_id, run_id),
                ).fetchone()
                if row is None:
                    continue
                conn.execute(
                    "UPDATE document_versions SET status = 'superseded', updated_at = now() "
                    "WHERE document_id = %s AND version <> %s AND status = 'indexed'",
                    (doc, version),
                )
                conn.execute(
                    "UPDATE documents SET latest_version = %s, updated_at = now() WHERE document_id = %s",
                    (version, doc),
                )
                done.append((doc, version, count))
            return done

        return self._run(commit)

    def mark_indexed(self, document_id: str, version: int, chunk_count: int) -> None:
        """Commit one version (see :meth:`commit_versions`)."""
        self.commit_versions([(document_id, version, chunk_count)])

    def mark_indexed_many(self, outcomes: list[tuple[str, int, int]]) -> None:
        """Commit many versions (see :meth:`commit_versions`)."""
        self.commit_versions(outcomes)

    def retained_versions(self, document_id: str, retention: int) -> list[int]:
        """The versions of a document whose points are kept: the shown one and the newest other indexed ones.

        Args:
            retention: how many versions keep points, the shown one included (``settings.version_retention``).

        Returns:
            Version numbers, newest first; empty for a deleted document.
        """
        if retention < 1:
            raise ValueError(f"retention={retention} must be at least 1")

        def select(conn: psycopg.Connection) -> list[int]:
            doc = conn.execute("SELECT latest_version, deleted FROM documents WHERE document_id = %s", (document_id,)).fetchone()
            if doc is None or doc["deleted"]:
                return []
            rows = conn.execute(
                "SELECT version FROM document_versions WHERE document_id = %s AND chunk_count IS NOT NULL "
                "AND status IN ('indexed', 'superseded') AND version <> %s ORDER BY version DESC LIMIT %s",
                (document_id, doc["latest_version"], retention - (1 if doc["latest_version"] else 0)),
            ).fetchall()
            shown = [doc["latest_version"]] if doc["latest_version"] else []
            return shown + [r["version"] for r in rows]

        return self._run(select)

    def forget_points(self, document_id: str, versions: list[int]) -> None:
        """Record that these versions no longer have points (``chunk_count`` cleared; they cannot be restored)."""
        if versions:
            self._run(
                lambda conn: conn.execute(
                    "UPDATE document_versions SET chunk_count = NULL, updated_at = now() "
                    "WHERE document_id = %s AND version = ANY(%s) AND status = 'superseded'",
                    (document_id, versions),
                )
            )

    def restore_version(self, document_id: str, version: int) -> Document:
        """Make a retained older version the one search shows (and the head) again, in the catalog.

        Newer versions become ``superseded`` (those not indexed yet are never indexed). The caller flips the
        points' ``is_latest`` flags (``core.lifecycle.restore_version`` does both).

        Raises:
            CatalogConflict: ``not_found`` (no such document or version), ``deleted``, or ``not_restorable`` (the
                version was never indexed or its points are no longer retained).
        """

        def restore(conn: psycopg.Connection) -> Document:
            doc = conn.execute(f"SELECT {_DOCUMENT_COLUMNS} FROM documents WHERE document_id = %s FOR UPDATE",
                               (document_id,)).fetchone()
            if doc is None:
                raise CatalogConflict("not_found", f"no document {document_id}")
            if doc["deleted"]:
                raise CatalogConflict("deleted", f"document {document_id} was deleted")
            row = conn.execute(
                "SELECT status, chunk_count FROM document_versions WHERE document_id = %s AND version = %s",
                (document_id, version),
            ).fetchone()
            if row is None:
                raise CatalogConflict("not_found", f"document {document_id} has no version {version}")
            if row["status"] not in ("indexed", "superseded") or row["chunk_count"] is None:
                raise CatalogConflict("not_restorable", f"version {version} is {row['status']} and has no retained points")
            conn.execute(
                "UPDATE document_versions SET status = CASE WHEN version = %s THEN 'indexed' ELSE 'superseded' END, "
                "written_count = NULL, updated_at = now() WHERE document_id = %s "
                "AND (version = %s OR status IN ('indexed', 'pending', 'indexing'))",
                (version, document_id, version),
            )
            updated = conn.execute(
                f"UPDATE documents SET latest_version = %s, head_version = %s, updated_at = now() "
                f"WHERE document_id = %s RETURNING {_DOCUMENT_COLUMNS}",
                (version, version, document_id),
            ).fetchone()
            return Document(**updated)

        return self._run(restore)

    def mark_deleted(self, document_id: str) -> Document | None:
        """Mark a document deleted (rows kept): search shows nothing; versions not indexed yet never will be.

        Idempotent. Returns the document as it was before, or ``None`` when there is no such document.
        """

        def delete(conn: psycopg.Connection) -> Document | None:
            doc = conn.execute(f"SELECT {_DOCUMENT_COLUMNS} FROM documents WHERE document_id = %s FOR UPDATE",
                               (document_id,)).fetchone()
            if doc is None:
                return None
            conn.execute(
                "UPDATE documents SET deleted = true, deleted_at = coalesce(deleted_at, now()), latest_version = 0, "
                "updated_at = now() WHERE document_id = %s",
                (document_id,),
            )
            conn.execute(
                "UPDATE document_versions SET status = 'superseded', chunk_count = NULL, written_count = NULL, "
                "updated_at = now() WHERE document_id = %s AND status IN ('pending', 'indexing', 'indexed', 'superseded')",
                (document_id,),
            )
            return Document(**doc)

        return self._run(delete)

    def set_metadata(self, document_id: str, metadata: dict) -> list[int]:
        """Replace the user metadata of a live document's shown and head versions (checked by the caller).

        The versions a search can show now or next get the new fields; older versions keep theirs (their history).
        Each change is recorded in ``metadata_changes``.

        Returns:
            The versions changed (the caller updates their points' payload).

        Raises:
            CatalogConflict: ``not_found`` (no such document, or no version yet) or ``deleted``.
        """

        def update(conn: psycopg.Connection) -> list[int]:
            doc = conn.execute("SELECT latest_version, head_version, deleted FROM documents WHERE document_id = %s "
                               "FOR UPDATE", (document_id,)).fetchone()
            if doc is None or not doc["head_version"]:
                raise CatalogConflict("not_found", f"no document {document_id}")
            if doc["deleted"]:
                raise CatalogConflict("deleted", f"document {document_id} was deleted")
            versions = sorted({v for v in (doc["latest_version"], doc["head_version"]) if v})
            conn.execute("UPDATE document_versions SET metadata = %s, updated_at = now() "
                         "WHERE document_id = %s AND version = ANY(%s)", (Jsonb(metadata), document_id, versions))
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO metadata_changes (document_id, version, metadata, source) VALUES (%s, %s, %s, 'patch')",
                    [(document_id, v, Jsonb(metadata)) for v in versions],
                )
            return versions

        return self._run(update)

    def version_metadata(self, keys: list[tuple[str, int]]) -> dict[tuple[str, int], dict]:
        """The current user metadata of each ``(document_id, version)`` (those that exist)."""
        if not keys:
            return {}
        rows = self._run(
            lambda conn: conn.execute(
                "SELECT v.document_id::text AS document_id, v.version, v.metadata FROM document_versions v "
                "JOIN unnest(%s::uuid[], %s::int[]) AS k(document_id, version) USING (document_id, version)",
                ([d for d, _ in keys], [v for _, v in keys]),
            ).fetchall()
        )
        return {(r["document_id"], int(r["version"])): dict(r["metadata"]) for r in rows}

    def metadata_history(self, document_id: str) -> list[dict]:
        """Every metadata each version of a document was given, oldest first: ``version``, ``metadata``,
        ``source`` (``upload``, ``scan``, ``inherited``, ``patch``) and ``changed_at``."""
        rows = self._run(
            lambda conn: conn.execute(
                "SELECT version, metadata, source, changed_at FROM metadata_changes WHERE document_id = %s ORDER BY id",
                (document_id,),
            ).fetchall()
        )
        return [dict(r) for r in rows]

    def record_properties(self, items: list[tuple[str, int, dict]]) -> None:
        """Record what each ``(document_id, version, properties)``'s file says of itself (at indexing)."""
        if not items:
            return

        def record(conn: psycopg.Connection) -> None:
            with conn.cursor() as cur:
                cur.executemany(
                    "UPDATE document_versions SET properties = %s WHERE document_id = %s AND version = %s",
                    [(Jsonb(props), doc, version) for doc, version, props in items],
                )

        self._run(record)

    def reset_to_pending(self, document_id: str, version: int) -> bool:
        """Set a live document's head version back to ``pending`` so the next ingest re-indexes it (reconcile)."""
        row = self._run(
            lambda conn: conn.execute(
                "UPDATE document_versions v SET status = 'pending', written_count = NULL, updated_at = now() "
                "FROM documents d WHERE v.document_id = %s AND v.version = %s AND d.document_id = v.document_id "
                "AND d.head_version = v.version AND NOT d.deleted RETURNING v.version",
                (document_id, version),
            ).fetchone()
        )
        return row is not None
