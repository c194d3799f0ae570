"""The ingest pipeline, wired: source → prepare (S3 read, extract, chunk, BM25) → embed → Qdrant sink → catalog.

The driver claims the pending versions, runs one Ray Data dataset over them, and then records each version's
outcome: ``indexed`` with its chunk count when every chunk was written (older versions' points are then removed and
chunks left over from an earlier, longer run of the same version deleted), or ``failed`` with a ``dead_letters``
row. A version is only marked ``indexed`` after its points are written, so a run that dies leaves it ``indexing``
and the next run resumes it; point ids are deterministic, so a rewrite replaces instead of duplicating.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from core.cache import Cache
from core.catalog import Catalog, Claim
from core.errors import ServiceUnavailableError
from core.objects import ObjectStore
from core.settings import Settings
from core.vectorstore import VectorStore
from pipelines.embed.dense import model_dimension
from pipelines.sink import QdrantDatasink, VersionOutcome
from pipelines.source import ScanReport, scan_objects, version_row

logger = logging.getLogger(__name__)

#: Document rows per prepare batch (one S3 read each; small so that big files spread over workers).
PREPARE_BATCH_ROWS = 16


@dataclasses.dataclass
class IngestSummary:
    """The job's result; printed as the last line of ``jobs.ingest`` (the ARCHITECTURE.md contract fields first)."""

    documents_seen: int = 0
    documents_indexed: int = 0
    documents_unchanged: int = 0
    documents_failed: int = 0
    chunks_indexed: int = 0
    seconds: float = 0.0
    objects_scanned: int = 0
    objects_registered: int = 0
    objects_rejected: int = 0
    failures: dict[str, int] = dataclasses.field(default_factory=dict)
    #: Wall-clock seconds of each phase: ``scan``, ``claim``, ``dataset`` (prepare, embed, write), ``record``.
    stage_seconds: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Resources:
    """How to size the actor pools from the cluster's resources.

    On a CPU cluster the embed stage runs one actor per four cores, each with that many torch threads; the prepare
    (0.5 of a logical CPU) and write (0.25) stages are light and always fit beside it. Measured on Vaswani with
    all-MiniLM-L6-v2 on 2 cores (``benchmarks/ingest_throughput.py``): one embed actor with two threads ran the
    dataset in 362 s, two single-threaded actors in 443 s, as the S3 server, the driver and the write task take CPU
    from every actor alike. With GPUs: one embed actor per GPU.

    Attributes:
        prepare_actors: most actors of the prepare stage. prepare_cpus: logical CPUs of each.
        embed_actors: actors of the embed stage. embed_cpus: logical CPUs of each.
        embed_gpus: GPUs per embed actor (0 on a CPU cluster). embed_threads: torch threads per embed actor
            (``None``: torch's default, on GPU).
    """

    prepare_actors: int
    prepare_cpus: float
    embed_actors: int
    embed_cpus: float
    embed_gpus: float
    embed_threads: int | None

    #: Logical CPUs of one write task (it waits on the vector store, it does not compute).
    WRITE_CPUS = 0.25

    @classmethod
    def from_cluster(cls, cluster: dict[str, float], settings: Settings) -> "Resources":
        """Size the pools from ``ray.cluster_resources()`` (``CPU`` and ``GPU`` counts) and ``embed_actors``."""
        cpus = max(1, int(cluster.get("CPU", 1)))
        gpus = int(cluster.get("GPU", 0))
        prepare = max(1, min(cpus // 2, 8))
        if gpus:
            return cls(prepare_actors=prepare, prepare_cpus=0.5, embed_actors=settings.embed_actors or gpus,
                       embed_cpus=1.0, embed_gpus=1.0, embed_threads=None)
        embed = settings.embed_actors or max(1, cpus // 4)
        return cls(prepare_actors=prepare, prepare_cpus=0.5, embed_actors=embed, embed_cpus=1.0, embed_gpus=0.0,
                   embed_threads=max(1, cpus // embed))


def _ensure_ray(settings: Settings) -> None:
    import ray

    if not ray.is_initialized():
        try:
            ray.init(address=settings.ray_address or None, namespace=settings.ray_namespace, log_to_driver=True)
        except ConnectionError as exc:
            raise ServiceUnavailableError("ray", f"{settings.ray_address or 'local'}: {exc}") from exc


def _service_error(exc: BaseException) -> ServiceUnavailableError | None:
    """The ``ServiceUnavailableError`` behind a Ray task failure, if that is what it was."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ServiceUnavailableError):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__
        seen += 1
    return None


def run_ingest(
    settings: Settings,
    *,
    tenant: str | None = None,
    prefix: str = "",
    scan: bool = False,
    force: bool = False,
) -> IngestSummary:
    """Ingest the pending versions of ``tenant`` (every tenant when ``None``) under ``prefix``.

    Args:
        settings: the configuration (services, model, chunking, batch sizes).
        tenant: limit to one tenant. prefix: limit to paths starting with it.
        scan: first register objects under ``s3://<bucket>/<tenant>/<prefix>`` that the catalog lacks.
        force: re-embed the latest version of every document in scope, even when already indexed.

    Returns:
        The summary of the run.

    Raises:
        ServiceUnavailableError: S3, PostgreSQL, Qdrant or Ray cannot be reached (nothing is marked failed then:
            versions stay ``pending``/``indexing`` and the next run picks them up).
        ConfigurationError: the model is missing or its dimension differs from the collection's.
    """
    import ray

    started = time.perf_counter()
    summary = IngestSummary()
    catalog, objects, store = Catalog(settings), ObjectStore(settings), VectorStore(settings)
    try:
        catalog.check()
        objects.check()
        _ensure_ray(settings)
        store.ensure_collection(model_dimension(settings.text_model))

        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            summary.stage_seconds[stage] = round(now - clock, 3)
            clock = now

        if scan:
            report: ScanReport = scan_objects(objects, catalog, tenant=tenant, prefix=prefix)
            summary.objects_scanned, summary.objects_registered = report.objects_seen, report.registered
            summary.objects_rejected = report.rejected
            lap("scan")

        claimed = catalog.claim_versions(tenant, prefix, force=force)
        summary.documents_seen = catalog.count_documents(tenant, prefix)
        logger.info("claimed %d versions to index", len(claimed))
        lap("claim")
        if claimed:
            outcomes = _run_dataset(settings, [version_row(c.version) for c in claimed], ray.cluster_resources())
            lap("dataset")
            indexed = []
            for claim in claimed:
                v = claim.version
                outcome = outcomes.get((v.document_id, v.version), VersionOutcome())
                if _record(catalog, store, claim, outcome, summary):
                    indexed.append((v.document_id, v.version, outcome.chunk_count))
            catalog.mark_indexed_many(indexed)
            Cache(settings).bump_generation()
            lap("record")
        summary.documents_unchanged = max(0, summary.documents_seen - summary.documents_indexed - summary.documents_failed)
    finally:
        catalog.close()
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary


def _run_dataset(settings: Settings, rows: list[dict], cluster: dict[str, float]) -> dict[tuple[str, int], VersionOutcome]:
    import ray

    from pipelines.embed.stage import EmbedStage
    from pipelines.prepare import PrepareStage

    res = Resources.from_cluster(cluster, settings)
    blocks = max(1, min(len(rows) // PREPARE_BATCH_ROWS + 1, 256))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    ds = ds.map_batches(
        PrepareStage,
        fn_constructor_args=(settings,),
        batch_size=PREPARE_BATCH_ROWS,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=res.prepare_actors),
        num_cpus=res.prepare_cpus,
        max_restarts=2,
        max_task_retries=2,
    )
    ds = ds.map_batches(
        EmbedStage,
        fn_constructor_args=(settings,),
        fn_constructor_kwargs={"device": "cuda" if res.embed_gpus else "cpu", "num_threads": res.embed_threads},
        # Many model batches per call: the encoder sorts each call's texts by length, so less padding is computed.
        batch_size=settings.embed_batch_size * 16,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=res.embed_actors),  # all start at once: each loads the model
        num_gpus=res.embed_gpus or None,
        num_cpus=res.embed_cpus,
        max_restarts=2,
        max_task_retries=2,
    )
    sink = QdrantDatasink(settings)
    try:
        ds.write_datasink(sink, ray_remote_args={"max_retries": 3, "num_cpus": Resources.WRITE_CPUS})
    except Exception as exc:
        service = _service_error(exc)
        if service is not None:
            raise service from exc
        raise
    return sink.outcomes


def _record(catalog: Catalog, store: VectorStore, claim: Claim, outcome: VersionOutcome, summary: IngestSummary) -> bool:
    """Account for one version's outcome; failures are recorded at once, successes returned for one batch update.

    Returns:
        ``True`` when every chunk was written (the caller marks the version ``indexed``).
    """
    document_id, version = claim.version.document_id, claim.version.version
    if outcome.error is not None:
        stage, reason, detail = outcome.error
    elif outcome.chunk_count == 0 or outcome.written < outcome.chunk_count:
        stage, reason = "index", "incomplete_write"
        detail = f"{outcome.written} of {outcome.chunk_count} chunks reached the index"
    else:
        if version > 1 or not claim.first_attempt:
            # Points of older versions, or chunks past the new count left by an earlier run of this version.
            store.delete_stale(document_id, version, outcome.chunk_count)
        summary.documents_indexed += 1
        summary.chunks_indexed += outcome.chunk_count
        return True
    catalog.mark_failed(document_id, version, stage=stage, reason=reason, detail=detail)
    summary.documents_failed += 1
    summary.failures[reason] = summary.failures.get(reason, 0) + 1
    return False
