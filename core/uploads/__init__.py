"""Uploads: their state in PostgreSQL (``uploads``, ``upload_parts``) and the locks that keep it consistent.

An upload is ``pending`` while parts arrive, ``completing`` once a completion was claimed, then ``completed``,
``failed``, ``aborted`` or ``expired``. Only what resuming, completing and cleaning
up need is stored, never payload bytes. :class:`UploadStore` holds the state; :class:`UploadService` runs the steps
that also talk to S3 (create, store a part, complete, abort, expire, sweep), for the Serve app and ``jobs.janitor``.

Consistency rules:

- A part row is written only after S3 accepted the part, in a transaction that first takes a ``FOR SHARE`` lock on
  the upload row and checks that it is still ``pending`` (so an abort or an expiry, which take ``FOR UPDATE``, and a
  part record never interleave).
- Every upload with bytes writes to its own staging key (:func:`staging_key`), never to ``<tenant>/<path>``; once
  its SHA-256 checks out, it is promoted under the path's lock (:func:`lock_path`, a transaction-scoped advisory
  lock): the copy to ``<tenant>/<path>``, the version's registration, the upload's answer and its event commit as
  one step per path. A failed upload only ever removes its own staging key.
- One completion at a time per upload: a PostgreSQL session-level advisory lock held on a dedicated connection for
  the whole completion (:class:`CompletionLock`). A process that dies loses its connection and with it the lock, so
  an upload left ``completing`` with its lock free is known to be abandoned (``jobs.janitor`` retries it).
- The first answer to a completion is stored (``result``) and returned to every later call.

Modules (each name is re-exported here, so ``from core.uploads import X`` works for all of them):

- ``errors``: :class:`UploadError` and its subclasses.
- ``parts``: S3 multipart limits and :func:`plan_parts`.
- ``model``: :class:`Upload`, :class:`UploadPart`, statuses, staging keys, :class:`Answer`.
- ``state``: :class:`UploadStore`, the SQL on ``uploads`` and ``upload_parts``.
- ``lock``: :class:`CompletionLock`, :func:`lock_path`.
- ``service``: :class:`UploadService`, the workflow (create, part, describe, complete, abort).
- ``maintenance``: the janitor's steps of :class:`UploadService` (expire, retry, sweep).
"""

from core.uploads.errors import (
    CompletionInProgressError,
    MissingPartsError,
    PartIntegrityError,
    UploadError,
    UploadNotFoundError,
    UploadStateError,
    UploadTooLargeError,
    WrongTransferError,
)
from core.uploads.lock import LOCK_CLASS, PATH_LOCK_CLASS, CompletionLock, lock_path
from core.uploads.maintenance import UploadMaintenance
from core.uploads.model import (
    FINAL_STATUSES,
    STAGING_PREFIX,
    STATUSES,
    Answer,
    Upload,
    UploadPart,
    answer_json,
    staging_key,
)
from core.uploads.parts import MAX_OBJECT_BYTES, MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE, plan_parts
from core.uploads.service import EMPTY_SHA256, UploadService
from core.uploads.state import UploadStore

__all__ = [
    "EMPTY_SHA256",
    "FINAL_STATUSES",
    "LOCK_CLASS",
    "MAX_OBJECT_BYTES",
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MIN_PART_SIZE",
    "PATH_LOCK_CLASS",
    "STAGING_PREFIX",
    "STATUSES",
    "Answer",
    "CompletionInProgressError",
    "CompletionLock",
    "MissingPartsError",
    "PartIntegrityError",
    "Upload",
    "UploadError",
    "UploadMaintenance",
    "UploadNotFoundError",
    "UploadPart",
    "UploadService",
    "UploadStateError",
    "UploadStore",
    "UploadTooLargeError",
    "WrongTransferError",
    "answer_json",
    "lock_path",
    "plan_parts",
    "staging_key",
]
