"""The hybrid search engine behind ``POST /v1/search``: dense and BM25 legs, fused by Qdrant, under a tenant filter.

Hybrid mode sends one prefetch per leg (dense ``text``, sparse ``bm25``), each carrying the tenant filter, and fuses
them with Reciprocal Rank Fusion (Cormack, Clarke and Büttcher, SIGIR 2009; Qdrant documentation, "Hybrid Queries")
or DBSF. The fused list is checked against the tenant once more before it is returned. Answers are cached in Redis
under the index generation (``core.cache``), so an ingest makes every older answer unreachable.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from qdrant_client import models

from core.cache import Cache
from core.settings import Settings
from core.vectorstore import SPARSE_VECTOR, TEXT_VECTOR, VectorStore, tenant_filter

logger = logging.getLogger(__name__)

#: Candidates each leg hands to fusion, at least (more than ``top_k`` makes fusion meaningful).
MIN_PREFETCH = 50
PREVIEW_CHARS = 160


class SearchFilters(BaseModel):
    """Optional restrictions of a search.

    Attributes:
        path_prefix: only documents whose path starts with this folder (``"docs"`` or ``"docs/"``) or equals it.
        content_types: only these MIME types. document_ids: only these documents.
    """

    model_config = {"extra": "forbid"}

    path_prefix: str | None = None
    content_types: list[str] | None = None
    document_ids: list[str] | None = None


class SearchRequest(BaseModel):
    """The body of ``POST /v1/search`` (ARCHITECTURE.md, "Interfaces")."""

    model_config = {"extra": "forbid"}

    query: str = Field(min_length=1, max_length=4096)
    top_k: int = Field(default=10, ge=1, le=100)
    offset: int = Field(default=0, ge=0, le=10_000)
    mode: Literal["hybrid", "dense", "sparse"] = "hybrid"
    fusion: Literal["rrf", "dbsf"] = "rrf"
    filters: SearchFilters | None = None
    modalities: list[Literal["text", "image", "audio"]] | None = None
    version: Literal["latest"] | int = "latest"

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query is blank")
        return value


def _conditions(req: SearchRequest) -> list[models.Condition]:
    extra: list[models.Condition] = []
    f = req.filters
    if f and f.path_prefix:
        folder = f.path_prefix.strip("/")
        extra.append(models.FieldCondition(key="dirs", match=models.MatchValue(value=folder)))
    if f and f.content_types:
        extra.append(models.FieldCondition(key="content_type", match=models.MatchAny(any=f.content_types)))
    if f and f.document_ids:
        extra.append(models.FieldCondition(key="document_id", match=models.MatchAny(any=f.document_ids)))
    if req.modalities:
        extra.append(models.FieldCondition(key="modality", match=models.MatchAny(any=list(req.modalities))))
    if isinstance(req.version, int):
        extra.append(models.FieldCondition(key="version", match=models.MatchValue(value=req.version)))
    return extra


def to_result(point: models.ScoredPoint) -> dict[str, Any]:
    """One result of the contract from a scored point."""
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
    }
    for optional in ("page", "start_s", "end_s", "heading", "content_type"):
        if p.get(optional) is not None:
            result[optional] = p[optional]
    return result


class SearchEngine:
    """Answers search requests for a tenant.

    Args:
        settings: vector store, model, BM25 and cache settings.
        encoder: an object with ``encode(list[str]) -> float32 (n, dim)``; by default the configured text model.
        store, cache: injection seams (default: built from ``settings``).
    """

    def __init__(self, settings: Settings, *, encoder: Any = None, store: VectorStore | None = None, cache: Cache | None = None) -> None:
        from pipelines.sparse import Bm25Encoder

        self.settings = settings
        if encoder is None:
            from pipelines.embed.dense import TextEncoder

            encoder = TextEncoder(settings.text_model, batch_size=settings.embed_batch_size)
        self.encoder = encoder
        self.store = store or VectorStore(settings)
        self.cache = cache or Cache(settings)
        self.bm25 = Bm25Encoder(k1=settings.bm25_k1, b=settings.bm25_b, avg_len=settings.bm25_avg_len)

    def warm_up(self) -> None:
        """Load the model and open the store (idempotent)."""
        if hasattr(self.encoder, "warm_up"):
            self.encoder.warm_up()
        self.store.check()

    def search(self, tenant: str, req: SearchRequest) -> dict[str, Any]:
        """Run one search.

        Returns:
            ``{"results": [...], "took_ms": float, "cached": bool}``; ``results`` is sorted by descending score.

        Raises:
            ServiceUnavailableError: the vector store cannot be reached.
        """
        started = time.perf_counter()
        params = {"tenant": tenant, **req.model_dump()}
        generation = self.cache.generation()
        key = self.cache.key("search", generation, params) if generation is not None else None
        if key is not None:
            hit = self.cache.get_json(key)
            if hit is not None:
                return {"results": hit, "took_ms": round((time.perf_counter() - started) * 1000, 3), "cached": True}

        flt = tenant_filter(tenant, extra=_conditions(req), latest_only=req.version == "latest")
        limit = req.top_k + req.offset
        prefetch_limit = max(limit, MIN_PREFETCH)
        legs: list[models.Prefetch] = []
        if req.mode in ("dense", "hybrid"):
            dense = self.encoder.encode([req.query])[0].tolist()
            legs.append(models.Prefetch(query=dense, using=TEXT_VECTOR, filter=flt, limit=prefetch_limit))
        if req.mode in ("sparse", "hybrid"):
            indices, values = self.bm25.encode_query(req.query)
            if indices:
                legs.append(
                    models.Prefetch(
                        query=models.SparseVector(indices=indices, values=values), using=SPARSE_VECTOR, filter=flt, limit=prefetch_limit
                    )
                )
        if not legs:  # a sparse query made only of stop words
            points: list[models.ScoredPoint] = []
        elif len(legs) == 1:
            leg = legs[0]
            points = self.store.query(query=leg.query, using=leg.using, query_filter=flt, limit=req.top_k, offset=req.offset, with_payload=True)
        else:
            fusion = (
                models.RrfQuery(rrf=models.Rrf(k=self.settings.rrf_k))
                if req.fusion == "rrf"
                else models.FusionQuery(fusion=models.Fusion.DBSF)
            )
            points = self.store.query(prefetch=legs, query=fusion, limit=req.top_k, offset=req.offset, with_payload=True)
        results = [to_result(p) for p in points if (p.payload or {}).get("tenant") == tenant]
        if key is not None:
            self.cache.set_json(key, results)
        return {"results": results, "took_ms": round((time.perf_counter() - started) * 1000, 3), "cached": False}
