"""qdrant-client's data model (``qdrant_client.models``) in Qdrant Edge's types (``qdrant_edge``), and back.

The product speaks one vocabulary for filters, points and queries (``core.vectorstore.schema``); the server backend
sends it as it is, and the Edge backend turns it into ``qdrant_edge`` objects here. Only the shapes Sluice builds are
translated; anything else raises ``TypeError`` naming it, so a new shape fails loudly, never silently matches all.

One quirk of qdrant-edge-py 0.9 is handled here: ``MatchValue(True)`` arrives in the engine as the integer 1 (a
Python ``bool`` is an ``int``), so a boolean match never matches; a ``numpy.bool_`` arrives as a boolean.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import qdrant_edge as qe
from qdrant_client import models


def value(v: Any) -> Any:
    """A match value as the engine must receive it (see the module docstring for booleans)."""
    return np.bool_(v) if isinstance(v, bool) else v


def _time(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, dt.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=dt.timezone.utc)
        return v.isoformat()
    if isinstance(v, dt.date):
        return dt.datetime(v.year, v.month, v.day, tzinfo=dt.timezone.utc).isoformat()
    return str(v)


def condition(c: Any) -> Any:
    """One filter condition."""
    if isinstance(c, models.Filter):
        return filter_(c)
    if isinstance(c, models.FieldCondition):
        if c.match is not None:
            m = c.match
            if isinstance(m, models.MatchValue):
                return qe.FieldCondition(c.key, match=qe.MatchValue(value(m.value)))
            if isinstance(m, models.MatchAny):
                return qe.FieldCondition(c.key, match=qe.MatchAny(list(m.any)))
            if isinstance(m, models.MatchExcept):
                return qe.FieldCondition(c.key, match=qe.MatchExcept(list(m.except_)))
            if isinstance(m, models.MatchText):
                return qe.FieldCondition(c.key, match=qe.MatchText(m.text))
            raise TypeError(f"match {type(m).__name__} on {c.key!r} has no Edge translation")
        if c.range is not None:
            r = c.range
            if isinstance(r, models.DatetimeRange):
                return qe.FieldCondition(c.key, range=qe.RangeDateTime(gte=_time(r.gte), gt=_time(r.gt),
                                                                      lte=_time(r.lte), lt=_time(r.lt)))
            return qe.FieldCondition(c.key, range=qe.RangeFloat(gte=r.gte, gt=r.gt, lte=r.lte, lt=r.lt))
        if c.is_empty is not None:
            return qe.FieldCondition(c.key, is_empty=c.is_empty)
        if c.is_null is not None:
            return qe.FieldCondition(c.key, is_null=c.is_null)
        raise TypeError(f"field condition on {c.key!r} has no Edge translation")
    if isinstance(c, models.HasIdCondition):
        return qe.HasIdCondition({point_id(i) for i in c.has_id})
    if isinstance(c, models.IsEmptyCondition):
        return qe.IsEmptyCondition(c.is_empty.key)
    if isinstance(c, models.IsNullCondition):
        return qe.IsNullCondition(c.is_null.key)
    if isinstance(c, models.HasVectorCondition):
        return qe.HasVectorCondition(c.has_vector)
    raise TypeError(f"condition {type(c).__name__} has no Edge translation")


def _conditions(cs: Any) -> list[Any] | None:
    if cs is None:
        return None
    if not isinstance(cs, list):
        cs = [cs]
    return [condition(c) for c in cs]


def filter_(f: models.Filter | None) -> qe.Filter | None:
    """A filter (``None`` stays ``None``: every point)."""
    if f is None:
        return None
    min_should = None
    if f.min_should is not None:
        min_should = qe.MinShould(_conditions(f.min_should.conditions) or [], f.min_should.min_count)
    return qe.Filter(must=_conditions(f.must), should=_conditions(f.should), must_not=_conditions(f.must_not),
                     min_should=min_should)


def point_id(i: Any) -> Any:
    """A point id: UUID strings as UUIDs, integers as they are."""
    if isinstance(i, (int, uuid.UUID)):
        return i
    return uuid.UUID(str(i))


def named_vector(v: Any) -> Any:
    if isinstance(v, models.SparseVector):
        return qe.SparseVector(list(v.indices), [float(x) for x in v.values])
    if isinstance(v, tuple):  # (indices, values): the packed form of a sparse vector
        return qe.SparseVector(list(v[0]), list(v[1]))
    return v


def point(p: models.PointStruct | tuple) -> qe.Point:
    """A point: a ``PointStruct`` or its packed form ``(id, {name: vector}, payload)``."""
    if isinstance(p, tuple):
        pid, vectors, payload = p
    else:
        pid, vectors, payload = p.id, p.vector, p.payload
    if not isinstance(vectors, dict):
        raise TypeError("points carry named vectors only")
    return qe.Point(point_id(pid), {name: named_vector(v) for name, v in vectors.items()}, payload or {})


def params(p: models.SearchParams | None) -> qe.SearchParams | None:
    if p is None:
        return None
    idf = None
    if isinstance(p.idf, models.IdfCorpusParams):
        idf = qe.IdfParams(corpus=filter_(p.idf.corpus))
    return qe.SearchParams(hnsw_ef=p.hnsw_ef, exact=bool(p.exact), indexed_only=bool(p.indexed_only), idf=idf)


def scoring(query: Any, using: str | None) -> Any:
    """A query's scoring part: a vector (dense list or sparse), a fusion, or ``None``."""
    if query is None:
        return None
    if isinstance(query, models.NearestQuery):
        query = query.nearest
    if isinstance(query, models.FusionQuery):
        if query.fusion == models.Fusion.DBSF:
            return qe.Fusion.Dbsf()
        return qe.Fusion.Rrf(k=60)
    if isinstance(query, models.RrfQuery):
        return qe.Fusion.Rrf(k=int(query.rrf.k if query.rrf.k is not None else 60), weights=query.rrf.weights)
    if isinstance(query, models.SparseVector):
        return qe.Query.Nearest(named_vector(query), using=using)
    if isinstance(query, np.ndarray):
        query = query.tolist()
    if isinstance(query, list):
        return qe.Query.Nearest([float(x) for x in query], using=using)
    raise TypeError(f"query {type(query).__name__} has no Edge translation")


def prefetch(p: models.Prefetch) -> qe.Prefetch:
    inner = p.prefetch
    if inner is not None and not isinstance(inner, list):
        inner = [inner]
    return qe.Prefetch(limit=int(p.limit or 10), query=scoring(p.query, p.using),
                       prefetches=[prefetch(x) for x in inner] if inner else None, params=params(p.params),
                       filter=filter_(p.filter), score_threshold=p.score_threshold)


def with_payload(w: Any) -> Any:
    if w is None or isinstance(w, bool):
        return bool(w)
    if isinstance(w, list):
        return list(w)
    if isinstance(w, models.PayloadSelectorInclude):
        return list(w.include)
    raise TypeError(f"with_payload {type(w).__name__} has no Edge translation")


def with_vectors(w: Any) -> Any:
    if w is None or isinstance(w, bool):
        return bool(w)
    return list(w)


def query_request(r: models.QueryRequest) -> qe.QueryRequest:
    """A query of the Query API (one leg, or prefetch legs fused)."""
    inner = r.prefetch
    if inner is not None and not isinstance(inner, list):
        inner = [inner]
    return qe.QueryRequest(limit=int(r.limit or 10), offset=int(r.offset or 0), query=scoring(r.query, r.using),
                           prefetches=[prefetch(x) for x in inner] if inner else None,
                           with_vector=with_vectors(r.with_vector), with_payload=with_payload(r.with_payload),
                           filter=filter_(r.filter), score_threshold=r.score_threshold, params=params(r.params))


def _vectors_back(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, dict):
        return {name: (models.SparseVector(indices=list(x.indices), values=list(x.values))
                       if isinstance(x, qe.SparseVector) else x) for name, x in v.items()}
    return v


def scored(points: Sequence[Any]) -> list[models.ScoredPoint]:
    """The engine's scored points as qdrant-client's (ids as strings, like the server answers)."""
    return [models.ScoredPoint.model_construct(id=str(p.id), version=int(p.version), score=float(p.score),
                                               payload=p.payload, vector=_vectors_back(p.vector)) for p in points]


def records(points: Sequence[Any]) -> list[models.Record]:
    return [models.Record.model_construct(id=str(p.id), payload=p.payload, vector=_vectors_back(p.vector))
            for p in points]
