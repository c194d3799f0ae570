"""The ingest job end to end: real S3 (SeaweedFS), PostgreSQL, Redis and Ray, the real model, the embedded Qdrant."""

from __future__ import annotations

import codecs
import time
import unicodedata
from pathlib import Path

import pytest
from qdrant_client import models

from core.catalog import Catalog
from core.errors import ServiceUnavailableError
from core.ids import document_id
from core.objects import ObjectStore
from core.vectorstore import VectorStore, tenant_filter
from pipelines.ingest import run_ingest
from serve.search.engine import SearchEngine, SearchRequest

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TENANT = "acme"
OTHER = "globex"
LATIN1 = "Le café du coin sert un crème brûlée délicieux. Naïve façade, résumé déjà vu.\n\n" * 3


def _bad_inputs() -> dict[str, bytes]:
    """Each of these must fail alone, with its reason code, while the rest index."""
    pdf = (EXAMPLES / "pdf" / "shared-mime-info-spec.pdf").read_bytes()
    return {
        "bad/corrupt.pdf": b"%PDF-1.7\n" + bytes(range(256)) * 8,
        "bad/truncated.pdf": pdf[: len(pdf) // 3],
        "bad/empty.txt": b"",
        "bad/blank.txt": b"   \n\t\n  \r\n",
        "bad/binary.txt": bytes(range(256)) * 64,
    }


@pytest.fixture(scope="module")
def ingested(ray_local, make_settings):
    """The examples, two encodings and the bad inputs, ingested once for the module's tests."""
    settings = make_settings()
    objects = ObjectStore(settings)
    objects.ensure_bucket()
    files = {p.relative_to(EXAMPLES).as_posix(): p.read_bytes() for p in EXAMPLES.rglob("*") if p.is_file() and p.suffix in {".md", ".pdf"} and p.name != "README.md"}
    for rel, data in files.items():
        objects.put_bytes(f"{TENANT}/{rel}", data)
    objects.put_bytes(f"{TENANT}/enc/latin1.txt", LATIN1.encode("latin-1"))
    objects.put_bytes(f"{TENANT}/enc/utf16.txt", codecs.BOM_UTF16_LE + LATIN1.encode("utf-16-le"))
    for rel, data in _bad_inputs().items():
        objects.put_bytes(f"{TENANT}/{rel}", data)
    # The same name in NFC and NFD: one document.
    name = "notes/crème.md"
    objects.put_bytes(f"{TENANT}/{unicodedata.normalize('NFC', name)}", b"# Cr\xc3\xa8me\n\nA note about custard.\n")
    objects.put_bytes(f"{TENANT}/{unicodedata.normalize('NFD', name)}", b"# Cr\xc3\xa8me\n\nA note about custard.\n")
    # Another tenant's document with a word nobody else has.
    objects.put_bytes(f"{OTHER}/secret.md", b"# Zyxquorbe\n\nThe zyxquorbe ledger belongs to globex only.\n")

    first = run_ingest(settings, tenant=TENANT, scan=True)
    other = run_ingest(settings, tenant=OTHER, scan=True)
    return settings, files, first, other


def test_every_good_file_is_indexed_and_each_bad_one_fails_alone(ingested):
    settings, files, first, _ = ingested
    good = len(files) + 2 + 1  # examples, two encodings, one NFC/NFD note
    assert first.documents_indexed == good
    assert first.documents_failed == len(_bad_inputs())
    assert first.documents_seen == good + len(_bad_inputs())
    assert first.chunks_indexed >= good
    assert 0 < first.stage_seconds["write"] < first.stage_seconds["dataset"]  # writing points is a part of the run
    catalog = Catalog(settings)
    try:
        reasons = {}
        for path in _bad_inputs():
            doc = document_id(TENANT, path)
            versions = catalog.list_versions(doc)
            assert versions[-1].status == "failed"
            letters = catalog.dead_letters(doc)
            assert len(letters) == 1
            reasons[path] = letters[0]["reason"]
        for path in files:
            version = catalog.list_versions(document_id(TENANT, path))[-1]
            assert version.status == "indexed" and version.chunk_count > 0, path
    finally:
        catalog.close()
    assert reasons == {
        "bad/corrupt.pdf": "pdf_corrupt",
        "bad/truncated.pdf": "pdf_corrupt",
        "bad/empty.txt": "empty_file",
        "bad/blank.txt": "empty_content",
        "bad/binary.txt": "binary_content",
    }


def test_points_match_the_catalog_chunk_counts(ingested):
    settings, files, first, _ = ingested
    store = VectorStore(settings)
    assert store.count(tenant_filter(TENANT)) == first.chunks_indexed
    pdf_id = document_id(TENANT, "pdf/shared-mime-info-spec.pdf")
    pages = {r.payload["page"] for r in store.scroll(models.Filter(must=[models.FieldCondition(key="document_id", match=models.MatchValue(value=pdf_id))]))}
    assert len(pages) > 5 and min(pages) == 1


def test_latin1_and_utf16_files_are_decoded(ingested):
    settings, *_ = ingested
    store = VectorStore(settings)
    for path in ("enc/latin1.txt", "enc/utf16.txt"):
        flt = models.Filter(must=[models.FieldCondition(key="document_id", match=models.MatchValue(value=document_id(TENANT, path)))])
        texts = " ".join(r.payload["text"] for r in store.scroll(flt))
        assert "crème brûlée délicieux" in texts, path


def test_nfc_and_nfd_names_are_one_document(ingested):
    settings, *_ = ingested
    catalog = Catalog(settings)
    try:
        versions = catalog.list_versions(document_id(TENANT, "notes/crème.md"))
    finally:
        catalog.close()
    assert len(versions) == 1 and versions[0].status == "indexed"


@pytest.mark.parametrize(
    ("query", "page", "phrase"),
    [
        ("This is version 0.21 of the Shared MIME-info Database specification, last updated 2 October 2018", 1,
         "last updated 2 October 2018"),
        ("In discussions about the previous systems used by GNOME, KDE and ROX", 2, "used by GNOME, KDE and ROX"),
    ],
)
def test_a_pdf_phrase_finds_its_chunk_on_the_right_page(ingested, query, page, phrase):
    settings, *_ = ingested
    engine = SearchEngine(settings)
    answer = engine.search(TENANT, SearchRequest(query=query, top_k=3))
    pdf_hits = [r for r in answer["results"] if r["path"] == "pdf/shared-mime-info-spec.pdf"]
    assert pdf_hits, [r["path"] for r in answer["results"]]
    assert pdf_hits[0]["page"] == page
    assert phrase in " ".join(pdf_hits[0]["text"].split())


def test_another_tenant_sees_none_of_it(ingested):
    settings, *_ = ingested
    engine = SearchEngine(settings)
    for mode in ("dense", "sparse", "hybrid"):
        mine = engine.search(TENANT, SearchRequest(query="zyxquorbe ledger", mode=mode, top_k=50))["results"]
        assert all(r["path"] != "secret.md" for r in mine), mode
        theirs = engine.search(OTHER, SearchRequest(query="pydantic validation", mode=mode, top_k=50))["results"]
        assert {r["path"] for r in theirs} <= {"secret.md"}, mode
    assert engine.search(OTHER, SearchRequest(query="zyxquorbe ledger", mode="sparse"))["results"][0]["path"] == "secret.md"


def test_a_second_run_indexes_nothing_and_keeps_the_point_count(ingested):
    settings, _, first, _ = ingested
    store = VectorStore(settings)
    before = store.count()
    again = run_ingest(settings, tenant=TENANT, scan=True)
    assert again.documents_indexed == 0
    assert again.documents_failed == 0
    assert again.documents_unchanged == first.documents_seen  # failed versions are not retried by a plain run
    assert again.objects_registered == 0
    assert store.count() == before


def test_a_changed_file_replaces_its_chunks(ingested):
    settings, *_ = ingested
    objects, store = ObjectStore(settings), VectorStore(settings)
    path = "changing.md"
    long_text = "\n\n".join(f"## Part {i}\n\n" + f"Paragraph {i} about rivers and lakes. " * 40 for i in range(10))
    objects.put_bytes(f"{TENANT}/{path}", long_text.encode())
    run_ingest(settings, tenant=TENANT, scan=True)
    doc = document_id(TENANT, path)
    flt = models.Filter(must=[models.FieldCondition(key="document_id", match=models.MatchValue(value=doc))])
    assert store.count(flt) >= 10
    objects.put_bytes(f"{TENANT}/{path}", b"# Short now\n\nOnly one paragraph is left.\n")
    summary = run_ingest(settings, tenant=TENANT, scan=True)
    assert summary.documents_indexed == 1
    points = list(store.scroll(models.Filter(must=[*flt.must, models.FieldCondition(key="is_latest", match=models.MatchValue(value=True))])))
    assert len(points) == 1
    assert points[0].payload["version"] == 2 and "Only one paragraph" in points[0].payload["text"]
    # Version 1 is retained (restorable without embedding), hidden from search.
    assert {r.payload["version"] for r in store.scroll(flt) if not r.payload["is_latest"]} == {1}


def test_a_version_left_indexing_by_a_dead_run_is_resumed(ingested):
    settings, *_ = ingested
    objects, catalog = ObjectStore(settings), Catalog(settings)
    try:
        objects.put_bytes(f"{TENANT}/resume.md", b"# Resume\n\nThis run died before it finished.\n")
        from pipelines.source import scan_objects

        scan_objects(objects, catalog, tenant=TENANT, prefix="resume")
        claimed = catalog.claim_versions(TENANT, "resume", lease_s=3.0)  # a run claims it, then dies
        assert [(c.version.status, c.previous_status) for c in claimed] == [("indexing", "pending")]
        held = run_ingest(settings, tenant=TENANT, prefix="resume")  # its lease still runs: left to it
        assert (held.documents_indexed, held.versions_held_elsewhere, held.documents_unchanged) == (0, 1, 0)
        time.sleep(3.5)
        summary = run_ingest(settings, tenant=TENANT, prefix="resume")  # expired: resumed
        assert summary.documents_indexed == 1 and summary.versions_resumed == 1
        assert catalog.list_versions(document_id(TENANT, "resume.md"))[-1].status == "indexed"
    finally:
        catalog.close()


def test_unreachable_services_are_named(ray_local, make_settings, unused_port):
    settings = make_settings()
    with pytest.raises(ServiceUnavailableError) as info:
        run_ingest(settings.model_copy(update={"postgres_dsn": f"postgresql://postgres@127.0.0.1:{unused_port}/x"}), tenant=TENANT)
    assert info.value.service == "postgres"
    with pytest.raises(ServiceUnavailableError) as info:
        run_ingest(settings.model_copy(update={"s3_endpoint": f"127.0.0.1:{unused_port}"}), tenant=TENANT)
    assert info.value.service == "s3"
