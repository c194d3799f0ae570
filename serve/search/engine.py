"""The hybrid search engine behind ``POST /v1/search``: dense, BM25 (and image) legs fused by Qdrant, per tenant.

A search runs in three steps, which the Serve deployment interleaves with its own batching
(:class:`serve.search.app.Searcher`) and :meth:`SearchEngine.search` runs in a row:

1. :meth:`SearchEngine.lookup`: the whole answer from the cache, keyed by the tenant, every parameter and the index
   generation (``core.cache``); a hit comes back with ``cached: true``.
2. :meth:`SearchEngine.embed_queries`: the query embeddings, from the cache or the text model (batched).
3. :meth:`SearchEngine.run` (:meth:`SearchEngine.run_many` for a batch: one store call): the Query API request
   (``serve.search.query``): one prefetch per leg, each with the
   tenant filter, fused by RRF or DBSF; the fused list is checked against the tenant once more (a foreign point is
   dropped and logged at ERROR) and against the catalog's deletes (``core.tombstones``: a deleted document's points
   may outlive its delete when the vector store failed), and the answer is cached under the generation read in
   step 1. A cached answer is checked against the deletes again before it is served, so that a delete whose
   generation bump was lost cannot bring a deleted document back from the cache.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from qdrant_client import models

from core import metrics
from core.cache import Cache
from core.errors import ServiceUnavailableError
from core.settings import Settings
from core.tombstones import Tombstones
from core.vectorstore import VectorStore
from serve.search.query import DEFAULT_FUSION, IMAGE_VECTOR, SearchRequest, build_query

logger = logging.getLogger(__name__)

#: Seconds the engine trusts what it read of the collection's vectors (whether it has an ``image`` vector).
COLLECTION_INFO_TTL_S = 60.0


class QueryEncoder(Protocol):
    """What the engine needs of a text model: ``encode(texts) -> float32 (n, dim)``."""

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def load_image_query_encoder(settings: Settings) -> QueryEncoder | None:
    """The hook for the image leg: a CLIP *text* encoder for ``settings.image_model``, or ``None``.

    The image leg queries the collection's ``image`` vector (CLIP image embeddings) with the CLIP embedding of the
    query text (``pipelines.embed.image.ClipEncoder.encode_texts``: ``float32 (n, clip_dim)``, L2-normalised).
    ``None`` (the leg is left out) when no image model is configured or the encoder cannot be imported.
    """
    if not settings.image_model:
        return None
    try:
        from pipelines.embed.image import ClipEncoder
    except ImportError as exc:
        logger.warning("SLUICE_IMAGE_MODEL is set but the CLIP encoder cannot be imported (%s): the image leg is off", exc)
        return None
    return _ClipTextQueries(ClipEncoder(settings.image_model))


class _ClipTextQueries:
    """Adapts ``ClipEncoder`` to :class:`QueryEncoder` (texts only)."""

    def __init__(self, clip) -> None:
        self.clip = clip

    def warm_up(self) -> None:
        self.clip.warm_up()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.clip.encode_texts(list(texts))


def to_result(point: models.ScoredPoint) -> dict[str, Any]:
    """One result of the contract (docs/DESIGN.md, "Interfaces (contract)") from a scored point."""
    p = point.payload or {}
    result = {
        "point_id": str(point.id),
        "document_id": p.get("document_id"),
        "version": p.get("version"),
        "path": p.get("path"),
        "modality": p.get("modality"),
        "chunk_index": p.get("chunk_index"),
        "text": p.get("text", ""),
        "score": float(point.score),
        "links": p.get("links", []),
        "metadata": p.get("metadata") or {},
        "properties": p.get("properties") or {},
    }
    for optional in ("page", "start_s", "end_s", "heading", "content_type", "created_at", "kind", "box",
                     "parent_index"):
        if p.get(optional) is not None:
            result[optional] = p[optional]
    return result


class SearchEngine:
    """Answers search requests for a tenant. Thread-safe: the Serve replica runs several searches at once.

    Args:
        settings: vector store, model, BM25, ``rrf_k`` and cache settings.
        encoder: the query text encoder (:class:`QueryEncoder`); by default the configured text model.
        image_encoder: a CLIP text encoder for the image leg; by default :func:`load_image_query_encoder`.
        store, cache: injection seams (default: built from ``settings``).
        tombstones: the delete fence (default: on the configured catalog, backed by ``cache``).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        encoder: QueryEncoder | None = None,
        image_encoder: QueryEncoder | None = None,
        store: VectorStore | None = None,
        cache: Cache | None = None,
        tombstones: Tombstones | None = None,
    ) -> None:
        self.settings = settings
        if encoder is None:
            from pipelines.embed.dense import TextEncoder

            encoder = TextEncoder(settings.text_model, batch_size=settings.embed_batch_size)
        self.encoder = encoder
        self.image_encoder = image_encoder if image_encoder is not None else load_image_query_encoder(settings)
        self.store = store or VectorStore(settings)
        self.cache = cache or Cache(settings)
        self.tombstones = tombstones or Tombstones(settings, cache=self.cache)
        self.model_key = f"{settings.text_model}"
        self._local = threading.local()  # one Bm25Encoder per thread: PyStemmer stemmers are not thread-safe
        self._encode_lock = threading.Lock()
        self._vectors: tuple[float, set[str]] | None = None

    @property
    def bm25(self):
        """This thread's BM25 encoder (``pipelines.sparse.Bm25Encoder``, the one ingest uses)."""
        encoder = getattr(self._local, "bm25", None)
        if encoder is None:
            from pipelines.sparse import Bm25Encoder

            s = self.settings
            encoder = self._local.bm25 = Bm25Encoder(k1=s.bm25_k1, b=s.bm25_b, avg_len=s.bm25_avg_len)
        return encoder

    def warm_up(self) -> None:
        """Load the models and open the store (idempotent).

        Raises:
            ServiceUnavailableError: the vector store cannot be reached.
        """
        for encoder in (self.encoder, self.image_encoder):
            if encoder is not None and hasattr(encoder, "warm_up"):
                encoder.warm_up()
        self.store.check()

    # --- step 1: the answer cache ------------------------------------------------------------------------------

    def cache_params(self, tenant: str, req: SearchRequest) -> dict[str, Any]:
        """Everything an answer depends on besides the index: the tenant, the request, the models and ``rrf_k``."""
        return {
            "tenant": tenant,
            "request": req.model_dump(mode="json"),
            "text_model": self.settings.text_model,
            "image_model": self.settings.image_model if self.image_encoder is not None else "",
            "rrf_k": self.settings.rrf_k,
            "default_fusion": DEFAULT_FUSION,
        }

    def lookup(self, tenant: str, req: SearchRequest) -> tuple[str | None, dict[str, Any] | None]:
        """The answer's cache key and the cached answer (``cached: true``), if any.

        Returns:
            ``(key, answer)``: ``key`` is ``None`` when Redis is down or answers are not cached
            (``search_cache_ttl_s=0``: Redis is then not asked at all); ``answer`` is ``None`` on a miss.
        """
        started = time.perf_counter()
        if self.settings.search_cache_ttl_s <= 0:
            return None, None
        generation = self.cache.tenant_generation(tenant)
        if generation is None:
            return None, None
        key = self.cache.key("search", generation, self.cache_params(tenant, req))
        cached = self.cache.get_json(key)
        if cached is not None and (not isinstance(cached, dict) or cached.get("tenant") != tenant):
            # The key names the tenant, so this is an entry of another form or a collision: never shown.
            logger.error("ignored a cached answer of another tenant or form under %s", key)
            cached = None
        metrics.search_cache(cached is not None)
        if cached is None:
            return key, None
        answer = {"results": self._fence(tenant, [cached["results"]])[0], "took_ms": _ms(started), "cached": True}
        metrics.search_answered(req.mode, answer)
        return key, answer

    # --- step 2: query embeddings ------------------------------------------------------------------------------

    def needs_dense(self, req: SearchRequest) -> bool:
        """Whether the request has a dense text leg."""
        return req.mode in ("dense", "hybrid")

    def cached_embedding(self, text: str) -> np.ndarray | None:
        """The query's embedding from Redis, or ``None`` (not cached, or Redis down)."""
        return self.cache.get_embeddings(self.model_key, [text])[0]

    def embed_queries(self, texts: Sequence[str], *, look_up: bool = True) -> list[np.ndarray]:
        """The text model's embeddings of queries: cached ones from Redis, the rest in one model call.

        Args:
            texts: query texts (repeats are encoded once).
            look_up: read the cache first (``False``: the caller just found these texts missing).

        Returns:
            One ``float32`` vector of shape ``(dim,)`` per text, in order.
        """
        cached = self.cache.get_embeddings(self.model_key, texts) if look_up else [None] * len(texts)
        missing = sorted({t for t, v in zip(texts, cached) if v is None})
        if missing:
            with self._encode_lock:
                vectors = np.asarray(self.encoder.encode(missing), dtype=np.float32)
            self.cache.set_embeddings(self.model_key, missing, vectors)
            fresh = dict(zip(missing, vectors))
            cached = [v if v is not None else fresh[t] for t, v in zip(texts, cached)]
        return cached

    def image_query(self, req: SearchRequest) -> list[float] | None:
        """The CLIP text embedding for the image leg, when the request asks for images and the index has them."""
        if self.image_encoder is None or not req.modalities or "image" not in req.modalities:
            return None
        if IMAGE_VECTOR not in self._vector_names():
            return None
        return np.asarray(self.image_encoder.encode([req.query])[0], dtype=np.float32).tolist()

    def _vector_names(self) -> set[str]:
        now = time.monotonic()
        if self._vectors is None or now - self._vectors[0] > COLLECTION_INFO_TTL_S:
            self._vectors = (now, self.store.vector_names())
        return self._vectors[1]

    # --- step 3: the query -------------------------------------------------------------------------------------

    def request(self, tenant: str, req: SearchRequest, dense: np.ndarray | Sequence[float] | None) -> models.QueryRequest | None:
        """The Query API request of a search (``None``: no leg left, the answer is empty).

        Raises:
            ValueError: ``dense`` is missing for a mode that needs it.
        """
        if self.needs_dense(req) and dense is None:
            raise ValueError(f"mode={req.mode!r} needs the query's dense embedding")
        sparse = self.bm25.encode_query(req.query) if req.mode in ("sparse", "hybrid") else None
        return build_query(
            tenant,
            req,
            dense=np.asarray(dense, dtype=np.float32).tolist() if self.needs_dense(req) else None,
            sparse=sparse,
            image=self.image_query(req) if req.mode == "hybrid" else None,
            rrf_k=self.settings.rrf_k,
        )

    def run(
        self,
        tenant: str,
        req: SearchRequest,
        *,
        dense: np.ndarray | Sequence[float] | None = None,
        key: str | None = None,
        started: float | None = None,
    ) -> dict[str, Any]:
        """Query the legs, fuse them, check the tenant, and cache the answer under ``key``.

        Args:
            tenant: the caller's tenant. req: the request.
            dense: the query's text embedding (required when :meth:`needs_dense`).
            key: the cache key from :meth:`lookup` (``None``: do not cache).
            started: ``time.perf_counter()`` at the start of the request, for ``took_ms``.

        Returns:
            ``{"results": [...], "took_ms": float, "cached": false}``; results by descending score.

        Raises:
            ServiceUnavailableError: the vector store cannot be reached.
            ValueError: ``dense`` is missing for a mode that needs it.
        """
        return self.run_many(tenant, [req], dense=[dense], keys=[key], started=started)[0]

    def run_many(
        self,
        tenant: str,
        reqs: Sequence[SearchRequest],
        *,
        dense: Sequence[np.ndarray | Sequence[float] | None],
        keys: Sequence[str | None],
        started: float | None = None,
    ) -> list[dict[str, Any]]:
        """:meth:`run` for several requests of one tenant, in one vector-store call (the store's batch query)."""
        started = time.perf_counter() if started is None else started
        requests = [self.request(tenant, req, d) for req, d in zip(reqs, dense)]
        wanted = [r for r in requests if r is not None]
        pages = [(req.offset, req.top_k) for req, r in zip(reqs, requests) if r is not None]
        answers = iter(self.store.query_pages(wanted, pages) if wanted else [])
        lists = []
        for request in requests:
            points = next(answers) if request is not None else []
            results = []
            for point in points:
                if (point.payload or {}).get("tenant") != tenant:
                    logger.error("dropped point %s of another tenant from a search by tenant %r", point.id, tenant)
                    continue
                results.append(to_result(point))
            lists.append(results)
        lists = self._fence(tenant, lists)  # one catalog query for the whole batch
        out = []
        for req, results, key in zip(reqs, lists, keys):
            self._link_previews(tenant, results)
            if key is not None:
                self.cache.set_json(key, {"tenant": tenant, "results": results})
            out.append({"results": results, "took_ms": _ms(started), "cached": False})
            metrics.search_answered(req.mode, out[-1])
        return out

    def _fence(self, tenant: str, lists: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        """Drop the hits of deleted documents from result lists (one catalog query for all their documents).

        A delete marks the catalog before it removes the points, and a vector store that fails in between leaves
        them until ``jobs.reconcile``; without this check they would stay searchable. A page that lost hits here is
        shorter than ``top_k`` (only while such points remain).

        Raises:
            ServiceUnavailableError: neither the catalog nor Redis could say which documents are deleted.
        """
        hits = {(r["document_id"], r["version"]) for results in lists for r in results
                if r.get("document_id") and r.get("version") is not None}
        hidden = self.tombstones.hidden(tenant, hits) if hits else set()
        if not hidden:
            return lists
        logger.warning("dropped %d hit(s) of deleted documents %s (their points await jobs.reconcile)",
                       sum((r["document_id"], r["version"]) in hidden for results in lists for r in results),
                       sorted({d for d, _ in hidden}))
        return [[r for r in results if (r.get("document_id"), r.get("version")) not in hidden] for results in lists]

    def _link_previews(self, tenant: str, results: list[dict[str, Any]]) -> None:
        """Give every link of ``results`` a ``preview`` (the first ``PREVIEW_CHARS`` characters of the linked chunk's
        text), in one ``retrieve`` call for the links that were built without one (image chunks get their OCR text
        after linking; see ``pipelines.link``). Links to points of another tenant, or to points that are gone, keep
        no preview; a store error leaves the previews out rather than failing the search."""
        from pipelines.link import PREVIEW_CHARS

        wanted = {link["id"] for r in results for link in r.get("links") or [] if "preview" not in link and "id" in link}
        if not wanted:
            return
        try:
            records = self.store.retrieve(sorted(wanted), with_payload=["text", "tenant"])
        except ServiceUnavailableError as exc:  # previews are a convenience; the answer stands without them
            logger.warning("link previews left out: %s", exc)
            return
        texts = {str(r.id): " ".join(str((r.payload or {}).get("text", "")).split()) for r in records
                 if (r.payload or {}).get("tenant") == tenant}
        for r in results:
            for link in r.get("links") or []:
                text = texts.get(link.get("id"))
                if "preview" not in link and text:
                    link["preview"] = text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1].rstrip() + "\u2026"

    # --- all three ---------------------------------------------------------------------------------------------

    def search(self, tenant: str, req: SearchRequest) -> dict[str, Any]:
        """Run one search in this thread (lookup, embed, run).

        Returns:
            ``{"results": [...], "took_ms": float, "cached": bool}``; ``results`` is sorted by descending score.

        Raises:
            ServiceUnavailableError: the vector store cannot be reached.
        """
        started = time.perf_counter()
        key, hit = self.lookup(tenant, req)
        if hit is not None:
            return hit
        dense = self.embed_queries([req.query])[0] if self.needs_dense(req) else None
        return self.run(tenant, req, dense=dense, key=key, started=started)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
