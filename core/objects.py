"""The S3 object adapter (MinIO in production, SeaweedFS locally), on the MinIO Python SDK.

Transient failures (connection refused or reset, timeouts, S3 ``SlowDown``/``InternalError``/503) are retried by
``core.retry``; a store that stays unreachable raises ``ServiceUnavailableError("s3", ...)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from collections.abc import Iterator
from datetime import datetime

import urllib3
from minio import Minio
from minio.error import S3Error, ServerError

from core.errors import ServiceUnavailableError
from core.retry import call_with_retry
from core.settings import Settings

logger = logging.getLogger(__name__)

#: Bytes read per request when streaming an object (for hashing or reading).
READ_CHUNK_BYTES = 8 * 1024 * 1024
#: S3 error codes worth retrying (AWS S3 API Reference, "Error responses").
TRANSIENT_S3_CODES = frozenset({"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout"})


class TransientS3Error(Exception):
    """An S3 error response whose code is in ``TRANSIENT_S3_CODES``."""


_TRANSIENT = (
    urllib3.exceptions.MaxRetryError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.TimeoutError,
    urllib3.exceptions.NewConnectionError,
    ConnectionError,
    TimeoutError,
    TransientS3Error,
    ServerError,  # an HTTP 5xx without an S3 error body
)


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    """What a listing tells about one object.

    Attributes:
        key: the object key. size: bytes. etag: the S3 ETag without quotes. last_modified: UTC time or None.
    """

    key: str
    size: int
    etag: str
    last_modified: datetime | None = None


class ObjectStore:
    """Reads and writes objects of one bucket.

    The client is created lazily, so an ``ObjectStore`` pickles to Ray workers cheaply.

    Args:
        settings: ``s3_endpoint`` (``host:port``), keys, ``s3_secure``, ``s3_region`` and ``s3_bucket`` are used.
        timeout_s: connect and read timeout of one HTTP request, seconds.
    """

    def __init__(self, settings: Settings, *, timeout_s: float = 30.0) -> None:
        if not settings.s3_endpoint:
            raise ValueError("settings.s3_endpoint is empty: set SLUICE_S3_ENDPOINT to host:port of the S3 server")
        self.settings = settings
        self.bucket = settings.s3_bucket
        self.timeout_s = timeout_s
        self._client: Minio | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    @property
    def client(self) -> Minio:
        """The MinIO SDK client, created on first use."""
        if self._client is None:
            http = urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=min(5.0, self.timeout_s), read=self.timeout_s),
                retries=urllib3.Retry(total=0, connect=0, read=0, redirect=0),
                maxsize=16,
            )
            self._client = Minio(
                self.settings.s3_endpoint,
                access_key=self.settings.s3_access_key,
                secret_key=self.settings.s3_secret_key.get_secret_value(),
                secure=self.settings.s3_secure,
                region=self.settings.s3_region,
                http_client=http,
            )
        return self._client

    def _call(self, fn, *args, **kwargs):
        def attempt():
            try:
                return fn(*args, **kwargs)
            except S3Error as exc:
                if exc.code in TRANSIENT_S3_CODES:
                    raise TransientS3Error(f"{exc.code}: {exc.message}") from exc
                raise

        return call_with_retry("s3", attempt, transient=_TRANSIENT)

    def ensure_bucket(self) -> None:
        """Create the bucket when it does not exist (idempotent).

        Raises:
            ServiceUnavailableError: the S3 server cannot be reached.
        """
        if not self._call(self.client.bucket_exists, self.bucket):
            try:
                self._call(self.client.make_bucket, self.bucket)
                logger.info("created bucket %s", self.bucket)
            except S3Error as exc:
                if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Store ``data`` under ``key``, replacing any object there.

        Returns:
            The new object's ETag (without quotes).
        """
        result = self._call(
            lambda: self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), content_type=content_type)
        )
        return (result.etag or "").strip('"')

    def get_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        """Read a whole object.

        Args:
            key: the object key.
            max_bytes: refuse objects larger than this (``ValueError``), so a huge object never fills memory.

        Raises:
            KeyError: no such object.
            ValueError: the object is larger than ``max_bytes``.
        """
        if max_bytes is not None:
            info = self.stat(key)
            if info.size > max_bytes:
                raise ValueError(f"object {key!r} is {info.size} bytes, more than max_bytes={max_bytes}")

        def read() -> bytes:
            response = None
            try:
                response = self.client.get_object(self.bucket, key)
                return response.read()
            except S3Error as exc:
                if exc.code in {"NoSuchKey", "NoSuchObject"}:
                    raise KeyError(key) from exc
                raise
            finally:
                if response is not None:
                    response.close()
                    response.release_conn()

        return self._call(read)

    def stat(self, key: str) -> ObjectInfo:
        """Size and ETag of one object.

        Raises:
            KeyError: no such object.
        """
        try:
            st = self._call(self.client.stat_object, self.bucket, key)
        except S3Error as exc:
            if exc.code in {"NoSuchKey", "NoSuchObject", "ResourceNotFound"}:
                raise KeyError(key) from exc
            raise
        return ObjectInfo(key=key, size=int(st.size or 0), etag=(st.etag or "").strip('"'), last_modified=st.last_modified)

    def sha256(self, key: str) -> tuple[str, int]:
        """Stream an object and hash it.

        Returns:
            ``(hex SHA-256, size in bytes)`` of the stored bytes.
        """

        def digest() -> tuple[str, int]:
            h = hashlib.sha256()
            size = 0
            response = self.client.get_object(self.bucket, key)
            try:
                for block in response.stream(READ_CHUNK_BYTES):
                    h.update(block)
                    size += len(block)
            finally:
                response.close()
                response.release_conn()
            return h.hexdigest(), size

        return self._call(digest)

    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, recursively, in key order."""
        try:
            objects = list(self._call(lambda: list(self.client.list_objects(self.bucket, prefix=prefix, recursive=True))))
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                return iter(())
            raise
        return iter(
            ObjectInfo(key=o.object_name, size=int(o.size or 0), etag=(o.etag or "").strip('"'), last_modified=o.last_modified)
            for o in objects
            if not o.is_dir
        )

    def remove(self, key: str) -> None:
        """Delete one object; deleting a missing object is not an error (S3 semantics)."""
        self._call(self.client.remove_object, self.bucket, key)

    def check(self) -> None:
        """Fail fast when the S3 server cannot be reached.

        Raises:
            ServiceUnavailableError: naming ``s3`` and the endpoint.
        """
        try:
            self.ensure_bucket()
        except ServiceUnavailableError as exc:
            raise ServiceUnavailableError("s3", f"{self.settings.s3_endpoint}: {exc.detail}") from exc
