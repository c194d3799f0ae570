"""``python -m jobs.watch``: ingest new document versions as soon as uploads complete them, for as long as it runs.

Listens for the "new version" event (:mod:`core.events`, PostgreSQL ``NOTIFY``) and runs
``pipelines.ingest.run_ingest`` for the tenants that had new versions, a short quiet period after the last event so
that a folder of files is ingested in one run. It first ingests whatever is pending (events sent while it was not
listening are not lost: the versions are ``pending`` in the catalog). Run it beside the cluster, as a long-lived
Ray job::

    ray job submit --working-dir . -- python -m jobs.watch

It is meant to outlive outages of the services it needs. A listening connection that breaks, or an ingest run
that fails because PostgreSQL, S3, Redis, Qdrant or Ray could not be reached (``ServiceUnavailableError``), is an
*outage*: it is logged, and the watcher reconnects with exponential backoff and full jitter (tenacity, as
``core.retry``; capped at ``--backoff-max-s``) for as long as it takes. Once connected again it catches up: one
ingest run over every tenant's pending versions, because ``NOTIFY`` reaches only sessions listening when it is sent,
so the events of the outage are gone, but their versions (and those of an interrupted run) are still ``pending``.
The recovery is logged with how long the outage lasted. Anything else (a configuration error, a bug) ends it.

Each ingest run prints its JSON summary on a line of standard output; outages and recoveries go to standard error.
SIGTERM (what ``ray job stop`` sends) or SIGINT stops it cleanly, exit status 0: an ingest run in progress is
interrupted and releases its claims for the next run. Stops by itself after ``--max-seconds`` (0: never).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable

import psycopg
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_random_exponential

from core.errors import ConfigurationError, ServiceUnavailableError
from core.events import EventListener
from core.settings import Settings

logger = logging.getLogger("jobs.watch")

#: What an outage looks like: the listening connection broke or could not be made, or a run could not reach a
#: service. Everything else propagates.
OUTAGES = (psycopg.OperationalError, ServiceUnavailableError)
#: Seconds the listener waits for an event at a time, so that a stop request is seen within about this long.
POLL_S = 1.0


def _service(exc: BaseException) -> str:
    return exc.service if isinstance(exc, ServiceUnavailableError) else "postgres"


class Watcher:
    """The watch loop, with its stop switch (a seam for tests, and what the signal handlers flip).

    Args:
        settings: the configuration. ingest: ``run_ingest`` (a seam for tests).
        quiet_s: seconds without events before ingesting what arrived.
        backoff_s: the first reconnection waits up to this long (each later one up to twice as long as the one
            before, drawn uniformly: full jitter, so many watchers do not reconnect in step).
        backoff_max_s: the longest wait between two reconnection attempts.
    """

    def __init__(self, settings: Settings, *, ingest: Callable[..., object] | None = None, quiet_s: float = 2.0,
                 backoff_s: float = 0.5, backoff_max_s: float = 30.0) -> None:
        if ingest is None:
            from pipelines.ingest import run_ingest as ingest
        self.settings = settings
        self.ingest = ingest
        self.quiet_s = quiet_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.stopped = threading.Event()
        self.runs = 0
        self.outages = 0
        self.in_run = False
        #: Called after every ingest run (``main`` puts the signal handlers back: ``ray.init`` replaces them).
        self.after_run: Callable[[], None] | None = None
        self._deadline = float("inf")

    # -- stopping ------------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to end: it returns within about :data:`POLL_S` seconds, or at the end of a backoff sleep."""
        self.stopped.set()

    def _stopping(self) -> bool:
        return self.stopped.is_set() or time.monotonic() >= self._deadline

    def _sleep(self, seconds: float) -> None:
        """Backoff sleep that a stop request cuts short."""
        self.stopped.wait(max(0.0, min(seconds, self._deadline - time.monotonic())))

    # -- the loop ------------------------------------------------------------------------------------------------

    def watch(self, *, max_seconds: float = 0.0, catch_up: bool = True) -> int:
        """Ingest on events until stopped or ``max_seconds`` passed (0: forever); returns how many runs were made.

        Args:
            max_seconds: stop after this long. catch_up: first ingest every pending version (after an outage the
                watcher always catches up, whatever this says).

        Raises:
            ConfigurationError: the configuration is wrong (retrying cannot help).
        """
        self._deadline = time.monotonic() + max_seconds if max_seconds else float("inf")
        first = True
        while not self._stopping():
            listener = self._connect(catch_up=catch_up or not first, reconnecting=not first)
            first = False
            if listener is None:  # stopped while reconnecting
                break
            try:
                self._listen(listener)
            except OUTAGES as exc:
                self.outages += 1
                logger.warning("outage: %s is unavailable (%s: %s); reconnecting", _service(exc),
                               type(exc).__name__, str(exc).strip()[:500])
            finally:
                listener.close()
        return self.runs

    def _connect(self, *, catch_up: bool, reconnecting: bool) -> EventListener | None:
        """Listen (and catch up), retrying outages with backoff until it works or the watcher is stopped.

        Listening starts before the catch-up run, so nothing committed in between is missed.

        Args:
            catch_up: ingest every pending version once listening. reconnecting: an outage ended the last
                connection (the recovery is logged).
        """
        started = time.monotonic()

        def attempt() -> EventListener:
            listener = EventListener(self.settings).__enter__()
            try:
                if catch_up:
                    self._run(None)
            except BaseException:
                listener.close()
                raise
            return listener

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            logger.warning("%s still unavailable (attempt %d, %s: %s); next attempt in %.1f s",
                           _service(exc) if exc else "a service", state.attempt_number, type(exc).__name__,
                           str(exc).strip()[:300], state.next_action.sleep if state.next_action else 0.0)

        retrying = Retrying(
            retry=retry_if_exception_type(OUTAGES),
            wait=wait_random_exponential(multiplier=self.backoff_s, max=self.backoff_max_s),
            stop=lambda state: self._stopping(),
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            listener = retrying(attempt)
        except OUTAGES:
            if self._stopping():
                return None
            raise
        attempts = retrying.statistics.get("attempt_number", 1)
        if reconnecting or attempts > 1:
            logger.info("recovered: listening again after %.1f s (%d attempts)%s", time.monotonic() - started,
                        attempts, "; caught up on pending versions" if catch_up else "")
        return listener

    def _listen(self, listener: EventListener) -> None:
        """Ingest the tenants of each burst of events until stopped; outages propagate."""
        while not self._stopping():
            tenants: set[str] = set()
            for event in listener.events(timeout_s=min(POLL_S, max(0.05, self._deadline - time.monotonic())),
                                         max_events=1):
                tenants.add(event.tenant)
            if not tenants:
                continue
            quiet_until = time.monotonic() + self.quiet_s
            while time.monotonic() < quiet_until and not self.stopped.is_set():  # the rest of a burst (a folder)
                got = [e.tenant for e in listener.events(timeout_s=max(0.05, quiet_until - time.monotonic()),
                                                         max_events=1)]
                tenants.update(got)
                if got:
                    quiet_until = time.monotonic() + self.quiet_s
            for tenant in sorted(tenants):
                if self.stopped.is_set():
                    return
                logger.info("new versions for tenant %s: ingesting", tenant)
                self._run(tenant)

    def _run(self, tenant: str | None) -> None:
        """One ingest run (``None``: every tenant), its summary printed as one JSON line."""
        self.in_run = True
        try:
            summary = self.ingest(self.settings, tenant=tenant)
        finally:
            self.in_run = False
            if self.after_run is not None:
                self.after_run()
        self.runs += 1
        fields = dataclasses.asdict(summary) if dataclasses.is_dataclass(summary) else {}
        print(json.dumps({"tenant": tenant, **fields}), flush=True)


def watch(
    settings: Settings, *, ingest: Callable[..., object] | None = None, quiet_s: float = 2.0, max_seconds: float = 0.0,
    catch_up: bool = True, backoff_s: float = 0.5, backoff_max_s: float = 30.0,
) -> int:
    """Ingest on events until ``max_seconds`` passed (0: forever), riding out outages; returns how many runs were made.

    Args:
        settings: the configuration. ingest: ``run_ingest`` (a seam for tests).
        quiet_s: seconds without events before ingesting what arrived. catch_up: first ingest every pending version.
        backoff_s, backoff_max_s: the reconnection backoff (:class:`Watcher`).
    """
    watcher = Watcher(settings, ingest=ingest, quiet_s=quiet_s, backoff_s=backoff_s, backoff_max_s=backoff_max_s)
    return watcher.watch(max_seconds=max_seconds, catch_up=catch_up)


def _on_signals(watcher: Watcher) -> None:
    """SIGTERM and SIGINT stop the watcher; one that arrives during an ingest run interrupts it.

    The run is interrupted as Ctrl-C would (``KeyboardInterrupt``), which releases its claims at once, because
    ``ray job stop`` kills the job a few seconds after its SIGTERM: waiting for the run to end would lose that.
    ``ray.init`` (in the first run) installs its own SIGTERM handler, which raises ``SystemExit``; these are put
    back after every run, and :func:`main` takes that ``SystemExit`` as a stop too.
    """

    def handle(signum: int, frame) -> None:
        logger.info("%s: stopping", signal.Signals(signum).name)
        watcher.stop()
        if watcher.in_run:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def main(argv: list[str] | None = None) -> int:
    """Run the watcher; exit status 0 when stopped, 2 on a configuration error."""
    parser = argparse.ArgumentParser(prog="python -m jobs.watch", description=__doc__.splitlines()[0])
    parser.add_argument("--quiet-s", type=float, default=2.0, help="seconds of quiet before ingesting a burst")
    parser.add_argument("--max-seconds", type=float, default=0.0, help="stop after this many seconds (0: never)")
    parser.add_argument("--no-catch-up", action="store_true", help="do not ingest pending versions first")
    parser.add_argument("--backoff-max-s", type=float, default=30.0,
                        help="longest wait between reconnection attempts during an outage")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    watcher = Watcher(Settings(), quiet_s=args.quiet_s, backoff_max_s=args.backoff_max_s)
    _on_signals(watcher)
    watcher.after_run = lambda: _on_signals(watcher)
    try:
        watcher.watch(max_seconds=args.max_seconds, catch_up=not args.no_catch_up)
    except ConfigurationError as exc:
        print(f"watch failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    except SystemExit as exc:  # Ray's SIGTERM handler, during the first run
        if exc.code != signal.SIGTERM:
            raise
        logger.info("SIGTERM: stopping")
    logger.info("stopped after %d ingest runs and %d outages", watcher.runs, watcher.outages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
