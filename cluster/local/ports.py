"""TCP ports of the local stack: the configurable ones, picking free ones, and probing what answers on them."""

from __future__ import annotations

import dataclasses
import os
import socket
import urllib.error
import urllib.request
from typing import Mapping

from cluster.local.defaults import LOOPBACK
from cluster.local.errors import PortInUseError, StackError


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
    # The head's metrics agent: Prometheus text of Ray's, Serve's and Sluice's metrics (``SLUICE_METRICS_URL``).
    "metrics": PortSetting("Ray metrics export", "SLUICE_METRICS_PORT", 58080),
    # Checked free before Serve is deployed on a fresh head; Serve itself listens on the port of the config's
    # http_options (serve/config.yaml), which should match.
    "serve": PortSetting("Ray Serve HTTP", "SLUICE_SERVE_PORT", 8000),
}


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


def _http_get(url: str, timeout_s: float = 2.0, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    try:
        request = urllib.request.Request(url, headers=dict(headers or {}))
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
