"""Reading a part's body: the digest headers, the streamed bytes with their size limits, and the memory budget.

A part is read as a stream (Starlette ``request.stream()``) into one buffer of exactly the expected size, hashed
as it arrives, and checked against the client's digest **before** anything is sent to S3. A replica holds at most
``ByteBudget.limit`` bytes of parts at once; further part requests wait (without reading their bodies) until
memory frees up.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ctypes
import ctypes.util
import dataclasses
import gc
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator

from starlette.requests import ClientDisconnect, Request

from serve.http import ApiError

logger = logging.getLogger(__name__)

MD5_HEADER = "Content-MD5"
SHA256_HEADER = "X-Checksum-SHA256"
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


@dataclasses.dataclass(frozen=True)
class Digests:
    """What the client says the part hashes to. Attributes: md5 (hex) or None; sha256 (hex) or None."""

    md5: str | None
    sha256: str | None


@dataclasses.dataclass
class PartBody:
    """A part read in full. Attributes: data; md5 (hex); sha256 (hex, or None when not asked for)."""

    data: bytearray
    md5: str
    sha256: str | None


def parse_digests(request: Request) -> Digests:
    """The part's digests from ``Content-MD5`` (base64 of 16 bytes) and/or ``X-Checksum-SHA256`` (64 hex digits).

    Raises:
        ApiError: 400 ``missing_digest`` when neither header is sent, 400 ``invalid_digest`` when one is malformed.
    """
    md5_b64 = request.headers.get(MD5_HEADER)
    sha_hex = request.headers.get(SHA256_HEADER)
    if md5_b64 is None and sha_hex is None:
        raise ApiError(400, "missing_digest", f"send the part's {MD5_HEADER} (base64) or {SHA256_HEADER} (hex) header")
    md5 = None
    if md5_b64 is not None:
        try:
            raw = base64.b64decode(md5_b64.strip(), validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 16:
            raise ApiError(400, "invalid_digest", f"{MD5_HEADER} must be the base64 of the 16-byte MD5 of the part")
        md5 = raw.hex()
    sha256 = None
    if sha_hex is not None:
        if not _HEX64.fullmatch(sha_hex.strip()):
            raise ApiError(400, "invalid_digest", f"{SHA256_HEADER} must be 64 hexadecimal digits")
        sha256 = sha_hex.strip().lower()
    return Digests(md5=md5, sha256=sha256)


def check_declared_length(request: Request, part_number: int, expected: int, part_size: int) -> None:
    """Refuse early, from ``Content-Length``, a body that cannot be right (nothing is read).

    Raises:
        ApiError: 413 ``part_too_large`` past the part size, 400 ``bad_part_size`` when not the expected size,
            400 ``invalid_request`` when the header is not a number.
    """
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        length = int(declared)
    except ValueError:
        raise ApiError(400, "invalid_request", "Content-Length is not a number") from None
    if length > part_size:
        raise ApiError(413, "part_too_large", f"a part is at most {part_size} bytes (the upload's part size); got {length}")
    if length != expected:
        raise ApiError(400, "bad_part_size", f"part {part_number} must be exactly {expected} bytes; got {length}",
                       extra={"expected_size": expected})


async def read_part(request: Request, part_number: int, expected: int, part_size: int, *, sha256: bool) -> PartBody:
    """Read the body into one buffer of ``expected`` bytes, hashing it on the way.

    Raises:
        ApiError: 413 ``part_too_large`` once more than ``part_size`` bytes arrived; 400 ``bad_part_size`` when
            the body is not exactly ``expected`` bytes.
    """
    buffer = bytearray(expected)
    view = memoryview(buffer)
    md5 = hashlib.md5()
    sha = hashlib.sha256() if sha256 else None
    received = 0
    try:
        async for chunk in _stream(request):
            if not chunk:
                continue
            end = received + len(chunk)
            if end > expected:
                if end > part_size:
                    raise ApiError(413, "part_too_large", f"a part is at most {part_size} bytes (the upload's part size)")
                raise ApiError(400, "bad_part_size", f"part {part_number} must be exactly {expected} bytes; got more",
                               extra={"expected_size": expected})
            view[received:end] = chunk
            md5.update(chunk)
            if sha is not None:
                sha.update(chunk)
            received = end
    finally:
        view.release()
    if received != expected:
        raise ApiError(400, "bad_part_size", f"part {part_number} must be exactly {expected} bytes; got {received}",
                       extra={"expected_size": expected})
    return PartBody(buffer, md5.hexdigest(), sha.hexdigest() if sha is not None else None)


async def _stream(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise ApiError(400, "incomplete_body", "the client went away before the part was complete") from None


def verify(body: PartBody, digests: Digests, part_number: int) -> None:
    """Compare the computed digests with the client's.

    Raises:
        ApiError: 400 ``bad_digest``; the part is not stored.
    """
    if digests.md5 is not None and digests.md5 != body.md5:
        raise ApiError(400, "bad_digest", f"part {part_number}: the bytes received do not match {MD5_HEADER}")
    if digests.sha256 is not None and digests.sha256 != body.sha256:
        raise ApiError(400, "bad_digest", f"part {part_number}: the bytes received do not match {SHA256_HEADER}")


class ByteBudget:
    """An asynchronous semaphore counted in bytes: the part memory of one replica.

    Args:
        limit: bytes that may be reserved at once (a reservation above it waits for all others and takes it all).
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit={limit} must be at least 1 byte")
        self.limit = limit
        self.used = 0
        self.peak = 0
        #: Bytes reserved since the start, all reservations together (the part bytes the replica received).
        self.total = 0
        self._condition: asyncio.Condition | None = None

    @contextlib.asynccontextmanager
    async def reserve(self, size: int) -> AsyncIterator[None]:
        """Hold ``size`` bytes (at most ``limit``) of the budget while the block runs."""
        size = max(0, min(size, self.limit))
        if self._condition is None:
            self._condition = asyncio.Condition()
        condition = self._condition
        async with condition:
            await condition.wait_for(lambda: self.used + size <= self.limit)
            self.used += size
            self.total += size
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            async with condition:
                self.used -= size
                condition.notify_all()


class NativeMemory:
    """Keeps glibc from holding on to the memory of freed part buffers (a no-op elsewhere).

    A replica allocates and frees part-sized buffers from several threads; glibc then keeps freed memory in
    per-thread arenas and raises its mmap threshold, so the process grows well past the parts it holds. This limits
    the arenas, fixes the mmap threshold (buffers of 1 MiB and more are mapped, and unmapped when freed) and trims
    free memory back to the system after parts (glibc manual, "Memory Allocation Tunables";
    ``mallopt(3)``, ``malloc_trim(3)``).
    """

    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8

    def __init__(self, mmap_threshold: int = 1024**2, arenas: int = 2) -> None:
        self._libc = None
        self._last_trim = 0.0
        name = ctypes.util.find_library("c")
        if not name:
            return
        try:
            libc = ctypes.CDLL(name)
            libc.mallopt.argtypes, libc.malloc_trim.argtypes = [ctypes.c_int, ctypes.c_int], [ctypes.c_size_t]
            libc.mallopt(self.M_ARENA_MAX, arenas)
            libc.mallopt(self.M_MMAP_THRESHOLD, mmap_threshold)
            libc.mallopt(self.M_TRIM_THRESHOLD, mmap_threshold)
            self._libc = libc
        except (OSError, AttributeError) as exc:  # not glibc
            logger.info("malloc tuning unavailable: %s", exc)

    def trim(self) -> None:
        """Free unreachable cycles now and return free heap memory to the system (``malloc_trim(0)``).

        Part buffers caught in reference cycles (request and task objects) would otherwise live until the cyclic
        garbage collector happens to run; at most once a second.
        """
        now = time.monotonic()
        if now - self._last_trim < 1.0:
            return
        self._last_trim = now
        gc.collect()
        if self._libc is not None:
            self._libc.malloc_trim(0)
