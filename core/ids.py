"""Deterministic identifiers and the document path rules.

Ids: ``document_id = uuid5(NS, tenant + "/" + normalised path)`` and
``point_id = uuid5(NS, document_id/version/modality/chunk_index)``, so a retried write can never duplicate a point.
"""

from __future__ import annotations

import unicodedata
import uuid

#: The namespace of every Sluice uuid5 (RFC 9562, section 5.5).
NAMESPACE = uuid.UUID("6f1c1d2e-5b7a-5c1e-9a43-51c3e0d1ce00")

#: S3 object keys are at most 1024 bytes of UTF-8 (AWS S3 documentation, "Naming Amazon S3 objects").
MAX_KEY_BYTES = 1024
#: Most file systems limit one name to 255 bytes.
MAX_SEGMENT_BYTES = 255


def _check_tenant(tenant: str) -> str:
    """``tenant`` if it is canonical (``core.access.canonical_tenant``): no other spelling reaches an object key, a
    document id or a payload, whoever asks (an API key's tenant, ``jobs.ingest --tenant``, an object's key)."""
    from core.access import InvalidTenant, canonical_tenant
    from core.errors import InvalidPathError

    try:
        return canonical_tenant(tenant)
    except InvalidTenant as exc:
        raise InvalidPathError(tenant, str(exc)) from None


def normalise_path(path: str) -> str:
    """Return the canonical form of a document path.

    The rules: Unicode NFC (so NFC and NFD spellings are one document); ``/``-separated (a ``\\`` is not a
    separator); relative; no empty, blank (only white space), ``.`` or ``..`` segment; no control character
    (Unicode category Cc); no segment over 255 bytes of UTF-8.

    Args:
        path: the path as the client or the object store gave it.

    Returns:
        The NFC path, unchanged otherwise.

    Raises:
        InvalidPathError: naming the rule that was broken.
    """
    from core.errors import InvalidPathError

    if not isinstance(path, str) or not path:
        raise InvalidPathError(str(path), "the path is empty")
    nfc = unicodedata.normalize("NFC", path)
    if nfc.startswith("/"):
        raise InvalidPathError(path, "the path must be relative (it starts with '/')")
    for segment in nfc.split("/"):
        if segment == "":
            raise InvalidPathError(path, "the path has an empty segment ('//' or a trailing '/')")
        if segment.isspace():
            raise InvalidPathError(path, "a segment is only white space")
        if segment in {".", ".."}:
            raise InvalidPathError(path, f"the segment {segment!r} is not allowed")
        if any(unicodedata.category(c) == "Cc" for c in segment):
            raise InvalidPathError(path, "the path contains a control character")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise InvalidPathError(path, f"a segment is longer than {MAX_SEGMENT_BYTES} bytes")
    return nfc


def object_key(tenant: str, path: str) -> str:
    """The S3 object key of a document: ``<tenant>/<normalised path>``.

    Raises:
        InvalidPathError: for a bad tenant or path, or a key over 1024 bytes of UTF-8.
    """
    from core.errors import InvalidPathError

    key = f"{_check_tenant(tenant)}/{normalise_path(path)}"
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidPathError(path, f"the object key is longer than {MAX_KEY_BYTES} bytes")
    return key


def document_id(tenant: str, path: str) -> str:
    """``uuid5(NAMESPACE, tenant + "/" + normalised path)`` as a string.

    Raises:
        InvalidPathError: for a bad tenant or path.
    """
    return str(uuid.uuid5(NAMESPACE, f"{_check_tenant(tenant)}/{normalise_path(path)}"))


def point_id(document_id: str, version: int, modality: str, chunk_index: int) -> str:
    """``uuid5(NAMESPACE, "document_id/version/modality/chunk_index")`` as a string: a Qdrant point id."""
    return str(uuid.uuid5(NAMESPACE, f"{document_id}/{int(version)}/{modality}/{int(chunk_index)}"))
