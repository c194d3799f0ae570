"""``python -m jobs.janitor``: clean up uploads (the ``janitor`` Ray job; run it on a schedule).

Run it directly, or on a running cluster with::

    ray job submit --working-dir . -- python -m jobs.janitor

One run, in order:

1. **expire**: pending uploads past ``SLUICE_UPLOAD_TTL_S`` are aborted in S3, their part rows deleted, and marked
   ``expired``;
2. **retry**: uploads left ``completing`` by a completion that died are completed again; after
   ``SLUICE_UPLOAD_MAX_ATTEMPTS`` attempts they are cleaned up and marked ``failed`` with the reason;
3. **sweep**: staging multipart uploads and staging objects that no live upload owns are removed (those of no
   upload at all only once older than the TTL: they may belong to an upload being created).

Safe to run concurrently with itself and with the Serve app: expiry takes each upload with
``FOR UPDATE SKIP LOCKED``, a retry holds the upload's completion lock, and the sweep only removes what no live
upload owns. The last line of standard output is one JSON object with the counts and ``seconds``. Exit status 0,
or 2 when S3 or PostgreSQL could not be reached.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import psycopg

from core.settings import Settings
from jobs.cli import configure_logging, finish, run_job

logger = logging.getLogger("jobs.janitor")


def run_janitor(settings: Settings, *, limit: int = 1000) -> dict[str, float]:
    """One janitor pass; returns the counts.

    Args:
        settings: services and the upload TTL and maximum attempts.
        limit: at most this many uploads expired per run.

    Raises:
        ServiceUnavailableError: S3 or PostgreSQL cannot be reached.
    """
    from core.uploads import UploadService

    started = time.perf_counter()
    service = UploadService(settings)
    try:
        summary: dict[str, float] = {}
        summary.update(service.expire_due(limit))
        summary.update(service.retry_stuck())
        summary.update(service.sweep(min_age_s=settings.upload_ttl_s))
    finally:
        service.close()
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


def main(argv: list[str] | None = None) -> int:
    """Run the job; print the JSON summary as the last line; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m jobs.janitor", description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=1000, help="expire at most this many uploads (default %(default)s)")
    args = parser.parse_args(argv)
    configure_logging()
    summary = run_job("janitor", lambda: run_janitor(Settings(), limit=args.limit),
                      unavailable={psycopg.OperationalError: "postgres"})
    return finish(summary)


if __name__ == "__main__":
    sys.exit(main())
