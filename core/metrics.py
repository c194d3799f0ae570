"""Sluice's Prometheus metrics, recorded through Ray's metrics API (``ray.util.metrics``).

Every metric is defined here, in :data:`METRICS`, so that the names, tags and buckets the code records, the Grafana
dashboard (``cluster/grafana/sluice.json``) draws and the README lists are one list. The call sites use the small
helpers below (one line each), never ``ray.util.metrics`` directly.

Why Ray's API and not a Prometheus client of our own: every Sluice process that does work is a Ray process (the
ingest driver, the Ray Data stage actors, the Serve replicas, the embedded vector store's actor), and each Ray
node's metrics agent already gathers what its processes record and serves it at
``http://<node>:<metrics_export_port>/metrics`` (``make up`` writes that address as ``SLUICE_METRICS_URL``), beside
Ray's and Serve's own series. No extra port per process, no extra scrape configuration.

What Prometheus sees: Ray puts ``ray_`` before every name, a counter gets ``_total`` after it (``sluice_upload_parts``
is scraped as ``ray_sluice_upload_parts_total``), and each series carries the recording process's ``WorkerId``,
``NodeAddress`` and ``SessionName``: sum over them (``sum by (outcome) (...)``). :attr:`MetricSpec.exported` gives
the scraped name. Ray aggregates histograms by bucket, so a histogram's ``_sum`` is approximate (bucket midpoints);
its ``_count`` and buckets are exact.

Metric objects are made lazily, on first use, once per process: ``ray.util.metrics`` may only be constructed in a
process connected to Ray. Where Ray is not initialised (unit tests that build an engine directly, the command line
before ``ray.init``) every helper does nothing, and no helper ever raises: a metric must never fail a request or an
ingest run.

Tags are bounded on purpose: ``mode`` (three search modes), ``outcome``, ``reason`` (the fixed error codes of the
extractors, the sink and the upload service), ``stage``, and ``collection`` (one or a few per deployment). No
tenant, path or id is ever a tag: each value is a new series kept forever by Prometheus.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])

#: Buckets (seconds) of request-sized latencies: a cached answer takes about a millisecond, a cold one tens.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Buckets (seconds) of work-sized durations: an ingest phase, a batch of a stage, an HNSW build.
DURATION_BUCKETS_S = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """One metric: what ``ray.util.metrics`` is given to make it.

    Attributes:
        name: The name given to Ray (``sluice_...``, without Ray's ``ray_`` prefix and a counter's ``_total``).
        kind: ``counter``, ``gauge`` or ``histogram``.
        description: The ``# HELP`` text.
        tag_keys: The tags every record must give.
        boundaries: A histogram's bucket bounds.
    """

    name: str
    kind: str
    description: str
    tag_keys: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()

    @property
    def exported(self) -> str:
        """The name Prometheus scrapes: ``ray_<name>``, plus ``_total`` for a counter."""
        return f"ray_{self.name}_total" if self.kind == "counter" else f"ray_{self.name}"


_SPECS = (
    # --- ingest (the driver of jobs.ingest, and the stage actors of its Ray Data dataset) ---------------------
    MetricSpec("sluice_ingest_documents", "counter",
               "Documents an ingest run handled, by outcome (indexed, failed, unchanged, deleted, held_elsewhere, "
               "taken_over)", ("outcome",)),
    MetricSpec("sluice_ingest_chunks", "counter",
               "Chunks of ingest runs: indexed (of committed versions) and embedded (written by the run)", ("outcome",)),
    MetricSpec("sluice_ingest_failures", "counter", "Versions an ingest run marked failed, by reason code", ("reason",)),
    MetricSpec("sluice_ingest_stage_seconds", "histogram",
               "Wall-clock seconds of each phase of an ingest run (scan, claim, dataset, record; write: the sink's "
               "worker-seconds within dataset)", ("stage",), DURATION_BUCKETS_S),
    MetricSpec("sluice_ingest_batch_seconds", "histogram",
               "Seconds one batch took in a stage of the ingest dataset (prepare, image, audio, embed, write)",
               ("stage",), DURATION_BUCKETS_S),
    MetricSpec("sluice_ingest_versions_pending", "gauge",
               "Head versions waiting for an ingest (status pending), every tenant, read at the end of a run"),
    # --- search (the Searcher replicas and the SearchAPI ingress) ---------------------------------------------
    MetricSpec("sluice_search_latency_seconds", "histogram",
               "Seconds to answer one search inside the searcher, by mode and whether the answer came from the cache",
               ("mode", "cached"), LATENCY_BUCKETS_S),
    MetricSpec("sluice_search_cache", "counter", "Answer-cache lookups of searches, by outcome (hit, miss)", ("outcome",)),
    MetricSpec("sluice_search_overload", "counter",
               "Searches the ingress turned away with 503, by reason (overloaded: the searcher's queue was full; "
               "timeout)", ("reason",)),
    # --- uploads (the UploadsAPI replicas, through the upload service) ----------------------------------------
    MetricSpec("sluice_upload_bytes", "counter", "Bytes of upload parts stored in S3"),
    MetricSpec("sluice_upload_parts", "counter", "Upload parts stored in S3"),
    MetricSpec("sluice_upload_completions", "counter", "Uploads completed into a document version"),
    MetricSpec("sluice_upload_failures", "counter",
               "Uploads that ended failed, by reason (checksum_mismatch, size_mismatch, conflict, upload_lost, "
               "upload_failed)", ("reason",)),
    # --- the vector store (the embedded store's owner actor; a Qdrant server's caller) ------------------------
    MetricSpec("sluice_vectorstore_points", "gauge", "Points in the collection, as last read", ("collection",)),
    MetricSpec("sluice_vectorstore_segments", "gauge", "Segments of the collection, as last read", ("collection",)),
    MetricSpec("sluice_vectorstore_optimize_seconds", "histogram",
               "Seconds of one optimisation of the embedded store (HNSW build and segment merge)", ("collection",),
               DURATION_BUCKETS_S),
)

#: Every metric of Sluice, by name.
METRICS: Mapping[str, MetricSpec] = {spec.name: spec for spec in _SPECS}

_made: dict[str, Any] = {}
_lock = threading.Lock()
_warned = False


def enabled() -> bool:
    """Whether this process records metrics: Ray is imported and initialised (a driver or a worker).

    Returns:
        ``True`` inside a Ray driver, task, actor or Serve replica; ``False`` elsewhere.
    """
    ray = sys.modules.get("ray")  # not imported: surely not initialised, and importing it is slow
    try:
        return ray is not None and bool(ray.is_initialized())
    except Exception:  # noqa: BLE001 - a half-torn-down Ray during shutdown
        return False


def _metric(name: str) -> Any:
    """The metric object of ``name`` in this process, made on first use (``None`` when Ray is not initialised)."""
    made = _made.get(name)
    if made is not None or not enabled():
        return made
    with _lock:
        if name not in _made:
            from ray.util import metrics as rm

            spec = METRICS[name]
            if spec.kind == "counter":
                _made[name] = rm.Counter(spec.name, spec.description, spec.tag_keys)
            elif spec.kind == "gauge":
                _made[name] = rm.Gauge(spec.name, spec.description, spec.tag_keys)
            else:
                _made[name] = rm.Histogram(spec.name, spec.description, list(spec.boundaries), spec.tag_keys)
        return _made[name]


def _record(name: str, method: str, value: float, tags: Mapping[str, Any]) -> None:
    """Record one value; never raises (the first failure of the process is logged, the rest are not)."""
    global _warned
    try:
        metric = _metric(name)
        if metric is None:
            return
        if method == "inc" and value <= 0:  # Ray refuses 0; nothing happened
            return
        getattr(metric, method)(float(value), tags={k: str(v) for k, v in tags.items()} or None)
    except Exception as exc:  # noqa: BLE001 - a metric must never fail the work it measures
        if not _warned:
            _warned = True
            logger.warning("metric %s not recorded (later failures are not logged): %s", name, exc)


def inc(name: str, value: float = 1, **tags: Any) -> None:
    """Add ``value`` to the counter ``name`` (nothing for 0). Args: name: a key of :data:`METRICS`; tags: its tags."""
    _record(name, "inc", value, tags)


def observe(name: str, value: float, **tags: Any) -> None:
    """Put ``value`` in the histogram ``name``. Args: name: a key of :data:`METRICS`; tags: its tags."""
    _record(name, "observe", value, tags)


def set_gauge(name: str, value: float, **tags: Any) -> None:
    """Set the gauge ``name`` to ``value``. Args: name: a key of :data:`METRICS`; tags: its tags."""
    _record(name, "set", value, tags)


# --- ingest ---------------------------------------------------------------------------------------------------

#: ``IngestSummary`` fields counted as ``sluice_ingest_documents{outcome}``.
_DOCUMENT_OUTCOMES = {
    "indexed": "documents_indexed", "failed": "documents_failed", "unchanged": "documents_unchanged",
    "deleted": "documents_deleted", "held_elsewhere": "versions_held_elsewhere", "taken_over": "versions_taken_over",
}


def record_ingest(summary: Any, pending: Callable[[], int] | None = None) -> None:
    """Count what one ingest run did, from its summary, in the driver (one call at the end of the run).

    The driver, not the workers, counts documents: only it knows a version's final outcome (a written version may
    still be taken over, or lose its commit).

    Args:
        summary: The run's ``pipelines.ingest.IngestSummary``.
        pending: Returns the versions still pending (the backlog gauge); called only when metrics are on, and a
            failure there is logged, not raised.
    """
    if not enabled():
        return
    for outcome, field in _DOCUMENT_OUTCOMES.items():
        inc("sluice_ingest_documents", getattr(summary, field, 0), outcome=outcome)
    inc("sluice_ingest_chunks", summary.chunks_indexed, outcome="indexed")
    inc("sluice_ingest_chunks", summary.chunks_embedded, outcome="embedded")
    for reason, count in summary.failures.items():
        inc("sluice_ingest_failures", count, reason=reason)
    for stage, seconds in summary.stage_seconds.items():
        observe("sluice_ingest_stage_seconds", max(0.0, seconds), stage=stage)
    if pending is not None:
        try:
            set_gauge("sluice_ingest_versions_pending", pending())
        except Exception as exc:  # noqa: BLE001 - the run succeeded; the gauge just stays where it was
            logger.warning("could not count pending versions for the metrics: %s", exc)


def timed(stage: str) -> Callable[[_F], _F]:
    """Decorate a stage's batch function: each call's seconds go to ``sluice_ingest_batch_seconds{stage}``.

    A decorator keeps the hook to one line over ``__call__`` (or a datasink's ``write``); a batch that raises is
    not timed (Ray Data retries it, and that attempt is timed).

    Args:
        stage: The stage's name (``prepare``, ``image``, ``audio``, ``embed``, ``write``).
    """

    def decorate(fn: _F) -> _F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            result = fn(*args, **kwargs)
            observe("sluice_ingest_batch_seconds", time.perf_counter() - started, stage=stage)
            return result

        return wrapper  # type: ignore[return-value]

    return decorate


# --- search ---------------------------------------------------------------------------------------------------

def search_answered(mode: str, answer: Mapping[str, Any]) -> None:
    """Time one answered search from its ``took_ms`` (the engine's own clock), by mode and cache hit.

    Args:
        mode: The request's mode (``dense``, ``sparse``, ``hybrid``).
        answer: The engine's answer (``took_ms``, ``cached``).
    """
    observe("sluice_search_latency_seconds", float(answer.get("took_ms", 0.0)) / 1000.0, mode=mode,
            cached="true" if answer.get("cached") else "false")


def search_cache(hit: bool) -> None:
    """Count one answer-cache lookup. Args: hit: the answer was in the cache."""
    inc("sluice_search_cache", outcome="hit" if hit else "miss")


def search_overload(reason: str) -> None:
    """Count one search turned away with 503. Args: reason: ``overloaded`` or ``timeout``."""
    inc("sluice_search_overload", reason=reason)


# --- uploads --------------------------------------------------------------------------------------------------

def upload_part(size: int) -> None:
    """Count one part stored in S3 and its bytes. Args: size: the part's bytes."""
    inc("sluice_upload_parts")
    inc("sluice_upload_bytes", size)


def upload_completed() -> None:
    """Count one upload completed into a document version."""
    inc("sluice_upload_completions")


def upload_failed(reason: str) -> None:
    """Count one upload that ended failed. Args: reason: its error code."""
    inc("sluice_upload_failures", reason=reason)


# --- vector store ---------------------------------------------------------------------------------------------

def vectorstore_info(collection: str, points: int, segments: int) -> None:
    """Set the collection's points and segments gauges (whenever the backend reads them anyway).

    Args:
        collection: The collection. points: Its point count. segments: Its segment count.
    """
    set_gauge("sluice_vectorstore_points", points, collection=collection)
    set_gauge("sluice_vectorstore_segments", segments, collection=collection)


def vectorstore_optimized(collection: str, seconds: float, info: Callable[[], Any] | None = None) -> None:
    """Time one optimisation of the embedded store, and refresh the gauges it changed (segments merge).

    Args:
        collection: The collection. seconds: How long it took.
        info: Returns the shard's info (``points_count``, ``segments_count``); called only when metrics are on.
    """
    observe("sluice_vectorstore_optimize_seconds", seconds, collection=collection)
    if info is not None and enabled():
        try:
            now = info()
            vectorstore_info(collection, int(now.points_count), int(now.segments_count))
        except Exception as exc:  # noqa: BLE001 - the optimisation itself went fine
            logger.debug("no vector store gauges after optimising %s: %s", collection, exc)
