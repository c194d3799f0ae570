"""``python -m jobs.reindex --collection NEW [--tenant T] [--prefix P]``: build a collection for another text model.

A collection's ``text`` vectors come from one model (recorded in the catalog's ``index_models``); ingest refuses a
different ``SLUICE_TEXT_MODEL``, even of the same dimension, because vectors of two models must never mix. To change
models: run this with the new ``SLUICE_TEXT_MODEL`` and a new collection name. It creates ``NEW`` (dimension and
model recorded) and embeds the head version of every live document in scope into it, through the ingest pipeline
with ``force``. The old collection keeps answering until ``SLUICE_QDRANT_COLLECTION=NEW`` is deployed (search and
ingest). Older retained versions are not copied: in ``NEW``, only the current versions can be searched and restored.

The last line of standard output is the ingest JSON summary plus ``collection`` and ``model``; exit status as
``jobs.ingest`` (2 when a service is unreachable or the configuration is wrong).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from core.errors import ConfigurationError, InvalidPathError
from core.settings import Settings
from jobs.cli import EXIT_INFRASTRUCTURE, configure_logging, run_job


def main(argv: list[str] | None = None) -> int:
    """Run the re-index; print the JSON summary as the last line; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m jobs.reindex", description=__doc__.splitlines()[0])
    parser.add_argument("--collection", required=True, help="the new collection (must differ from the current one)")
    parser.add_argument("--tenant", help="only this tenant's documents (default: every tenant)")
    parser.add_argument("--prefix", default="", help="only paths starting with this prefix")
    args = parser.parse_args(argv)
    configure_logging()
    base = Settings()
    settings = base.model_copy(update={"qdrant_collection": args.collection})

    def job():
        if args.collection == base.qdrant_collection:
            raise ConfigurationError(f"--collection {args.collection!r} is the current collection: name a new one")
        from pipelines.ingest import run_ingest

        return run_ingest(settings, tenant=args.tenant, prefix=args.prefix, force=True)

    summary = run_job("reindex", job, configuration_errors=(ConfigurationError, InvalidPathError))
    if summary is None:
        return EXIT_INFRASTRUCTURE
    print(json.dumps({**dataclasses.asdict(summary), "collection": args.collection, "model": settings.text_model}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
