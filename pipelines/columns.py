"""Column names of the ingest pipeline's batches (one place, so stages cannot drift apart).

A *document row* (the source's output) has the ``VERSION_COLUMNS``. A *chunk row* (the prepare stage's output) adds
``CHUNK_COLUMNS``; a document that failed becomes one chunk row with ``chunk_index == -1`` and the error columns
set, so every outcome reaches the sink and, through it, the driver.

Rows by ``KIND`` (the multimodal columns, ``MEDIA_COLUMNS``, are on every chunk row, empty where unused):

==============  =========================================================================================
``""``          a text chunk (``modality == "text"``), ready to embed
``"picture"``   a *pending* picture (``IMAGE_BYTES`` holds its PNG): the image stage turns it into one
                ``"image"`` row and its ``"tile"`` rows; ``CHUNK_INDEX`` is its whole-picture chunk
``"image"``     a whole-picture chunk (``modality == "image"``), OCR text in ``TEXT``
``"tile"``      a tile of a picture (``BOX`` inside it, ``PARENT_INDEX`` its whole-picture chunk)
``"recording"`` a *pending* audio file (no samples: the audio stage reads the file from S3 again, decodes it
                and turns it into ``"segment"`` rows)
``"segment"``   a transcript segment (``modality == "audio"``, ``START_S``/``END_S`` in seconds)
==============  =========================================================================================
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
METADATA = "metadata"  # str: the version's user metadata as JSON (core.metadata.encode), from the catalog
#: str: what the file says of itself as JSON (core.metadata.PROPERTY_FIELDS); "{}" from the source, filled by the
#: stage that extracts the document (prepare; the audio stage adds the transcript's language)
PROPERTIES = "properties"

VERSION_COLUMNS = (DOCUMENT_ID, VERSION, TENANT, PATH, OBJECT_KEY, CONTENT_TYPE, SHA256, SIZE, CREATED_AT, METADATA,
                   PROPERTIES)

CHUNK_INDEX = "chunk_index"
#: Chunks of the whole version (the same on each of its rows); the sink checks that all were written.
CHUNK_COUNT = "chunk_count"
TEXT = "text"
PAGE = "page"  # 1-based; 0 when the source has no pages
HEADING = "heading"
MODALITY = "modality"
SPARSE_INDICES = "sparse_indices"  # uint32 term ids, sorted
SPARSE_VALUES = "sparse_values"  # float32 BM25 term-frequency weights
EMBEDDING = "embedding"  # float32, shape (rows, dim); a zero row where the row has no text vector

ERROR_STAGE = "error_stage"
ERROR_REASON = "error_reason"  # "" when the row is a real chunk
ERROR_DETAIL = "error_detail"

# Multimodal columns.
KIND = "kind"  # see the module docstring
BOX = "box"  # int32, shape (rows, 4): (left, top, right, bottom) in pixels of the picture; zeros when none
PARENT_INDEX = "parent_index"  # int64: a tile's whole-picture chunk_index; -1 when none
IMAGE_SOURCE = "image_source"  # "file", "pdf_embedded", "pdf_page"; "" for a non-image row
IMAGE_BYTES = "image_bytes"  # binary: the PNG of a pending picture row; b"" otherwise
#: float32, shape (rows, image_dim): the CLIP vector of image rows (written by the image stage only when an image
#: model is configured; absent otherwise); a zero row on other rows.
IMAGE_EMBEDDING = "image_embedding"
LINKS = "links"  # str: JSON list of link objects (pipelines.link); on a pending picture row a JSON object
#                  {chunk_index: [links]} for each chunk of the picture
START_S = "start_s"  # float64 seconds from the start of the file (audio segments); -1.0 when none
END_S = "end_s"

KIND_PICTURE, KIND_IMAGE, KIND_TILE, KIND_RECORDING, KIND_SEGMENT = "picture", "image", "tile", "recording", "segment"

MEDIA_COLUMNS = (KIND, BOX, PARENT_INDEX, IMAGE_SOURCE, IMAGE_BYTES, LINKS, START_S, END_S)

CHUNK_COLUMNS = (CHUNK_INDEX, CHUNK_COUNT, TEXT, PAGE, HEADING, MODALITY, SPARSE_INDICES, SPARSE_VALUES,
                 ERROR_STAGE, ERROR_REASON, ERROR_DETAIL) + MEDIA_COLUMNS
