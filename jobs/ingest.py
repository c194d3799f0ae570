"""``python -m jobs.ingest``: ingest pending document versions (the ``ingest`` Ray job).

Run it directly, or on a running cluster with::

    ray job submit --working-dir . -- python -m jobs.ingest --tenant demo --scan

The last line of standard output is one JSON object with ``documents_seen``, ``documents_indexed``,
``documents_unchanged``, ``documents_failed``, ``chunks_indexed`` and ``seconds`` (docs/DESIGN.md, "Interfaces (contract)").
Exit status: 0 when the run finished (even with failed documents: they are in ``dead_letters``), 2 when a service
(S3, PostgreSQL, Qdrant, Redis, Ray) could not be reached or the configuration is wrong; the message names which.
``--retry-failed`` first replays the dead letters (their failed versions become ``pending`` again).
``--progress`` shows the run on standard error (``jobs.progress``): a bar on a terminal, a plain line every few
seconds otherwise; Ray Data's own progress output is turned off, it would bury ours.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from core.errors import ConfigurationError, InvalidPathError
from core.settings import Settings
from jobs.cli import EXIT_INFRASTRUCTURE, configure_logging, run_job
from jobs.progress import ProgressDisplay, add_progress_argument

logger = logging.getLogger("jobs.ingest")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of the contract: ``[--tenant T] [--prefix P] [--scan] [--force]``, and ``--retry-failed``."""
    parser = argparse.ArgumentParser(prog="python -m jobs.ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--tenant", help="only this tenant's documents (default: every tenant)")
    parser.add_argument("--prefix", default="", help="only paths starting with this prefix")
    parser.add_argument("--scan", action="store_true", help="first register objects put into the bucket directly")
    parser.add_argument("--force", action="store_true", help="re-embed documents already indexed")
    parser.add_argument("--retry-failed", action="store_true",
                        help="first replay the dead letters: failed versions are queued again (replayed_at is set)")
    add_progress_argument(parser)
    return parser.parse_args(argv)


def quiet_ray_data() -> None:
    """Turn off Ray Data's progress: a bar per operator on a terminal, a block of log lines every 10 s elsewhere."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    # It says once, as a warning, that its bars are off: that is this job's choice, not news to the user.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Run the job; print the JSON summary as the last line; return the exit status."""
    args = parse_args(argv)
    configure_logging()

    def job():
        if args.tenant is not None:
            from core.ids import object_key

            object_key(args.tenant, "x")  # validates the tenant name
        from pipelines.ingest import run_ingest

        quiet_ray_data()
        return run_ingest(Settings(), tenant=args.tenant, prefix=args.prefix, scan=args.scan, force=args.force,
                          retry_failed=args.retry_failed, on_progress=None if args.progress == "off" else display)

    with ProgressDisplay(args.progress) as display:
        summary = run_job("ingest", job, configuration_errors=(ConfigurationError, InvalidPathError))
    if summary is None:
        return EXIT_INFRASTRUCTURE
    sys.stdout.flush()
    print(json.dumps(dataclasses.asdict(summary)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
