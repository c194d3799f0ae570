"""The catalog's version life cycle on a real PostgreSQL: heads, commits, restores, deletes, dead letters, models."""

import pytest

from core.catalog import Catalog, CatalogConflict
from core.ids import document_id

pytestmark = pytest.mark.integration


@pytest.fixture
def catalog(settings):
    catalog = Catalog(settings)
    yield catalog
    catalog.close()


def _register(catalog, tenant, path, sha):
    return catalog.register_version(tenant, path, object_key=f"{tenant}/{path}", sha256=sha, size=1, etag=sha)


def test_latest_version_moves_only_on_commit(catalog, request):
    tenant = request.node.name[:20]
    doc = document_id(tenant, "a.md")
    assert _register(catalog, tenant, "a.md", "s1").created
    assert not _register(catalog, tenant, "a.md", "s1").created  # same bytes as the head
    assert catalog.get_document(doc).latest_version == 0  # nothing searchable before a commit
    [claim] = catalog.claim_versions(tenant)
    assert catalog.commit_versions([(doc, 1, 4)]) == [(doc, 1, 4)]
    _register(catalog, tenant, "a.md", "s2")
    doc_row = catalog.get_document(doc)
    assert (doc_row.latest_version, doc_row.head_version) == (1, 2)
    catalog.claim_versions(tenant)
    catalog.mark_failed(doc, 2, stage="extract", reason="boom")
    assert catalog.get_document(doc).latest_version == 1  # a failed version changes nothing shown
    assert catalog.replay_dead_letters(tenant) == 1
    assert [v.status for v in catalog.list_versions(doc)] == ["indexed", "pending"]
    assert catalog.dead_letters(doc)[0]["replayed_at"] is not None


def test_restore_and_delete(catalog, request):
    tenant = request.node.name[:20]
    doc = document_id(tenant, "r.md")
    for n in (1, 2, 3):
        _register(catalog, tenant, "r.md", f"s{n}")
        catalog.claim_versions(tenant)
        catalog.commit_versions([(doc, n, 2)])
    assert catalog.retained_versions(doc, 2) == [3, 2]
    restored = catalog.restore_version(doc, 1)
    assert (restored.latest_version, restored.head_version) == (1, 1)
    assert {v.version: v.status for v in catalog.list_versions(doc)} == {1: "indexed", 2: "superseded", 3: "superseded"}
    assert not _register(catalog, tenant, "r.md", "s1").created  # the restored bytes are the head's
    with pytest.raises(CatalogConflict) as info:
        catalog.restore_version(doc, 9)
    assert info.value.code == "not_found"

    before = catalog.mark_deleted(doc)
    assert before.latest_version == 1 and catalog.get_document(doc).deleted
    assert catalog.claim_versions(tenant) == []
    with pytest.raises(CatalogConflict):
        catalog.restore_version(doc, 2)
    again = _register(catalog, tenant, "r.md", "s1")  # the same bytes, after a delete: a new version
    assert again.created and again.version.version == 4 and not catalog.get_document(doc).deleted


def test_a_commit_lost_to_a_delete_is_refused(catalog, request):
    tenant = request.node.name[:20]
    doc = document_id(tenant, "x.md")
    _register(catalog, tenant, "x.md", "s1")
    catalog.claim_versions(tenant)
    catalog.mark_deleted(doc)
    assert catalog.commit_versions([(doc, 1, 3)]) == []


def test_index_models_are_recorded(catalog):
    assert catalog.index_model("c_models", "text") is None
    catalog.record_index_model("c_models", "text", "model-a", 32)
    assert catalog.index_model("c_models", "text") == {"model": "model-a", "dimension": 32}


def test_metadata_is_inherited_replaced_and_kept_per_version(catalog, request):
    tenant = request.node.name[:20]
    doc = document_id(tenant, "m.md")

    def register(sha, metadata=None):
        return catalog.register_version(tenant, "m.md", object_key=f"{tenant}/m.md", sha256=sha, size=1,
                                        metadata=metadata)

    assert register("s1", {"dept": "legal"}).version.metadata == {"dept": "legal"}
    assert not register("s1", {"dept": "other"}).created  # the same bytes: the head keeps its metadata
    catalog.claim_versions(tenant)
    catalog.commit_versions([(doc, 1, 1)])
    assert register("s2").version.metadata == {"dept": "legal"}  # none given: the predecessor's
    assert catalog.set_metadata(doc, {"dept": "hr"}) == [1, 2]  # shown and head
    assert register("s3", {}).version.metadata == {}  # an empty object clears it
    assert [v.metadata for v in catalog.list_versions(doc)] == [{"dept": "hr"}, {"dept": "hr"}, {}]
    assert [(h["version"], h["source"]) for h in catalog.metadata_history(doc)] == [
        (1, "upload"), (2, "inherited"), (1, "patch"), (2, "patch")]
    catalog.record_properties([(doc, 1, {"title": "M"})])
    assert catalog.list_versions(doc)[0].properties == {"title": "M"}
    catalog.mark_deleted(doc)
    with pytest.raises(CatalogConflict, match="deleted"):
        catalog.set_metadata(doc, {"dept": "x"})
    with pytest.raises(CatalogConflict, match="not_found"):
        catalog.set_metadata(document_id(tenant, "none.md"), {"dept": "x"})
    assert register("s4").version.metadata == {}  # a deleted document's metadata does not come back


def test_a_live_lease_keeps_a_version_from_other_runs_and_an_expired_one_is_taken_over(catalog, request):
    """Two runs at once used to both take the same versions; the one that lost the commit then deleted the points the
    other had just committed (same deterministic ids): the index emptied while both runs exited 0."""
    import time

    tenant = request.node.name[:20]
    docs = [document_id(tenant, f"d{i}.md") for i in range(3)]
    for i in range(3):
        _register(catalog, tenant, f"d{i}.md", f"s{i}")
    first = catalog.claim_versions(tenant, run_id="run-a", lease_s=1.0)
    assert sorted(c.version.document_id for c in first) == sorted(docs)
    assert {c.run_id for c in first} == {"run-a"} and {c.previous_status for c in first} == {"pending"}
    # A second run meanwhile gets nothing, and is told why.
    assert catalog.claim_versions(tenant, run_id="run-b", lease_s=1.0) == []
    assert catalog.held_elsewhere(tenant, "", "run-b") == 3
    assert catalog.held_elsewhere(tenant, "", "run-a") == 0
    # Renewed, the lease outlives its first second; run-a commits one version.
    assert catalog.renew_lease("run-a", 30.0) == 3
    time.sleep(1.2)
    assert catalog.claim_versions(tenant, run_id="run-b") == []
    assert catalog.commit_versions([(docs[0], 1, 2)], "run-a") == [(docs[0], 1, 2)]
    # Run-a stops renewing (it died): once the lease has run out, run-b resumes what run-a left.
    with catalog.pool.connection() as conn:
        conn.execute("UPDATE document_versions SET lease_until = now() - interval '1 second' WHERE claimed_by = 'run-a'")
    taken = catalog.claim_versions(tenant, run_id="run-b")
    assert sorted(c.version.document_id for c in taken) == sorted(docs[1:])
    assert {c.previous_status for c in taken} == {"indexing"}  # resumed: points may be partly written
    assert catalog.claimed_by([(docs[1], 1), (docs[0], 1)]) == {(docs[1], 1): "run-b", (docs[0], 1): "run-a"}
    # Run-a, back from the dead, cannot commit what run-b holds now; run-b can.
    assert catalog.commit_versions([(docs[1], 1, 2)], "run-a") == []
    assert catalog.commit_versions([(docs[1], 1, 2)], "run-b") == [(docs[1], 1, 2)]
    # A run that stops early releases its lease: the next run resumes at once.
    assert catalog.release_lease("run-b") == 1
    assert [c.version.document_id for c in catalog.claim_versions(tenant, run_id="run-c")] == [docs[2]]
