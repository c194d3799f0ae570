"""The vector store (README, "Vector store"): one ``VectorStore``, two backends, one payload schema.

``core.vectorstore.store`` has the operations; ``schema`` the payload fields and the filters built on them;
``edge`` (Qdrant Edge, embedded, owned by the actor of ``owner``) and ``server`` (a Qdrant server through
qdrant-client) the backends, and ``backend`` what they share (a ranking's page cut where the points are); ``legacy``
recognises the first embedded store's layout.
"""

from core.vectorstore.schema import (
    IMAGE_VECTOR,
    INDEXED_FIELDS,
    SPARSE_VECTOR,
    TEXT_VECTOR,
    CollectionInfo,
    CollectionSpec,
    one_version_per_document,
    tenant_filter,
    tenant_only,
    version_filter,
)
from core.vectorstore.owner import embedded_actor_name
from core.vectorstore.store import VectorStore, make_backend

__all__ = [
    "IMAGE_VECTOR", "INDEXED_FIELDS", "SPARSE_VECTOR", "TEXT_VECTOR", "CollectionInfo", "CollectionSpec",
    "VectorStore", "embedded_actor_name", "make_backend", "one_version_per_document", "tenant_filter",
    "tenant_only", "version_filter",
]
