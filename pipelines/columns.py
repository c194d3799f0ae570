"""Column names of the ingest pipeline's batches (one place, so stages cannot drift apart).

A *document row* (the source's output) has the ``VERSION_COLUMNS``. A *chunk row* (the chunk stage's output) adds
``CHUNK_COLUMNS``; a document that failed becomes one chunk row with ``chunk_index == -1`` and the error columns
set, so every outcome reaches the sink and, through it, the driver.
"""

DOCUMENT_ID = "document_id"
VERSION = "version"
TENANT = "tenant"
PATH = "path"
OBJECT_KEY = "object_key"
CONTENT_TYPE = "content_type"
SHA256 = "sha256"
SIZE = "size"
CREATED_AT = "created_at"  # when the version was registered: RFC 3339, UTC ("" when unknown)

VERSION_COLUMNS = (DOCUMENT_ID, VERSION, TENANT, PATH, OBJECT_KEY, CONTENT_TYPE, SHA256, SIZE, CREATED_AT)

CHUNK_INDEX = "chunk_index"
#: Chunks of the whole version (the same on each of its rows); the sink checks that all were written.
CHUNK_COUNT = "chunk_count"
TEXT = "text"
PAGE = "page"  # 1-based; 0 when the source has no pages
HEADING = "heading"
MODALITY = "modality"
SPARSE_INDICES = "sparse_indices"  # uint32 term ids, sorted
SPARSE_VALUES = "sparse_values"  # float32 BM25 term-frequency weights
EMBEDDING = "embedding"  # float32, shape (rows, dim)

ERROR_STAGE = "error_stage"
ERROR_REASON = "error_reason"  # "" when the row is a real chunk
ERROR_DETAIL = "error_detail"

CHUNK_COLUMNS = (CHUNK_INDEX, CHUNK_COUNT, TEXT, PAGE, HEADING, MODALITY, SPARSE_INDICES, SPARSE_VALUES,
                 ERROR_STAGE, ERROR_REASON, ERROR_DETAIL)
