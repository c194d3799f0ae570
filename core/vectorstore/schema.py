"""The point payload schema of the Sluice collection and every filter built on it (README, "Vector store").

One module owns the names: the named vectors, the payload fields that get an index, and the filters the product
asks for (the caller's tenant, a document, a version, the shown version, a search's restrictions). Filters are
written in qdrant-client's data model (``qdrant_client.models``: plain pydantic data, no client); the server backend
sends them as they are and the Edge backend translates them (``core.vectorstore.edge_translate``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

from qdrant_client import models

from core.metadata import PROPERTY_FIELDS

TEXT_VECTOR = "text"
SPARSE_VECTOR = "bm25"
#: The dense CLIP vector of image chunks (only in collections built with an image model).
IMAGE_VECTOR = "image"

#: Payload fields that get an index (filters on them must stay fast as the collection grows). ``tenant`` is the
#: tenant index (``is_tenant``): Qdrant keeps each tenant's points together and plans tenant-filtered searches on it.
INDEXED_FIELDS: dict[str, models.PayloadSchemaType] = {
    "tenant": models.PayloadSchemaType.KEYWORD,
    "document_id": models.PayloadSchemaType.KEYWORD,
    "is_latest": models.PayloadSchemaType.BOOL,
    "modality": models.PayloadSchemaType.KEYWORD,
    "kind": models.PayloadSchemaType.KEYWORD,
    "path": models.PayloadSchemaType.KEYWORD,
    "dirs": models.PayloadSchemaType.KEYWORD,
    "version": models.PayloadSchemaType.INTEGER,
    "chunk_index": models.PayloadSchemaType.INTEGER,
    "content_type": models.PayloadSchemaType.KEYWORD,
    "created_at": models.PayloadSchemaType.DATETIME,
}
_PROPERTY_SCHEMA = {
    "keyword": models.PayloadSchemaType.KEYWORD,
    "integer": models.PayloadSchemaType.INTEGER,
    "float": models.PayloadSchemaType.FLOAT,
    "datetime": models.PayloadSchemaType.DATETIME,
}
#: The user's metadata and the extracted properties are payload objects: ``metadata.<key>``, ``properties.<key>``.
METADATA_FIELD, PROPERTIES_FIELD = "metadata", "properties"
INDEXED_FIELDS.update({f"{PROPERTIES_FIELD}.{name}": _PROPERTY_SCHEMA[kind] for name, kind in PROPERTY_FIELDS.items()})
#: The most metadata keys that get their own index in one collection (past it, filters on others still work,
#: by reading the payload of the points the other conditions leave).
MAX_METADATA_INDEXES = 256
TENANT_FIELD = "tenant"


@dataclasses.dataclass(frozen=True)
class CollectionSpec:
    """What a collection holds: the dense vectors' dimensions (cosine) and the sparse vectors (IDF modifier)."""

    dense: dict[str, int]
    sparse: tuple[str, ...] = (SPARSE_VECTOR,)


@dataclasses.dataclass(frozen=True)
class CollectionInfo:
    """What a backend reports of an existing collection."""

    dense: dict[str, int]
    sparse: tuple[str, ...]
    points: int = 0
    segments: int = 0
    indexed_vectors: int = 0


def match(key: str, value: Any) -> models.FieldCondition:
    """``key == value`` (a list: ``key`` is any of them)."""
    if isinstance(value, (list, tuple, set, frozenset)):
        return models.FieldCondition(key=key, match=models.MatchAny(any=list(value)))
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def tenant_only(tenant: str) -> models.Filter:
    """Every point of one tenant (the corpus of that tenant's BM25 IDF statistics)."""
    return models.Filter(must=[match(TENANT_FIELD, tenant)])


def tenant_filter(tenant: str, *, extra: Sequence[models.Condition] = (), latest_only: bool = True) -> models.Filter:
    """The filter every query leg carries: ``tenant == caller`` (and ``is_latest`` unless asked otherwise)."""
    must: list[models.Condition] = [match(TENANT_FIELD, tenant)]
    if latest_only:
        must.append(match("is_latest", True))
    must.extend(extra)
    return models.Filter(must=must)


def document(document_id: str) -> models.FieldCondition:
    return match("document_id", document_id)


def version(number: int) -> models.FieldCondition:
    return match("version", int(number))


def version_filter(document_id: str, number: int) -> models.Filter:
    """The points of one version of one document."""
    return models.Filter(must=[document(document_id), version(number)])


def search_conditions(
    *,
    path_prefix: str | None = None,
    content_types: Sequence[str] | None = None,
    document_ids: Sequence[str] | None = None,
    created_after: dt.datetime | None = None,
    created_before: dt.datetime | None = None,
    modalities: Sequence[str] | None = None,
    version_number: int | None = None,
    metadata: dict[str, Any] | None = None,
    properties: dict[str, Any] | None = None,
) -> list[models.Condition]:
    """A search's own restrictions (everything but the tenant and ``is_latest``), each on the payload schema.

    ``path_prefix`` matches a folder at any depth (payload ``dirs``) or an exact path; ``created_*`` compare with the
    version's registration time (``created_at``, half-open: ``[after, before)``). ``metadata`` and ``properties``
    come checked by ``core.metadata.validate_metadata_filter``/``validate_property_filter``: each key is one
    condition (keys ANDed); a list value matches any of its items (a stored list matches when any item does); a
    property range ``{"gte": ..., "lte": ...}`` compares numbers or times.
    """
    extra: list[models.Condition] = []
    if path_prefix:
        folder = path_prefix.strip("/")
        extra.append(models.Filter(should=[match("dirs", folder), match("path", folder)]))
    if content_types:
        extra.append(match("content_type", list(content_types)))
    if document_ids:
        extra.append(match("document_id", list(document_ids)))
    if created_after or created_before:
        extra.append(models.FieldCondition(key="created_at", range=models.DatetimeRange(gte=created_after, lt=created_before)))
    if modalities:
        extra.append(match("modality", sorted(set(modalities))))
    if version_number is not None:
        extra.append(version(version_number))
    for key, value in (metadata or {}).items():
        extra.append(_value_condition(f"{METADATA_FIELD}.{key}", value))
    for key, value in (properties or {}).items():
        field = f"{PROPERTIES_FIELD}.{key}"
        extra.append(_range_condition(field, value) if isinstance(value, dict) else _value_condition(field, value))
    return extra


def metadata_indexes(metadata: Sequence[dict[str, Any]]) -> dict[str, models.PayloadSchemaType]:
    """The indexes the keys of these metadata want: a keyword index for each key holding strings (or lists of them).

    Numbers and booleans are matched without an index of their own (a key may hold a number in one document and a
    string in another; one keyword index serves the strings).
    """
    wanted: dict[str, models.PayloadSchemaType] = {}
    for fields in metadata:
        for key, value in fields.items():
            if isinstance(value, (str, list)):
                wanted[f"{METADATA_FIELD}.{key}"] = models.PayloadSchemaType.KEYWORD
    return wanted


def _value_condition(key: str, value: Any) -> models.Condition:
    """``key`` equals ``value``, or any item of a list ``value``.

    Strings and integers match exactly (a list of only strings or only integers in one ``MatchAny``); a float that
    is not whole matches as the range ``[v, v]`` (Qdrant matches floats by range only); a mixed list is a ``should``
    of its items.
    """
    def one(v: Any) -> models.Condition:
        if isinstance(v, float):
            return match(key, int(v)) if v.is_integer() else models.FieldCondition(key=key, range=models.Range(gte=v, lte=v))
        return match(key, v)

    if not isinstance(value, list):
        return one(value)
    if all(isinstance(v, str) for v in value) or all(type(v) is int for v in value):
        return match(key, value)
    return models.Filter(should=[one(v) for v in value])


def _range_condition(key: str, bounds: dict[str, Any]) -> models.FieldCondition:
    if any(isinstance(b, dt.datetime) for b in bounds.values()):
        return models.FieldCondition(key=key, range=models.DatetimeRange(**bounds))
    return models.FieldCondition(key=key, range=models.Range(**bounds))


#: Payload fields every candidate of a ranking carries: the version fence needs ``document_id`` and ``version``,
#: the search's tenant check ``tenant``.
RANKING_FIELDS = ("tenant", "document_id", "version")


def ranked_page(points: Sequence[Any], offset: int, limit: int) -> list[Any]:
    """The page ``[offset, offset + limit)`` of a ranking: one version per document (:func:`one_version_per_document`),
    equal scores ordered by point id (an engine orders ties as its segments come, which differs between calls)."""
    kept = one_version_per_document(points)
    return sorted(kept, key=lambda p: (-float(p.score), str(p.id)))[offset : offset + limit]


def one_version_per_document(points: Sequence[Any]) -> list[Any]:
    """Keep, for each document, only the points of the highest version among ``points`` (order preserved).

    This is the search side of the version switch (:meth:`VectorStore.set_latest`): while the flags move, the old
    and the new version are both ``is_latest`` for a moment, and an answer must never mix them. Points without a
    ``document_id``/``version`` payload are kept as they are.
    """
    top: dict[str, int] = {}
    for p in points:
        payload = getattr(p, "payload", None) or {}
        doc, number = payload.get("document_id"), payload.get("version")
        if doc is not None and isinstance(number, int):
            top[doc] = max(top.get(doc, number), number)
    return [
        p
        for p in points
        if (getattr(p, "payload", None) or {}).get("document_id") not in top
        or (p.payload or {}).get("version") == top[p.payload["document_id"]]
    ]
