"""The admin key of the demo tenant that ``make up`` writes into ``.sluice/env`` (``SLUICE_API_KEY``).

The key is made once with ``python -m jobs.keys create`` (the operator's command) and kept in ``<state>/api_key``
(mode 0600) for the next ``make up``, which checks with ``python -m jobs.keys list`` that it is still valid and
makes a new one when it was revoked or expired. Standard library only, like the rest of this package: the key
commands run in the project's interpreter as subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

#: The tenant of ``make demo`` and of the key ``make up`` makes.
DEMO_TENANT = "demo"


def _keys(env: Mapping[str, str], *args: str) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "jobs.keys", *args], env={**os.environ, **env},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"python -m jobs.keys {args[0]} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def ensure_demo_key(state_dir: Path, env: Mapping[str, str]) -> str:
    """The demo tenant's admin key: the one kept in ``state_dir`` while it is valid, else a new one.

    Args:
        state_dir: the stack's state folder. env: the ``SLUICE_*`` variables of the running stack.

    Raises:
        RuntimeError: the key command failed (its standard error is in the message).
    """
    path = state_dir / "api_key"
    if path.is_file():
        try:
            kept = json.loads(path.read_text())
            listed = _keys(env, "list", "--tenant", DEMO_TENANT)
            if any(k.get("key_id") == kept["key_id"] and not k.get("revoked_at") and not k.get("expires_at")
                   for k in listed):
                return kept["key"]
        except (ValueError, KeyError, TypeError):
            pass
    made = _keys(env, "create", "--tenant", DEMO_TENANT, "--role", "admin", "--name", "make up")[-1]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file left by an older make up keeps its mode otherwise
    with os.fdopen(fd, "w") as f:
        json.dump({"key_id": made["key_id"], "key": made["key"]}, f)
    return made["key"]
