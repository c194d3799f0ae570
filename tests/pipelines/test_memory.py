"""A prepare worker's memory follows ``SLUICE_READ_AHEAD_BYTES``, not the size of its batch.

The prepare stage runs in a process of its own over one batch of large objects while its resident memory is
sampled; the growth is asserted against a bound that a worker holding the whole batch at once cannot meet
(``benchmarks/peak_memory.py`` prints the figures for the largest input of each modality).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.pipelines.support import prepare_peak, registered_batch

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
FILES, FILE_MIB, BUDGET_MIB = 12, 24, 48


def test_a_batch_of_large_files_is_read_within_the_read_ahead_budget(settings):
    settings = settings.model_copy(update={"read_ahead_bytes": BUDGET_MIB * MIB})
    rng = np.random.default_rng(0)
    files = {f"blobs/{i:02d}.bin": rng.integers(0, 256, FILE_MIB * MIB, dtype=np.uint8).tobytes()
             for i in range(FILES)}  # binary: each fails as soon as it is read, verified and sniffed
    batch = registered_batch(settings, "mem", files)
    del files

    growth, reasons = prepare_peak(settings, batch)

    assert len(reasons) == FILES and set(reasons) <= {"binary_content", "unsupported_type"}, reasons
    total = FILES * FILE_MIB * MIB
    # The budget, the document in hand, and the join of the blocks of each read in flight: under 3x the budget and
    # two files. Holding the batch's objects at once takes `total` (288 MiB) and more (measured: 332 MiB).
    assert growth < 3 * BUDGET_MIB * MIB + 2 * FILE_MIB * MIB < total, (growth // MIB, total // MIB)
