"""The S3 object adapter (MinIO in production, SeaweedFS locally), on the MinIO Python SDK.

Transient failures (connection refused or reset, timeouts, S3 ``SlowDown``/``InternalError``/503) are retried by
``core.retry``; a store that stays unreachable raises ``ServiceUnavailableError("s3", ...)``.

Multipart uploads (AWS S3 API Reference: CreateMultipartUpload, UploadPart, CompleteMultipartUpload,
AbortMultipartUpload, ListParts, ListMultipartUploads) go through the SDK's low-level calls. S3 limits: parts of
5 MiB to 5 GiB except the last, part numbers 1 to 10,000, objects of at most 5 TiB, CopyObject of at most 5 GiB.
SeaweedFS differs from AWS in ways these methods absorb: a second CompleteMultipartUpload of a completed upload
succeeds (AWS: ``NoSuchUpload``) unless the object was removed since; aborting a completed or aborted upload succeeds
(AWS: ``NoSuchUpload``); a part number sent twice keeps both sendings, ListParts lists both, and a completion uses
the one whose ETag it names (AWS keeps the last sending only); and a completion with a gap in the part numbers is
accepted (callers check the numbers themselves).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import logging
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.commonconfig import ComposeSource
from minio.datatypes import Part
from minio.error import S3Error, ServerError

from core.errors import ServiceUnavailableError
from core.retry import call_with_retry
from core.settings import Settings

logger = logging.getLogger(__name__)

#: Bytes read per request when streaming an object (for hashing or reading).
READ_CHUNK_BYTES = 8 * 1024 * 1024
#: S3 error codes worth retrying (AWS S3 API Reference, "Error responses").
TRANSIENT_S3_CODES = frozenset({"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout"})
#: The largest object one CopyObject may copy; larger ones are copied part by part (UploadPartCopy).
MAX_COPY_BYTES = 5 * 1024**3
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchObject", "ResourceNotFound"})


class TransientS3Error(Exception):
    """An S3 error response whose code is in ``TRANSIENT_S3_CODES``."""


class NoSuchUploadError(LookupError):
    """The S3 multipart upload does not exist (never did, was aborted, or was completed and its object removed).

    Attributes:
        key: the object key. upload_id: the S3 multipart upload id.
    """

    def __init__(self, key: str, upload_id: str) -> None:
        super().__init__(f"no multipart upload {upload_id!r} for {key!r}")
        self.key = key
        self.upload_id = upload_id


class ObjectChangedError(ValueError):
    """The object does not hold the bytes it was registered with (``ObjectStore.get_verified``).

    Attributes:
        key: the object key. detail: how it differs.
    """

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"{key!r}: {detail}")
        self.key = key
        self.detail = detail


class BadDigestError(ValueError):
    """S3 refused a part because its bytes do not match the ``Content-MD5`` sent with them (``BadDigest``)."""


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


@dataclasses.dataclass(frozen=True)
class PartInfo:
    """One part of a multipart upload, as ListParts tells it.

    Attributes:
        part_number: 1 to 10,000. etag: without quotes (the hex MD5 of the part's bytes on AWS, MinIO, SeaweedFS).
        size: bytes.
    """

    part_number: int
    etag: str
    size: int


@dataclasses.dataclass(frozen=True)
class MultipartInfo:
    """One multipart upload in progress, as ListMultipartUploads tells it.

    Attributes:
        key: its object key. upload_id: the S3 upload id. initiated: UTC time it was created, or None.
    """

    key: str
    upload_id: str
    initiated: datetime | None = None


def multipart_etag(part_md5s: Iterable[str]) -> str:
    """The ETag S3 gives an object completed from parts with these hex MD5s: ``md5(md5_1 + ... + md5_n)-n``.

    Not an AWS guarantee but what AWS, MinIO and SeaweedFS do for unencrypted uploads.
    """
    digests = [bytes.fromhex(m) for m in part_md5s]
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


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
        self._signer: Minio | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_client"] = state["_signer"] = None
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
            with self._open(key) as response:
                return response.read()

        return self._call(read)

    @contextlib.contextmanager
    def _open(self, key: str) -> Iterator[Any]:
        """A GetObject response for ``key``, closed and its connection released on exit.

        Raises:
            KeyError: no such object.
        """
        try:
            response = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in {"NoSuchKey", "NoSuchObject"}:
                raise KeyError(key) from exc
            raise
        try:
            yield response
        finally:
            response.close()
            response.release_conn()

    def get_verified(self, key: str, size: int, sha256: str) -> bytes:
        """Read a whole object that must hold exactly ``size`` bytes hashing to ``sha256``, in one streamed pass.

        The bytes are hashed as they arrive (``READ_CHUNK_BYTES`` blocks), and the read stops as soon as more than
        ``size`` bytes came, so an object that grew since it was registered costs no more memory than the one that
        was; nothing else is buffered besides the blocks and their join (one copy of the object, briefly two).

        Raises:
            KeyError: no such object.
            ObjectChangedError: the object's bytes are not the ``size`` bytes with that SHA-256.
        """

        def read() -> bytes:
            h, blocks, got = hashlib.sha256(), [], 0
            with self._open(key) as response:
                for block in response.stream(READ_CHUNK_BYTES):
                    got += len(block)
                    if got > size:
                        raise ObjectChangedError(key, f"more than the {size} bytes registered")
                    h.update(block)
                    blocks.append(block)
            if got != size:
                raise ObjectChangedError(key, f"{got} bytes where {size} were registered")
            if h.hexdigest() != sha256:
                raise ObjectChangedError(key, "the bytes hash to another SHA-256 than the registered one")
            return b"".join(blocks)

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
        sha, size, _ = self.sha256_and_metadata(key)
        return sha, size

    def sha256_and_metadata(self, key: str) -> tuple[str, int, dict[str, str]]:
        """Stream an object and hash it; its S3 user metadata comes from the same GET's headers.

        Returns:
            ``(hex SHA-256, size in bytes, {name: value})``: the user metadata are the object's
            ``x-amz-meta-<name>`` headers (names lower-case).
        """

        def digest() -> tuple[str, int, dict[str, str]]:
            h = hashlib.sha256()
            size = 0
            response = self.client.get_object(self.bucket, key)
            try:
                prefix = "x-amz-meta-"
                metadata = {name.lower()[len(prefix):]: str(value) for name, value in response.headers.items()
                            if name.lower().startswith(prefix)}
                for block in response.stream(READ_CHUNK_BYTES):
                    h.update(block)
                    size += len(block)
            finally:
                response.close()
                response.release_conn()
            return h.hexdigest(), size, metadata

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

    # -- multipart uploads ---------------------------------------------------------------------------------------

    def _multipart_call(self, key: str, upload_id: str, fn, *args, **kwargs):
        """``_call`` that turns S3 ``NoSuchUpload`` into :class:`NoSuchUploadError`."""
        try:
            return self._call(fn, *args, **kwargs)
        except S3Error as exc:
            if exc.code == "NoSuchUpload":
                raise NoSuchUploadError(key, upload_id) from exc
            raise

    def create_multipart_upload(self, key: str, content_type: str = "") -> str:
        """Start a multipart upload of ``key`` (CreateMultipartUpload).

        A retried call whose first attempt reached S3 can leave an unused upload behind; ``jobs.janitor`` aborts
        such leftovers once they are older than the upload TTL.

        Args:
            key: the object key the completed upload will have.
            content_type: MIME type stored with the object (``application/octet-stream`` when empty).

        Returns:
            The S3 upload id.

        Raises:
            ServiceUnavailableError: S3 cannot be reached.
        """
        headers = {"Content-Type": content_type or "application/octet-stream"}
        return self._call(lambda: self.client._create_multipart_upload(self.bucket, key, dict(headers)))

    def upload_part(self, key: str, upload_id: str, part_number: int, data: bytes | bytearray, *, content_md5: str) -> str:
        """Send one part (UploadPart); sending a part number again replaces that part.

        Args:
            key, upload_id: the multipart upload.
            part_number: 1 to 10,000.
            data: the part's bytes (S3: 5 MiB to 5 GiB, except the last part).
            content_md5: base64 of the MD5 of ``data``; S3 refuses the part when its bytes do not match.

        Returns:
            The part's ETag without quotes.

        Raises:
            NoSuchUploadError: the upload was aborted or completed.
            BadDigestError: S3 computed another MD5 (the bytes were damaged on the way).
            ServiceUnavailableError: S3 cannot be reached.
        """
        if not 1 <= part_number <= 10_000:
            raise ValueError(f"part_number={part_number} must be 1 to 10,000 (S3 limit)")
        try:
            etag = self._multipart_call(
                key, upload_id, self.client._upload_part, self.bucket, key, data, {"Content-MD5": content_md5},
                upload_id, part_number,
            )
        except S3Error as exc:
            if exc.code in {"BadDigest", "InvalidDigest"}:
                raise BadDigestError(f"S3 refused part {part_number} of {key!r}: {exc.code}") from exc
            raise
        return (etag or "").strip('"')

    def complete_multipart_upload(self, key: str, upload_id: str, parts: Iterable[tuple[int, str]]) -> str:
        """Join the parts into the object (CompleteMultipartUpload), in ascending part number.

        Args:
            key, upload_id: the multipart upload.
            parts: ``(part_number, etag)`` pairs, in any order.

        Returns:
            The object's ETag without quotes.

        Raises:
            NoSuchUploadError: the upload does not exist any more (on AWS also when a first attempt, whose answer
                was lost, already completed it: check the object then).
            ServiceUnavailableError: S3 cannot be reached.
        """
        ordered = [Part(n, etag) for n, etag in sorted(parts)]
        result = self._multipart_call(
            key, upload_id, self.client._complete_multipart_upload, self.bucket, key, upload_id, ordered
        )
        return (result.etag or "").strip('"')

    def abort_multipart_upload(self, key: str, upload_id: str) -> bool:
        """Abort a multipart upload and free its parts (AbortMultipartUpload); idempotent.

        Returns:
            ``False`` when S3 reports that the upload does not exist (any more).
        """
        try:
            self._multipart_call(key, upload_id, self.client._abort_multipart_upload, self.bucket, key, upload_id)
        except NoSuchUploadError:
            return False
        logger.info("aborted multipart upload %s of %s", upload_id, key)
        return True

    def presign_upload_part(self, key: str, upload_id: str, part_number: int, expires_s: int) -> str:
        """A URL that lets its holder send part ``part_number`` of this multipart upload, and nothing else.

        AWS Signature V4 in the query string, for ``settings.s3_public_url`` (the endpoint as clients reach it;
        ``s3_endpoint`` when empty). The signature covers the method, the host, the key, the upload id and the part
        number: any other request with it is refused (403 ``SignatureDoesNotMatch``), and so is any request after
        ``expires_s`` seconds (403 ``AccessDenied``). Computed locally: no request reaches S3.
        """
        if not 1 <= part_number <= 10_000:
            raise ValueError(f"part_number={part_number} must be 1 to 10,000 (S3 limit)")
        return self.signer.get_presigned_url(
            "PUT", self.bucket, key, expires=timedelta(seconds=expires_s),
            extra_query_params={"uploadId": upload_id, "partNumber": str(part_number)},
        )

    @property
    def signer(self) -> Minio:
        """A MinIO SDK client for the public endpoint, used only to sign URLs (its region is set: it never calls S3)."""
        if self._signer is None:
            public = self.settings.s3_public_url
            endpoint, secure = self.settings.s3_endpoint, self.settings.s3_secure
            if public:
                parts = urlsplit(public)
                endpoint, secure = parts.netloc, parts.scheme == "https"
            self._signer = Minio(
                endpoint, access_key=self.settings.s3_access_key,
                secret_key=self.settings.s3_secret_key.get_secret_value(), secure=secure,
                region=self.settings.s3_region,
            )
        return self._signer

    def list_parts(self, key: str, upload_id: str) -> list[PartInfo]:
        """The parts S3 holds for a multipart upload, by part number (ListParts, every page).

        A part number sent more than once appears once per distinct ETag on SeaweedFS (see the module docstring).

        Raises:
            NoSuchUploadError: the upload does not exist.
        """
        parts: dict[tuple[int, str], PartInfo] = {}
        marker: str | None = None
        while True:
            page = self._multipart_call(
                key, upload_id, self.client._list_parts, self.bucket, key, upload_id, part_number_marker=marker
            )
            for p in page.parts or []:
                info = PartInfo(int(p.part_number), (p.etag or "").strip('"'), int(p.size or 0))
                parts[(info.part_number, info.etag)] = info
            if not page.is_truncated or not page.next_part_number_marker or page.next_part_number_marker == marker:
                break
            marker = str(page.next_part_number_marker)
        return [parts[k] for k in sorted(parts)]

    def list_multipart_uploads(self, prefix: str = "") -> list[MultipartInfo]:
        """Multipart uploads in progress whose key starts with ``prefix`` (ListMultipartUploads, every page)."""
        found: list[MultipartInfo] = []
        key_marker: str | None = None
        upload_marker: str | None = None
        while True:
            try:
                page = self._call(
                    self.client._list_multipart_uploads, self.bucket, prefix=prefix, key_marker=key_marker,
                    upload_id_marker=upload_marker,
                )
            except S3Error as exc:
                if exc.code == "NoSuchBucket":
                    return []
                raise
            found.extend(
                MultipartInfo(u.object_name, u.upload_id or "", u.initiated_time) for u in page.uploads or []
            )
            # minio 7.2 stores NextUploadIdMarker under a misspelt attribute name; read both.
            next_upload = getattr(page, "self._next_upload_id_marker", None) or page.next_upload_id_marker
            markers = (page.next_key_marker, next_upload)
            if not page.is_truncated or not any(markers) or markers == (key_marker, upload_marker):
                break
            key_marker, upload_marker = markers
        return found

    def copy(self, source_key: str, key: str, *, content_type: str = "") -> ObjectInfo:
        """Copy an object inside the bucket on the server (CopyObject; UploadPartCopy past 5 GiB).

        Args:
            source_key: what to copy. key: where to. content_type: set on the copy (kept from the source if empty).

        Returns:
            The copy's size and ETag.

        Raises:
            KeyError: no object ``source_key``.
        """
        metadata = {"Content-Type": content_type} if content_type else None
        try:
            self._call(
                self.client.compose_object, self.bucket, key, [ComposeSource(self.bucket, source_key)], metadata=metadata
            )
        except S3Error as exc:
            if exc.code in _NOT_FOUND_CODES:
                raise KeyError(source_key) from exc
            raise
        return self.stat(key)

    def check(self) -> None:
        """Fail fast when the S3 server cannot be reached.

        Raises:
            ServiceUnavailableError: naming ``s3`` and the endpoint.
        """
        try:
            self.ensure_bucket()
        except ServiceUnavailableError as exc:
            raise ServiceUnavailableError("s3", f"{self.settings.s3_endpoint}: {exc.detail}") from exc
