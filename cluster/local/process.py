"""Server processes: spawning them with a log, waiting until they answer, stopping them, and their handle.

:class:`ServerHandle` is the base of the handles that ``start_postgres``, ``start_redis``, ``start_s3`` and
``start_ray_head`` return.
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

from cluster.local.defaults import LOOPBACK
from cluster.local.errors import ServerStartError, StackError
from cluster.local.ports import port_answers

logger = logging.getLogger(__name__)


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


def _account(user: str):
    import pwd

    try:
        return pwd.getpwnam(user)
    except KeyError:
        raise StackError(
            f"no system user {user!r}: initdb refuses to run as root, so the cluster runs as {user!r}; "
            "installing the Debian package creates it (apt-get install -y postgresql), or run as a non-root user"
        ) from None


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


@dataclasses.dataclass(kw_only=True)
class ServerHandle:
    """A server process started by this package.

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
