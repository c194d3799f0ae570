"""The source of the ingest pipeline: what to index, as document rows.

* :func:`scan_objects` registers objects put into the bucket directly (``--scan``): objects under
  ``<tenant>/<prefix>`` whose ETag and size differ from the latest version's are hashed (SHA-256 of the bytes) and
  registered; identical bytes make no new version.
* :func:`claim_rows` claims the pending versions in the catalog and turns them into rows with
  ``pipelines.columns.VERSION_COLUMNS``.
"""

from __future__ import annotations

import dataclasses
import logging
import mimetypes
from concurrent.futures import ThreadPoolExecutor

from core.catalog import Catalog
from core.errors import InvalidPathError
from core.ids import normalise_path
from core.objects import ObjectInfo, ObjectStore
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
        SHA-256 equals the latest version's. rejected: keys that are not valid document paths (logged).
    """

    objects_seen: int = 0
    registered: int = 0
    unchanged: int = 0
    rejected: int = 0


def _split_key(key: str) -> tuple[str, str]:
    tenant, _, path = key.partition("/")
    if not tenant or not path:
        raise InvalidPathError(key, "an object key must be <tenant>/<path>")
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
    known: dict[tuple[str, str], Version] = {}
    for t in sorted({k.key.partition("/")[0] for k in listed}):
        path_prefix = prefix if tenant else ""
        known.update({(t, p): v for p, v in catalog.latest_versions(t, path_prefix).items()})

    todo: list[tuple[str, str, ObjectInfo]] = []
    for info in listed:
        try:
            t, path = _split_key(info.key)
        except InvalidPathError as exc:
            logger.warning("skipping object %r: %s", info.key, exc.reason)
            report.rejected += 1
            continue
        latest = known.get((t, path))
        if latest is not None and latest.etag == info.etag and latest.size == info.size and latest.object_key == info.key:
            report.unchanged += 1
            continue
        todo.append((t, path, info))

    def register(item: tuple[str, str, ObjectInfo]) -> bool:
        t, path, info = item
        sha, size = objects.sha256(info.key)
        content_type = mimetypes.guess_type(path)[0] or ""
        result = catalog.register_version(
            t, path, object_key=info.key, sha256=sha, size=size, content_type=content_type, etag=info.etag
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
    }
