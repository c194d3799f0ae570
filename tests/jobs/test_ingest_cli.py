"""``python -m jobs.ingest`` as a user runs it: driven by an env file like ``.sluice/env``, in its own process."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cluster.local.stack import write_env_file
from core.objects import ObjectStore

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SUMMARY_KEYS = {"documents_seen", "documents_indexed", "documents_unchanged", "documents_failed", "chunks_indexed", "seconds"}


def env_of(settings, ray_address: str) -> dict[str, str]:
    return {
        "SLUICE_POSTGRES_DSN": settings.postgres_dsn,
        "SLUICE_REDIS_URL": settings.redis_url,
        "SLUICE_S3_ENDPOINT": settings.s3_endpoint,
        "SLUICE_S3_ACCESS_KEY": settings.s3_access_key,
        "SLUICE_S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
        "SLUICE_S3_SECURE": "false",
        "SLUICE_S3_BUCKET": settings.s3_bucket,
        "SLUICE_QDRANT_URL": "",
        "SLUICE_QDRANT_PATH": str(settings.qdrant_path),
        "SLUICE_QDRANT_COLLECTION": settings.qdrant_collection,
        "RAY_ADDRESS": ray_address,
        "RAY_AUTH_MODE": "disabled",  # as the ray_local fixture's cluster
    }


def run_job(env_file: Path, *args: str) -> subprocess.CompletedProcess:
    # A bare `python`: the env file must put the project's interpreter first on PATH.
    command = f"source {env_file} && python -m jobs.ingest {' '.join(args)}"
    return subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())})


def test_the_env_file_drives_the_job_and_its_last_line_is_the_summary(ray_local, make_settings, tmp_path):
    settings = make_settings()
    ObjectStore(settings).put_bytes("cli/notes/hello.md", b"# Hello\n\nThe job reads its settings from the env file.\n")
    env_file = write_env_file(tmp_path, env_of(settings, ray_local["gcs_address"]), None, None)

    first = run_job(env_file, "--tenant", "cli", "--scan")
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert SUMMARY_KEYS <= set(summary)
    assert summary["documents_indexed"] == 1 and summary["chunks_indexed"] == 1
    # Not a terminal: plain progress lines on stderr, ours only (Ray Data's own progress is off).
    assert "ingest: 0/1 documents (0%)" in first.stderr and "ingest: 1/1 documents (100%)" in first.stderr
    assert "Running Dataset" not in first.stderr + first.stdout

    second = run_job(env_file, "--tenant", "cli", "--scan")
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads(second.stdout.strip().splitlines()[-1])
    assert again["documents_indexed"] == 0 and again["documents_unchanged"] == 1
    assert "ingest: 0/0 documents" in second.stderr

    quiet = run_job(env_file, "--tenant", "cli", "--progress", "off")
    assert quiet.returncode == 0 and "ingest: 0/0 documents" not in quiet.stderr
    assert json.loads(quiet.stdout.strip().splitlines()[-1])["documents_unchanged"] == 1


def test_an_unreachable_database_exits_non_zero_naming_it(ray_local, make_settings, unused_port, tmp_path):
    settings = make_settings(postgres_dsn=f"postgresql://postgres@127.0.0.1:{unused_port}/sluice")
    env_file = write_env_file(tmp_path, env_of(settings, ray_local["gcs_address"]), None, None)
    result = run_job(env_file, "--tenant", "cli")
    assert result.returncode == 2
    assert "postgres is unreachable" in result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["service"] == "postgres"


def test_a_bad_tenant_is_refused(tmp_path, make_settings):
    env_file = write_env_file(tmp_path, env_of(make_settings(), ""), None, None)
    result = run_job(env_file, "--tenant", "a/b")
    assert result.returncode == 2
    assert "tenant" in result.stderr


def test_retry_failed_is_an_option_of_the_job():
    from jobs.ingest import parse_args

    assert parse_args(["--retry-failed", "--tenant", "t"]).retry_failed is True
    assert parse_args([]).retry_failed is False


def test_progress_is_an_option_of_the_job():
    from jobs.ingest import parse_args

    assert parse_args([]).progress == "auto"
    assert parse_args(["--progress", "lines"]).progress == "lines"
    with pytest.raises(SystemExit):
        parse_args(["--progress", "loud"])
