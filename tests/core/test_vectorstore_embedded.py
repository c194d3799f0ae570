"""The embedded store as it runs: Qdrant Edge in its owner actor; a crash, a locked folder, the old layout.

Runs on a local Ray (``ray_local``); the store folder is a fresh temporary one per test.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import warnings

import pytest
from qdrant_client import QdrantClient, models

from core.errors import ConfigurationError
from core.ids import point_id
from core.settings import Settings
from core.vectorstore import VectorStore, tenant_filter
from core.vectorstore.edge import EdgeBackend
from core.vectorstore.legacy import MIGRATED
from jobs.migrate_store import migrate, move_aside
from serve.search.query import SearchRequest, build_query

pytestmark = pytest.mark.integration


def _points(n: int, *, start: int = 0, tenant: str = "t") -> list[models.PointStruct]:
    return [
        models.PointStruct(
            id=point_id("doc", 1, "text", i),
            vector={"text": [1.0, float(i % 7), 0.5, 0.25], "bm25": models.SparseVector(indices=[i % 50, 99], values=[1.0, 0.5])},
            payload={"tenant": tenant, "document_id": "doc", "version": 1, "is_latest": True, "chunk_index": i},
        )
        for i in range(start, start + n)
    ]


def _settings(tmp_path, **extra) -> Settings:
    return Settings(qdrant_url="", qdrant_path=tmp_path / "store", qdrant_collection="emb", ray_namespace="sluice", **extra)


def test_the_owner_actor_killed_mid_write_loses_no_acknowledged_point(ray_local, tmp_path):
    store = VectorStore(_settings(tmp_path))
    store.ensure_collection(4)
    store.upsert(_points(2000))
    pid = store.backend.actor_pid()
    errors: list[BaseException] = []

    def writer():
        try:
            for start in range(2000, 6000, 500):
                store.upsert(_points(500, start=start))
        except BaseException as exc:  # noqa: BLE001 - the write that was cut may fail; retried below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=120)
    assert not thread.is_alive()
    # Ray restarts the actor; Edge replays its WAL: every acknowledged point is there, and the rerun (as the
    # ingest's retry does) writes the same ids again without duplicating any.
    deadline = time.monotonic() + 60
    while True:
        try:
            assert store.count() >= 2000
            break
        except Exception:  # noqa: BLE001 - still restarting
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert store.backend.actor_pid() != pid
    store.upsert(_points(6000))
    assert store.count() == 6000
    answer = store.query(build_query("t", SearchRequest(query="q", mode="dense"), dense=[1.0, 3.0, 0.5, 0.25], sparse=None))
    assert len(answer) == 100  # the ranking's depth (serve.search.query.MIN_PREFETCH)


def test_a_folder_held_by_another_process_is_named(ray_local, tmp_path):
    store = VectorStore(_settings(tmp_path))
    store.ensure_collection(4)
    store.upsert(_points(10))
    # This process opening the folder the actor holds: refused, with the folder and what to do.
    with pytest.raises(ConfigurationError, match="open in another process") as info:
        EdgeBackend(tmp_path / "store").count("emb", None)
    assert str(tmp_path / "store") in str(info.value)


def test_the_old_local_mode_layout_is_recognised_and_migrated(ray_local, tmp_path):
    folder = tmp_path / "store"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        legacy = QdrantClient(path=str(folder))
        legacy.create_collection("emb", vectors_config={"text": models.VectorParams(size=4, distance=models.Distance.COSINE)},
                                 sparse_vectors_config={"bm25": models.SparseVectorParams(modifier=models.Modifier.IDF)})
        legacy.upsert("emb", points=_points(1500))
        legacy.close()
    settings = _settings(tmp_path)
    with pytest.raises(ConfigurationError, match="jobs.migrate_store"):
        VectorStore(settings).count()

    # The migration, in-process (the job runs the same function against the owner actor).
    target = EdgeBackend(folder)
    assert migrate(folder, target) == {"emb": 1500}
    assert migrate(folder, target) == {"emb": 1500}  # again before the move: the same points, no duplicates
    assert target.count("emb", None) == 1500
    record = target.retrieve("emb", [point_id("doc", 1, "text", 7)], with_vectors=True)[0]
    assert record.payload["chunk_index"] == 7 and list(record.vector["bm25"].indices) == [7, 99]
    target.close()
    move_aside(folder)
    assert (folder / MIGRATED / "meta.json").exists() and not (folder / "meta.json").exists()

    store = VectorStore(settings)
    assert store.count(tenant_filter("t")) == 1500
    assert store.ensure_collection(4) is False


def test_the_migration_job_reports_and_is_idempotent(ray_local, tmp_path, monkeypatch, capsys):
    from jobs.migrate_store import main

    folder = tmp_path / "store"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        legacy = QdrantClient(path=str(folder))
        legacy.create_collection("emb", vectors_config={"text": models.VectorParams(size=4, distance=models.Distance.COSINE)})
        legacy.upsert("emb", points=[models.PointStruct(id=p.id, vector={"text": p.vector["text"]}, payload=p.payload)
                                     for p in _points(300)])
        legacy.close()
    monkeypatch.setenv("SLUICE_QDRANT_PATH", str(folder))
    monkeypatch.setenv("SLUICE_QDRANT_URL", "")
    monkeypatch.setenv("RAY_ADDRESS", ray_local["address"])
    assert main([]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["collections"] == {"emb": 300} and first["moved_to"].endswith(MIGRATED)
    assert main([]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["collections"] == {}
    assert VectorStore(_settings(tmp_path)).count() == 300


def test_a_collection_made_before_the_segment_cap_gets_it_when_opened(tmp_path):
    """Without the cap every ingest rebuilt the one big segment while the GIL-holding build stalled searches."""
    import qdrant_edge as qe

    from core.vectorstore.edge import MAX_SEGMENT_KB

    folder = tmp_path / "store" / "edge" / "old"
    folder.parent.mkdir(parents=True)
    old = qe.EdgeShard.create(str(folder), qe.EdgeConfig(
        vectors={"text": qe.EdgeVectorParams(size=4, distance=qe.Distance.Cosine)},
        sparse_vectors={"bm25": qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
        hnsw_config=qe.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=10_000, max_indexing_threads=1)))
    old.close()
    (folder / "sluice_spec.json").write_text(json.dumps({"dense": {"text": 4}, "sparse": ["bm25"]}))
    assert (json.loads((folder / "edge_config.json").read_text()).get("optimizers") or {}).get("max_segment_size") is None

    backend = EdgeBackend(tmp_path / "store")
    assert backend.count("old", None) == 0
    backend.close()
    stored = json.loads((folder / "edge_config.json").read_text())
    assert stored["optimizers"]["max_segment_size"] == MAX_SEGMENT_KB


def test_a_segments_worth_of_writes_starts_a_build_so_one_big_ingest_leaves_capped_segments(tmp_path, monkeypatch):
    """New points fill one appendable segment that the optimiser indexes whole, cap or no cap: without a build per
    segment's worth, a million-point ingest made one million-point HNSW build (over 80 minutes, owner stalled)."""
    import core.vectorstore.edge as edge

    backend = EdgeBackend(tmp_path / "store")
    VectorStore(_settings(tmp_path), backend=backend).ensure_collection(4)
    started: list[int] = []
    real = backend.optimize

    def spy(collection, *, wait=True):
        ran = real(collection, wait=True)  # wait: each build ends before the next write, so none is skipped
        started.append(backend._unbuilt["emb"])
        return ran

    monkeypatch.setattr(backend, "optimize", spy)
    monkeypatch.setattr(edge, "MAX_SEGMENT_KB", 16)  # 16 KB of 4-d float32 vectors: 1,024 points a segment
    assert backend._segment_points("emb") == 1024
    for start in range(0, 5000, 500):
        backend.upsert("emb", _points(500, start=start))
    # Writes of 500: the count passes 1,024 at 1,500 points, starts again, and passes it at 3,000 and 4,500.
    assert started == [0, 0, 0], started
    assert backend.count("emb", None) == 5000

    monkeypatch.setattr(edge, "MAX_SEGMENT_KB", None)  # no cap: only the segment count schedules builds
    started.clear()
    for start in range(5000, 8000, 500):
        backend.upsert("emb", _points(500, start=start))
    assert started == []
    backend.close()
