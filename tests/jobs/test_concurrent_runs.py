"""Ingest runs at once over one scope, as users start them: two ``python -m jobs.ingest`` processes together.

Before leases (README, "Ingest runs at once") both runs claimed the same versions, and the one that lost the
commit deleted the points the other had just committed: both exited 0 and ``reconcile --check`` found every point
missing.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cluster.local.stack import write_env_file
from core.catalog import Catalog
from core.ids import document_id
from core.objects import ObjectStore
from core.vectorstore import VectorStore, tenant_filter
from jobs.reconcile import reconcile
from tests.jobs.test_ingest_cli import REPO, env_of

pytestmark = pytest.mark.integration

TENANT = "together"
DOCUMENTS = 40


def _start(env_file: Path, *args: str) -> subprocess.Popen:
    command = f"source {env_file} && python -m jobs.ingest {' '.join(args)}"
    return subprocess.Popen(["bash", "-c", command], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())})


def _summary(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_two_runs_started_together_index_every_document_once_and_reconcile_is_clean(ray_local, make_settings, tmp_path):
    settings = make_settings()
    objects = ObjectStore(settings)
    for i in range(DOCUMENTS):
        objects.put_bytes(f"{TENANT}/notes/n{i:03d}.md", f"# Note {i}\n\nThe heron number {i} waits by the weir.\n".encode())
    env_file = write_env_file(tmp_path, env_of(settings, ray_local["gcs_address"]), None, None)

    runs = [_start(env_file, "--tenant", TENANT, "--scan") for _ in range(2)]
    first, second = (_summary(r) for r in runs)

    # Every version was indexed by exactly one of them; the other says it left them alone.
    assert first["documents_indexed"] + second["documents_indexed"] == DOCUMENTS, (first, second)
    assert first["documents_failed"] == second["documents_failed"] == 0
    assert first["versions_taken_over"] == second["versions_taken_over"] == 0
    assert reconcile(settings, tenant=TENANT, check=True)["clean"]
    store, catalog = VectorStore(settings), Catalog(settings)
    try:
        assert store.count(tenant_filter(TENANT)) == DOCUMENTS
        for i in range(DOCUMENTS):
            doc = catalog.get_document(document_id(TENANT, f"notes/n{i:03d}.md"))
            assert doc.latest_version == 1
        # A third run finds nothing to do and nothing held.
        again = _summary(_start(env_file, "--tenant", TENANT))
        assert again["documents_indexed"] == 0 and again["versions_held_elsewhere"] == 0
        assert again["documents_unchanged"] == DOCUMENTS
    finally:
        catalog.close()
