"""S3 multipart limits and how an upload is cut into parts (:func:`plan_parts`)."""

from __future__ import annotations

import math

# S3 limits (https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html).
MIN_PART_SIZE = 5 * 1024**2
MAX_PART_SIZE = 5 * 1024**3
MAX_PARTS = 10_000
MAX_OBJECT_BYTES = 5 * 1024**4


def plan_parts(size: int, part_size: int | None, default_part_size: int) -> tuple[int, int]:
    """The part size and count of an upload of ``size`` bytes.

    The part size is the requested one (else ``default_part_size``), raised to a whole number of MiB when more
    than 10,000 parts would be needed (S3: at most 10,000 parts, each 5 MiB to 5 GiB except the last).

    Returns:
        ``(part_size, part_count)``; ``part_count`` is 0 for an empty file.

    Raises:
        ValueError: ``size`` is negative or above 5 TiB, or ``part_size`` is outside 5 MiB to 5 GiB.
    """
    if size < 0 or size > MAX_OBJECT_BYTES:
        raise ValueError(f"size={size} must be 0 to {MAX_OBJECT_BYTES} bytes (5 TiB, the S3 limit)")
    chosen = part_size if part_size is not None else default_part_size
    if not MIN_PART_SIZE <= chosen <= MAX_PART_SIZE:
        raise ValueError(f"part_size={chosen} must be {MIN_PART_SIZE} (5 MiB) to {MAX_PART_SIZE} (5 GiB) bytes")
    if math.ceil(size / chosen) > MAX_PARTS:
        mib = 1024**2
        chosen = math.ceil(math.ceil(size / MAX_PARTS) / mib) * mib
    return chosen, math.ceil(size / chosen)
