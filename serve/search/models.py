"""The answers of the ``search`` application, as its OpenAPI document declares them (README, "HTTP API").

The requests are in ``serve.search.query`` beside the query they become. These models document and check the
shape; the engine builds the answers as plain dicts (``serve.search.engine.to_result``), so a field added there
must be added here too (the schemathesis test fails otherwise).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from serve.openapi import ErrorBody


class SearchHit(BaseModel):
    """One result: a chunk of a document version, with its score and its cross-modal links.

    Optional fields appear when the chunk has them: ``page`` (PDF), ``start_s``/``end_s`` (audio), ``heading``,
    ``content_type``, ``created_at``, ``kind``, ``box`` and ``parent_index`` (pictures and their page).
    """

    model_config = ConfigDict(extra="allow")

    point_id: str
    document_id: str
    version: int
    path: str
    modality: str
    chunk_index: int
    text: str
    score: float
    links: list[dict[str, Any]] = Field(description="related chunks of the same version (text, image, audio)")
    metadata: dict[str, Any]
    properties: dict[str, Any]
    page: int | None = None
    start_s: float | None = None
    end_s: float | None = None


class SearchAnswer(BaseModel):
    """The answer of ``POST /v1/search``: one page of results by descending score."""

    results: list[SearchHit]
    took_ms: float
    cached: bool


class BatchAnswer(BaseModel):
    """The answer of ``POST /v1/search/batch``: one answer per query, in order (an error for a query that failed)."""

    answers: list[SearchAnswer | ErrorBody]
    took_ms: float
