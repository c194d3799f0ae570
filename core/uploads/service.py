"""The upload workflow: create, store a part, describe, complete, abort (:class:`UploadService`).

Each step talks to S3 and PostgreSQL together, for the Serve app and ``jobs.janitor`` (whose steps, expire, retry and
sweep, live in :mod:`core.uploads.maintenance`).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import logging
import mimetypes
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
from minio.error import S3Error

from core import metrics
from core.errors import ServiceUnavailableError
from core.events import NewVersionEvent
from core.ids import normalise_path, object_key
from core.metadata import validate_metadata
from core.objects import BadDigestError, NoSuchUploadError, ObjectStore, multipart_etag
from core.settings import Settings
from core.uploads.errors import (
    CompletionInProgressError,
    MissingPartsError,
    PartIntegrityError,
    UploadNotFoundError,
    UploadStateError,
    UploadTooLargeError,
    WrongTransferError,
)
from core.uploads.lock import CompletionLock, lock_path
from core.uploads.maintenance import UploadMaintenance
from core.uploads.model import FINAL_STATUSES, Answer, Upload, UploadPart, answer_json, staging_key
from core.uploads.parts import plan_parts
from core.uploads.state import _TRANSIENT as _PG_TRANSIENT
from core.uploads.state import UploadStore, _uuid_or_none

logger = logging.getLogger(__name__)

#: Seconds a completion waits for another upload of the same path to finish its promotion.
PROMOTE_WAIT_S = 60.0
#: SHA-256 of zero bytes.
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


class UploadService(UploadMaintenance):
    """The upload steps that touch S3 and PostgreSQL together; used by the Serve app and ``jobs.janitor``.

    Bytes go to an S3 multipart upload; completion joins the parts and streams the object back to compute its
    SHA-256 (the bytes S3 really holds, not the ones the client meant to send). Every upload, of a new path or of a
    new version, goes to its own staging key (:func:`staging_key`) and is copied to ``<tenant>/<path>`` only once
    verified, by :meth:`_promote` under the path's lock and in the transaction that registers the version. So two
    uploads of one path never write the same key until one of them is known good: a wrong upload never overwrites,
    and its clean-up never removes, what another upload (or an earlier version) put at ``<tenant>/<path>``; and
    promotions of one path are serialised, so the object is always the last registered version's bytes. The copy is
    the price of that safety (a server-side copy; no byte crosses the network).

    A ``direct`` upload (``transfer="direct"``) never passes its bytes through Sluice: the client sends each part
    to S3 through a presigned URL (:meth:`sign_parts`), declaring the part's MD5 when it asks for the URL. Its
    multipart upload is at ``<tenant>/<path>`` itself, where nothing is visible until it is joined; completion
    checks that S3 holds every part with exactly the declared MD5 (its ETag, which S3 computes from the bytes it
    received), then joins the parts in :meth:`_promote`, under the path's lock and in the transaction that registers
    the version: no copy and no read-back. The whole-object SHA-256 is the one the client declared (required); the
    one full read the bytes get, ingest's, hashes them as they stream and fails the version (``object_changed``)
    if they do not match it (README, "Uploads").

    Args:
        settings: services, ``max_upload_bytes``, ``upload_part_size``, ``upload_ttl_s``, ``upload_max_attempts``.
        objects: the S3 adapter (a seam for tests); by default one with a 300 s read timeout (a copy or a completion
            of a large object answers only when done).
        store: the state store; by default one on a new catalog pool.
    """

    def __init__(self, settings: Settings, *, objects: ObjectStore | None = None, store: UploadStore | None = None) -> None:
        self.settings = settings
        self.objects = objects if objects is not None else ObjectStore(settings, timeout_s=300.0)
        self.store = store if store is not None else UploadStore(settings)
        self.catalog = self.store.catalog
        self.promote_wait_s = PROMOTE_WAIT_S

    def close(self) -> None:
        """Close the database pool."""
        self.store.close()

    # -- create --------------------------------------------------------------------------------------------------

    def prepare(
        self, tenant: str, path: str, size: int, *, sha256: str | None = None, content_type: str = "",
        part_size: int | None = None, on_conflict: str = "new_version", metadata: dict[str, Any] | None = None,
        transfer: str = "proxy",
    ) -> Upload:
        """Validate a new upload and plan its parts; nothing is stored or sent.

        ``transfer``: ``proxy`` or ``direct``, as the client asks; a ``direct`` upload is granted only when
        ``settings.upload_direct`` (else it becomes ``proxy``, and the answer says so) and needs ``sha256``.

        Raises:
            InvalidPathError: the path or tenant breaks the rules of ``core.ids`` (the key is over 1024 bytes...).
            UploadTooLargeError: ``size`` is above ``max_upload_bytes``.
            ValueError: the part size is outside 5 MiB to 5 GiB, ``on_conflict`` or ``transfer`` is unknown, or a
                direct upload has no ``sha256``.
            MetadataError: ``metadata`` breaks the rules of ``core.metadata`` (the key at fault is named).
        """
        key = object_key(tenant, path)
        if size > self.settings.max_upload_bytes:
            raise UploadTooLargeError(f"size={size} is above the limit of {self.settings.max_upload_bytes} bytes")
        if on_conflict not in ("new_version", "reject"):
            raise ValueError(f"on_conflict={on_conflict!r} must be 'new_version' or 'reject'")
        if transfer not in ("proxy", "direct"):
            raise ValueError(f"transfer={transfer!r} must be 'proxy' or 'direct'")
        if transfer == "direct" and not sha256:
            raise ValueError("transfer 'direct' needs the file's sha256: Sluice never reads a direct upload's bytes "
                             "before ingest, which checks them against it")
        if metadata is not None:
            metadata = validate_metadata(metadata)
        chosen, _ = plan_parts(size, part_size, self.settings.upload_part_size)
        normalised = normalise_path(path)
        upload_id = str(uuid.uuid4())
        granted = "direct" if transfer == "direct" and self.settings.upload_direct else "proxy"
        return Upload(
            upload_id=upload_id, tenant=tenant, path=normalised, object_key=key,
            s3_key=key if granted == "direct" else staging_key(upload_id),
            s3_upload_id="", size=size, sha256=sha256.lower() if sha256 else None,
            content_type=content_type or mimetypes.guess_type(normalised)[0] or "", part_size=chosen,
            on_conflict=on_conflict, metadata=metadata, transfer=granted,
        )

    def start_multipart(self, upload: Upload) -> str:
        """Create the S3 multipart upload (none for an empty file: ``""``)."""
        if upload.size == 0:
            return ""
        return self.objects.create_multipart_upload(upload.s3_key, upload.content_type)

    def record(self, upload: Upload, s3_upload_id: str) -> Upload:
        """Store the new upload as ``pending``, expiring after ``upload_ttl_s``."""
        return self.store.insert(dataclasses.replace(upload, s3_upload_id=s3_upload_id), self.settings.upload_ttl_s)

    def discard_multipart(self, upload: Upload, s3_upload_id: str) -> None:
        """Abort a multipart upload that turned out not to be needed (best effort: the janitor sweeps leftovers)."""
        if not s3_upload_id:
            return
        try:
            self.objects.abort_multipart_upload(upload.s3_key, s3_upload_id)
        except Exception as exc:  # noqa: BLE001 - an orphan is swept by jobs.janitor
            logger.warning("could not abort unused multipart upload %s: %s", s3_upload_id, exc)

    # -- parts and status ----------------------------------------------------------------------------------------

    @staticmethod
    def check_proxied(upload: Upload) -> None:
        """Raise :class:`WrongTransferError` for a direct upload, whose parts never go through Sluice."""
        if upload.direct:
            raise WrongTransferError("this is a direct upload: send its parts to the URLs that "
                                     "POST /v1/uploads/{id}/part-urls gives")

    def store_part(self, upload: Upload, part_number: int, data: bytes | bytearray, md5_hex: str) -> UploadPart:
        """Send a verified part to S3 with its Content-MD5, check the ETag, then record it.

        Raises:
            UploadStateError: the upload is no longer pending (S3 or the catalog says so).
            PartIntegrityError: S3 refused the digest or answered another ETag; nothing was recorded.
            WrongTransferError: the upload is ``direct`` (its parts go to the URLs of :meth:`sign_parts`).
        """
        self.check_proxied(upload)
        content_md5 = base64.b64encode(bytes.fromhex(md5_hex)).decode()
        try:
            etag = self.objects.upload_part(upload.s3_key, upload.s3_upload_id, part_number, data, content_md5=content_md5)
        except NoSuchUploadError as exc:
            current = self.store.get(upload.upload_id)
            raise UploadStateError(current.status if current else "aborted", "the S3 multipart upload is gone") from exc
        except BadDigestError as exc:
            raise PartIntegrityError(f"S3 refused part {part_number}: its bytes did not match their MD5") from exc
        if etag.lower() != md5_hex:
            raise PartIntegrityError(f"S3 answered ETag {etag!r} for part {part_number}, not its MD5 {md5_hex}")
        part = UploadPart(part_number, len(data), md5_hex, etag)
        self.store.record_part(upload.upload_id, part)
        metrics.upload_part(part.size)
        return part

    def sign_parts(self, upload: Upload, digests: dict[int, str]) -> list[dict[str, Any]]:
        """Presigned URLs for parts of a direct upload, each for the MD5 the client declares for it.

        The MD5s are recorded first (signing a part again replaces its MD5: the part is being sent again), so that
        completion can check what S3 holds against them. Each URL allows one ``PUT`` of that part for
        ``upload_url_ttl_s`` seconds; the client sends the ``headers`` given (``Content-MD5``: S3 then refuses bytes
        damaged on the way with 400 ``BadDigest``).

        Args:
            upload: a ``pending`` direct upload. digests: ``{part_number: md5 hex}``.

        Returns:
            ``[{"part_number", "url", "method", "headers", "size", "expires_at"}]`` by part number.

        Raises:
            WrongTransferError: a proxied upload. UploadStateError: not ``pending``. ValueError: a part number
            outside 1 to ``part_count``, or an MD5 that is not 32 hex digits.
        """
        if not upload.direct:
            raise WrongTransferError("this upload's parts go through PUT /v1/uploads/{id}/parts/{n}; create it with "
                                     "transfer 'direct' to send them to S3 directly")
        if upload.status != "pending":
            raise UploadStateError(upload.status)
        clean: dict[int, str] = {}
        for number, md5 in digests.items():
            upload.expected_part_size(number)  # raises ValueError for a number outside the upload
            if len(md5) != 32 or any(c not in "0123456789abcdefABCDEF" for c in md5):
                raise ValueError(f"part {number}: md5 must be 32 hex digits")
            clean[number] = md5.lower()
        self.store.record_digests(upload.upload_id, clean)
        ttl = self.settings.upload_url_ttl_s
        expires_at = (datetime.now(timezone.utc) + timedelta(seconds=ttl)).isoformat()
        return [
            {"part_number": n, "method": "PUT", "size": upload.expected_part_size(n), "expires_at": expires_at,
             "url": self.objects.presign_upload_part(upload.s3_key, upload.s3_upload_id, n, ttl),
             "headers": {"Content-MD5": base64.b64encode(bytes.fromhex(md5)).decode()}}
            for n, md5 in sorted(clean.items())
        ]

    def direct_parts(self, upload: Upload) -> list[UploadPart]:
        """The parts of a direct upload that S3 holds exactly as declared: the part's expected size, and the MD5
        declared for it as its ETag (S3's MD5 of the bytes it received). Parts sent but never declared, or
        holding other bytes, are not among them (they count as missing: send them again)."""
        declared = self.store.digests(upload.upload_id)
        try:
            held = self.objects.list_parts(upload.s3_key, upload.s3_upload_id) if upload.s3_upload_id else []
        except NoSuchUploadError:
            held = []
        found: dict[int, UploadPart] = {}
        for p in held:
            md5 = declared.get(p.part_number)
            if (md5 is not None and p.etag.lower() == md5 and p.part_number <= upload.part_count
                    and p.size == upload.expected_part_size(p.part_number)):
                found[p.part_number] = UploadPart(p.part_number, p.size, md5, p.etag)
        return [found[n] for n in sorted(found)]

    def describe(self, upload: Upload) -> dict[str, Any]:
        """What a client needs to resume or learn the outcome (the body of ``GET /v1/uploads/{id}``)."""
        parts: list[UploadPart] = []
        if upload.status == "completed":
            received, missing, received_bytes = list(range(1, upload.part_count + 1)), [], upload.size
        elif upload.status in FINAL_STATUSES:
            received, missing, received_bytes = [], [], 0
        else:
            parts = self.direct_parts(upload) if upload.direct else self.store.parts(upload.upload_id)
            have = {p.part_number for p in parts}
            received = sorted(have)
            missing = [n for n in range(1, upload.part_count + 1) if n not in have]
            received_bytes = sum(p.size for p in parts)
        body: dict[str, Any] = {
            "upload_id": upload.upload_id, "status": upload.status, "path": upload.path,
            "document_id": upload.document_id, "size": upload.size, "sha256": upload.sha256,
            "part_size": upload.part_size, "part_count": upload.part_count, "received_parts": received,
            "missing_parts": missing, "bytes_received": received_bytes,
            "parts": [{"part_number": p.part_number, "size": p.size, "etag": p.etag} for p in parts],
            "attempts": upload.attempts, "transfer": upload.transfer,
            "created_at": upload.created_at.isoformat() if upload.created_at else None,
            "expires_at": upload.expires_at.isoformat() if upload.expires_at else None,
        }
        if upload.last_error and upload.status != "completed":
            body["error"] = upload.last_error
        if upload.result is not None:
            body["result"] = upload.result.get("body")
        return body

    # -- complete ------------------------------------------------------------------------------------------------

    def complete(self, tenant: str | None, upload_id: str, *, wait_s: float = 10.0) -> Answer:
        """Complete an upload, or return the answer of the completion that already ended.

        Args:
            tenant: the caller (``None``: any, for the janitor). upload_id: the upload.
            wait_s: how long to wait for a completion in progress elsewhere before giving up.

        Returns:
            200 with ``document_id``, ``version``, ``sha256``, ``size``...; or the stored failure (422
            ``checksum_mismatch``, 409 ``conflict``, 409 ``upload_lost``, 409 ``upload_failed``).

        Raises:
            UploadNotFoundError, UploadStateError, MissingPartsError, CompletionInProgressError.
            ServiceUnavailableError: S3 or PostgreSQL failed; the upload stays ``completing`` and may be retried.
        """
        upload = self.store.get(upload_id, tenant)
        if upload is None:
            raise UploadNotFoundError(f"no upload {upload_id}")
        if upload.result is not None:
            return Answer(**upload.result)
        if upload.status not in ("pending", "completing"):
            raise UploadStateError(upload.status)
        with CompletionLock(self.settings, upload.upload_id) as lock:
            if not lock.acquire(wait_s):
                raise CompletionInProgressError("another completion of this upload is running; retry later")
            if upload.direct and upload.status == "pending":
                # What S3 holds as declared becomes the part list claim checks (and the join uses).
                self.store.replace_parts(upload.upload_id, self.direct_parts(upload))
            claimed = self.store.claim(upload.upload_id)
            if claimed.result is not None:
                return Answer(**claimed.result)
            if claimed.attempts > self.settings.upload_max_attempts:
                return self._give_up(claimed)
            return self._run_completion(claimed)

    def _run_completion(self, up: Upload) -> Answer:
        """The completion steps, each skipped when ``progress`` says an earlier attempt did it.

        Verify (join the parts, hash what S3 holds, compare), then :meth:`_promote`. The verification touches only
        the upload's own staging key, so it needs no lock; the promotion is what other uploads of the path wait for.
        """
        progress = dict(up.progress)
        try:
            if up.on_conflict == "reject" and "sha256" not in progress:
                latest = self.store.latest_version(up.tenant, up.path)
                if latest is not None:
                    return self._fail(up, 409, "conflict", f"{up.path!r} exists (version {latest.version}) and "
                                      "on_conflict is 'reject'", document_id=latest.document_id)
            if up.size == 0:
                if up.sha256 and up.sha256 != EMPTY_SHA256:
                    return self._fail(up, 422, "checksum_mismatch", "the declared SHA-256 is not that of 0 bytes",
                                      expected=up.sha256, actual=EMPTY_SHA256)
                progress["sha256"] = EMPTY_SHA256
            elif up.direct and "sha256" not in progress:
                # Every part is in S3 with its declared MD5 (claim checked the list); the declared SHA-256 is
                # checked when ingest reads the bytes, their only full read.
                verified = {"sha256": up.sha256, "size": up.size, "verified": "md5_parts"}
                self.store.save_progress(up.upload_id, **verified)
                progress.update(verified)
                for part in self.store.parts(up.upload_id):  # S3 stored them without Sluice: counted once, here
                    metrics.upload_part(part.size)
            elif "sha256" not in progress:
                failed = self._join_parts(up)
                if failed is not None:
                    return failed
                try:
                    sha, size = self.objects.sha256(up.s3_key)
                except S3Error as exc:
                    if exc.code not in ("NoSuchKey", "NoSuchObject"):
                        raise
                    return self._fail(up, 409, "upload_lost", "the completed object is gone from S3")
                if size != up.size:
                    return self._fail(up, 422, "size_mismatch", f"S3 holds {size} bytes, {up.size} were declared",
                                      ours=True)
                if up.sha256 and sha != up.sha256:
                    return self._fail(up, 422, "checksum_mismatch", f"the declared SHA-256 is {up.sha256}, the "
                                      f"stored bytes hash to {sha}", ours=True, expected=up.sha256, actual=sha)
                verified = {"sha256": sha, "size": size, "verified": "sha256"}
                if up.legacy_in_place:  # an upload recorded before every upload was staged: its bytes are in place already
                    verified["etag"] = self.objects.stat(up.s3_key).etag
                self.store.save_progress(up.upload_id, **verified)
                progress.update(verified)
            return self._promote(up, progress)
        except ServiceUnavailableError as exc:
            with contextlib.suppress(Exception):
                self.store.note_error(up.upload_id, f"{exc.service} unavailable: {exc.detail}")
            raise

    def _promote(self, up: Upload, progress: dict[str, Any]) -> Answer:
        """Put the verified bytes at ``<tenant>/<path>`` and register them, as one step per path.

        One PostgreSQL transaction holds the path's lock (:func:`lock_path`) and the document row's lock (so
        ``jobs.ingest --scan`` cannot register the object half-way either) while :meth:`_place` copies the staged
        bytes; it then registers the version (:meth:`_register`) and marks the upload completed with its answer and
        its ``NOTIFY`` (:meth:`_finish`). Everything commits together or not at all: a completion that dies or fails
        at any step leaves no version without its event, and its retry (the client's, or ``jobs.janitor``'s) does
        the promotion again, copying again unless the object still holds exactly what this upload put there.
        Because the answer and the event commit with the version, a retry never finds "its own" version registered
        without an answer (the case that once made a retry answer ``deduplicated`` and notify nobody): it finds the
        stored answer, whose event was delivered by that commit, or nothing.

        Raises:
            CompletionInProgressError: another promotion of the path held the lock for ``promote_wait_s``; the
                upload stays ``completing`` (retry later).
            ServiceUnavailableError: S3 or PostgreSQL failed; the transaction rolled back, the upload stays
                ``completing``.
        """
        outcome: Answer | tuple[int, str, str, dict[str, Any]]
        try:
            with self.store.transaction() as conn:
                if not lock_path(conn, up.document_id, self.promote_wait_s):
                    raise CompletionInProgressError(f"another upload of {up.path!r} is being stored; retry later")
                conn.execute("INSERT INTO documents (document_id, tenant, path) VALUES (%s, %s, %s) "
                             "ON CONFLICT DO NOTHING", (up.document_id, up.tenant, up.path))
                doc = conn.execute("SELECT head_version, deleted FROM documents WHERE document_id = %s FOR UPDATE",
                                   (up.document_id,)).fetchone()
                if up.on_conflict == "reject" and doc["head_version"] and not doc["deleted"]:
                    outcome = (409, "conflict", f"{up.path!r} exists (version {doc['head_version']}) and on_conflict "
                               "is 'reject'", {"document_id": up.document_id})
                else:
                    placed = self._place(up, progress)
                    if isinstance(placed, tuple):
                        outcome = placed
                    else:
                        registration = self._register(conn, up, progress["sha256"], placed)
                        outcome = self._finish(conn, up, registration, progress["sha256"], placed)
                if isinstance(outcome, tuple):
                    raise psycopg.Rollback()  # nothing of this promotion stays (the document row it may have inserted)
        except _PG_TRANSIENT as exc:
            raise ServiceUnavailableError("postgres", f"{type(exc).__name__}: {exc}") from exc
        if isinstance(outcome, tuple):
            status_code, code, detail, extra = outcome
            return self._fail(up, status_code, code, detail, **extra)
        metrics.upload_completed()
        logger.info("upload %s completed: %s version %d", up.upload_id, outcome.body["document_id"],
                    outcome.body["version"])
        return outcome

    def _place(self, up: Upload, progress: dict[str, Any]) -> str | tuple[int, str, str, dict[str, Any]]:
        """Copy the staged bytes to ``<tenant>/<path>`` (under the path lock) and remove the staging object.

        A copy an earlier attempt made is trusted only if the object still has its ETag and size: another upload of
        the path may have been promoted since (the path lock dies with the attempt that crashed).

        Returns:
            The ETag of the object at ``<tenant>/<path>``, or a failure ``(status, code, detail, extra)``.
        """
        if up.size == 0:
            return self.objects.put_bytes(up.object_key, b"", up.content_type or "application/octet-stream")
        if up.direct:
            return self._join_in_place(up)
        if up.legacy_in_place:
            return progress["etag"]
        if progress.get("copied"):
            try:
                info = self.objects.stat(up.object_key)
            except KeyError:
                info = None
            if info is None or info.etag != progress.get("etag") or info.size != up.size:
                progress.pop("copied")  # overwritten or removed since: copy again, if the staged bytes are still there
        if not progress.get("copied"):
            try:
                info = self.objects.copy(up.s3_key, up.object_key, content_type=up.content_type)
            except KeyError:
                return (409, "upload_lost", "the verified bytes are gone from S3 (another upload of the path was "
                        "stored in between); send the file again", {})
            self.store.save_progress(up.upload_id, copied=True, etag=info.etag)
            progress.update(copied=True, etag=info.etag)
        self.objects.remove(up.s3_key)
        return progress["etag"]

    def _join_in_place(self, up: Upload) -> str | tuple[int, str, str, dict[str, Any]]:
        """Join a direct upload's checked parts at ``<tenant>/<path>`` (under the path lock: this is its promotion).

        The join names each part's checked ETag, so the object is exactly the checked parts. A join an earlier
        attempt made (its transaction did not commit) is recognised by the object's ETag, the one S3 gives an object
        joined from these parts; any other object there is another upload's.

        Returns:
            The object's ETag, or a failure ``(status, code, detail, extra)``.

        Raises:
            MissingPartsError: S3 no longer holds a checked part as checked (it was sent again since); the upload
                is ``pending`` again and those parts must be sent again.
        """
        parts = self.store.parts(up.upload_id)
        try:
            return self.objects.complete_multipart_upload(up.s3_key, up.s3_upload_id,
                                                          [(p.part_number, p.etag) for p in parts])
        except NoSuchUploadError:
            try:
                info = self.objects.stat(up.object_key)
            except KeyError:
                info = None
            if info is not None and info.size == up.size and info.etag == multipart_etag(p.md5 for p in parts):
                logger.info("upload %s: an earlier attempt had joined it", up.upload_id)
                return info.etag
            return (409, "upload_lost", "the S3 multipart upload no longer exists; send the file again", {})
        except S3Error as exc:
            self._reopen_for_stale_parts(up, parts, exc)

    def _register(self, conn, up: Upload, sha: str, etag: str):
        """Register the promoted bytes as the path's new version, in the promotion's transaction."""
        return self.catalog.register_version_in(
            conn, up.tenant, up.path, object_key=up.object_key, sha256=sha, size=up.size,
            content_type=up.content_type, etag=etag, metadata=up.metadata, metadata_source="upload",
        )

    def _finish(self, conn, up: Upload, registration, sha: str, etag: str) -> Answer:
        """Store the answer, mark the upload completed and send the new-version event, in the promotion's transaction.

        The event goes whenever this promotion registered a version; bytes equal to the head version's register
        nothing and answer ``deduplicated`` (that version's own registration sent its event).
        """
        version = registration.version
        answer = answer_json(200, {
            "document_id": version.document_id, "version": version.version, "sha256": sha, "size": up.size,
            "path": up.path, "etag": etag, "deduplicated": not registration.created, "upload_id": up.upload_id,
            "transfer": up.transfer, "verified": "md5_parts" if up.direct and up.size else "sha256",
        })
        event = (NewVersionEvent(up.tenant, version.document_id, version.version, up.path, up.upload_id)
                 if registration.created else None)
        self.store.finish_in(conn, up.upload_id, answer, event)
        return Answer(**answer)

    def _join_parts(self, up: Upload) -> Answer | None:
        """CompleteMultipartUpload with the recorded parts; ``None`` when the object is there, else the failure."""
        parts = self.store.parts(up.upload_id)
        try:
            self.objects.complete_multipart_upload(up.s3_key, up.s3_upload_id, [(p.part_number, p.etag) for p in parts])
        except NoSuchUploadError:
            # AWS answers NoSuchUpload to a repeated completion whose first answer was lost: look for the object.
            try:
                info = self.objects.stat(up.s3_key)
            except KeyError:
                info = None
            if info is None or info.size != up.size:
                return self._fail(up, 409, "upload_lost", "the S3 multipart upload no longer exists")
            logger.info("upload %s: S3 had already completed it (%d bytes)", up.upload_id, info.size)
        except S3Error as exc:
            self._reopen_for_stale_parts(up, parts, exc)
        return None

    def _reopen_for_stale_parts(self, up: Upload, parts: list[UploadPart], exc: S3Error) -> None:
        """After a join S3 refused: when recorded parts are no longer held as recorded, forget them and put the
        upload back to ``pending`` (:class:`MissingPartsError` names them); any other refusal is raised as it is."""
        if exc.code not in ("InvalidPart", "InvalidPartOrder"):
            raise exc
        stale = self._stale_parts(up, parts)
        if not stale:
            raise exc
        self.store.forget_parts(up.upload_id, stale)
        self.store.reopen(up.upload_id)
        raise MissingPartsError(stale, []) from exc

    def _stale_parts(self, up: Upload, parts: list[UploadPart]) -> list[int]:
        """Recorded parts that S3 holds with another ETag, or not at all (a crash after a re-send)."""
        held = {(p.part_number, p.etag) for p in self.objects.list_parts(up.s3_key, up.s3_upload_id)}
        return [p.part_number for p in parts if (p.part_number, p.etag) not in held]

    def _fail(self, up: Upload, status_code: int, code: str, detail: str, *, ours: bool = False, **extra: Any) -> Answer:
        """End the upload as ``failed`` with this answer, after removing what it left in S3.

        Args:
            ours: the object at ``s3_key`` is known to hold this upload's bytes (joined, then refused).
        """
        self._clean_s3(up, ours=ours)
        answer = answer_json(status_code, {"error": code, "detail": detail, **extra})
        self.store.end(up.upload_id, "failed", f"{code}: {detail}", answer)
        metrics.upload_failed(code)
        logger.info("upload %s failed: %s: %s", up.upload_id, code, detail)
        return Answer(**answer)

    def _give_up(self, up: Upload) -> Answer:
        """After ``upload_max_attempts``: clean up and fail; finish instead when verified bytes are in place."""
        if "sha256" in up.progress:  # verified bytes are staged (or, for an older direct upload, in place)
            return self._run_completion(up)
        reason = f"completion failed {up.attempts - 1} time(s); last error: {up.last_error or 'unknown'}"
        return self._fail(up, 409, "upload_failed", reason)

    def _clean_s3(self, up: Upload, *, ours: bool = False) -> None:
        """Abort the multipart upload and remove what it wrote (idempotent, best effort: the janitor sweeps).

        A direct upload writes nothing but its multipart upload until it is joined, and it is never failed after
        that (its verified parts are joined and registered by the next attempt), so only the abort applies.

        A staging object is always this upload's (every upload is staged now). For an upload recorded before that,
        whose multipart upload went to the document's own key, that key is removed only when it surely holds this
        upload's bytes: ``ours``, or its ETag is the one S3 gives an object joined from this upload's parts;
        otherwise it may be another upload's version.
        """
        try:
            if up.s3_upload_id:
                self.objects.abort_multipart_upload(up.s3_key, up.s3_upload_id)
            if not up.size or up.direct:
                return  # a direct upload's object key holds a registered version, or bytes its retry registers
            if ours or not up.legacy_in_place:
                self.objects.remove(up.s3_key)
                return
            parts = self.store.parts(up.upload_id)
            if len(parts) != up.part_count:
                return
            try:
                info = self.objects.stat(up.s3_key)
            except KeyError:
                return
            if info.etag == multipart_etag(p.md5 for p in parts):
                self.objects.remove(up.s3_key)
        except Exception as exc:  # noqa: BLE001 - jobs.janitor sweeps leftovers of final uploads
            logger.warning("upload %s: S3 clean-up left for the janitor: %s", up.upload_id, exc)

    # -- abort (expire, retry and sweep: core.uploads.maintenance) -----------------------------------------------

    def abort(self, tenant: str, upload_id: str) -> None:
        """Abort a pending upload: marked ``aborted``, part rows deleted, S3 multipart upload aborted.

        Raises:
            UploadNotFoundError, UploadStateError (completing, completed or failed).
        """
        if _uuid_or_none(upload_id) is None:
            raise UploadNotFoundError(f"no upload {upload_id}")
        upload = self.store.mark_aborted(upload_id, tenant)
        self._clean_s3(upload)
