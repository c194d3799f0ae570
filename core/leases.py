"""The lease an ingest run holds on the versions it claimed, kept alive while it works.

A run claims versions under a lease (``Catalog.claim_versions``: ``document_versions.claimed_by`` and
``lease_until``); :class:`LeaseKeeper` renews it from a background thread every quarter of its length, so another
run takes a version over only when this one has stopped (died, or lost the catalog for longer than the lease).
When the run ends, whatever it leaves ``indexing`` is released at once, so that the next run resumes it without
waiting out the lease. See README, "Ingest runs at once".
"""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """Renew ``run_id``'s lease every ``lease_s / 4`` seconds until :meth:`stop` (a context manager).

    Args:
        catalog: the catalog (``renew_lease``, ``release_lease``). run_id: the run. lease_s: the lease's length.
    """

    def __init__(self, catalog, run_id: str, lease_s: float) -> None:
        self.catalog = catalog
        self.run_id = run_id
        self.lease_s = lease_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{run_id[:8]}", daemon=True)

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                self.catalog.renew_lease(self.run_id, self.lease_s)
            except Exception as exc:  # noqa: BLE001 - logged; the next renewal tries again (commits check ownership)
                logger.warning("could not renew the lease of run %s: %s", self.run_id, exc)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop renewing, and release what the run leaves ``indexing``."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            released = self.catalog.release_lease(self.run_id)
        except Exception as exc:  # noqa: BLE001 - the lease then simply expires
            logger.warning("could not release the lease of run %s (it expires in %.0f s): %s", self.run_id,
                           self.lease_s, exc)
            return
        if released:
            logger.info("run %s left %d versions indexing; released for the next run", self.run_id, released)
