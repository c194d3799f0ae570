"""The first embedded store's layout (qdrant-client local mode), recognised at start and copied by
``python -m jobs.migrate_store``.

Local mode kept ``meta.json`` and ``collection/<name>/storage.sqlite`` directly in ``SLUICE_QDRANT_PATH``; Qdrant
Edge keeps ``edge/<name>/`` there. A folder with the old layout and no migration stops every command with a message
saying what to run; the migration copies every point (vectors and payload, no re-embedding) and then moves the old
files to ``local-mode.migrated/`` beside the new store, so running it again finds nothing left to copy.
"""

from __future__ import annotations

import json
from pathlib import Path

MIGRATED = "local-mode.migrated"


def legacy_collections(path: Path | str) -> list[str]:
    """The collections of a local-mode store directly in ``path`` (empty: none, or already migrated)."""
    meta = Path(path) / "meta.json"
    if not meta.is_file():
        return []
    try:
        return sorted(json.loads(meta.read_text()).get("collections", {}))
    except (OSError, ValueError):
        return ["?"]


def migration_message(path: Path | str) -> str:
    names = ", ".join(legacy_collections(path))
    return (f"{path} holds a vector store in the old qdrant-client local-mode layout (collections: {names}); Sluice "
            "now embeds Qdrant Edge. Copy the points into the new store, without re-embedding, with: "
            "python -m jobs.migrate_store   (then run your command again)")
