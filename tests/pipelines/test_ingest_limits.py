"""Hostile files beside good ones through the real ingest (issue 12): the run completes, the good files are indexed,
and each hostile file is one dead letter with its limit's reason code. Real S3, PostgreSQL, Redis, Ray and the
embedded Qdrant; a tiny Whisper (so audio reaches its decoder); every hostile file is built here."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.catalog import Catalog
from core.ids import document_id
from core.objects import ObjectStore
from pipelines.ingest import run_ingest
from tests.pipelines.test_limits import pdf_pages, scanned_pages, silent_flac

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TENANT = "limits"
MiB = 1024**2


def _hostile() -> dict[str, tuple[bytes, str]]:
    """Path → (bytes, the reason code it must fail with), under the limits of ``limited`` below."""
    return {
        "bad/silence-8ch-192k.flac": (silent_flac(seconds=30), "audio_too_large"),  # 184 MB decoded, 16 MiB cap
        "bad/streamed-8ch-192k.flac": (silent_flac(seconds=30, unknown_length=True), "audio_too_large"),
        "bad/many-pages.pdf": (pdf_pages([(612, 792)] * 401, filled=False), "too_many_pages"),
        "bad/many-scans.pdf": (scanned_pages(301), "too_many_ocr_pages"),
        "bad/ribbon.pdf": (pdf_pages([(100_000, 10)]), "page_too_large"),
        # within every cap, but 300 renders take 15 s or more: past the 6 s time limit
        "bad/slow-scans.pdf": (scanned_pages(300), "timeout"),
    }


@pytest.fixture(scope="module")
def limited(ray_local, make_settings, tmp_path_factory):
    from tests.pipelines.test_asr import build_tiny_whisper

    whisper = build_tiny_whisper(tmp_path_factory.mktemp("whisper"))
    settings = make_settings(asr_model=str(whisper), max_audio_decoded_bytes=16 * MiB, max_pdf_pages=400,
                             max_ocr_pages=300, document_timeout_s=6.0)
    objects = ObjectStore(settings)
    objects.ensure_bucket()
    good = {
        "docs/fastapi.md": (EXAMPLES / "docs" / "fastapi.md").read_bytes(),
        "notes/one.txt": b"Sluice puts limits on hostile files.\n\nThis note is indexed beside them.\n",
        "notes/two.txt": b"A second good note, about decoding audio in bounded blocks.\n",
    }
    hostile = _hostile()
    for path, data in good.items():
        objects.put_bytes(f"{TENANT}/{path}", data)
    for path, (data, _) in hostile.items():
        objects.put_bytes(f"{TENANT}/{path}", data)
    summary = run_ingest(settings, tenant=TENANT, scan=True)
    return settings, good, hostile, summary


def test_good_files_are_indexed_and_each_hostile_one_is_a_dead_letter_with_its_limit(limited):
    settings, good, hostile, summary = limited
    assert summary.documents_indexed == len(good), summary
    assert summary.documents_failed == len(hostile), summary
    catalog = Catalog(settings)
    try:
        for path in good:
            version = catalog.list_versions(document_id(TENANT, path))[-1]
            assert version.status == "indexed" and version.chunk_count > 0, (path, version)
        reasons = {}
        for path in hostile:
            doc = document_id(TENANT, path)
            assert catalog.list_versions(doc)[-1].status == "failed", path
            letters = catalog.dead_letters(doc)
            assert len(letters) == 1, (path, letters)
            reasons[path] = letters[0]["reason"]
    finally:
        catalog.close()
    assert reasons == {path: reason for path, (_, reason) in hostile.items()}

