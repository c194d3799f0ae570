"""Redis: ``redis-server`` on loopback, without persistence."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import ClassVar

from cluster.local.defaults import LOOPBACK
from cluster.local.errors import StackError
from cluster.local.ports import check_port_free
from cluster.local.process import ServerHandle, _spawn, _wait_until

logger = logging.getLogger(__name__)


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
