"""What both vector-store backends share: a ranking's page cut where the points are (README, "Vector store").

A search asks for a ranking ``depth`` deep (fusion needs deep legs) but shows one page of it. Carrying the payload of
every candidate out of the store cost more than the query itself (measured on Edge through its actor: a hybrid query
of depth 100 with full payloads 9.2 ms, with only the ranking fields 4.8 ms, depth 10 with payloads 3.1 ms).
:meth:`PagedQueries.query_pages` ranks with the few fields the version fence needs, cuts the page
(:func:`core.vectorstore.schema.ranked_page`), and reads the full payload of the page's points only. For the Edge
backend this runs inside the owner actor: one call, one small answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qdrant_client import models

from core.vectorstore.schema import RANKING_FIELDS, ranked_page


class PagedQueries:
    """Mixed into a backend that has ``query_batch(collection, requests)`` and ``retrieve(collection, ids, ...)``."""

    def query_pages(self, collection: str, requests: Sequence[models.QueryRequest],
                    pages: Sequence[tuple[int, int]], *, with_payload: Any = True) -> list[list[models.ScoredPoint]]:
        """For each request, the page ``(offset, limit)`` of its ranking, one version per document, ties by id,
        each point with the ``with_payload`` fields (a point deleted between the ranking and the read is left out).
        """
        light = [r.model_copy(update={"with_payload": list(RANKING_FIELDS), "with_vector": False}) for r in requests]
        cut = [ranked_page(points, offset, limit)
               for points, (offset, limit) in zip(self.query_batch(collection, light), pages)]
        ids = sorted({str(p.id) for points in cut for p in points})
        if not ids:
            return cut
        payloads = {str(r.id): r.payload for r in self.retrieve(collection, ids, with_payload=with_payload)}
        return [[p.model_copy(update={"payload": payloads[str(p.id)]}) for p in points if str(p.id) in payloads]
                for points in cut]
