"""``python -m jobs.reconcile [--tenant T] [--prefix P] [--check]``: make the index equal to the catalog.

For every version in scope it compares what the catalog says with the points in the vector store (counted by
``document_id`` and ``version``):

* a version whose points are kept (the shown one and the retained older ones) must have exactly ``chunk_count``
  points, chunk indexes ``0 .. chunk_count - 1``, with ``is_latest`` true exactly for the shown version;
* every other point is an orphan: of an unknown document or version, of a deleted document, of a failed version,
  or of a version beyond ``version_retention``. Versions being indexed (``pending``/``indexing``) may have points
  (a run may be writing them); they are reported as ``in_flight``, not as differences.

Repairs (without ``--check``): orphans are deleted; wrong flags are set from the catalog; a shown version with
missing or extra points is set back to ``pending`` and re-indexed by one ingest run; a retained older version with
missing points loses its points (it can no longer be restored). Then the comparison runs again.

The last line of standard output is one JSON report (``clean``, ``differences`` by kind, the first
``MAX_LISTED`` of them, and ``repaired``). Exit status: 0 when clean (after repairs), 1 when ``--check`` found a
difference or a repair did not make it clean, 2 when a service could not be reached.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections import Counter
from typing import Any

from core import lifecycle
from core.cache import Cache
from core.catalog import Catalog
from core.settings import Settings
from core.vectorstore import VectorStore, tenant_only
from jobs.cli import EXIT_INFRASTRUCTURE, configure_logging, run_job

logger = logging.getLogger("jobs.reconcile")

EXIT_DIFFERENT = 1
#: Differences listed one by one in the report (all are counted).
MAX_LISTED = 100


@dataclasses.dataclass(frozen=True)
class Difference:
    """One way the index differs from the catalog.

    Attributes:
        kind: ``missing_points`` (fewer than ``chunk_count``, or chunk indexes past it), ``extra_points``,
            ``wrong_flags`` (``is_latest`` not as the catalog shows), ``orphan_points`` (points no kept version owns).
        document_id, version: where. expected, found: point counts (for ``wrong_flags``: points ``is_latest``).
        shown: whether this is the version the catalog shows.
    """

    kind: str
    document_id: str
    version: int
    expected: int
    found: int
    shown: bool = False


def compare(settings: Settings, catalog: Catalog, store: VectorStore, *, tenant: str | None = None, prefix: str = "") -> tuple[list[Difference], dict[str, int]]:
    """The differences between the catalog and the index in scope, and counts of what was checked."""
    docs = {d.document_id: d for d in catalog.documents(tenant, prefix)}
    versions = catalog.all_versions(tenant, prefix)
    census = store.version_census(tenant_only(tenant) if tenant else None)  # no collection yet: empty
    if prefix:
        census = {k: c for k, c in census.items() if k[0] in docs}
    keep: dict[str, set[int]] = {}
    for doc_id, doc in docs.items():
        if not doc.deleted:
            keep[doc_id] = set(catalog.retained_versions(doc_id, settings.version_retention))
    by_key = {(v.document_id, v.version): v for v in versions}
    differences: list[Difference] = []
    in_flight = 0
    for key in sorted(set(census) | {(d, v) for d, vs in keep.items() for v in vs}):
        doc_id, number = key
        doc, version, found = docs.get(doc_id), by_key.get(key), census.get(key, {"points": 0, "latest": 0, "max_chunk": -1})
        if doc is not None and not doc.deleted and version is not None and version.status in ("pending", "indexing") \
                and number != doc.latest_version:
            in_flight += 1
            if found["latest"]:
                differences.append(Difference("wrong_flags", doc_id, number, 0, found["latest"]))
            continue
        if doc is None or doc.deleted or number not in keep.get(doc_id, set()) or version is None or version.chunk_count is None:
            if found["points"]:
                differences.append(Difference("orphan_points", doc_id, number, 0, found["points"]))
            continue
        shown = number == doc.latest_version
        expected = int(version.chunk_count)
        if found["points"] < expected or (found["points"] == expected and found["max_chunk"] != expected - 1):
            differences.append(Difference("missing_points", doc_id, number, expected, found["points"], shown))
        elif found["points"] > expected:
            differences.append(Difference("extra_points", doc_id, number, expected, found["points"], shown))
        want_latest = found["points"] if shown else 0
        if found["latest"] != want_latest:
            differences.append(Difference("wrong_flags", doc_id, number, want_latest, found["latest"], shown))
    counts = {
        "documents_checked": len(docs),
        "versions_checked": len(versions),
        "points_checked": sum(c["points"] for c in census.values()),
        "versions_in_flight": in_flight,
    }
    return differences, counts


def repair(settings: Settings, catalog: Catalog, store: VectorStore, differences: list[Difference], *,
           tenant: str | None, prefix: str) -> dict[str, int]:
    """Repair the differences (see the module docstring); returns what was done, by kind."""
    done: Counter[str] = Counter()
    reindex: set[tuple[str, int]] = set()
    for diff in differences:
        if diff.kind == "orphan_points":
            store.delete_versions(diff.document_id, [diff.version])
            done["orphans_deleted"] += diff.found
        elif diff.kind in ("missing_points", "extra_points") and diff.shown:
            reindex.add((diff.document_id, diff.version))
        elif diff.kind == "missing_points":
            store.delete_versions(diff.document_id, [diff.version])
            catalog.forget_points(diff.document_id, [diff.version])
            done["retained_versions_dropped"] += 1
        elif diff.kind == "extra_points":
            store.delete_chunks_from(diff.document_id, diff.version, diff.expected)
            done["extra_points_deleted"] += diff.found - diff.expected
    for doc_id in sorted({d.document_id for d in differences if d.kind == "wrong_flags"}):
        lifecycle.sync_flags(catalog, store, doc_id)
        done["flags_set"] += 1
    for doc_id, version in sorted(reindex):
        if catalog.reset_to_pending(doc_id, version):
            done["versions_reindexed"] += 1
        else:  # the shown version is not the head (newer content is pending or failed): drop it to the head's run
            logger.warning("version %s/%d is shown but not the head; it is re-indexed by the head's next run", doc_id, version)
    if reindex:
        from pipelines.ingest import run_ingest

        run_ingest(settings, tenant=tenant, prefix=prefix)
    if done:
        store.committed()
        lifecycle.bump_generation(Cache(settings))
    return dict(done)


def reconcile(settings: Settings, *, tenant: str | None = None, prefix: str = "", check: bool = False) -> dict[str, Any]:
    """Compare (and unless ``check``, repair) the index against the catalog; return the report.

    Raises:
        ServiceUnavailableError: PostgreSQL or Qdrant (or, when repairing, S3, Redis, Ray) cannot be reached.
    """
    catalog, store = Catalog(settings), VectorStore(settings)
    try:
        differences, counts = compare(settings, catalog, store, tenant=tenant, prefix=prefix)
        report: dict[str, Any] = {**counts, "differences": dict(Counter(d.kind for d in differences)),
                                  "listed": [dataclasses.asdict(d) for d in differences[:MAX_LISTED]]}
        if differences and not check:
            report["repaired"] = repair(settings, catalog, store, differences, tenant=tenant, prefix=prefix)
            after, _ = compare(settings, catalog, store, tenant=tenant, prefix=prefix)
            report["differences_after"] = dict(Counter(d.kind for d in after))
            report["clean"] = not after
        else:
            report["clean"] = not differences
        return report
    finally:
        catalog.close()


def main(argv: list[str] | None = None) -> int:
    """Run the job; print the JSON report as the last line; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m jobs.reconcile", description=__doc__.splitlines()[0])
    parser.add_argument("--tenant", help="only this tenant's documents (default: every tenant)")
    parser.add_argument("--prefix", default="", help="only paths starting with this prefix")
    parser.add_argument("--check", action="store_true", help="only report; exit 1 on any difference")
    args = parser.parse_args(argv)
    configure_logging()
    report = run_job("reconcile", lambda: reconcile(Settings(), tenant=args.tenant, prefix=args.prefix, check=args.check))
    if report is None:
        return EXIT_INFRASTRUCTURE
    print(json.dumps(report, default=str), flush=True)
    return 0 if report["clean"] else EXIT_DIFFERENT


if __name__ == "__main__":
    sys.exit(main())
