"""Document life cycle across the catalog, the vector store, the cache and S3: commit, restore, delete.

Each operation is ordered so that a crash at any point leaves a state the next ingest run (or ``jobs.reconcile``)
repairs, and so that search never shows two versions of a document, nor none while one is committed:

* **commit** (after a version's points are all written, with ``is_latest`` false so no search sees them):
  stale chunks of that version are deleted; the catalog records the version as written; the flags switch
  (:meth:`VectorStore.set_latest`: new up, then old down; the search fence keeps one version per answer); the
  catalog commits (``latest_version``); versions beyond ``version_retention`` lose their points; the index
  generation advances. A crash before the catalog commit leaves the version ``indexing`` with ``written_count``:
  the next run re-asserts the catalog's flags and finishes it without embedding again.
* **restore**: the catalog first checks that the version's points are retained, the flags switch, the catalog
  records it, the generation advances.
* **metadata** (:func:`replace_metadata`): the catalog records it for the shown and head versions, their points'
  payload follows, the generation advances.
* **delete**: the catalog marks the document deleted first (so no run indexes it again, and search, which checks
  every answer against the catalog's deletes, ``core.tombstones``, shows it no more from that commit on), a Redis
  tombstone backs that up for searches made while PostgreSQL is unreachable, then its points leave the index (one
  filter: every version, every named vector; retried), the generation advances, and with
  ``settings.delete_objects`` its objects leave S3. A vector store that still fails after the retries does not
  fail the delete: the document is deleted (search never shows it), and ``jobs.reconcile`` removes its points,
  as orphans of a deleted document; repeating the delete removes them too.

Advancing the generation must not be skipped: a cached answer from before a delete would otherwise stay
reachable. :func:`bump_generation` retries Redis and then raises ``ServiceUnavailableError("redis", ...)``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from core.cache import Cache
from core.catalog import Catalog
from core.errors import ServiceUnavailableError
from core.objects import ObjectStore
from core.retry import call_with_retry
from core.settings import Settings
from core.tombstones import Tombstones
from core.types import Document
from core.vectorstore import VectorStore

logger = logging.getLogger(__name__)

#: Attempts to remove a deleted document's points, and the longest pause between two (seconds).
DELETE_POINTS_ATTEMPTS = 4
DELETE_POINTS_MAX_WAIT_S = 2.0
#: Attempts to advance the index generation before giving up, and the pause between them (seconds, doubling).
GENERATION_ATTEMPTS = 4
GENERATION_BACKOFF_S = 0.25


def bump_generation(cache: Cache, tenants: Iterable[str] | None = None, *, attempts: int = GENERATION_ATTEMPTS,
                    backoff_s: float = GENERATION_BACKOFF_S) -> int:
    """Advance the index generation of ``tenants`` (``None``: the collection's, every tenant's), retrying a Redis
    that is briefly gone.

    Returns:
        The new generation (of the last tenant advanced).

    Raises:
        ServiceUnavailableError: ``redis`` still unreachable after ``attempts`` tries (cached answers may then be
            stale until ``search_cache_ttl_s`` passes; repeat the operation once Redis is back).
    """
    generation = 0
    for tenant in [None] if tenants is None else sorted(set(tenants)):
        for attempt in range(max(1, attempts)):
            bumped = cache.bump_generation(tenant)
            if bumped is not None:
                generation = bumped
                break
            if attempt + 1 < attempts:
                time.sleep(backoff_s * 2**attempt)
        else:
            raise ServiceUnavailableError("redis", "the index generation could not be advanced; cached answers may "
                                          "be stale")
    return generation


def commit_versions(
    settings: Settings,
    catalog: Catalog,
    store: VectorStore,
    outcomes: Iterable[tuple[str, int, int]],
    *,
    fresh: set[tuple[str, int]] = frozenset(),
    run_id: str | None = None,
) -> list[tuple[str, int, int]]:
    """Make fully written versions the searchable ones (see the module docstring for the order).

    Args:
        outcomes: ``(document_id, version, chunk_count)`` of versions whose ``chunk_count`` points are written with
            ``is_latest`` false (or true, for a re-index of the version already shown).
        fresh: the ``(document_id, version)`` written for the first time (claimed from ``pending``): no chunk of
            theirs past ``chunk_count`` can exist, so the stale-chunk delete is skipped for them.
        run_id: the ingest run committing; a version whose claim another run holds now is left untouched (its
            points are that run's too: point ids are deterministic).

    Returns:
        The outcomes committed. The others lost a race with a delete or a newer version: their points are removed.
        The caller advances the generation once for all of them (:func:`bump_generation`).
    """
    outcomes = list(outcomes)
    if run_id is not None and outcomes:
        owners = catalog.claimed_by([(d, v) for d, v, _ in outcomes])
        taken = [(d, v) for d, v, _ in outcomes if owners.get((d, v)) != run_id]
        for doc, version in taken:
            logger.warning("version %s/%d is held by run %s now; left to it", doc, version, owners.get((doc, version)))
        outcomes = [o for o in outcomes if owners.get((o[0], o[1])) == run_id]
    if not outcomes:
        return []
    shown = catalog.shown_versions(sorted({d for d, _, _ in outcomes}))
    for doc, version, count in outcomes:
        if (doc, version) not in fresh:
            store.delete_chunks_from(doc, version, count)
    catalog.mark_written(outcomes)
    resumed = [(d, v) for d, v, _ in outcomes if (d, v) not in fresh]
    for doc, version in resumed:  # a run died here before: the flags may be anywhere, set them all
        store.set_latest(doc, version)
    store.switch_latest([(d, v, shown.get(d, 0)) for d, v, _ in outcomes if (d, v) in fresh and shown.get(d, 0) != v])
    committed = catalog.commit_versions(outcomes, run_id)
    lost = {(d, v) for d, v, _ in outcomes} - {(d, v) for d, v, _ in committed}
    if lost and run_id is not None:  # taken over between the check above and the commit: that run's now
        owners = catalog.claimed_by(sorted(lost))
        lost = {key for key in lost if owners.get(key) == run_id}
    if lost:
        now_shown = catalog.shown_versions(sorted({d for d, _ in lost}))
        for doc, version in sorted(lost):
            # Put back the flags of what the catalog shows (nothing, if the document was deleted meanwhile).
            if now_shown.get(doc):
                store.set_latest(doc, now_shown[doc])
            store.delete_versions(doc, [version])
            logger.info("version %s/%d was not committed (deleted or superseded meanwhile); points removed", doc, version)
    for doc, version, _ in committed:
        if version > 1:  # only then can older versions hold points
            apply_retention(settings, catalog, store, doc)
    store.committed()  # durable in the segments; the vector indexes are built off the query path
    return committed


def apply_retention(settings: Settings, catalog: Catalog, store: VectorStore, document_id: str) -> list[int]:
    """Delete the points of a document's versions beyond ``settings.version_retention``; return those kept.

    Versions still being indexed (``pending``/``indexing``) keep their points: a run may be writing them.
    """
    keep = catalog.retained_versions(document_id, settings.version_retention)
    versions = catalog.list_versions(document_id)
    in_flight = [v.version for v in versions if v.status in ("pending", "indexing")]
    dropped = [v.version for v in versions if v.chunk_count is not None and v.version not in keep and v.status == "superseded"]
    store.delete_versions_except(document_id, keep + in_flight)
    catalog.forget_points(document_id, dropped)
    return keep


def sync_flags(catalog: Catalog, store: VectorStore, document_id: str) -> int:
    """Set the points' ``is_latest`` flags of one document to what the catalog shows; return the shown version.

    A deleted document's points are deleted. Idempotent; the repair of a switch interrupted by a crash.
    """
    doc = catalog.get_document(document_id)
    if doc is None or doc.deleted:
        store.delete_document(document_id)
        return 0
    if doc.latest_version:
        store.set_latest(document_id, doc.latest_version)
    else:  # nothing committed yet: nothing may be searchable
        store.set_latest(document_id, 0)
    return doc.latest_version


def restore_version(settings: Settings, document_id: str, version: int, *, catalog: Catalog | None = None,
                    store: VectorStore | None = None, cache: Cache | None = None) -> Document:
    """Make a retained older version searchable again, without embedding anything.

    Raises:
        CatalogConflict: ``not_found``, ``deleted`` or ``not_restorable`` (its points are not retained).
        ServiceUnavailableError: PostgreSQL, Qdrant or Redis unreachable (repeat the call: it is idempotent).
    """
    catalog = catalog or Catalog(settings)
    store = store or VectorStore(settings)
    versions = {v.version: v for v in catalog.list_versions(document_id)}
    target = versions.get(version)
    if target is not None and target.chunk_count is not None:
        have = store.count(_version_filter(document_id, version))
        if have != target.chunk_count:
            from core.catalog import CatalogConflict

            raise CatalogConflict(
                "not_restorable", f"version {version} has {have} of its {target.chunk_count} points in the index"
            )
    doc = catalog.restore_version(document_id, version)  # raises CatalogConflict for the other cases
    store.set_latest(document_id, version)
    bump_generation(cache or Cache(settings), [doc.tenant])
    logger.info("restored %s to version %d", document_id, version)
    return doc


def delete_document(settings: Settings, document_id: str, *, catalog: Catalog | None = None, store: VectorStore | None = None,
                    cache: Cache | None = None, objects: ObjectStore | None = None, bump: bool = True) -> Document | None:
    """Delete a document everywhere: catalog (rows kept, marked deleted), index, cache, and S3 when configured.

    Search never shows the document again once the catalog has it deleted (the engine checks every answer against
    it), so the point removal may fail without the delete failing: it is retried (exponential backoff with jitter,
    ``DELETE_POINTS_ATTEMPTS``), and points a vector store still refuses are left to ``jobs.reconcile``, logged.

    Args:
        bump: advance the index generation now (``False``: the caller does it once for many deletes).

    Returns:
        The document as it was before, or ``None`` when there is none (nothing is done then).

    Raises:
        ServiceUnavailableError: PostgreSQL, Redis (the generation) or S3 unreachable (repeat the call: it finishes
            an interrupted delete). Not for the vector store (above).
    """
    catalog = catalog or Catalog(settings)
    store = store or VectorStore(settings)
    cache = cache or Cache(settings)
    before = catalog.mark_deleted(document_id)
    if before is None:
        return None
    Tombstones(settings, catalog=catalog, cache=cache).record(before.tenant, document_id, before.head_version)
    try:
        call_with_retry("qdrant", store.delete_document, document_id, transient=(ServiceUnavailableError,),
                        attempts=DELETE_POINTS_ATTEMPTS, max_wait_s=DELETE_POINTS_MAX_WAIT_S)
    except ServiceUnavailableError as exc:
        logger.warning("document %s is deleted but its points could not be removed (search hides them; "
                       "python -m jobs.reconcile removes them): %s", document_id, exc)
    if bump:
        bump_generation(cache, [before.tenant])
    if settings.delete_objects:
        objects = objects or ObjectStore(settings)
        for key in sorted({v.object_key for v in catalog.list_versions(document_id)}):
            objects.remove(key)
    logger.info("deleted document %s (%s/%s)", document_id, before.tenant, before.path)
    return before


def replace_metadata(settings: Settings, document_id: str, metadata: dict, *, catalog: Catalog | None = None,
                     store: VectorStore | None = None, cache: Cache | None = None) -> list[int]:
    """Replace a document's user metadata without re-embedding: catalog, then the points, then the cache.

    The shown and the head version get ``metadata`` (checked by the caller, ``core.metadata.validate_metadata``);
    a run indexing the head version meanwhile catches up when it commits (``pipelines.ingest``).

    Returns:
        The versions changed.

    Raises:
        CatalogConflict: ``not_found`` or ``deleted``.
        ServiceUnavailableError: a service is unreachable (repeat the call: it is idempotent).
    """
    catalog = catalog or Catalog(settings)
    store = store or VectorStore(settings)
    doc = catalog.get_document(document_id)
    versions = catalog.set_metadata(document_id, metadata)  # raises CatalogConflict("not_found") when doc is None
    store.set_metadata(document_id, versions, metadata)
    bump_generation(cache or Cache(settings), [doc.tenant] if doc is not None else None)
    logger.info("replaced the metadata of %s versions %s", document_id, versions)
    return versions


def _version_filter(document_id: str, version: int):
    from core.vectorstore import version_filter

    return version_filter(document_id, version)
