"""The ingest pipeline, wired: source → prepare (S3 read, extract, chunk, BM25, links) → image (OCR, CLIP) →
audio (ASR) → embed → Qdrant sink → catalog.

The driver claims the head versions to index, runs one Ray Data dataset over them, and then records each
version's outcome. What it guarantees (the README's "What you can rely on"):

* **Versions**: points are written with ``is_latest`` false (true only when re-indexing the version search
  already shows), so a version is invisible until committed; then ``core.lifecycle.commit_versions`` switches the
  flags in an order that never shows two versions or none, commits the catalog (``latest_version``), and deletes
  the points of versions beyond ``version_retention``. A failed version leaves the previous one searchable.
* **Incremental**: only ``pending`` versions are claimed (``--force``: every head version), so a run over an
  unchanged corpus embeds nothing (``chunks_embedded`` stays 0).
* **Crash safety**: point ids are deterministic, so a rewrite replaces points instead of duplicating them; a
  version left ``indexing`` by a dead run is resumed once its lease has run out (first its flags are set back to what the catalog shows;
  when every point was already written, ``written_count``, it is finished without embedding again), and chunks
  past the new count are deleted. Ray Data restarts dead actors and retries their tasks (its defaults for actor
  pools, ``max_restarts=-1`` and ``max_task_retries=-1``; write tasks retry ``WRITE_TASK_RETRIES`` times), and a
  dataset that makes no progress for ``remote_call_timeout_s`` fails, so a run always ends.
* **Worker-killing files**: the prepare, image and audio stages count each document's starts in the catalog
  before working on it (``pipelines.attempts``); a document whose worker died ``max_document_attempts`` times is
  not started again but fails alone as ``worker_crash`` (a dead letter naming the stage and the attempts), so the
  restarted worker gets through the rest of its batch and the run ends.
* **Deletes**: with ``--scan``, documents whose object left the bucket (in the scanned tenant and prefix) are
  deleted as ``DELETE /v1/documents/{id}`` does (``core.lifecycle.delete_document``).
* **Runs at once**: the claim is a lease (``core.leases``, README "Ingest runs at once"): a version another live
  run holds is left to it, one whose run died is resumed once its lease has expired, and a run records, commits or
  deletes points only for the versions it still holds.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
from pathlib import Path

from core import lifecycle, metrics
from core.cache import Cache
from core.catalog import Catalog, Claim
from core.errors import ConfigurationError, ServiceUnavailableError
from core.leases import LeaseKeeper
from core.objects import ObjectStore
from core.settings import Settings
from core.vectorstore import TEXT_VECTOR, VectorStore
from core.vectorstore.schema import metadata_indexes
from core.version_lifecycle import new_run_id
from pipelines.embed.dense import model_dimension
from pipelines.progress import IngestProgress, LiveProgress, ProgressCallback
from pipelines.sink import QdrantDatasink, VersionOutcome
from pipelines.source import ScanReport, scan_objects, version_row

logger = logging.getLogger(__name__)

#: Document rows per prepare batch (one S3 read each; small so that big files spread over workers).
PREPARE_BATCH_ROWS = 16
#: Rows per image-stage batch (text rows pass through; each picture row is OCR'd and embedded).
IMAGE_BATCH_ROWS = 64
#: Rows per audio-stage batch (each recording row is transcribed whole).
AUDIO_BATCH_ROWS = 16
#: Retries of a write task whose worker died (writes are idempotent: deterministic point ids).
WRITE_TASK_RETRIES = 3
#: Actors of one stage that may die in a row while starting before the run fails (a broken model, say).
ACTOR_INIT_DEATHS = 3


@dataclasses.dataclass
class IngestSummary:
    """The job's result; printed as the last line of ``jobs.ingest`` (the docs/DESIGN.md contract fields first).

    ``chunks_embedded`` counts the chunks this run embedded and wrote (0 over an unchanged corpus);
    ``versions_resumed`` the versions a dead run had left ``indexing``; ``documents_deleted`` the documents whose
    object left the bucket (``--scan``); ``dead_letters_replayed`` the failed versions ``--retry-failed`` queued;
    ``versions_held_elsewhere`` the versions in scope another live run was indexing (left to it, not counted as
    unchanged), ``versions_taken_over`` those another run took over from this one (its lease had expired).
    """

    documents_seen: int = 0
    documents_indexed: int = 0
    documents_unchanged: int = 0
    documents_failed: int = 0
    chunks_indexed: int = 0
    seconds: float = 0.0
    chunks_embedded: int = 0
    documents_deleted: int = 0
    versions_resumed: int = 0
    versions_held_elsewhere: int = 0
    versions_taken_over: int = 0
    dead_letters_replayed: int = 0
    objects_scanned: int = 0
    objects_registered: int = 0
    objects_rejected: int = 0
    failures: dict[str, int] = dataclasses.field(default_factory=dict)
    #: Wall-clock seconds of each phase: ``scan``, ``claim``, ``dataset`` (prepare, embed, write), ``record``; and
    #: ``write``: worker-seconds the sink spent writing points, a part of ``dataset``.
    stage_seconds: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class FaultInjection:
    """A test-only hook: the worker process of a stage exits (``os._exit``) at random, like a crash.

    Never set in production; ``run_ingest`` takes it as an explicit argument only.

    Attributes:
        stage: ``"prepare"`` or ``"embed"``. exit_probability: chance that one call of the stage kills its process.
        max_exits: at most this many exits in all (counted by marker files in ``marker_dir``, shared by every node
            of a one-machine cluster), so the run can finish.
        crash_paths: documents (paths) that kill the prepare worker (``stage="prepare"``) every time it starts one,
            with no limit: a file that crashes a native decoder or runs the worker out of memory. Each crash leaves
            a ``crash-*`` marker in ``marker_dir``.
    """

    stage: str
    exit_probability: float
    max_exits: int
    marker_dir: str
    crash_paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.stage not in ("prepare", "embed"):
            raise ValueError(f"stage={self.stage!r} must be 'prepare' or 'embed'")
        if not 0 <= self.exit_probability <= 1:
            raise ValueError(f"exit_probability={self.exit_probability} must be in [0, 1]")
        if self.crash_paths and self.stage != "prepare":
            raise ValueError("crash_paths act in the prepare stage: set stage='prepare'")

    def exits(self) -> int:
        """How many worker processes this plan has killed so far."""
        return len(list(Path(self.marker_dir).glob("exit-*")))

    def crashes(self) -> int:
        """How many worker processes the ``crash_paths`` documents have killed so far."""
        return len(list(Path(self.marker_dir).glob("crash-*")))

    def crash_on(self, path: str) -> None:
        """Kill the calling process when ``path`` is one of ``crash_paths`` (the prepare stage calls it per document)."""
        if path not in self.crash_paths:
            return
        Path(self.marker_dir, f"crash-{os.getpid()}-{time.time_ns()}").touch()
        logger.warning("fault injection: worker %d dies on %s", os.getpid(), path)
        os._exit(1)

    def maybe_exit(self) -> None:
        """Kill the calling process with ``exit_probability``, while fewer than ``max_exits`` happened."""
        if random.random() >= self.exit_probability:
            return
        for n in range(self.max_exits):
            try:
                fd = os.open(Path(self.marker_dir) / f"exit-{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                continue
            os.close(fd)
            logger.warning("fault injection: worker %d exits now", os.getpid())
            os._exit(1)


def _with_faults(cls: type, plan: FaultInjection) -> type:
    """``cls`` whose ``__call__`` first gives ``plan`` the chance to kill the process."""

    class Faulty(cls):  # type: ignore[misc, valid-type]
        def __call__(self, batch):
            plan.maybe_exit()
            return super().__call__(batch)

        def _before_document(self, row):
            plan.crash_on(str(row["path"]))

    Faulty.__name__ = Faulty.__qualname__ = cls.__name__
    return Faulty


@dataclasses.dataclass(frozen=True)
class Resources:
    """How to size the actor pools from the cluster's resources: each modality's heavy stage has its own pool.

    The heavy stages are text **embed**, **image** (OCR, CLIP) and, when ``SLUICE_ASR_MODEL`` is set, **audio**
    (ASR). Each runs on its own actor pool, so a slow modality (minutes of OCR on a scanned book, an hour of audio)
    never holds back the others: its rows queue at its own pool while text rows flow past through the others
    (Ray Data streams blocks between operators; an operator's backlog does not stop the next one from running on
    what it has).

    On a CPU cluster the embed stage runs one actor per four cores, each with that many torch threads (measured on
    Vaswani with all-MiniLM-L6-v2 on 2 cores, ``benchmarks/ingest_throughput.py``: one embed actor with two
    threads ran the dataset in 362 s, two single-threaded actors in 443 s); the image and audio stages one actor
    per eight cores each (``image_actors``/``audio_actors`` override), with the cores shared out among all heavy
    actors as threads. Each heavy actor reserves one logical CPU, or an equal share of the CPUs free at the start of
    the run that the prepare (0.5 of a CPU) and write (0.25) tasks leave, when there are too few for that (2 idle
    cores: 0.625 each for embed and image, 0.416 with audio too; less beside Serve replicas), so every pool can
    always start. With GPUs: the heavy stages that run a model on
    the GPU share each GPU (one actor per GPU each, a fraction of it each); OCR-only image actors stay on CPUs.

    Attributes:
        prepare_actors: most actors of the prepare stage. prepare_cpus: logical CPUs of each.
        embed_actors: actors of the embed stage. embed_cpus: logical CPUs of each.
        embed_gpus: GPUs per embed actor (0 on a CPU cluster). embed_threads: torch threads per embed actor
            (``None``: torch's default, on GPU).
        image_actors, image_cpus, image_gpus, image_threads: the same for the image stage (threads go to RapidOCR
            and to CLIP).
        audio_actors, audio_cpus, audio_gpus, audio_threads: the same for the audio stage (0 actors: no ASR model).
    """

    prepare_actors: int
    prepare_cpus: float
    embed_actors: int
    embed_cpus: float
    embed_gpus: float
    embed_threads: int | None
    image_actors: int = 1
    image_cpus: float = 1.0
    image_gpus: float = 0.0
    image_threads: int | None = None
    audio_actors: int = 0
    audio_cpus: float = 1.0
    audio_gpus: float = 0.0
    audio_threads: int | None = None

    #: Logical CPUs of one write task (it waits on the vector store, it does not compute).
    WRITE_CPUS = 0.25
    #: Logical CPUs of one prepare actor.
    PREPARE_CPUS = 0.5

    @classmethod
    def from_cluster(cls, cluster: dict[str, float], settings: Settings,
                     available: dict[str, float] | None = None, node_cpus: float | None = None) -> "Resources":
        """Size the pools from ``ray.cluster_resources()`` (``CPU`` and ``GPU`` counts) and the ``*_actors`` settings.

        Args:
            cluster: the cluster's total resources (pool sizes and threads follow them).
            settings: ``embed_actors``, ``image_actors``, ``audio_actors``, ``image_model``, ``asr_model``.
            available: ``ray.available_resources()`` at the start of the run, when known: the heavy actors'
                reservations are shared out of the CPUs free then (Serve replicas on the same cluster hold some), so
                that every pool can start.
            node_cpus: the CPUs of the smallest node that has any, when known: one actor of every stage must fit
                on it, so that losing all the other nodes mid-run never leaves a pool unable to restart.
        """
        cpus = max(1, int(cluster.get("CPU", 1)))
        free = min(float(cpus), float((available or {}).get("CPU", cpus)), float(node_cpus or cpus))
        gpus = int(cluster.get("GPU", 0))
        prepare = max(1, min(cpus // 2, 8))
        audio_on = bool(settings.asr_model)
        heavy = 3 if audio_on else 2
        share = max(0.05, math.floor(min(1.0, (free - cls.WRITE_CPUS - cls.PREPARE_CPUS) / heavy) * 1000) / 1000)
        image = settings.image_actors or max(1, cpus // 8)
        audio = (settings.audio_actors or max(1, cpus // 8)) if audio_on else 0
        if gpus:
            on_gpu = 1 + bool(settings.image_model) + audio_on  # stages that put a model on each GPU
            fraction = math.floor(1000 / on_gpu) / 1000
            image = settings.image_actors or (gpus if settings.image_model else max(1, cpus // 8))
            audio = (settings.audio_actors or gpus) if audio_on else 0
            spare = max(1, cpus // max(1, gpus * on_gpu + image))
            return cls(prepare_actors=prepare, prepare_cpus=cls.PREPARE_CPUS,
                       embed_actors=settings.embed_actors or gpus, embed_cpus=share, embed_gpus=fraction,
                       embed_threads=None, image_actors=image, image_cpus=share,
                       image_gpus=fraction if settings.image_model else 0.0, image_threads=spare,
                       audio_actors=audio, audio_cpus=share, audio_gpus=fraction if audio_on else 0.0,
                       audio_threads=None)
        embed = settings.embed_actors or max(1, cpus // 4)
        threads = max(1, cpus // (embed + image + audio))
        return cls(prepare_actors=prepare, prepare_cpus=cls.PREPARE_CPUS, embed_actors=embed, embed_cpus=share,
                   embed_gpus=0.0, embed_threads=max(1, cpus // embed), image_actors=image, image_cpus=share,
                   image_gpus=0.0, image_threads=threads, audio_actors=audio, audio_cpus=share, audio_gpus=0.0,
                   audio_threads=threads)


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


def check_model(catalog: Catalog, settings: Settings, dimension: int, *, created: bool) -> None:
    """Refuse to mix models in one collection: the model of its ``text`` vector is recorded in the catalog.

    Args:
        dimension: the configured model's embedding dimension. created: the collection was just created (its
            record is then written, replacing any left by an older collection of the same name).

    Raises:
        ConfigurationError: the collection was built with another model (even of the same dimension), naming the
            re-index command.
    """
    record = catalog.index_model(settings.qdrant_collection, TEXT_VECTOR)
    if created or record is None:
        catalog.record_index_model(settings.qdrant_collection, TEXT_VECTOR, settings.text_model, dimension)
        return
    if record["model"] != settings.text_model:
        raise ConfigurationError(
            f"collection {settings.qdrant_collection!r} was built with the text model {record['model']!r}, but "
            f"SLUICE_TEXT_MODEL is {settings.text_model!r}: vectors of two models must never mix. Build a new "
            "collection with `python -m jobs.reindex --collection NEW`, then set SLUICE_QDRANT_COLLECTION=NEW "
            "(or set SLUICE_TEXT_MODEL back)"
        )


def run_ingest(
    settings: Settings,
    *,
    tenant: str | None = None,
    prefix: str = "",
    scan: bool = False,
    force: bool = False,
    retry_failed: bool = False,
    fault_injection: FaultInjection | None = None,
    on_progress: ProgressCallback | None = None,
) -> IngestSummary:
    """Ingest the pending versions of ``tenant`` (every tenant when ``None``) under ``prefix``.

    Args:
        settings: the configuration (services, model, chunking, batch sizes, ``version_retention``).
        tenant: limit to one tenant. prefix: limit to paths starting with it.
        scan: first register objects under ``s3://<bucket>/<tenant>/<prefix>`` that the catalog lacks, and delete
            the documents whose object is gone.
        force: re-embed the head version of every document in scope, even when already indexed.
        retry_failed: first set failed versions with an open dead letter back to ``pending`` (replayed).
        fault_injection: tests only: kill stage workers at random (:class:`FaultInjection`).
        on_progress: called with :class:`pipelines.progress.IngestProgress` readings: once the versions are
            claimed, about once a second while they are indexed, and once every outcome is recorded.

    Returns:
        The summary of the run.

    Raises:
        ServiceUnavailableError: S3, PostgreSQL, Qdrant, Redis or Ray cannot be reached (nothing is marked failed
            then: versions stay ``pending``/``indexing`` and the next run picks them up).
        ConfigurationError: the model is missing, or differs from the one the collection was built with.
    """
    started = time.perf_counter()
    summary = IngestSummary()
    catalog, objects, store = Catalog(settings), ObjectStore(settings), VectorStore(settings)
    cache = Cache(settings)
    try:
        catalog.check()
        objects.check()
        _ensure_ray(settings)
        dimension = model_dimension(settings.text_model)
        image_dim = _check_media_models(settings)
        check_model(catalog, settings, dimension, created=store.ensure_collection(dimension, image_dim))

        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            summary.stage_seconds[stage] = round(now - clock, 3)
            clock = now

        changed: set[str] = set()  # the tenants whose index this run changed
        if retry_failed:
            summary.dead_letters_replayed = catalog.replay_dead_letters(tenant, prefix)
        if scan:
            report: ScanReport = scan_objects(objects, catalog, tenant=tenant, prefix=prefix)
            summary.objects_scanned, summary.objects_registered = report.objects_seen, report.registered
            summary.objects_rejected = report.rejected
            for document_id in report.missing:
                before = lifecycle.delete_document(settings, document_id, catalog=catalog, store=store, objects=objects,
                                                   bump=False)
                if before is not None:
                    changed.add(before.tenant)
            summary.documents_deleted = len(report.missing)
            lap("scan")

        run_id = new_run_id()
        claimed = catalog.claim_versions(tenant, prefix, force=force, run_id=run_id, lease_s=settings.ingest_lease_s)
        summary.versions_held_elsewhere = catalog.held_elsewhere(tenant, prefix, run_id)
        summary.documents_seen = catalog.count_documents(tenant, prefix)
        logger.info("run %s claimed %d versions to index", run_id, len(claimed))
        if summary.versions_held_elsewhere:
            logger.info("%d versions in scope are being indexed by another run; left to it",
                        summary.versions_held_elsewhere)
        lap("claim")
        if on_progress is not None:
            on_progress(IngestProgress(total=len(claimed)))
        if claimed:
            changed |= {c.version.tenant for c in claimed}
            with LeaseKeeper(catalog, run_id, settings.ingest_lease_s):
                _index(settings, catalog, store, claimed, summary, fault_injection, run_id=run_id,
                       on_progress=on_progress)
            if on_progress is not None:
                on_progress(IngestProgress(len(claimed), len(claimed), summary.documents_failed, summary.chunks_embedded))
            lap("record")
            summary.stage_seconds["record"] = round(summary.stage_seconds["record"] - summary.stage_seconds.get("dataset", 0), 3)
        if changed:
            lifecycle.bump_generation(cache, changed)
        summary.documents_unchanged = max(0, summary.documents_seen - summary.documents_indexed - summary.documents_failed
                                          - summary.versions_held_elsewhere - summary.versions_taken_over)
        metrics.record_ingest(summary, pending=catalog.pending_versions)
    finally:
        catalog.close()
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary


def _index(settings: Settings, catalog: Catalog, store: VectorStore, claimed: list[Claim], summary: IngestSummary,
           faults: FaultInjection | None, *, run_id: str, on_progress: ProgressCallback | None = None) -> None:
    """Index the claimed versions: resume what a dead run left, run the dataset over the rest, record outcomes.

    Outcomes are recorded only for versions this run still holds: one taken over by another run (this run's lease
    expired) is left to that run, its points untouched (``versions_taken_over``).
    """
    import ray

    resumed = [c for c in claimed if c.previous_status == "indexing"]
    summary.versions_resumed = len(resumed)
    for claim in resumed:  # a switch interrupted by a crash: back to what the catalog shows
        lifecycle.sync_flags(catalog, store, claim.version.document_id)
    finished = _already_written(store, resumed)
    todo = [c for c in claimed if (c.version.document_id, c.version.version) not in finished]
    shown = catalog.shown_versions([c.version.document_id for c in todo])
    in_place = frozenset((c.version.document_id, c.version.version) for c in todo
                         if shown.get(c.version.document_id) == c.version.version)
    outcomes: dict[tuple[str, int], VersionOutcome] = {}
    store.ensure_indexes(metadata_indexes([c.version.metadata for c in todo]))
    if todo:
        started = time.perf_counter()
        with LiveProgress(on_progress, total=len(claimed), done=len(finished)) as live:
            outcomes = _run_dataset(settings, [version_row(c.version) for c in todo], ray.cluster_resources(),
                                    shown=in_place, faults=faults, live=live)
        summary.stage_seconds["dataset"] = round(time.perf_counter() - started, 3)
        # Worker-seconds spent writing points, within the dataset's wall time (the store is not the bottleneck
        # while this stays a small share of it).
        summary.stage_seconds["write"] = round(sum(o.write_s for o in outcomes.values()), 3)
    summary.chunks_embedded = sum(o.written for o in outcomes.values())
    catalog.record_properties([(d, v, o.properties) for (d, v), o in outcomes.items()
                               if o.properties is not None and o.error is None])
    for key, count in finished.items():
        outcomes[key] = VersionOutcome(written=count, chunk_count=count)

    ok: list[tuple[str, int, int]] = []
    fresh: set[tuple[str, int]] = set()
    recorded: list[tuple[str, int]] = []
    owners = catalog.claimed_by([(c.version.document_id, c.version.version) for c in claimed])
    for claim in claimed:
        v = claim.version
        key = (v.document_id, v.version)
        if owners.get(key) != run_id:
            logger.warning("version %s/%d was taken over by run %s; left to it", *key, owners.get(key))
            summary.versions_taken_over += 1
            continue
        outcome = outcomes.get(key, VersionOutcome())
        recorded.append(key)
        if _record(catalog, store, claim, outcome, summary, keep_points=key in in_place):
            ok.append((v.document_id, v.version, outcome.chunk_count))
            if claim.first_attempt or (key in in_place and (v.chunk_count or 0) <= outcome.chunk_count):
                fresh.add(key)
    # Stage counts of crashed workers (pipelines.attempts) matter only until the outcome is recorded; a run that
    # dies before this keeps them, so the next run does not meet a worker-killing file with a clean slate.
    catalog.clear_attempts(recorded)
    committed = lifecycle.commit_versions(settings, catalog, store, ok, fresh=fresh, run_id=run_id)
    _catch_up_metadata(catalog, store, claimed, committed, rewritten=set(finished))
    lost = len(ok) - len(committed)
    summary.documents_indexed -= lost
    summary.chunks_indexed -= sum(c for d, v, c in ok if (d, v, c) not in set(committed))


def _catch_up_metadata(catalog: Catalog, store: VectorStore, claimed: list[Claim],
                       committed: list[tuple[str, int, int]], *, rewritten: set[tuple[str, int]]) -> None:
    """Give committed points the metadata the catalog has now, where it differs from what they were written with.

    A ``PATCH`` of a version while this run wrote its points reaches only the points already written; checked
    after every point is written, nothing is missed. ``rewritten``: versions finished from an earlier run's
    points, whose metadata is not known here (set unconditionally).
    """
    written_with = {(c.version.document_id, c.version.version): c.version.metadata for c in claimed}
    keys = [(d, v) for d, v, _ in committed]
    for (doc, version), metadata in catalog.version_metadata(keys).items():
        if (doc, version) in rewritten or metadata != written_with.get((doc, version)):
            store.set_metadata(doc, [version], metadata)


def _already_written(store: VectorStore, resumed: list[Claim]) -> dict[tuple[str, int], int]:
    """Resumed versions whose ``written_count`` points are all in the index: they need no embedding."""
    from core.vectorstore import version_filter

    done = {}
    for claim in resumed:
        v = claim.version
        if not v.written_count:
            continue
        census = store.version_census(version_filter(v.document_id, v.version)).get((v.document_id, v.version))
        if census and census["points"] == v.written_count and census["max_chunk"] == v.written_count - 1:
            done[(v.document_id, v.version)] = v.written_count
    return done


def _check_media_models(settings: Settings) -> int | None:
    """Check the image and ASR models before any work starts; the image model's dimension (``None``: no model).

    Raises:
        ConfigurationError: a configured model is not available offline (the message names the variable).
    """
    image_dim = None
    if settings.image_model:
        from pipelines.embed.image import image_model_dimension

        image_dim = image_model_dimension(settings.image_model)
    if settings.asr_model:
        from pipelines.asr_models import resolve_asr_model

        resolved = resolve_asr_model(settings.asr_model)
        if not Path(resolved).is_dir():
            try:
                from huggingface_hub import snapshot_download

                snapshot_download(resolved, local_files_only=True)
            except Exception as exc:  # not in the local cache
                raise ConfigurationError(
                    f"SLUICE_ASR_MODEL={settings.asr_model!r} is neither a folder, a packaged model nor a Hugging Face "
                    f"id in the local cache: {exc}"
                ) from exc
    return image_dim


def _configure_fault_tolerance(settings: Settings) -> None:
    """Bound a dataset's run: no progress for ``remote_call_timeout_s`` fails it; actors that die starting fail it.

    Actor restarts and task retries use Ray Data's defaults for actor pools (``max_restarts=-1``,
    ``max_task_retries=-1``: a dead actor is replaced and its task retried). Ray 2.60 deprecates passing them
    through ``map_batches(**ray_remote_args)``, so they are not repeated here; the no-progress timeout is what turns
    an endless restart loop into a failed run.
    """
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.execution_no_progress_timeout_s = float(settings.remote_call_timeout_s)
    ctx.max_consecutive_actor_init_deaths = ACTOR_INIT_DEATHS
    ctx.wait_for_min_actors_s = int(settings.remote_call_timeout_s)


def _smallest_node_cpus() -> float | None:
    """The CPU count of the smallest alive node that has CPUs (``ray.nodes()``), ``None`` when none reports any."""
    import ray

    counts = [float(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    counts = [c for c in counts if c > 0]
    return min(counts) if counts else None


def _run_dataset(settings: Settings, rows: list[dict], cluster: dict[str, float], *,
                 shown: frozenset[tuple[str, int]] = frozenset(),
                 faults: FaultInjection | None = None,
                 live: LiveProgress | None = None) -> dict[tuple[str, int], VersionOutcome]:
    """Run prepare → image → audio (with an ASR model) → embed → sink over the document rows.

    Each heavy stage has its own actor pool (:class:`Resources`). Returns the sink's outcome per version.
    """
    import ray

    from pipelines.audio_stage import AudioStage
    from pipelines.embed.stage import EmbedStage
    from pipelines.image_stage import ImageStage
    from pipelines.prepare import PrepareStage

    _configure_fault_tolerance(settings)
    prepare_cls, embed_cls = PrepareStage, EmbedStage
    if faults is not None:
        if faults.stage == "prepare":
            prepare_cls = _with_faults(PrepareStage, faults)
        else:
            embed_cls = _with_faults(EmbedStage, faults)
    res = Resources.from_cluster(cluster, settings, available=ray.available_resources(), node_cpus=_smallest_node_cpus())
    blocks = max(1, min(len(rows) // PREPARE_BATCH_ROWS + 1, 256))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    ds = ds.map_batches(
        prepare_cls,
        fn_constructor_args=(settings,),
        batch_size=PREPARE_BATCH_ROWS,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=res.prepare_actors),
        num_cpus=res.prepare_cpus,
    )

    def model_stage(ds, cls, *, actors: int, cpus: float, gpus: float, threads: int | None, batch_size: int,
                    fixed: bool = False):
        """One model-running stage on its own actor pool (``fixed``: all actors start at once)."""
        compute = (ray.data.ActorPoolStrategy(size=actors) if fixed
                   else ray.data.ActorPoolStrategy(min_size=1, max_size=actors))
        return ds.map_batches(
            cls,
            fn_constructor_args=(settings,),
            fn_constructor_kwargs={"device": "cuda" if gpus else "cpu", "num_threads": threads},
            batch_size=batch_size,
            batch_format="numpy",
            compute=compute,
            num_gpus=gpus or None,
            num_cpus=cpus,
        )

    ds = model_stage(ds, ImageStage, actors=res.image_actors, cpus=res.image_cpus, gpus=res.image_gpus,
                     threads=res.image_threads, batch_size=IMAGE_BATCH_ROWS)
    if res.audio_actors:
        ds = model_stage(ds, AudioStage, actors=res.audio_actors, cpus=res.audio_cpus, gpus=res.audio_gpus,
                         threads=res.audio_threads, batch_size=AUDIO_BATCH_ROWS)
    # Many model batches per call: the encoder sorts each call's texts by length, so less padding is computed.
    # All embed actors start at once: each loads the model.
    ds = model_stage(ds, embed_cls, actors=res.embed_actors, cpus=res.embed_cpus, gpus=res.embed_gpus,
                     threads=res.embed_threads, batch_size=settings.embed_batch_size * 16, fixed=True)
    sink = live.sink(settings, shown=shown) if live is not None else QdrantDatasink(settings, shown=shown)
    try:
        ds.write_datasink(sink, ray_remote_args={"max_retries": WRITE_TASK_RETRIES, "num_cpus": Resources.WRITE_CPUS})
    except Exception as exc:
        service = _service_error(exc)
        if service is not None:
            raise service from exc
        if type(exc).__name__ == "ExecutionTimeoutError":
            raise ServiceUnavailableError("ray", f"the dataset made no progress for {settings.remote_call_timeout_s} s: {exc}") from exc
        if isinstance(exc, ray.exceptions.GetTimeoutError) and "starting actors" in str(exc):
            # Ray Data's actor pools never started: the cluster lacks the resources (or its CPUs are held by
            # others, such as Serve replicas). Nothing was written; the versions stay claimed and the next run
            # resumes them.
            raise ServiceUnavailableError(
                "ray", f"the actor pools could not start ({res}); free CPUs: "
                f"{ray.available_resources().get('CPU', 0):.2f} of {ray.cluster_resources().get('CPU', 0):.0f}: {exc}"
            ) from exc
        raise
    return sink.outcomes


def _record(catalog: Catalog, store: VectorStore, claim: Claim, outcome: VersionOutcome, summary: IngestSummary, *,
            keep_points: bool = False) -> bool:
    """Account for one version's outcome; failures are recorded at once, successes returned for one commit.

    A failed version's points (written with ``is_latest`` false) are deleted, so the previous version stays the
    only one searchable; ``keep_points`` keeps them (a failed re-index of the version already shown).

    Returns:
        ``True`` when every chunk was written (the caller commits the version).
    """
    document_id, version = claim.version.document_id, claim.version.version
    if outcome.error is not None:
        stage, reason, detail = outcome.error
    elif outcome.chunk_count == 0 or outcome.written < outcome.chunk_count:
        stage, reason = "index", "incomplete_write"
        detail = f"{outcome.written} of {outcome.chunk_count} chunks reached the index"
    else:
        summary.documents_indexed += 1
        summary.chunks_indexed += outcome.chunk_count
        return True
    if not keep_points and (outcome.written or not claim.first_attempt):
        store.delete_versions(document_id, [version])
    catalog.mark_failed(document_id, version, stage=stage, reason=reason, detail=detail, keep_indexed=keep_points)
    summary.documents_failed += 1
    summary.failures[reason] = summary.failures.get(reason, 0) + 1
    return False
