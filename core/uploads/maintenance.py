"""The janitor's side of the upload workflow: expire overdue uploads, retry abandoned completions, sweep S3 leftovers.

:class:`UploadMaintenance` is mixed into :class:`core.uploads.service.UploadService`; ``jobs.janitor`` calls these
methods on the service.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timezone

from minio.error import S3Error
from psycopg.types.json import Jsonb

from core.errors import ServiceUnavailableError
from core.uploads.errors import UploadError
from core.uploads.lock import CompletionLock
from core.uploads.model import STAGING_PREFIX, Upload, answer_json

logger = logging.getLogger(__name__)


class UploadMaintenance:
    """Expire, retry and sweep: the steps ``jobs.janitor`` runs, as methods of :class:`UploadService`.

    Uses the service's ``settings``, ``objects`` (S3), ``store`` (PostgreSQL), ``_run_completion`` and ``_give_up``.
    """

    def expire_due(self, limit: int = 1000) -> dict[str, int]:
        """Abort (in S3) and mark ``expired`` the pending uploads past ``expires_at``.

        Safe beside other janitors: each upload is taken with ``FOR UPDATE SKIP LOCKED``.

        Returns:
            ``{"expired": n, "expire_errors": n}``.
        """
        expired = errors = 0
        skip: list[str] = []
        while expired + errors < limit:
            with self.store.transaction() as conn:
                row = conn.execute(
                    "SELECT * FROM uploads WHERE status = 'pending' AND expires_at < now() "
                    "AND NOT (upload_id = ANY(%s::uuid[])) ORDER BY expires_at LIMIT 1 FOR UPDATE SKIP LOCKED",
                    (skip,),
                ).fetchone()
                if row is None:
                    break
                up = Upload.from_row(row)
                try:
                    if up.s3_upload_id:
                        self.objects.abort_multipart_upload(up.s3_key, up.s3_upload_id)
                except ServiceUnavailableError as exc:
                    logger.warning("upload %s: could not abort in S3, left for the next run: %s", up.upload_id, exc)
                    skip.append(up.upload_id)
                    errors += 1
                    continue
                detail = f"not completed within {self.settings.upload_ttl_s} s"
                answer = answer_json(409, {"error": "upload_expired", "detail": detail})
                conn.execute(
                    "UPDATE uploads SET status = 'expired', last_error = %s, result = %s, updated_at = now() "
                    "WHERE upload_id = %s",
                    (f"expired: {detail}", Jsonb(answer), up.upload_id),
                )
                self.store.drop_parts(conn, up.upload_id)
            expired += 1
            logger.info("upload %s expired", up.upload_id)
        return {"expired": expired, "expire_errors": errors}

    def retry_stuck(self) -> dict[str, int]:
        """Retry uploads left ``completing`` by a completion that died; fail them after ``upload_max_attempts``.

        Returns:
            ``{"retried_completed": n, "retried_failed": n, "retry_errors": n, "busy": n}``.
        """
        counts = {"retried_completed": 0, "retried_failed": 0, "retry_errors": 0, "busy": 0}
        for upload_id in self.store.ids_with_status("completing"):
            with CompletionLock(self.settings, upload_id) as lock:
                if not lock.acquire(0.0):
                    counts["busy"] += 1
                    continue
                upload = self.store.get(upload_id)
                if upload is None or upload.status != "completing":
                    continue
                try:
                    if upload.attempts >= self.settings.upload_max_attempts:
                        answer = self._give_up(dataclasses.replace(upload, attempts=upload.attempts + 1))
                    else:
                        answer = self._run_completion(self.store.claim(upload_id))
                except (ServiceUnavailableError, UploadError, S3Error) as exc:
                    logger.warning("upload %s: retried completion failed: %s", upload_id, exc)
                    counts["retry_errors"] += 1
                    continue
                counts["retried_completed" if answer.status_code == 200 else "retried_failed"] += 1
        return counts

    def sweep(self, min_age_s: float) -> dict[str, int]:
        """Remove what no live upload owns: multipart uploads in the bucket, and staging objects.

        A leftover owned by a final upload goes at once; one owned by no upload only once older than ``min_age_s``
        (it may belong to an upload being created right now).

        Returns:
            ``{"orphan_multipart_aborted": n, "orphan_objects_removed": n}``.
        """
        now = datetime.now(timezone.utc)

        def old(when: datetime | None) -> bool:
            return when is not None and (now - when).total_seconds() >= min_age_s

        live = ("pending", "completing")
        aborted = removed = 0
        in_progress = self.objects.list_multipart_uploads("")  # the bucket is Sluice's: every upload is ours
        owners = self.store.statuses_by_s3_upload_id([m.upload_id for m in in_progress])
        for mp in in_progress:
            status = owners.get(mp.upload_id)
            if status in live or (status is None and not old(mp.initiated)):
                continue
            self.objects.abort_multipart_upload(mp.key, mp.upload_id)
            aborted += 1
        for info in self.objects.list_objects(STAGING_PREFIX):
            upload = self.store.get(info.key[len(STAGING_PREFIX):])
            if (upload is not None and upload.status in live) or (upload is None and not old(info.last_modified)):
                continue
            self.objects.remove(info.key)
            removed += 1
        return {"orphan_multipart_aborted": aborted, "orphan_objects_removed": removed}
