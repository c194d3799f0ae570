"""Ray Serve on the local Ray head: deploy a Serve config, and ask whether its applications serve."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping

from cluster.local.defaults import LOOPBACK, REPO_ROOT
from cluster.local.errors import StackError
from cluster.local.ports import _http_get
from cluster.local.process import _find_executable
from cluster.local.ray_head import _dashboard_get, _ray_cli_env


def serve_applications(dashboard_url: str) -> dict[str, Any]:
    """The Serve state reported by the dashboard's REST API (``GET /api/serve/applications/``).

    Args:
        dashboard_url: ``http://127.0.0.1:8265``.

    Returns:
        The decoded JSON: ``applications`` (name to ``{"status", "message", ...}``), ``http_options``, ...;
        an empty dict when the dashboard does not answer.
    """
    try:
        status, body = _dashboard_get(f"{dashboard_url}/api/serve/applications/", timeout_s=5.0)
    except OSError:
        return {}
    return json.loads(body) if status == 200 else {}


def _serve_port(dashboard_url: str) -> int:
    """The HTTP port Serve reports (``http_options.port``), 8000 (Serve's default) when it reports none."""
    return int((serve_applications(dashboard_url).get("http_options") or {}).get("port") or 8000)


def serve_healthy(dashboard_url: str, serve_port: int | None = None) -> bool:
    """Whether every Serve application is RUNNING and ``GET /-/healthz`` answers 200.

    Args:
        dashboard_url: ``http://127.0.0.1:8265``.
        serve_port: HTTP port of Serve; the one Serve reports (``http_options.port``) when omitted.

    Returns:
        ``True`` when there is at least one application, all RUNNING, and the proxy is healthy.
    """
    state = serve_applications(dashboard_url)
    apps = state.get("applications") or {}
    if not apps or any(app.get("status") != "RUNNING" for app in apps.values()):
        return False
    port = serve_port or int((state.get("http_options") or {}).get("port") or 8000)
    try:
        status, _ = _http_get(f"http://{LOOPBACK}:{port}/-/healthz")
    except OSError:
        return False
    return status == 200


def _serve_status_text(dashboard_url: str) -> str:
    serve = _find_executable("serve", "install Ray Serve (pip install 'ray[serve]')")
    try:
        out = subprocess.run([serve, "status", "--address", dashboard_url], capture_output=True, text=True,
                             env=_ray_cli_env(dashboard_url), timeout=60, check=False)
    except subprocess.TimeoutExpired:
        return "(serve status did not answer within 60 s)"
    return (out.stdout + out.stderr).strip()


def deploy_serve(
    config_path: str | os.PathLike[str],
    dashboard_address: str = f"http://{LOOPBACK}:8265",
    *,
    serve_port: int | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 300.0,
) -> str:
    """Deploy a Serve config with ``serve deploy`` and wait until it serves.

    Waits until every application is RUNNING (a model may load: minutes) and ``GET /-/healthz`` answers 200.

    Args:
        config_path: The Serve config file (``serve/config.yaml``).
        dashboard_address: Dashboard of the Ray head, ``http://127.0.0.1:8265``.
        serve_port: HTTP port Serve is expected on; the port of the config's ``http_options`` when omitted.
        env: Extra environment for the ``serve deploy`` command; ``RAY_AUTH_MODE`` is found from the dashboard
            when it is not given.
        timeout_s: Seconds to wait for the applications.

    Returns:
        Serve's base URL, ``http://127.0.0.1:<port>``.

    Raises:
        StackError: When the config is missing, ``serve deploy`` fails, an application fails to deploy, or time
            runs out; the message has the output of ``serve status``.
    """
    config = Path(config_path)
    if not config.is_file():
        raise StackError(f"Serve config {config} not found")
    serve = _find_executable("serve", "install Ray Serve (pip install 'ray[serve]')")
    child_env = _ray_cli_env(dashboard_address, env)
    result = subprocess.run([serve, "deploy", str(config), "--address", dashboard_address], capture_output=True,
                            text=True, env=child_env, cwd=REPO_ROOT, timeout=120, check=False)
    if result.returncode != 0:
        raise StackError(f"`serve deploy {config}` failed with status {result.returncode}:\n"
                         f"{(result.stdout + result.stderr).strip()[-3000:]}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = serve_applications(dashboard_address)
        apps = state.get("applications") or {}
        failed = {name: app for name, app in apps.items() if app.get("status") in ("DEPLOY_FAILED", "UNHEALTHY")}
        if failed:
            raise StackError(
                "Serve application(s) failed: " + ", ".join(f"{n} {a.get('status')}" for n, a in failed.items())
                + f"\n{_serve_status_text(dashboard_address)}"
            )
        port = serve_port or int((state.get("http_options") or {}).get("port") or 8000)
        if serve_healthy(dashboard_address, port):
            return f"http://{LOOPBACK}:{port}"
        time.sleep(2.0)
    raise StackError(f"Serve did not become healthy within {timeout_s:.0f} s:\n{_serve_status_text(dashboard_address)}")
