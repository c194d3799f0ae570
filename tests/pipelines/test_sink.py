"""The Qdrant sink: chunk rows become points with deterministic ids; error rows become outcomes, not points."""

import numpy as np
import pyarrow as pa
import pytest
from qdrant_client import QdrantClient
from ray.data.extensions import ArrowTensorArray

from core.ids import point_id
from core.settings import Settings
from core.vectorstore import VectorStore
from pipelines.sink import QdrantDatasink

pytestmark = pytest.mark.unit


def block() -> pa.Table:
    n = 3
    table = pa.table(
        {
            "document_id": ["d1", "d1", "d2"],
            "version": [1, 1, 3],
            "tenant": ["acme"] * n,
            "path": ["a/b/c.md", "a/b/c.md", "x.pdf"],
            "object_key": ["acme/a/b/c.md", "acme/a/b/c.md", "acme/x.pdf"],
            "content_type": ["text/markdown", "text/markdown", "application/pdf"],
            "sha256": ["s1", "s1", "s2"],
            "size": [10, 10, 5],
            "chunk_index": [0, 1, -1],
            "chunk_count": [2, 2, 0],
            "text": ["first", "second", ""],
            "page": [0, 0, 0],
            "heading": ["H", "H", ""],
            "modality": ["text"] * n,
            "sparse_indices": pa.array([[1, 5], [2], []], pa.list_(pa.uint32())),
            "sparse_values": pa.array([[0.5, 0.25], [1.0], []], pa.list_(pa.float32())),
            "error_stage": ["", "", "extract"],
            "error_reason": ["", "", "pdf_corrupt"],
            "error_detail": ["", "", "not a PDF"],
        }
    )
    return table.append_column("embedding", ArrowTensorArray.from_numpy(np.eye(n, 4, dtype=np.float32)))


def test_rows_become_points_and_errors_become_outcomes():
    settings = Settings(qdrant_collection="sink_test", write_batch_size=1)
    store = VectorStore(settings, client=QdrantClient(":memory:"))
    store.ensure_collection(4)
    sink = QdrantDatasink(settings, store=store)

    outcomes = sink.write([block()], None)

    assert outcomes[("d1", 1)].written == 2 and outcomes[("d1", 1)].chunk_count == 2
    assert outcomes[("d1", 1)].error is None
    assert outcomes[("d2", 3)].written == 0 and outcomes[("d2", 3)].error == ("extract", "pdf_corrupt", "not a PDF")
    assert outcomes[("d1", 1)].write_s > 0 and outcomes[("d2", 3)].write_s == 0  # the write time, where it went
    records = sorted(store.scroll(with_vectors=True), key=lambda r: r.payload["chunk_index"])
    assert [str(r.id) for r in records] == [point_id("d1", 1, "text", 0), point_id("d1", 1, "text", 1)]
    first = records[0]
    # Not committed yet: invisible to search until core.lifecycle.commit_versions switches the flags.
    assert first.payload["dirs"] == ["a", "a/b"] and first.payload["is_latest"] is False
    assert first.payload["text"] == "first" and "page" not in first.payload
    assert first.vector["text"] == [1.0, 0.0, 0.0, 0.0]
    assert first.vector["bm25"].indices == [1, 5] and first.vector["bm25"].values == [0.5, 0.25]

    sink.write([block()], None)  # a retried write replaces, never duplicates
    assert store.count() == 2


def test_a_version_already_shown_is_rewritten_searchable():
    settings = Settings(qdrant_collection="sink_test", write_batch_size=8)
    store = VectorStore(settings, client=QdrantClient(":memory:"))
    store.ensure_collection(4)
    sink = QdrantDatasink(settings, store=store, shown=frozenset({("d1", 1)}))
    sink.write([block()], None)
    assert {r.payload["is_latest"] for r in store.scroll()} == {True}
