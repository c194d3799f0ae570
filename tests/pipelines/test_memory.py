"""A prepare worker's memory follows ``SLUICE_READ_AHEAD_BYTES``, not the size of its batch; a recording's samples
live in the audio stage only.

The prepare stage runs in a process of its own over one batch of large objects while its resident memory is
sampled; the growth is asserted against a bound that a worker holding the whole batch at once cannot meet
(``benchmarks/peak_memory.py`` prints the figures for the largest input of each modality).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.pipelines.support import stage_peak, registered_batch

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

    growth, reasons = stage_peak(settings, batch)

    assert len(reasons) == FILES and set(reasons) <= {"binary_content", "unsupported_type"}, reasons
    total = FILES * FILE_MIB * MIB
    # The budget, the document in hand, and the join of the blocks of each read in flight: under 3x the budget and
    # two files. Holding the batch's objects at once takes `total` (288 MiB) and more (measured: 332 MiB).
    assert growth < 3 * BUDGET_MIB * MIB + 2 * FILE_MIB * MIB < total, (growth // MIB, total // MIB)


def test_a_long_recording_is_decoded_by_the_audio_stage_and_never_carried_in_a_row(settings):
    """Ten minutes of 48 kHz stereo: prepare passes it on without its samples (its memory barely moves, where
    decoding there and carrying them cost 2.3 times the 16 kHz samples), and the audio stage, which reads and decodes
    the file itself, holds the 16 kHz samples once (decoded into one array sized from the header; joining a list of
    blocks would hold them twice), never the 48 kHz stereo source (6 times the samples' 38 MB)."""
    from tests.pipelines.test_limits import silent_flac

    settings = settings.model_copy(update={"asr_model": "tiny"})  # prepare only checks that one is named
    batch = registered_batch(settings, "mem", {"talks/long.flac": silent_flac(channels=2, rate=48_000, seconds=600)})
    samples_bytes = 600 * 16_000 * 4

    prepared, prepare_reasons = stage_peak(settings, batch)
    decoded, audio_reasons = stage_peak(settings, batch, stage="audio")

    assert prepare_reasons == [""] and audio_reasons == [""], (prepare_reasons, audio_reasons)
    assert prepared < samples_bytes / 4, prepared // MIB
    source_bytes = 600 * 48_000 * 2 * 4
    assert samples_bytes <= decoded < 2 * samples_bytes < source_bytes, (decoded // MIB, samples_bytes // MIB)
