"""Index models in the catalog: which embedding model (and dimension) built each collection's named vector.

:class:`IndexModels` is mixed into :class:`core.catalog.Catalog`.
"""

from __future__ import annotations

from typing import Any


class IndexModels:
    """The catalog methods on ``index_models``, as methods of :class:`Catalog`.

    Uses the catalog's ``_run(fn, *args)`` (one retried transaction).
    """

    def index_model(self, collection: str, vector: str) -> dict[str, Any] | None:
        """The model recorded for a collection's named vector: ``{"model", "dimension"}``, or ``None``."""
        return self._run(
            lambda conn: conn.execute(
                "SELECT model, dimension FROM index_models WHERE collection = %s AND vector = %s", (collection, vector)
            ).fetchone()
        )

    def record_index_model(self, collection: str, vector: str, model: str, dimension: int) -> None:
        """Record (or replace) the model a collection's named vector is built with."""
        self._run(
            lambda conn: conn.execute(
                "INSERT INTO index_models (collection, vector, model, dimension) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (collection, vector) DO UPDATE SET model = EXCLUDED.model, "
                "dimension = EXCLUDED.dimension, created_at = now()",
                (collection, vector, model, dimension),
            )
        )
