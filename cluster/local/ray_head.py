"""The Ray head: ``ray start --head`` on loopback with its own temp folder, and calls to its dashboard.

The head gets its own temp folder, so that a plain ``ray.init()`` elsewhere on the machine (a test) never joins it by
accident; :meth:`RayHead.stop` stops the processes of this head only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import ClassVar, Mapping

from cluster.local.defaults import LOOPBACK, REPO_ROOT
from cluster.local.errors import ServerStartError
from cluster.local.ports import _http_get, check_port_free, free_port, port_answers
from cluster.local.process import (
    ServerHandle,
    _find_executable,
    _log_tail,
    _pid_alive,
    _read_cmdline,
    _spawn,
    _terminate_group,
    _venv_path_env,
    _wait_until,
)

logger = logging.getLogger(__name__)


def ray_auth_headers() -> dict[str, str]:
    """The ``Authorization`` header for a Ray dashboard that runs with token authentication.

    Ray 2.5x+ turns token authentication on for a new cluster when a token exists (``RAY_AUTH_MODE`` unset);
    the Ray clients find the token themselves, the plain HTTP calls of this package send it with this header. The
    token comes from, in order: ``RAY_AUTH_TOKEN``, the file named by ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``.

    Returns:
        ``{"Authorization": "Bearer <token>"}``, or an empty dict when there is no token or the mode is ``disabled``.
    """
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
        try:
            token = Path(path).read_text().strip()
        except OSError:
            token = ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def _dashboard_get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    return _http_get(url, timeout_s, ray_auth_headers())


def _ray_cli_env(dashboard_url: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a Ray CLI talking to ``dashboard_url``: venv first on PATH, and the dashboard's auth mode.

    The Ray CLIs only send the token with ``RAY_AUTH_MODE=token``; when the variable is unset, the mode is found by
    asking the dashboard without a token (401: token authentication is on).
    """
    child_env = _venv_path_env()
    child_env.update(env or {})
    if not child_env.get("RAY_AUTH_MODE"):
        try:
            status, _ = _http_get(f"{dashboard_url}/api/version")
        except OSError:
            status = 0
        child_env["RAY_AUTH_MODE"] = "token" if status == 401 else "disabled"
    return child_env


@dataclasses.dataclass(kw_only=True)
class RayHead(ServerHandle):
    """A Ray head node started by ``ray start --head``.

    Attributes:
        address: GCS address for ``ray.init(address=...)`` and ``RAY_ADDRESS``, ``127.0.0.1:PORT``.
        dashboard_url: Dashboard and job API, ``http://127.0.0.1:DASHBOARD_PORT``.
        session_name: Ray's session name, found in the command line of every process of this head.
        temp_dir: Ray's temp folder of this head.
        auth_mode: ``RAY_AUTH_MODE`` of the head (``token`` or ``disabled``); clients need the same value.
        metrics_port: Port of the head's metrics agent (``ray start --metrics-export-port``); 0 when not known
            (a head recorded before the port was fixed: Ray picked one at random).
    """

    kind: ClassVar[str] = "ray"
    address: str
    dashboard_url: str
    session_name: str
    temp_dir: Path
    auth_mode: str = "disabled"
    metrics_port: int = 0

    @property
    def metrics_url(self) -> str | None:
        """Prometheus text of the head node's metrics (Ray's, Serve's and Sluice's ``ray_sluice_*``), or ``None``.

        Each Ray node serves its own processes' metrics; on the local stack the head is the only node.
        """
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics" if self.metrics_port else None

    def is_running(self) -> bool:
        """Whether the head's GCS server still runs. Returns: ``True`` while it does."""
        return _pid_alive(self.pid) and any(self.session_name in part for part in _read_cmdline(self.pid))

    def answers(self) -> bool:
        """Whether the dashboard answers ``/api/version`` for this session. Returns: ``True`` when it does."""
        try:
            status, body = _dashboard_get(f"{self.dashboard_url}/api/version")
        except OSError:
            return False
        return status == 200 and json.loads(body).get("session_name") == self.session_name

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop every process of this head, and only those (unlike ``ray stop``, which stops all Ray on the machine).

        Same order as ``ray stop``: raylets first, then the other processes, the GCS last; each group gets SIGTERM
        and up to ``timeout_s`` seconds before SIGKILL.

        Args:
            timeout_s: Seconds to wait for each group; ``stop_timeout_s`` when omitted.
        """
        timeout = self.stop_timeout_s if timeout_s is None else timeout_s
        pids = _ray_processes(self.session_name, self.port)
        if not pids:
            return
        logger.info("stopping the Ray head %s (%d processes)", self.address, len(pids))
        names = {pid: Path(_read_cmdline(pid)[0]).name if _read_cmdline(pid) else "" for pid in pids}
        raylets = [pid for pid in pids if names[pid] == "raylet"]
        gcs = [pid for pid in pids if names[pid] == "gcs_server"]
        others = [pid for pid in pids if pid not in raylets and pid not in gcs]
        for group in (raylets, others, gcs):
            _terminate_group(group, signal.SIGTERM, timeout)
        _terminate_group(_ray_processes(self.session_name, self.port), signal.SIGKILL, 5.0)
        try:
            (self.temp_dir / "ray_current_cluster").unlink()
        except OSError:
            pass

    def describe(self) -> str:
        """One line with the GCS address and the dashboard. Returns: human-readable text."""
        return f"Ray head {self.address}, dashboard {self.dashboard_url} (GCS pid {self.pid})"


def _ray_processes(session_name: str, gcs_port: int) -> list[int]:
    """Pids of the processes of one Ray head: those whose command line has ``session_name`` (or a GCS address
    argument with ``gcs_port``), and all their descendants."""
    address_arg = re.compile(rf"^--(?:gcs[-_])?address=[^:\s]+:{gcs_port}$")
    parents: dict[int, int] = {}
    roots: set[int] = set()
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        try:
            stat_text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat_text.rsplit(")", 1)[1].split()
        if fields[0] in ("Z", "X"):
            continue
        parents[pid] = int(fields[1])
        cmdline = _read_cmdline(pid)
        if any(session_name in part for part in cmdline) or (
            any("ray" in part for part in cmdline) and any(address_arg.match(part) for part in cmdline)
        ):
            roots.add(pid)
    found = set(roots)
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in found and pid not in found:
                found.add(pid)
                changed = True
    return sorted(found)


def start_ray_head(
    port: int = 6380,
    dashboard_port: int = 8265,
    env: Mapping[str, str] | None = None,
    *,
    temp_dir: str | os.PathLike[str] | None = None,
    log_path: str | os.PathLike[str] | None = None,
    timeout_s: float = 120.0,
    metrics_port: int | None = None,
) -> RayHead:
    """Start a Ray head on ``127.0.0.1`` with ``ray start --head``; its dashboard listens on ``127.0.0.1`` only.

    ``env`` is added to this process's environment for ``ray start``, so every Ray worker (tasks, actors, Serve
    replicas, job drivers) inherits it; the running interpreter's ``bin`` folder comes first on ``PATH`` so workers
    and ``ray job submit`` entrypoints use that interpreter. ``RAY_ADDRESS`` is removed from that environment.
    ``RAY_AUTH_MODE`` is kept when set, else it is ``token`` when a Ray token exists (:func:`ray_auth_headers`) and
    ``disabled`` otherwise, as Ray itself decides for a new cluster.
    The head gets its own temp folder (default ``<tmp>/sluice-ray-<port>``) so that a plain ``ray.init()``
    elsewhere on the machine does not find it through ``/tmp/ray/ray_current_cluster``. Ray reports the node's
    address as the machine's IP; the GCS listens on all addresses, so ``127.0.0.1:<port>`` reaches it.

    Args:
        port: GCS port; ``ray.init(address="127.0.0.1:<port>")`` connects to it.
        dashboard_port: Dashboard and job API port (``ray job submit --address http://127.0.0.1:<port>``).
        env: Extra environment variables for the Ray processes (``SLUICE_*``).
        temp_dir: Ray's temp folder for this head (keep the path short: Ray puts unix sockets in it).
        log_path: File for the output of ``ray start``; a temporary file when omitted.
        timeout_s: Seconds to wait for ``ray start`` and then for the dashboard.
        metrics_port: Port of the metrics agent (``--metrics-export-port``), fixed so that a Prometheus scrape
            configuration and ``SLUICE_METRICS_URL`` stay valid across restarts; ``None``: a free port.

    Returns:
        The head's handle; ``.address`` is the GCS address, ``.dashboard_url`` the dashboard.

    Raises:
        PortInUseError: When ``port``, ``dashboard_port`` or ``metrics_port`` is taken.
        ServerStartError: When ``ray start`` fails or the dashboard does not answer (with the tail of the log).
        StackError: When the ``ray`` command cannot be found.
    """
    check_port_free(port, "Ray GCS", "SLUICE_RAY_PORT")
    check_port_free(dashboard_port, "Ray dashboard", "SLUICE_DASHBOARD_PORT")
    if metrics_port is not None:
        check_port_free(metrics_port, "Ray metrics export", "SLUICE_METRICS_PORT")
    metrics_port = metrics_port if metrics_port is not None else free_port()
    ray = _find_executable("ray", "install Ray (pip install 'ray[default]')")
    temp = (Path(temp_dir) if temp_dir is not None else Path(tempfile.gettempdir()) / f"sluice-ray-{port}").absolute()
    temp.mkdir(parents=True, exist_ok=True)
    log = Path(log_path) if log_path is not None else temp / "ray-start.log"
    child_env = _venv_path_env()
    child_env.update(env or {})
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        child_env.pop(name, None)
    # Ray's rule for a new cluster when RAY_AUTH_MODE is unset: token authentication when a token exists. Made
    # explicit here because clients connecting to an existing cluster need the same RAY_AUTH_MODE (the env file
    # exports it).
    auth_mode = (child_env.get("RAY_AUTH_MODE") or "").strip().lower() or ("token" if ray_auth_headers() else "disabled")
    child_env["RAY_AUTH_MODE"] = auth_mode
    # The Ray client server defaults to 10001; another head may hold it.
    client_port = 10001 if not port_answers(10001) else free_port()
    cmd = [ray, "start", "--head", f"--node-ip-address={LOOPBACK}", f"--port={port}",
           f"--dashboard-host={LOOPBACK}", f"--dashboard-port={dashboard_port}", "--include-dashboard=true",
           f"--ray-client-server-port={client_port}", f"--metrics-export-port={metrics_port}", f"--temp-dir={temp}",
           "--disable-usage-stats"]
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = _spawn(cmd, log, env=child_env, cwd=REPO_ROOT)
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise ServerStartError(f"`ray start` did not finish within {timeout_s:.0f} s; last lines of {log}:\n"
                               f"{_log_tail(log)}") from None
    if rc != 0:
        raise ServerStartError(f"`ray start` failed with status {rc}; last lines of {log}:\n{_log_tail(log)}")
    dashboard_url = f"http://{LOOPBACK}:{dashboard_port}"
    session: dict[str, str] = {}

    def dashboard_ready() -> bool:
        status, body = _dashboard_get(f"{dashboard_url}/api/version")
        if status == 401:
            raise ServerStartError(
                "the Ray dashboard requires an authentication token (token authentication is on because a token "
                "exists, see `ray get-auth-token`) and refused the one found in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH "
                "or ~/.ray/auth_token; set RAY_AUTH_MODE=disabled or RAY_AUTH_TOKEN to start it"
            )
        if status == 200:
            session.update(json.loads(body))
            return True
        return False

    try:
        _wait_until("Ray dashboard", dashboard_ready, timeout_s, log, None, 0.5)
        session_name = session.get("session_name", "")
        gcs_pids = [
            pid for pid in _ray_processes(session_name, port)
            if _read_cmdline(pid) and Path(_read_cmdline(pid)[0]).name == "gcs_server"
        ]
        if not session_name or not gcs_pids:
            raise ServerStartError(f"Ray started but its GCS process was not found; last lines of {log}:\n"
                                   f"{_log_tail(log)}")
    except BaseException:
        # Do not leave a half-started head behind: every process of a session under this temp folder goes.
        leftovers = _ray_processes(f"{temp}{os.sep}session_", port)
        _terminate_group([p for p in leftovers if Path((_read_cmdline(p) or [""])[0]).name == "raylet"],
                         signal.SIGTERM, 10.0)
        _terminate_group(_ray_processes(f"{temp}{os.sep}session_", port), signal.SIGTERM, 10.0)
        raise
    handle = RayHead(
        name="ray",
        pid=gcs_pids[0],
        port=port,
        log_path=log,
        stop_timeout_s=20.0,
        process_marker=session_name,
        address=f"{LOOPBACK}:{port}",
        dashboard_url=dashboard_url,
        session_name=session_name,
        temp_dir=temp,
        auth_mode=auth_mode,
        metrics_port=metrics_port,
    )
    logger.info("Ray head ready: %s, dashboard %s", handle.address, dashboard_url)
    return handle
