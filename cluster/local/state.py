"""The state file of the local stack, ``<state dir>/state.json``: the servers ``up`` started, as handles."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

from cluster.local.errors import StackError
from cluster.local.postgres_server import PostgresServer
from cluster.local.process import ServerHandle
from cluster.local.ray_head import RayHead
from cluster.local.redis_server import RedisServer
from cluster.local.s3_server import S3Server


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
