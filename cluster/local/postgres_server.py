"""PostgreSQL: a throw-away cluster made by the Debian binaries' ``initdb``, served on loopback.

``initdb`` refuses to run as root, so when this process is root the cluster is owned by, and runs as, the
``postgres`` system user.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import ClassVar

from cluster.local.defaults import DEFAULT_DATABASE, LOOPBACK
from cluster.local.errors import ServerStartError, StackError
from cluster.local.ports import check_port_free
from cluster.local.process import ServerHandle, _account, _log_tail, _pid_state, _read_cmdline, _spawn, _wait_until

logger = logging.getLogger(__name__)


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
