"""Errors of the local stack.

::

    RuntimeError
     └── StackError            a server could not be found, started, reached or stopped
          ├── PortInUseError   the port asked for a server is taken
          └── ServerStartError a server exited, or did not answer in time, while starting
"""

from __future__ import annotations

from cluster.local.defaults import LOOPBACK


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
