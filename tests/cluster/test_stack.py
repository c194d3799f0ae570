"""The local stack (``cluster/local/stack.py``): real servers answer, taken ports fail fast, ``up``/``down`` work."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cluster.local import stack

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def test_postgres_answers(postgres_dsn: str) -> None:
    import psycopg

    with psycopg.connect(postgres_dsn, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SELECT current_database()").fetchone() == ("sluice",)


def test_redis_answers(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        assert client.ping() is True
        client.set("stack-test", b"v", ex=60)
        assert client.get("stack-test") == b"v"
    finally:
        client.close()


def test_s3_multipart_round_trip(s3_endpoint) -> None:
    from minio import Minio

    client = Minio(s3_endpoint.endpoint, s3_endpoint.access_key, s3_endpoint.secret_key, secure=False)
    bucket = "stack-test-multipart"
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    # S3: parts are 5 MiB to 5 GiB, except the last; 2 full parts + a tail makes 3 parts.
    data = os.urandom(2 * 5 * MiB + 12345)
    client.put_object(bucket, "dir/big.bin", io.BytesIO(data), len(data), part_size=5 * MiB)
    stat = client.stat_object(bucket, "dir/big.bin")
    assert stat.size == len(data)
    assert stat.etag.endswith("-3"), f"expected a 3-part multipart ETag, got {stat.etag}"
    response = client.get_object(bucket, "dir/big.bin")
    try:
        assert response.read() == data
    finally:
        response.close()
        response.release_conn()


def test_s3_rejects_a_wrong_secret(s3_endpoint) -> None:
    from minio import Minio
    from minio.error import S3Error

    client = Minio(s3_endpoint.endpoint, s3_endpoint.access_key, "not-the-secret", secure=False)
    with pytest.raises(S3Error) as info:
        client.list_buckets()
    assert info.value.code in ("SignatureDoesNotMatch", "AccessDenied", "InvalidAccessKeyId")


def test_settings_fixture_points_at_the_session_servers(settings, postgres_dsn, redis_url, s3_endpoint) -> None:
    assert settings.postgres_dsn == postgres_dsn
    assert settings.redis_url == redis_url
    assert settings.s3_endpoint == s3_endpoint.endpoint
    assert settings.s3_secret_key.get_secret_value() == s3_endpoint.secret_key
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", settings.s3_bucket)
    assert settings.qdrant_url == ""
    assert settings.qdrant_collection != "sluice"


@pytest.mark.parametrize(
    ("starter", "env_var"),
    [
        (lambda d, p: stack.start_postgres(d, p), "SLUICE_PG_PORT"),
        (lambda d, p: stack.start_redis(d, p), "SLUICE_REDIS_PORT"),
        (lambda d, p: stack.start_s3(d, p, "key", "secret-key"), "SLUICE_S3_PORT"),
        (lambda d, p: stack.start_ray_head(p, stack.free_port()), "SLUICE_RAY_PORT"),
    ],
    ids=["postgres", "redis", "s3", "ray"],
)
def test_a_taken_port_fails_fast_with_a_clear_message(tmp_path: Path, starter, env_var: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(stack.PortInUseError) as info:
            starter(tmp_path / "data", port)
        assert time.monotonic() - started < 5
    message = str(info.value)
    assert str(port) in message
    assert env_var in message


def _run_stack(args: list[str], env: dict[str, str], timeout_s: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster.local.stack", *args],
        cwd=stack.REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )


def _read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            values[name] = value.strip("'")
    return values


def test_the_env_file_names_the_metrics_endpoint(tmp_path: Path) -> None:
    """``SLUICE_METRICS_URL`` is the head's metrics agent; a head recorded without a metrics port gets none."""
    head = stack.RayHead(name="ray", pid=1, port=6380, log_path=tmp_path / "ray.log", address="127.0.0.1:6380",
                         dashboard_url="http://127.0.0.1:8265", session_name="session_x", temp_dir=tmp_path,
                         metrics_port=58080)
    exported = _read_env_file(stack.write_env_file(tmp_path, {}, head, None))
    assert exported["SLUICE_METRICS_URL"] == "http://127.0.0.1:58080/metrics"
    old = stack.handle_from_state({k: v for k, v in head.to_state().items() if k != "metrics_port"})
    assert isinstance(old, stack.RayHead) and old.metrics_url is None
    assert "SLUICE_METRICS_URL" not in _read_env_file(stack.write_env_file(tmp_path, {}, old, None))


def test_up_status_down_from_the_command_line(tmp_path: Path) -> None:
    """``up`` (without Ray), a second ``up``, a restart of a dead part, ``status``, ``down``, ``down --purge``."""
    state_dir = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "RAY_"))}
    env.update(
        SLUICE_PG_PORT=str(stack.free_port()),
        SLUICE_REDIS_PORT=str(stack.free_port()),
        SLUICE_S3_PORT=str(stack.free_port()),
    )
    args = ["--state-dir", str(state_dir)]
    try:
        up = _run_stack(["up", *args, "--no-ray"], env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "created bucket 'sluice'" in up.stdout

        exported = _read_env_file(state_dir / "env")
        assert exported["SLUICE_POSTGRES_DSN"] == f"postgresql://postgres@127.0.0.1:{env['SLUICE_PG_PORT']}/sluice"
        assert exported["SLUICE_REDIS_URL"] == f"redis://127.0.0.1:{env['SLUICE_REDIS_PORT']}/0"
        assert exported["SLUICE_S3_ENDPOINT"] == f"127.0.0.1:{env['SLUICE_S3_PORT']}"
        assert exported["SLUICE_S3_SECURE"] == "false"
        assert exported["SLUICE_S3_BUCKET"] == "sluice"
        assert exported["SLUICE_QDRANT_URL"] == ""
        assert exported["SLUICE_QDRANT_PATH"] == str(state_dir / "qdrant")
        assert stack.s3_answers(exported["SLUICE_S3_ENDPOINT"], exported["SLUICE_S3_ACCESS_KEY"],
                                exported["SLUICE_S3_SECRET_KEY"])

        again = _run_stack(["up", *args, "--no-ray"], env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.count("already running:") == 3
        assert "nothing to do" in again.stdout

        state = json.loads((state_dir / "state.json").read_text())
        os.kill(state["services"]["redis"]["pid"], signal.SIGKILL)
        time.sleep(0.5)
        restarted = _run_stack(["up", *args, "--no-ray"], env)
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert "redis     was recorded but is not running" in restarted.stdout
        assert restarted.stdout.count("already running:") == 2

        status = _run_stack(["status", *args], env)
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count("answers") == 3

        pids = [s["pid"] for s in json.loads((state_dir / "state.json").read_text())["services"].values()]
        down = _run_stack(["down", *args], env)
        assert down.returncode == 0, down.stdout + down.stderr
        time.sleep(0.5)
        assert not [pid for pid in pids if stack._pid_alive(pid)]
        assert (state_dir / "postgres" / "pgdata" / "PG_VERSION").exists(), "down must keep the data"
        assert _run_stack(["status", *args], env).returncode == 3
    finally:
        purge = _run_stack(["down", *args, "--purge"], env)
    assert purge.returncode == 0, purge.stdout + purge.stderr
    assert not state_dir.exists()


_SERVE_APP = """
import os
from ray import serve

@serve.deployment
class Probe:
    def __call__(self, request):
        return os.environ.get("SLUICE_PROBE", "")

app = Probe.bind()
"""


@pytest.mark.slow
def test_ray_head_workers_inherit_env_and_serve_deploys(tmp_path: Path) -> None:
    """A head started with SLUICE_* env: tasks and Serve replicas see it; ``stop`` leaves no Ray process behind."""
    (tmp_path / "probe_app.py").write_text(_SERVE_APP)
    serve_port = stack.free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        "proxy_location: HeadOnly\n"
        f"http_options: {{host: 127.0.0.1, port: {serve_port}}}\n"
        "applications:\n"
        "- name: probe\n"
        "  route_prefix: /probe\n"
        "  import_path: probe_app:app\n"
        f"  runtime_env: {{env_vars: {{PYTHONPATH: '{tmp_path}'}}}}\n"
    )
    metrics_port = stack.free_port()
    head = stack.start_ray_head(stack.free_port(), stack.free_port(), {"SLUICE_PROBE": "inherited"},
                                log_path=tmp_path / "ray-start.log", metrics_port=metrics_port)
    try:
        assert head.answers()
        assert head.metrics_url == f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(head.metrics_url, timeout=30) as response:
            assert b"ray_" in response.read()  # Ray's own series, served by the head's metrics agent
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "RAY_"))}
        env.update(RAY_ADDRESS=head.address, RAY_AUTH_MODE=head.auth_mode)
        code = (
            "import os, ray; ray.init(); "
            "print(ray.get(ray.remote(lambda: os.environ.get('SLUICE_PROBE')).remote()))"
        )
        task = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
        assert task.returncode == 0, task.stderr[-3000:]
        assert task.stdout.strip().splitlines()[-1] == "inherited"

        url = stack.deploy_serve(config, head.dashboard_url, timeout_s=180)
        assert url == f"http://127.0.0.1:{serve_port}"
        with urllib.request.urlopen(f"{url}/probe", timeout=30) as response:
            assert response.read() == b"inherited"
        assert stack.serve_healthy(head.dashboard_url)
    finally:
        head.stop()
    assert not head.is_running()
    assert stack._ray_processes(head.session_name, head.port) == []
    shutil.rmtree(head.temp_dir, ignore_errors=True)
