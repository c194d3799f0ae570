"""Errors of Sluice.

The hierarchy::

    SluiceError
    ├── ConfigurationError          a setting is missing or inconsistent
    ├── InvalidPathError            a document path breaks the path rules (also a ValueError)
    ├── ServiceUnavailableError     S3, PostgreSQL, Redis, Qdrant or Ray cannot be reached; ``service`` names it
    ├── CollectionNotFoundError     the vector store has no such collection (nothing was ingested into it yet)
    └── IngestError                 one document could not be ingested; ``reason`` is a stable reason code
        ├── ExtractionError         its bytes could not be turned into text
        └── EmbeddingError          its chunks could not be embedded

An ``IngestError`` fails one document version only (it goes to ``dead_letters``); a ``ServiceUnavailableError``
stops the job with a non-zero exit status.
"""

from __future__ import annotations


class SluiceError(Exception):
    """Base class of every error raised by Sluice code."""


class ConfigurationError(SluiceError):
    """A setting is missing, malformed or inconsistent with what is stored (e.g. a vector dimension)."""


class InvalidPathError(SluiceError, ValueError):
    """A document path breaks the rules of ``core.ids.normalise_path``.

    Attributes:
        path: the path as given.
        reason: what is wrong with it, in words.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"invalid path {path!r}: {reason}")
        self.path = path
        self.reason = reason


class ServiceUnavailableError(SluiceError):
    """An external service could not be reached after the bounded retries.

    Attributes:
        service: one of ``"s3"``, ``"postgres"``, ``"redis"``, ``"qdrant"``, ``"ray"``.
    """

    def __init__(self, service: str, detail: str) -> None:
        super().__init__(f"{service} is unavailable: {detail}")
        self.service = service
        self.detail = detail


class CollectionNotFoundError(SluiceError):
    """The vector store has no collection of this name (nothing has been ingested into it yet).

    Attributes:
        collection: the collection's name.
    """

    def __init__(self, collection: str) -> None:
        super().__init__(f"the vector store has no collection {collection!r}")
        self.collection = collection


class IngestError(SluiceError):
    """One document version failed; the others go on.

    Attributes:
        reason: a stable, machine-readable reason code (e.g. ``"empty_file"``, ``"pdf_corrupt"``).
        detail: a human-readable explanation.
    """

    stage = "ingest"

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ExtractionError(IngestError):
    """The bytes of a document could not be turned into text (corrupt, empty, binary, unsupported)."""

    stage = "extract"


class EmbeddingError(IngestError):
    """The chunks of a document could not be embedded."""

    stage = "embed"
