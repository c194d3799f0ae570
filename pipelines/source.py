"""The source of the ingest pipeline: what to index, as document rows.

* :func:`scan_objects` registers objects put into the bucket directly (``--scan``): objects under
  ``<tenant>/<prefix>`` whose ETag and size differ from the head version's are hashed (SHA-256 of the bytes) and
  registered; identical bytes make no new version, nor do the bytes of a version a restore rolled back. An object's
  S3 user metadata (``x-amz-meta-*``) becomes the new version's metadata (``core.metadata.from_s3_user_metadata``;
  without any, the previous version's stays). It also reports the live documents in scope whose object is gone
  (the caller deletes them).
* :func:`claim_rows` claims the pending versions in the catalog and turns them into rows with
  ``pipelines.columns.VERSION_COLUMNS``.
* :func:`read_version` reads a version row's bytes from S3, checked against its registered size and SHA-256: the
  prepare stage reads every document with it, and the audio stage reads a recording again with it (so a
  recording's samples never travel through Ray's object store).
"""

from __future__ import annotations

import dataclasses
import logging
import mimetypes
from datetime import datetime, timezone
from concurrent.futures import ThreadPoolExecutor

from core.catalog import Catalog
from core.access import InvalidTenant, canonical_tenant
from core.errors import IngestError, InvalidPathError
from core.ids import normalise_path
from core.metadata import encode, from_s3_user_metadata
from core.objects import ObjectChangedError, ObjectInfo, ObjectStore
from core.settings import Settings
from core.types import Version
from pipelines import columns as C

logger = logging.getLogger(__name__)

#: Objects hashed at once during a scan (S3 GETs are I/O bound).
SCAN_THREADS = 8


@dataclasses.dataclass
class ScanReport:
    """What a scan did.

    Attributes:
        objects_seen: objects listed. registered: new versions recorded. unchanged: objects whose ETag, size or
        SHA-256 equals the head version's. rejected: keys that are not valid document paths (logged).
        missing: ids of live documents in scope whose object is no longer in the bucket.
    """

    objects_seen: int = 0
    registered: int = 0
    unchanged: int = 0
    rejected: int = 0
    missing: list[str] = dataclasses.field(default_factory=list)


def _split_key(key: str) -> tuple[str, str]:
    tenant, _, path = key.partition("/")
    if not tenant or not path:
        raise InvalidPathError(key, "an object key must be <tenant>/<path>")
    try:
        canonical_tenant(tenant)  # an object under "Acme/" or "admin/" is no tenant's document
    except InvalidTenant as exc:
        raise InvalidPathError(key, str(exc)) from None
    return tenant, normalise_path(path)


def scan_objects(objects: ObjectStore, catalog: Catalog, *, tenant: str | None, prefix: str = "") -> ScanReport:
    """Register the objects under ``<tenant>/<prefix>`` (every tenant when ``tenant`` is ``None``) that the catalog lacks.

    Raises:
        ServiceUnavailableError: S3 or PostgreSQL cannot be reached.
    """
    report = ScanReport()
    key_prefix = f"{tenant}/{prefix}" if tenant else prefix
    listed = list(objects.list_objects(key_prefix))
    report.objects_seen = len(listed)
    path_prefix = prefix if tenant else ""
    tenants = {tenant} if tenant else {k.key.partition("/")[0] for k in listed}
    if not tenant:  # documents of every tenant whose object key falls under the key prefix
        tenants |= {d.tenant for d in catalog.documents(None, include_deleted=False)
                    if f"{d.tenant}/{d.path}".startswith(key_prefix)}
    known: dict[tuple[str, str], Version] = {}
    retired: dict[tuple[str, str], list] = {}
    for t in sorted(tenants):
        known.update({(t, p): v for p, v in catalog.latest_versions(t, path_prefix).items()})
        retired.update({(t, p): r for p, r in catalog.rolled_back(t, path_prefix).items()})

    present: set[tuple[str, str]] = set()
    todo: list[tuple[str, str, ObjectInfo]] = []
    for info in listed:
        try:
            t, path = _split_key(info.key)
        except InvalidPathError as exc:
            logger.warning("skipping object %r: %s", info.key, exc.reason)
            report.rejected += 1
            continue
        present.add((t, path))
        latest = known.get((t, path))
        if latest is not None and latest.etag == info.etag and latest.size == info.size and latest.object_key == info.key:
            report.unchanged += 1
            continue
        if any(etag == info.etag and size == info.size
               and (not_after is None or info.last_modified is None or info.last_modified <= not_after)
               for etag, size, not_after in retired.get((t, path), ())):
            report.unchanged += 1  # bytes a restore rolled back, or of a deleted document, untouched since
            continue
        todo.append((t, path, info))

    gone = [v for (t, p), v in known.items() if (t, p) not in present and v.object_key.startswith(key_prefix)]
    if gone and not listed:
        # An empty listing (a wrong bucket or prefix?) never deletes a whole corpus: delete through the API instead.
        logger.warning("scan of %r listed no object; not deleting the %d documents the catalog has there", key_prefix, len(gone))
    elif gone:
        report.missing = sorted(v.document_id for v in gone)

    def register(item: tuple[str, str, ObjectInfo]) -> bool:
        t, path, info = item
        sha, size, headers = objects.sha256_and_metadata(info.key)  # one GET: the bytes and the user metadata
        content_type = mimetypes.guess_type(path)[0] or ""
        metadata, refused = from_s3_user_metadata(headers)
        for reason in refused:
            logger.warning("object %r: S3 user metadata left out: %s", info.key, reason)
        result = catalog.register_version(
            t, path, object_key=info.key, sha256=sha, size=size, content_type=content_type, etag=info.etag,
            metadata=metadata or None, metadata_source="scan",  # no user metadata: the previous version's stays
        )
        return result.created

    with ThreadPoolExecutor(max_workers=SCAN_THREADS) as pool:
        for created in pool.map(register, todo):
            if created:
                report.registered += 1
            else:
                report.unchanged += 1
    logger.info("scan of %r: %s", key_prefix, report)
    return report


def version_row(version: Version) -> dict:
    """The document row of a version (``pipelines.columns.VERSION_COLUMNS``)."""
    return {
        C.DOCUMENT_ID: version.document_id,
        C.VERSION: version.version,
        C.TENANT: version.tenant,
        C.PATH: version.path,
        C.OBJECT_KEY: version.object_key,
        C.CONTENT_TYPE: version.content_type,
        C.SHA256: version.sha256,
        C.SIZE: version.size,
        C.CREATED_AT: _rfc3339(version.created_at),
        C.METADATA: encode(version.metadata),
        C.PROPERTIES: "{}",
    }


def _rfc3339(moment: datetime | None) -> str:
    """``moment`` as RFC 3339 in UTC (``2026-11-29T23:50:00.123456+00:00``), ``""`` for ``None`` (a naive time is UTC)."""
    if moment is None:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat()


def read_version(objects: ObjectStore, settings: Settings, row: dict) -> bytes:
    """A version row's bytes, checked against its recorded size and SHA-256 as they stream in.

    Raises:
        IngestError: ``too_large`` (over ``settings.max_file_bytes``), ``object_missing``, or ``object_changed`` when
            the object no longer holds the registered bytes (a later ``--scan`` registers the new content).
    """
    if row[C.SIZE] > settings.max_file_bytes:
        raise IngestError("too_large", f"{row[C.SIZE]} bytes, more than SLUICE_MAX_FILE_BYTES={settings.max_file_bytes}")
    try:
        return objects.get_verified(row[C.OBJECT_KEY], int(row[C.SIZE]), str(row[C.SHA256]))
    except KeyError as exc:
        raise IngestError("object_missing", f"s3://{objects.bucket}/{row[C.OBJECT_KEY]} is gone") from exc
    except ObjectChangedError as exc:
        raise IngestError("object_changed", f"the object's bytes differ from the registered version's: {exc.detail}") from exc
