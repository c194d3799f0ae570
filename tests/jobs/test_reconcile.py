"""``python -m jobs.reconcile`` as a user runs it: a JSON report last, exit 1 on a difference with ``--check``."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from qdrant_client import models

from core.objects import ObjectStore
from core.vectorstore import VectorStore
from pipelines.ingest import run_ingest
from tests.jobs.test_ingest_cli import env_of
from tests.pipelines.support import tiny_model

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _reconcile(settings, ray_address, *args):
    env = env_of(settings, ray_address) | {"SLUICE_TEXT_MODEL": settings.text_model, "HOME": str(Path.home()),
                                           "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "jobs.reconcile", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def test_check_reports_then_repair_cleans(ray_local, make_settings, tmp_path):
    settings = make_settings(text_model=tiny_model(tmp_path / "tiny"))
    ObjectStore(settings).put_bytes("rec/a.md", b"# A\n\nSome text.\n")
    run_ingest(settings, tenant="rec", scan=True)
    clean = _reconcile(settings, ray_local["gcs_address"], "--tenant", "rec", "--check")
    assert clean.returncode == 0, clean.stderr[-2000:]
    assert json.loads(clean.stdout.strip().splitlines()[-1])["clean"] is True

    store = VectorStore(settings)
    store.set_payload(models.Filter(must=[]), {"is_latest": False})  # flags lost
    dirty = _reconcile(settings, ray_local["gcs_address"], "--tenant", "rec", "--check")
    assert dirty.returncode == 1
    assert json.loads(dirty.stdout.strip().splitlines()[-1])["differences"] == {"wrong_flags": 1}

    fixed = _reconcile(settings, ray_local["gcs_address"], "--tenant", "rec")
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    report = json.loads(fixed.stdout.strip().splitlines()[-1])
    assert report["repaired"] == {"flags_set": 1} and report["clean"] is True
    assert _reconcile(settings, ray_local["gcs_address"], "--tenant", "rec", "--check").returncode == 0
