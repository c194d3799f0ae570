"""Domain types: a document, one of its versions, and a chunk.

These are plain dataclasses so they pickle cheaply between Ray workers.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Literal

VersionStatus = Literal["pending", "indexing", "indexed", "failed", "superseded"]
Modality = Literal["text", "image", "audio"]


@dataclasses.dataclass(frozen=True)
class Document:
    """A file of one tenant, identified by its normalised path.

    Attributes:
        document_id: ``core.ids.document_id(tenant, path)``.
        tenant: the owner; every query is filtered by it.
        path: the NFC, ``/``-separated relative path.
        latest_version: the version search shows (1-based), 0 while none is (before the first version is indexed,
            and after a delete). It only advances when a version is committed or restored.
        deleted: whether the document was deleted (its rows are kept; new bytes at the path make a new version).
        head_version: the newest content of the path: the version the next ingest indexes and the one new bytes
            are compared with (a restore moves it back to the restored version). 0 before the first.
    """

    document_id: str
    tenant: str
    path: str
    latest_version: int = 0
    deleted: bool = False
    head_version: int = 0


@dataclasses.dataclass(frozen=True)
class Version:
    """One content of a document, as stored in S3 and recorded in the catalog.

    Attributes:
        document_id, version: the key (version is 1-based and increases by one per new content).
        tenant, path: copied from the document for the pipeline's convenience.
        object_key: the S3 key holding the bytes.
        sha256: hex SHA-256 of the bytes.
        size: bytes.
        content_type: a MIME type, or ``""`` when unknown (the extractor sniffs the bytes).
        status: ``pending``, ``indexing``, ``indexed``, ``failed`` or ``superseded``.
        etag: the S3 ETag seen when the version was registered (lets ``--scan`` skip unchanged objects).
        chunk_count: chunks (= points) of the version once indexed; kept while its points are retained.
        error: ``"reason: detail"`` of the last failure. created_at: when it was registered.
        written_count: points written for the version before it was committed (``None`` otherwise), so a run that
            died after writing them all is finished without embedding again.
        metadata: the user's fields of this version (``core.metadata``); ``{}`` when none.
        properties: what the file says of itself, recorded when the version is indexed; ``{}`` before.
    """

    document_id: str
    version: int
    tenant: str
    path: str
    object_key: str
    sha256: str
    size: int
    content_type: str = ""
    status: VersionStatus = "pending"
    etag: str = ""
    chunk_count: int | None = None
    error: str | None = None
    created_at: datetime | None = None
    written_count: int | None = None
    metadata: dict = dataclasses.field(default_factory=dict, hash=False, compare=False)
    properties: dict = dataclasses.field(default_factory=dict, hash=False, compare=False)


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A piece of a document version small enough to embed.

    Attributes:
        chunk_index: 0-based position within the version (and modality).
        text: the chunk's text.
        page: 1-based page number for paginated sources (PDF), else ``None``.
        heading: the nearest heading above the chunk (Markdown, HTML), or ``""``.
        modality: ``text``, ``image`` or ``audio``.
        start_char, end_char: offsets of the chunk in the extracted text of its page or section.
    """

    chunk_index: int
    text: str
    page: int | None = None
    heading: str = ""
    modality: Modality = "text"
    start_char: int = 0
    end_char: int = 0
