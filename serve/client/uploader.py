"""Uploading files and folders through ``/v1/uploads``: parallel parts, retries, resume, progress.

One file: hash it (SHA-256, so the server can verify the stored bytes and skip unchanged files), create the upload,
send the missing parts in parallel (each with its ``Content-MD5``), complete. A ``direct`` upload (the default, when
the server offers it) sends each part straight to S3 through a presigned URL the server signs for the part's MD5;
a ``proxy`` one sends it through the server. The upload id is kept in the state file until the completion answered,
so an interrupted run resumes: it asks ``GET /v1/uploads/{id}`` which parts the server has (or, for a direct upload,
S3 holds as declared) and sends only the others.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import mimetypes
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

from serve.client.api import ApiAnswerError, SluiceClient
from serve.client.state import StateFile

logger = logging.getLogger(__name__)

HASH_BLOCK_BYTES = 8 * 1024**2
#: The part size the server gives when none is asked for (``SLUICE_UPLOAD_PART_SIZE``'s default): the size a direct
#: upload's MD5s are computed for before the upload exists, when no part size is asked for.
DEFAULT_PART_SIZE = 16 * 1024**2
#: How many batches of ``parallel`` parts a direct upload signs ahead of the parts being sent.
SIGN_AHEAD = 4
#: How long to keep asking while another completion of the same upload runs, seconds.
COMPLETE_PATIENCE_S = 3600.0


@dataclasses.dataclass(frozen=True)
class FileResult:
    """The outcome of one file.

    Attributes:
        local: the local path. remote: the document path. ok: whether it is stored. document_id, version: the
        version it is now (None on failure). deduplicated: the bytes equalled the latest version's. resumed: an
        interrupted upload was continued. error: why it failed. size: bytes.
    """

    local: str
    remote: str
    ok: bool
    size: int = 0
    document_id: str | None = None
    version: int | None = None
    deduplicated: bool = False
    resumed: bool = False
    error: str | None = None


def plan(paths: Iterable[str | os.PathLike[str]], prefix: str = "") -> list[tuple[Path, str]]:
    """``(local file, document path)`` for every file under ``paths``, like ``cp -r``.

    A file becomes ``PREFIX/<file name>``; a folder ``PREFIX/<folder name>/<relative path>`` for each regular file
    under it (symbolic links to folders are not followed).

    Raises:
        FileNotFoundError: a path does not exist.
    """
    prefix = prefix.strip("/")
    out: list[tuple[Path, str]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            out.append((path, str(PurePosixPath(prefix, path.resolve().name)) if prefix else path.resolve().name))
        elif path.is_dir():
            base = path.resolve()
            for folder, dirs, files in os.walk(base):
                dirs.sort()
                for name in sorted(files):
                    local = Path(folder, name)
                    if not local.is_file():
                        continue
                    rel = PurePosixPath(base.name, *local.relative_to(base).parts)
                    out.append((local, str(PurePosixPath(prefix, rel)) if prefix else str(rel)))
        else:
            raise FileNotFoundError(f"{raw}: no such file or folder")
    return out


def file_sha256(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    """The hex SHA-256 of a file, read in 8 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK_BYTES):
            h.update(block)
            if on_bytes:
                on_bytes(len(block))
    return h.hexdigest()


def file_digests(path: Path, part_size: int) -> tuple[str, list[str]]:
    """The hex SHA-256 of a file and the hex MD5 of each of its ``part_size`` parts, in one read.

    This thread hashes the whole file while two others hash the parts (hashlib lets go of the GIL), so the pass
    takes about the hashing's CPU time shared over the cores; done before a direct upload starts, it leaves the
    cores to the transfer afterwards. At most three parts are in memory.
    """
    whole, md5s, pending = hashlib.sha256(), [], collections.deque()
    with open(path, "rb") as f, ThreadPoolExecutor(max_workers=2, thread_name_prefix="md5") as md5er:
        while part := f.read(part_size):
            if len(pending) == 2:
                md5s.append(pending.popleft().result())
            pending.append(md5er.submit(lambda data: hashlib.md5(data).hexdigest(), part))
            whole.update(part)
            del part
        md5s.extend(future.result() for future in pending)
    return whole.hexdigest(), md5s


def _fingerprint(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"local": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class Uploader:
    """Uploads files with one :class:`SluiceClient`.

    Args:
        client: the API client (its retries cover each request).
        state: the resume state file.
        parallel: parts in flight at once, per file.
        part_size: bytes per part to ask for (``None``: the server's default).
        on_progress: called with a number of bytes each time a part is stored (progress bars).
        metadata: user metadata of every file uploaded (``None``: each keeps its previous version's).
        transfer: ``direct`` (parts straight to S3 when the server offers it, else through the server) or
            ``proxy`` (always through the server).
    """

    def __init__(self, client: SluiceClient, state: StateFile, *, parallel: int = 4, part_size: int | None = None,
                 on_progress: Callable[[int], None] | None = None, metadata: dict[str, Any] | None = None,
                 transfer: str = "direct") -> None:
        if parallel < 1:
            raise ValueError(f"parallel={parallel} must be at least 1")
        if transfer not in ("direct", "proxy"):
            raise ValueError(f"transfer={transfer!r} must be 'direct' or 'proxy'")
        self.transfer = transfer
        self.client = client
        self.state = state
        self.parallel = parallel
        self.part_size = part_size
        self.on_progress = on_progress or (lambda n: None)
        self.metadata = metadata

    def upload(self, local: Path, remote: str) -> FileResult:
        """Upload one file (resuming an unfinished upload of it); never raises for a per-file failure."""
        try:
            return self._upload(local, remote)
        except ApiAnswerError as exc:
            return FileResult(str(local), remote, ok=False, error=str(exc))
        except OSError as exc:
            return FileResult(str(local), remote, ok=False, error=f"{type(exc).__name__}: {exc}")

    def _upload(self, local: Path, remote: str) -> FileResult:
        key = StateFile.key(self.client.url, self.client.tenant, remote)
        fingerprint = _fingerprint(local)
        entry = self.state.get(key)
        status = None
        if entry and all(entry.get(k) == v for k, v in fingerprint.items()):
            status = self.client.upload_status(entry["upload_id"])
        elif entry:
            self.client.abort(entry["upload_id"])  # the file changed: that upload can never complete correctly
            self.state.remove(key)
            entry = None
        resumed, md5s = False, []  # md5s: the parts' MD5s, when hashed before the upload was made
        if status is not None and status["status"] in ("pending", "completing", "completed"):
            resumed = True
            upload_id, sha256, part_size = entry["upload_id"], entry["sha256"], status["part_size"]
            missing, transfer = status["missing_parts"], status.get("transfer", "proxy")
            self.on_progress(status["bytes_received"])
        else:
            if entry:
                self.state.remove(key)
            if self.transfer == "direct":
                sha256, md5s = file_digests(local, self.part_size or DEFAULT_PART_SIZE)
            else:
                sha256 = file_sha256(local)
            created = self.client.create_upload(
                remote, fingerprint["size"], sha256=sha256, content_type=mimetypes.guess_type(remote)[0] or "",
                part_size=self.part_size, metadata=self.metadata, transfer=self.transfer,
            )
            if created.get("deduplicated"):
                self.on_progress(fingerprint["size"])
                return FileResult(str(local), remote, ok=True, size=fingerprint["size"],
                                  document_id=created["document_id"], version=created["version"], deduplicated=True)
            upload_id, part_size = created["upload_id"], created["part_size"]
            missing, transfer = list(range(1, created["part_count"] + 1)), created.get("transfer", "proxy")
            self.state.put(key, {**fingerprint, "upload_id": upload_id, "sha256": sha256, "remote": remote})
            if part_size != (self.part_size or DEFAULT_PART_SIZE) or len(md5s) != len(missing):
                md5s = []  # another part size than hashed for: the parts are hashed as they are sent
        self._send_parts(local, upload_id, missing, part_size, fingerprint["size"], direct=transfer == "direct",
                         md5s=md5s)
        answer = self._complete(upload_id, fingerprint["size"])
        self.state.remove(key)
        return FileResult(str(local), remote, ok=True, size=fingerprint["size"], document_id=answer["document_id"],
                          version=answer["version"], deduplicated=bool(answer.get("deduplicated")), resumed=resumed)

    def _send_parts(self, local: Path, upload_id: str, numbers: list[int], part_size: int, size: int, *,
                    direct: bool, md5s: Sequence[str] = ()) -> None:
        if not numbers:
            return
        fd = os.open(local, os.O_RDONLY)

        def read(n: int) -> bytes:
            offset = (n - 1) * part_size
            return os.pread(fd, min(part_size, size - offset), offset)

        try:
            if direct:
                self._send_direct(upload_id, numbers, read, md5s)
                return

            def send(n: int) -> None:
                data = read(n)
                self.client.put_part(upload_id, n, data)
                self.on_progress(len(data))

            with ThreadPoolExecutor(max_workers=min(self.parallel, len(numbers)), thread_name_prefix="part") as pool:
                for future in [pool.submit(send, n) for n in numbers]:
                    future.result()
        finally:
            os.close(fd)

    def _send_direct(self, upload_id: str, numbers: list[int], read: Callable[[int], bytes], md5s: Sequence[str]) -> None:
        """Send parts straight to S3.

        This thread runs ahead of the senders: it takes ``parallel`` parts at a time, hashes them (MD5; or takes
        ``md5s``, by part number from 1, when :func:`file_digests` already did) and has them signed in one request,
        keeping no bytes. ``parallel`` part threads each take a signed part, read its bytes (again, from the page
        cache) and send them. Signing stays at most ``SIGN_AHEAD`` batches ahead, so about ``parallel`` parts are in
        memory and no sender waits for hashing or signing. A URL that expired before its part was sent (403) is
        signed again, once.
        """
        ahead = threading.BoundedSemaphore(SIGN_AHEAD * self.parallel)
        failed: list[BaseException] = []

        def send(signed: dict[str, Any], md5: str) -> None:
            try:
                n = signed["part_number"]
                data = read(n)
                for attempt in range(2):
                    try:
                        self.client.put_presigned(signed, data)
                        break
                    except ApiAnswerError as exc:
                        if exc.status_code != 403 or attempt:
                            raise
                        (signed,) = self.client.part_urls(upload_id, {n: md5})
                self.on_progress(len(data))
            except BaseException as exc:
                failed.append(exc)
                raise
            finally:
                ahead.release()

        with ThreadPoolExecutor(max_workers=min(self.parallel, len(numbers)), thread_name_prefix="part") as pool:
            futures = []
            for start in range(0, len(numbers), self.parallel):
                if failed:
                    break
                chunk = numbers[start : start + self.parallel]
                for _ in chunk:
                    ahead.acquire()
                try:
                    digests = {n: md5s[n - 1] if md5s else hashlib.md5(read(n)).hexdigest() for n in chunk}
                    signed_parts = self.client.part_urls(upload_id, digests)
                except BaseException:
                    for _ in chunk:
                        ahead.release()
                    raise
                futures.extend(pool.submit(send, signed, digests[signed["part_number"]]) for signed in signed_parts)
            for future in futures:
                future.result()

    def _complete(self, upload_id: str, size: int) -> dict[str, Any]:
        """Complete, waiting out a completion in progress elsewhere (e.g. our own earlier, timed-out attempt)."""
        # The server reads the object back to verify it: allow for that on large files.
        timeout_s = max(120.0, size / (20 * 1024**2))
        deadline = time.monotonic() + COMPLETE_PATIENCE_S
        while True:
            response = self.client.complete(upload_id, timeout_s=timeout_s)
            if response.status_code == 200:
                return response.json()
            error = ApiAnswerError(response)
            if error.code == "completion_in_progress" and time.monotonic() < deadline:
                time.sleep(float(response.headers.get("Retry-After", "2")))
                continue
            raise error
