"""``python -m jobs.migrate_store [--path DIR]``: copy a local-mode embedded store into Qdrant Edge, no re-embedding.

The first embedded store was qdrant-client's local mode (``meta.json`` and ``collection/<name>/`` in
``SLUICE_QDRANT_PATH``); today's is Qdrant Edge (``edge/<name>/`` in the same folder, owned by the store's actor).
Every command refuses to start on a folder in the old layout and names this job. It copies every collection, every
point with its vectors and payload, page by page; point ids are kept, so a run that is stopped and started again
only rewrites the same points (idempotent). When a collection's point counts match, the old files move to
``local-mode.migrated/`` in the same folder (delete it once satisfied); a second run then finds nothing to copy.

The last line of standard output is one JSON object: ``{"path", "collections": {name: points}, "moved_to"}``.
Exit status 0, or 2 when the store could not be reached or the counts do not match.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from core.errors import ConfigurationError
from core.settings import Settings
from core.vectorstore.legacy import MIGRATED, legacy_collections
from core.vectorstore.schema import CollectionSpec
from jobs.cli import configure_logging, finish, run_job

logger = logging.getLogger("jobs.migrate_store")
PAGE = 512


def migrate(path: Path, target, *, page: int = PAGE) -> dict[str, int]:
    """Copy every local-mode collection in ``path`` into ``target`` (a backend); return the points per collection.

    Raises:
        ConfigurationError: a collection's count differs after the copy (the old files then stay where they are).
    """
    from qdrant_client import QdrantClient

    from core.vectorstore.owner import pack

    names = legacy_collections(path)
    copied: dict[str, int] = {}
    if not names:
        return copied
    source = QdrantClient(path=str(path))
    try:
        for name in names:
            params = source.get_collection(name).config.params
            dense = {k: int(v.size) for k, v in params.vectors.items()} if isinstance(params.vectors, dict) else {}
            target.create(name, CollectionSpec(dense=dense, sparse=tuple(sorted((params.sparse_vectors or {}).keys()))))
            offset, total = None, 0
            while True:
                records, offset = source.scroll(name, limit=page, offset=offset, with_payload=True, with_vectors=True)
                target.upsert(name, [pack(_as_point(r)) for r in records])
                total += len(records)
                if offset is None:
                    break
            have = target.count(name, None)
            if have < total:
                raise ConfigurationError(f"collection {name!r}: {total} points read but {have} in the new store; "
                                         "the old files are left in place, run the migration again")
            target.flush(name)
            target.optimize(name, wait=False)
            copied[name] = total
            logger.info("copied %d points of %s", total, name)
    finally:
        source.close()
    return copied


def _as_point(record):
    from qdrant_client import models

    return models.PointStruct.model_construct(id=record.id, vector=record.vector or {}, payload=record.payload or {})


def move_aside(path: Path) -> Path:
    """Move the local-mode files into ``local-mode.migrated/`` (so the folder is no longer in the old layout)."""
    dest = path / MIGRATED
    dest.mkdir(exist_ok=True)
    for name in ("meta.json", "collection", ".lock"):
        if (path / name).exists():
            shutil.move(str(path / name), str(dest / name))
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.migrate_store", description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, help="the store folder (default: SLUICE_QDRANT_PATH)")
    args = parser.parse_args(argv)
    configure_logging()
    settings = Settings()
    path = (args.path or settings.qdrant_path).resolve()

    def job():
        if settings.qdrant_url:
            raise ConfigurationError("SLUICE_QDRANT_URL is set: the migration fills the embedded store; unset it")
        from core.vectorstore.owner import EmbeddedBackend

        if not legacy_collections(path):
            return {"path": str(path), "collections": {}, "moved_to": None}
        target = EmbeddedBackend(path, namespace=settings.ray_namespace, timeout_s=settings.remote_call_timeout_s,
                                 ray_address=settings.ray_address)
        copied = migrate(path, target)
        return {"path": str(path), "collections": copied, "moved_to": str(move_aside(path))}

    return finish(run_job("migrate_store", job))


if __name__ == "__main__":
    sys.exit(main())
