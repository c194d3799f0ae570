"""``python -m jobs.watch``: ingest new document versions as soon as uploads complete them.

Listens for the "new version" event (:mod:`core.events`, PostgreSQL ``NOTIFY``) and runs
``pipelines.ingest.run_ingest`` for the tenants that had new versions, a short quiet period after the last event so
that a folder of files is ingested in one run. It first ingests whatever is pending (events sent while it was not
listening are not lost: the versions are ``pending`` in the catalog). Run it beside the cluster::

    ray job submit --working-dir . -- python -m jobs.watch

Each ingest run prints its JSON summary on a line of standard output. Stops after ``--max-seconds`` (0: never).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable

import psycopg

from core.errors import ServiceUnavailableError
from core.events import EventListener
from core.settings import Settings

logger = logging.getLogger("jobs.watch")


def watch(
    settings: Settings, *, ingest: Callable[..., object] | None = None, quiet_s: float = 2.0, max_seconds: float = 0.0,
    catch_up: bool = True,
) -> int:
    """Ingest on events until ``max_seconds`` passed (0: forever); returns how many ingest runs were made.

    Args:
        settings: the configuration. ingest: ``run_ingest`` (a seam for tests).
        quiet_s: seconds without events before ingesting what arrived. catch_up: first ingest every pending version.
    """
    if ingest is None:
        from pipelines.ingest import run_ingest as ingest

    def run(tenant: str | None) -> None:
        summary = ingest(settings, tenant=tenant)
        print(json.dumps({"tenant": tenant, **(dataclasses.asdict(summary) if dataclasses.is_dataclass(summary) else {})}),
              flush=True)

    runs = 0
    deadline = time.monotonic() + max_seconds if max_seconds else float("inf")
    with EventListener(settings) as listener:  # listen before catching up: nothing falls in between
        if catch_up:
            run(None)
            runs += 1
        while time.monotonic() < deadline:
            tenants: set[str] = set()
            for event in listener.events(timeout_s=min(60.0, max(0.1, deadline - time.monotonic())), max_events=1):
                tenants.add(event.tenant)
            if not tenants:
                continue
            quiet_until = time.monotonic() + quiet_s
            while time.monotonic() < quiet_until:  # gather the rest of a burst (a folder upload)
                got = [e.tenant for e in listener.events(timeout_s=max(0.05, quiet_until - time.monotonic()), max_events=1)]
                tenants.update(got)
                if got:
                    quiet_until = time.monotonic() + quiet_s
            for tenant in sorted(tenants):
                logger.info("new versions for tenant %s: ingesting", tenant)
                run(tenant)
                runs += 1
    return runs


def main(argv: list[str] | None = None) -> int:
    """Run the watcher; exit status 0, or 2 when a service could not be reached."""
    parser = argparse.ArgumentParser(prog="python -m jobs.watch", description=__doc__.splitlines()[0])
    parser.add_argument("--quiet-s", type=float, default=2.0, help="seconds of quiet before ingesting a burst")
    parser.add_argument("--max-seconds", type=float, default=0.0, help="stop after this many seconds (0: never)")
    parser.add_argument("--no-catch-up", action="store_true", help="do not ingest pending versions first")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        watch(Settings(), quiet_s=args.quiet_s, max_seconds=args.max_seconds, catch_up=not args.no_catch_up)
    except ServiceUnavailableError as exc:
        print(f"watch failed: {exc.service} is unreachable: {exc.detail}", file=sys.stderr)
        return 2
    except psycopg.OperationalError as exc:
        print(f"watch failed: postgres: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
