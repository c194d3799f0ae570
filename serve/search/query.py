"""The search request and the Qdrant Query API call it becomes: filters, one prefetch per leg, fusion.

Pure functions, no I/O: :func:`build_filter` turns a request into the filter every leg carries (the caller's
tenant first; the conditions come from ``core.vectorstore.schema``), :func:`build_query` into one Query API request
(``qdrant_client.models.QueryRequest``, the data model both vector-store backends take).

BM25's IDF is the tenant's own: the sparse leg scopes the IDF statistics to the caller's tenant
(``SearchParams(idf=IdfCorpusParams(corpus=tenant))``), so one tenant's documents never change another's scores.

Fusion (Qdrant documentation, "Hybrid and Multi-Stage Queries"): each leg is a ``Prefetch`` with its own filter and
limit, and the outer query fuses them server-side: ``RrfQuery(rrf=Rrf(k=...))`` (Reciprocal Rank Fusion, Cormack,
Clarke and Büttcher, SIGIR 2009: ``score(d) = sum over legs of 1 / (k + rank(d))``; qdrant-client ≥ 1.15 takes ``k``)
or ``FusionQuery(fusion=Fusion.DBSF)`` (Distribution-Based Score Fusion: each leg's scores are normalised by their
mean ± 3 standard deviations, then summed). One leg alone is queried directly, without fusion.

Pagination: the store ranks the first ``max(MIN_PREFETCH, top_k + offset)`` of the ranking (each prefetch as
many candidates) and cuts the page out of it after ordering ties by point id, reading full payloads for the page
only (``VectorStore.query_pages``), so every page is a slice of one deterministic ranking as long as
``top_k + offset <= MIN_PREFETCH`` (an engine orders equal scores as its segments come, which differs between calls
of different limits). Deeper pages fuse deeper candidate lists, and fusion may then reorder results
near the page boundary (a fused score depends on how deep each leg was read).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field, StrictInt, field_validator, model_validator
from qdrant_client import models

#: IMAGE_VECTOR: the dense vector of image points (CLIP), queried with a CLIP text embedding when ``modalities``
#: has ``image``.
from core.vectorstore import IMAGE_VECTOR, SPARSE_VECTOR, TEXT_VECTOR, tenant_filter, tenant_only
from core.metadata import validate_metadata_filter, validate_property_filter
from core.vectorstore.schema import search_conditions

#: Candidates each leg hands to fusion, at least: enough for ``top_k=100`` and for fusion to matter.
MIN_PREFETCH = 100
#: The most queries of one ``POST /v1/search/batch``.
MAX_BATCH_QUERIES = 64

Mode = Literal["hybrid", "dense", "sparse"]
Fusion = Literal["rrf", "dbsf"]
#: The fusion of ``mode: hybrid`` when the request names none. DBSF measured best on Vaswani
#: (``benchmarks/retrieval_quality.py``, MAP@100: DBSF 0.329, RRF k=60 0.317, RRF k=2 0.302, BM25 alone 0.270).
DEFAULT_FUSION: Fusion = "dbsf"


class SearchFilters(BaseModel):
    """Optional restrictions of a search; every one holds on every leg.

    Attributes:
        path_prefix: only documents in this folder (``"docs"`` or ``"docs/"``, at any depth) or at this exact path.
        content_types: only these MIME types (``"text/markdown"``, ``"application/pdf"``, ...).
        document_ids: only these documents.
        created_after: only chunks whose version was created at or after this time (payload ``created_at``).
        created_before: only chunks whose version was created before this time. A time without a zone is UTC.
            Points written without ``created_at`` never match a time filter.
        metadata: only documents whose user metadata has these values (``{"key": value}``: exact match, keys
            ANDed; a list value matches any of its items). properties: the same on the extracted properties
            (``core.metadata.PROPERTY_FIELDS``), plus ranges ``{"key": {"gte": x, "lte": y}}`` for numbers and times.
            Both are checked by ``core.metadata``; an error names the key.
    """

    model_config = {"extra": "forbid"}

    path_prefix: str | None = Field(default=None, min_length=1, max_length=1024)
    content_types: list[str] | None = Field(default=None, min_length=1, max_length=50)
    document_ids: list[str] | None = Field(default=None, min_length=1, max_length=1000)
    created_after: dt.datetime | None = None
    created_before: dt.datetime | None = None
    metadata: dict[str, Any] | None = None
    properties: dict[str, Any] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else validate_metadata_filter(value)

    @field_validator("properties")
    @classmethod
    def _properties(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else validate_property_filter(value)

    @field_validator("created_after", "created_before")
    @classmethod
    def _utc(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value

    @model_validator(mode="after")
    def _ordered(self) -> "SearchFilters":
        if self.created_after and self.created_before and self.created_after >= self.created_before:
            raise ValueError("created_after must be earlier than created_before")
        return self


class SearchRequest(BaseModel):
    """The body of ``POST /v1/search`` (docs/DESIGN.md, "Interfaces (contract)").

    Attributes:
        query: 1 to 4,096 characters, not blank. top_k: results per page, 1 to 100. offset: results to skip.
        mode: ``hybrid`` (dense + BM25, fused), ``dense`` or ``sparse``.
        fusion: ``rrf`` or ``dbsf`` (hybrid only); ``None``: :data:`DEFAULT_FUSION`.
        rrf_k: the RRF constant k (1 to 1,000); ``None``: ``settings.rrf_k``.
        filters: :class:`SearchFilters`. modalities: only points of these modalities; with ``image``, the image
            leg joins when the collection has an ``image`` vector and a CLIP text encoder is configured.
        version: ``latest`` (the default) or one version number.
    """

    model_config = {"extra": "forbid"}

    query: str = Field(min_length=1, max_length=4096)
    # Strict: JSON true or "5" is not a count (pydantic's lax mode would take them as 1 and 5).
    top_k: StrictInt = Field(default=10, ge=1, le=100)
    offset: StrictInt = Field(default=0, ge=0, le=10_000)
    mode: Mode = "hybrid"
    fusion: Fusion | None = None
    rrf_k: StrictInt | None = Field(default=None, ge=1, le=1000)
    filters: SearchFilters | None = None
    modalities: list[Literal["text", "image", "audio"]] | None = Field(default=None, min_length=1)
    version: Literal["latest"] | StrictInt = "latest"

    @field_validator("query")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("query is blank")
        return value

    @field_validator("version")
    @classmethod
    def _positive_version(cls, value: str | int) -> str | int:
        if isinstance(value, int) and value < 1:
            raise ValueError("version must be 'latest' or a number from 1")
        return value


class BatchRequest(BaseModel):
    """The body of ``POST /v1/search/batch``: up to :data:`MAX_BATCH_QUERIES` searches, answered in order."""

    model_config = {"extra": "forbid"}

    queries: list[SearchRequest] = Field(min_length=1, max_length=MAX_BATCH_QUERIES)


def filter_conditions(req: SearchRequest) -> list[models.Condition]:
    """The request's own conditions (everything but the tenant and ``is_latest``)."""
    f = req.filters or SearchFilters()
    return search_conditions(
        path_prefix=f.path_prefix, content_types=f.content_types, document_ids=f.document_ids,
        created_after=f.created_after, created_before=f.created_before, modalities=req.modalities,
        version_number=req.version if isinstance(req.version, int) else None,
        metadata=f.metadata, properties=f.properties,
    )


def build_filter(tenant: str, req: SearchRequest) -> models.Filter:
    """The filter of every leg: ``tenant == caller``, ``is_latest`` (unless a version is asked) and the request's."""
    return tenant_filter(tenant, extra=filter_conditions(req), latest_only=req.version == "latest")


def prefetch_limit(req: SearchRequest) -> int:
    """Candidates per leg: at least ``top_k + offset``, and at least :data:`MIN_PREFETCH`."""
    return max(MIN_PREFETCH, req.top_k + req.offset)


def build_query(
    tenant: str,
    req: SearchRequest,
    *,
    dense: list[float] | None,
    sparse: tuple[list[int], list[float]] | None,
    image: list[float] | None = None,
    rrf_k: int = 60,
) -> models.QueryRequest | None:
    """The Query API request of a search.

    Args:
        tenant: the caller's tenant; its condition goes on every leg, and scopes the BM25 IDF statistics.
        req: the request (mode, fusion, filters, paging).
        dense: the query's text embedding for the ``text`` leg, or ``None`` to leave the leg out.
        sparse: the query's BM25 ``(indices, values)`` for the ``bm25`` leg; ``None`` or empty indices leave it out.
        image: the query's CLIP text embedding for the ``image`` leg, or ``None``.
        rrf_k: the RRF constant when the request names none.

    Returns:
        ``None`` when no leg is left (a sparse query made only of stop words); else one leg queried directly with
        the filter, or several legs (``prefetch``, each with the filter) fused by RRF or DBSF; ``limit`` is the
        ranking's depth (``VectorStore.query_pages`` cuts the request's page from it) and ``with_payload`` is set.
    """
    flt = build_filter(tenant, req)
    depth = prefetch_limit(req)
    idf = models.SearchParams(idf=models.IdfCorpusParams(corpus=tenant_only(tenant)))
    legs: list[models.Prefetch] = []
    if dense is not None:
        legs.append(models.Prefetch(query=dense, using=TEXT_VECTOR, filter=flt, limit=depth))
    if sparse is not None and sparse[0]:
        vector = models.SparseVector(indices=list(sparse[0]), values=list(sparse[1]))
        legs.append(models.Prefetch(query=vector, using=SPARSE_VECTOR, filter=flt, limit=depth, params=idf))
    if image is not None:
        legs.append(models.Prefetch(query=image, using=IMAGE_VECTOR, filter=flt, limit=depth))
    if not legs:
        return None
    page = {"limit": depth, "with_payload": True}
    if len(legs) == 1:
        leg = legs[0]
        return models.QueryRequest(query=leg.query, using=leg.using, filter=flt, params=leg.params, **page)
    if (req.fusion or DEFAULT_FUSION) == "rrf":
        fusion: models.Query = models.RrfQuery(rrf=models.Rrf(k=req.rrf_k or rrf_k))
    else:
        fusion = models.FusionQuery(fusion=models.Fusion.DBSF)
    return models.QueryRequest(prefetch=legs, query=fusion, **page)

