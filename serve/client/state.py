"""The client's small local state file: the uploads it started and has not finished, so it can resume them.

One JSON object, keyed by server URL, tenant and remote path; each entry holds the upload id and a fingerprint of
the local file (absolute path, size, modification time, SHA-256). An entry whose fingerprint no longer matches the
file is not resumed (the file changed: a new upload starts). Written atomically (a temporary file, then rename).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

#: Environment variable naming the state file.
STATE_ENV = "SLUICE_STATE_FILE"


def default_state_path() -> Path:
    """``$SLUICE_STATE_FILE``, else ``$XDG_STATE_HOME/sluice/uploads.json`` (``~/.local/state/sluice/uploads.json``)."""
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "sluice" / "uploads.json"


class StateFile:
    """Thread-safe access to the state file.

    Args:
        path: where the file lives (created with its folder on first write).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    @staticmethod
    def key(url: str, tenant: str, remote_path: str) -> str:
        """The entry key of one remote file."""
        return json.dumps([url.rstrip("/"), tenant, remote_path], ensure_ascii=False)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(tmp, self.path)

    def get(self, key: str) -> dict[str, Any] | None:
        """The entry, or ``None``."""
        with self._lock:
            entry = self._read().get(key)
        return entry if isinstance(entry, dict) else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Store an entry."""
        with self._lock:
            data = self._read()
            data[key] = entry
            self._write(data)

    def remove(self, key: str) -> None:
        """Forget an entry (idempotent)."""
        with self._lock:
            data = self._read()
            if data.pop(key, None) is not None:
                self._write(data)
