"""Versions, deletes, restores and incremental runs, end to end: real S3, PostgreSQL, Redis, Ray, embedded Qdrant.

A tiny random model keeps embedding cheap; every test uses its own tenant in one module-wide collection, and ends
with ``jobs.reconcile --check`` finding the index equal to the catalog.
"""

from __future__ import annotations

import pytest
from qdrant_client import models

from core import lifecycle
from core.catalog import Catalog, CatalogConflict
from core.errors import ConfigurationError
from core.ids import document_id
from core.objects import ObjectStore
from core.vectorstore import VectorStore
from jobs.reconcile import reconcile
from pipelines.ingest import run_ingest
from serve.search.engine import SearchEngine, SearchRequest
from tests.pipelines.support import tiny_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(ray_local, make_settings, tmp_path_factory):
    return make_settings(text_model=tiny_model(tmp_path_factory.mktemp("tiny")), version_retention=3, search_cache_ttl_s=300)


@pytest.fixture(scope="module")
def catalog(settings):
    catalog = Catalog(settings)
    yield catalog
    catalog.close()


def _doc_filter(doc: str, *, latest: bool | None = None) -> models.Filter:
    must = [models.FieldCondition(key="document_id", match=models.MatchValue(value=doc))]
    if latest is not None:
        must.append(models.FieldCondition(key="is_latest", match=models.MatchValue(value=latest)))
    return models.Filter(must=must)


def _paragraphs(n: int, word: str) -> bytes:
    return "\n\n".join(f"## Part {i}\n\n" + f"Paragraph {i} about {word} and rivers. " * 40 for i in range(n)).encode()


def _clean(settings, tenant: str) -> None:
    report = reconcile(settings, tenant=tenant, check=True)
    assert report["clean"], report


def test_a_document_shrinking_from_10_chunks_to_3_leaves_exactly_3(settings, catalog):
    tenant, path = "shrink", "doc.md"
    objects, store, doc = ObjectStore(settings), VectorStore(settings), document_id("shrink", "doc.md")
    objects.put_bytes(f"{tenant}/{path}", _paragraphs(10, "lakes"))
    first = run_ingest(settings, tenant=tenant, scan=True)
    assert first.chunks_indexed >= 10
    objects.put_bytes(f"{tenant}/{path}", _paragraphs(3, "lakes")[: 3 * 700])
    second = run_ingest(settings, tenant=tenant, scan=True)
    assert second.documents_indexed == 1
    shown = catalog.get_document(doc)
    assert shown.latest_version == 2
    latest = list(store.scroll(_doc_filter(doc, latest=True)))
    assert len(latest) == second.chunks_indexed == catalog.list_versions(doc)[-1].chunk_count
    assert {p.payload["version"] for p in latest} == {2}
    assert sorted(p.payload["chunk_index"] for p in latest) == list(range(len(latest)))
    # Version 1 is retained for restore, invisible to search.
    assert store.count(_doc_filter(doc, latest=False)) == first.chunks_indexed
    _clean(settings, tenant)


def test_versions_beyond_retention_lose_their_points(settings, catalog):
    tenant, doc = "retain", document_id("retain", "r.md")
    settings = settings.model_copy(update={"version_retention": 2})  # three runs show it (each run costs ~20 s)
    objects, store = ObjectStore(settings), VectorStore(settings)
    for n in range(1, 4):
        objects.put_bytes(f"{tenant}/r.md", f"# Version {n}\n\nThe content of version {n}.\n".encode())
        run_ingest(settings, tenant=tenant, scan=True)
    census = store.version_census(_doc_filter(doc))
    assert sorted(v for _, v in census) == [2, 3]
    assert {v: c["latest"] for (_, v), c in census.items()} == {2: 0, 3: 1}
    statuses = {v.version: (v.status, v.chunk_count is not None) for v in catalog.list_versions(doc)}
    assert statuses == {1: ("superseded", False), 2: ("superseded", True), 3: ("indexed", True)}
    with pytest.raises(CatalogConflict) as info:
        lifecycle.restore_version(settings, doc, 1)
    assert info.value.code == "not_restorable"
    _clean(settings, tenant)


def test_restore_brings_a_version_back_without_embedding(settings, catalog):
    tenant, doc = "restore", document_id("restore", "r.md")
    objects, store = ObjectStore(settings), VectorStore(settings)
    engine = SearchEngine(settings)
    objects.put_bytes(f"{tenant}/r.md", b"# Old\n\nThe original text mentions zanzibarite crystals.\n")
    run_ingest(settings, tenant=tenant, scan=True)
    objects.put_bytes(f"{tenant}/r.md", b"# New\n\nThe new text mentions quorvanite instead.\n")
    run_ingest(settings, tenant=tenant, scan=True)
    ask = SearchRequest(query="zanzibarite quorvanite", mode="sparse", top_k=10)
    assert {r["version"] for r in engine.search(tenant, ask)["results"]} == {2}

    restored = lifecycle.restore_version(settings, doc, 1)
    assert restored.latest_version == 1
    answer = engine.search(tenant, ask)
    assert not answer["cached"]  # the generation moved
    assert {r["version"] for r in answer["results"]} == {1}
    assert "zanzibarite" in answer["results"][0]["text"]
    assert {v: c["latest"] > 0 for (_, v), c in store.version_census(_doc_filter(doc)).items()} == {1: True, 2: False}
    # A scan sees the object still holding version 2's bytes: the restore was deliberate, nothing is registered.
    again = run_ingest(settings, tenant=tenant, scan=True)
    assert again.objects_registered == 0 and again.chunks_embedded == 0
    assert catalog.get_document(doc).latest_version == 1
    # And version 2 can be restored in turn.
    lifecycle.restore_version(settings, doc, 2)
    assert {r["version"] for r in engine.search(tenant, ask)["results"]} == {2}
    _clean(settings, tenant)


def test_a_forced_reindex_of_a_restored_version_keeps_it_shown_and_indexed(settings, catalog):
    """After a restore the object holds newer bytes; --force cannot re-read the restored version, and must not
    demote it: it stays indexed and searchable, and the failed attempt is a dead letter."""
    tenant, doc = "forced", document_id("forced", "f.md")
    objects, engine = ObjectStore(settings), SearchEngine(settings)
    objects.put_bytes(f"{tenant}/f.md", b"# Old\n\nThe first text names the mineral brazzelite.\n")
    run_ingest(settings, tenant=tenant, scan=True)
    objects.put_bytes(f"{tenant}/f.md", b"# New\n\nThe second text names the mineral cordovite.\n")
    run_ingest(settings, tenant=tenant, scan=True)
    lifecycle.restore_version(settings, doc, 1)

    forced = run_ingest(settings, tenant=tenant, force=True)
    assert forced.failures == {"object_changed": 1}
    v1 = next(v for v in catalog.list_versions(doc) if v.version == 1)
    assert v1.status == "indexed" and v1.chunk_count >= 1
    assert catalog.get_document(doc).latest_version == 1
    answer = engine.search(tenant, SearchRequest(query="brazzelite", mode="sparse", top_k=5))
    assert [r["version"] for r in answer["results"]] == [1]
    assert [d["reason"] for d in catalog.dead_letters(doc)] == ["object_changed"]
    _clean(settings, tenant)


def test_a_deleted_document_is_absent_from_every_leg_and_the_cache(settings, catalog):
    tenant = "deleting"
    objects, store = ObjectStore(settings), VectorStore(settings)
    engine = SearchEngine(settings)
    objects.put_bytes(f"{tenant}/keep.md", b"# Keep\n\nThis one stays about ordinary gardening.\n")
    objects.put_bytes(f"{tenant}/gone.md", b"# Gone\n\nThe vexillomancy manual explains vexillomancy flags.\n")
    run_ingest(settings, tenant=tenant, scan=True)
    gone = document_id(tenant, "gone.md")
    asks = [SearchRequest(query="vexillomancy flags manual gardening", mode=mode, top_k=50) for mode in ("dense", "sparse", "hybrid")]
    for ask in asks:
        assert gone in {r["document_id"] for r in engine.search(tenant, ask)["results"]}, ask.mode
        assert engine.search(tenant, ask)["cached"], ask.mode  # the answer is now in the cache

    before = lifecycle.delete_document(settings, gone)
    assert before is not None and before.latest_version == 1
    for ask in asks:
        answer = engine.search(tenant, ask)
        assert not answer["cached"], ask.mode
        assert gone not in {r["document_id"] for r in answer["results"]}, ask.mode
        assert document_id(tenant, "keep.md") in {r["document_id"] for r in answer["results"]}, ask.mode
    assert store.count(_doc_filter(gone)) == 0
    doc = catalog.get_document(gone)
    assert doc.deleted and doc.latest_version == 0 and len(catalog.list_versions(gone)) == 1  # rows kept
    _clean(settings, tenant)

    # The object is still in the bucket (delete_objects is off): a scan does not bring the document back by
    # itself, but new bytes at the path make a new version.
    assert run_ingest(settings, tenant=tenant, scan=True).documents_indexed == 0
    objects.put_bytes(f"{tenant}/gone.md", b"# Back\n\nThe vexillomancy manual returns, rewritten.\n")
    back = run_ingest(settings, tenant=tenant, scan=True)
    assert back.documents_indexed == 1
    doc = catalog.get_document(gone)
    assert not doc.deleted and doc.latest_version == 2
    _clean(settings, tenant)


def test_an_object_removed_from_s3_is_deleted_by_a_scan(settings, catalog):
    tenant = "vanish"
    objects, store = ObjectStore(settings), VectorStore(settings)
    objects.put_bytes(f"{tenant}/a.md", b"# A\n\nAlpha text.\n")
    objects.put_bytes(f"{tenant}/b.md", b"# B\n\nBeta text.\n")
    run_ingest(settings, tenant=tenant, scan=True)
    objects.remove(f"{tenant}/b.md")
    summary = run_ingest(settings, tenant=tenant, scan=True)
    assert summary.documents_deleted == 1 and summary.documents_seen == 1
    b = document_id(tenant, "b.md")
    assert catalog.get_document(b).deleted and store.count(_doc_filter(b)) == 0
    assert store.count(_doc_filter(document_id(tenant, "a.md"), latest=True)) == 1
    _clean(settings, tenant)


def test_an_unchanged_corpus_embeds_nothing_and_force_re_embeds(settings, catalog):
    tenant = "incremental"
    objects, store = ObjectStore(settings), VectorStore(settings)
    for i in range(3):
        objects.put_bytes(f"{tenant}/f{i}.md", f"# File {i}\n\nText of file {i}.\n".encode())
    first = run_ingest(settings, tenant=tenant, scan=True)
    assert first.chunks_embedded == first.chunks_indexed == 3
    count = store.count()
    again = run_ingest(settings, tenant=tenant, scan=True)
    assert again.chunks_embedded == 0 and again.documents_indexed == 0 and store.count() == count
    objects.put_bytes(f"{tenant}/f1.md", b"# File 1\n\nChanged text of file 1.\n")
    changed = run_ingest(settings, tenant=tenant, scan=True)
    assert changed.documents_indexed == 1 and changed.chunks_embedded == 1
    forced = run_ingest(settings, tenant=tenant, force=True)
    assert forced.documents_indexed == 3 and forced.chunks_embedded == 3
    assert store.count(models.Filter(must=[models.FieldCondition(key="tenant", match=models.MatchValue(value=tenant)),
                                           models.FieldCondition(key="is_latest", match=models.MatchValue(value=True))])) == 3
    _clean(settings, tenant)


def test_a_failed_new_version_keeps_the_previous_one_searchable_and_is_replayed(settings, catalog):
    tenant, doc = "failing", document_id("failing", "f.md")
    objects = ObjectStore(settings)
    engine = SearchEngine(settings)
    good = b"# Good\n\nThe first content speaks of obsidianwork.\n"
    objects.put_bytes(f"{tenant}/f.md", good)
    run_ingest(settings, tenant=tenant, scan=True)
    newer = b"# Newer\n\nThe second content speaks of obsidianwork too, differently.\n"
    objects.put_bytes(f"{tenant}/f.md", newer)
    from pipelines.source import scan_objects

    scan_objects(objects, catalog, tenant=tenant)  # version 2 registered ...
    objects.put_bytes(f"{tenant}/f.md", good + b"\n")  # ... then its bytes change before the ingest reads them
    failed = run_ingest(settings, tenant=tenant)
    assert failed.documents_failed == 1 and failed.failures == {"object_changed": 1}
    assert catalog.get_document(doc).latest_version == 1
    results = engine.search(tenant, SearchRequest(query="obsidianwork", mode="sparse"))["results"]
    assert [r["version"] for r in results] == [1]
    letters = catalog.dead_letters(doc)
    assert [(l["version"], l["reason"], l["replayed_at"]) for l in letters] == [(2, "object_changed", None)]

    objects.put_bytes(f"{tenant}/f.md", newer)  # the bytes of version 2 are back
    replay = run_ingest(settings, tenant=tenant, retry_failed=True)
    assert replay.dead_letters_replayed == 1 and replay.documents_indexed == 1
    assert catalog.get_document(doc).latest_version == 2
    assert catalog.dead_letters(doc)[0]["replayed_at"] is not None
    assert catalog.dead_letters(doc, tenant="someone-else") == []
    _clean(settings, tenant)


def test_a_run_that_died_after_writing_is_finished_without_embedding(settings, catalog):
    tenant = "halfway"
    objects, store = ObjectStore(settings), VectorStore(settings)
    objects.put_bytes(f"{tenant}/h.md", _paragraphs(4, "marshes"))
    run_ingest(settings, tenant=tenant, scan=True)
    objects.put_bytes(f"{tenant}/h.md", _paragraphs(2, "marshes"))
    run_ingest(settings, tenant=tenant, scan=True)
    doc = document_id(tenant, "h.md")
    v2 = catalog.list_versions(doc)[-1]
    # Put the state back to "version 2 written, its flags half switched, the catalog not committed" (a SIGKILL
    # between the flag switch and the commit).
    with catalog.pool.connection() as conn:
        conn.execute("UPDATE document_versions SET status = 'indexing', written_count = chunk_count WHERE document_id = %s AND version = 2", (doc,))
        conn.execute("UPDATE document_versions SET status = 'indexed' WHERE document_id = %s AND version = 1", (doc,))
        conn.execute("UPDATE documents SET latest_version = 1 WHERE document_id = %s", (doc,))
    store.set_payload(_doc_filter(doc), {"is_latest": True})
    assert not reconcile(settings, tenant=tenant, check=True)["clean"]

    resumed = run_ingest(settings, tenant=tenant)
    assert resumed.versions_resumed == 1 and resumed.chunks_embedded == 0 and resumed.documents_indexed == 1
    assert catalog.get_document(doc).latest_version == 2
    assert store.count(_doc_filter(doc, latest=True)) == v2.chunk_count
    _clean(settings, tenant)


def test_reconcile_repairs_what_differs(settings, catalog):
    tenant = "repair"
    objects, store = ObjectStore(settings), VectorStore(settings)
    objects.put_bytes(f"{tenant}/x.md", _paragraphs(3, "fjords"))
    objects.put_bytes(f"{tenant}/y.md", b"# Y\n\nWhy not.\n")
    run_ingest(settings, tenant=tenant, scan=True)
    x, y = document_id(tenant, "x.md"), document_id(tenant, "y.md")
    expected = catalog.list_versions(x)[-1].chunk_count
    store.delete_chunks_from(x, 1, 1)  # x lost points
    orphan = models.PointStruct(id="00000000-0000-5000-8000-000000000001", vector={"text": [0.1] * 32},
                                payload={"tenant": tenant, "document_id": y, "version": 7, "is_latest": True, "chunk_index": 0})
    store.upsert([orphan])  # a point of a version the catalog never had
    report = reconcile(settings, tenant=tenant, check=True)
    assert not report["clean"]
    assert report["differences"] == {"missing_points": 1, "orphan_points": 1}

    fixed = reconcile(settings, tenant=tenant)
    assert fixed["clean"], fixed
    assert fixed["repaired"] == {"orphans_deleted": 1, "versions_reindexed": 1}
    assert store.count(_doc_filter(x, latest=True)) == expected
    _clean(settings, tenant)


def test_another_model_is_refused_even_with_the_same_dimension(settings, tmp_path):
    other = settings.model_copy(update={"text_model": tiny_model(tmp_path / "other", seed=1)})
    with pytest.raises(ConfigurationError) as info:
        run_ingest(other, tenant="nobody")
    assert "jobs.reindex" in str(info.value) and settings.text_model in str(info.value)


def test_a_scan_registers_no_object_under_a_name_that_is_not_a_canonical_tenant(settings, catalog):
    from pipelines.source import scan_objects

    objects = ObjectStore(settings)
    for key in ("Acme/a.md", "admin/b.md", "ａｃｍｅ/c.md", "a..b/d.md", "canonical-one/e.md"):
        objects.put_bytes(key, b"# Some text\n\nabout something.\n")
    report = scan_objects(objects, catalog, tenant=None)
    assert report.rejected >= 4  # the bucket is the module's: other tests' objects are all canonical
    assert {d.tenant for d in catalog.documents(None, include_deleted=False)} & {"Acme", "admin", "ａｃｍｅ", "a..b"} == set()
    assert catalog.get_document(document_id("canonical-one", "e.md")) is not None
    with pytest.raises(Exception, match="not canonical"):
        document_id("Acme", "a.md")
