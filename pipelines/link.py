"""Cross-modal links between the chunks of one document version.

After chunking, each chunk's ``links`` name the chunks related to it, so search can return a hit with its
neighbours across modalities (a screenshot found by its OCR text brings the page's text; a paragraph brings the
figure beside it; a transcript segment brings the sentences before and after). Three relations, each stored on
both ends:

===============  =================  =====================================================================
relation         on                 names
===============  =================  =====================================================================
``page_image``   a text chunk       each picture of its page (an embedded image or the rendered scan)
``page_text``    a picture          each text chunk of its page
``tile``         a whole picture    each of its tiles
``tile_of``      a tile             its whole picture
``previous``     an audio segment   the segment before it (by ``start_s``)
``next``         an audio segment   the segment after it
===============  =================  =====================================================================

The link format (a JSON object in the point's ``links`` payload list)::

    {"id": "<point id>", "modality": "image", "chunk_index": 7, "relation": "page_image"}

``id`` is ``core.ids.point_id(document_id, version, modality, chunk_index)``: the Qdrant point of the linked chunk,
so search resolves links with one ``retrieve`` call (for the preview) and a link can never cross versions. The
optional ``preview`` key holds the first ``PREVIEW_CHARS`` characters of the linked chunk's text when it was known
at linking time (image chunks get their OCR text later, in the image stage, and carry none).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Sequence

from core.ids import point_id

RELATIONS = ("page_image", "page_text", "tile", "tile_of", "previous", "next")
#: At most this many links of one relation on one chunk (a page with 200 pictures links its text to 16).
MAX_LINKS_PER_RELATION = 16
#: Characters of the linked chunk's text kept as ``preview``.
PREVIEW_CHARS = 120


@dataclasses.dataclass(frozen=True)
class ChunkRef:
    """What linking needs to know of a chunk.

    Attributes:
        modality: ``text``, ``image`` or ``audio``.
        chunk_index: the chunk's index (with the modality, its point id).
        page: 1-based page for PDF chunks, ``None`` otherwise.
        kind: ``"image"`` or ``"tile"`` for image chunks (``pipelines.chunk.image.ImageChunk.kind``); ``""`` else.
        parent_index: a tile's whole-picture ``chunk_index``; ``None`` otherwise.
        start_s: an audio segment's start, seconds (orders the segments); ``None`` otherwise.
        text: the chunk's text when known (for ``preview``), else ``""``.
    """

    modality: str
    chunk_index: int
    page: int | None = None
    kind: str = ""
    parent_index: int | None = None
    start_s: float | None = None
    text: str = ""

    @classmethod
    def of(cls, chunk: object) -> "ChunkRef":
        """The ref of any chunk object with these attributes (missing ones take the defaults): a
        ``core.types.Chunk``, a ``pipelines.chunk.image.ImageChunk``, an audio segment chunk with ``start_s``."""
        return cls(modality=str(getattr(chunk, "modality", "text")), chunk_index=int(getattr(chunk, "chunk_index")),
                   page=getattr(chunk, "page", None) or None, kind=str(getattr(chunk, "kind", "") or ""),
                   parent_index=getattr(chunk, "parent_index", None), start_s=getattr(chunk, "start_s", None),
                   text=str(getattr(chunk, "text", "") or ""))


@dataclasses.dataclass(frozen=True)
class Link:
    """One link from a chunk to another chunk of the same version (see the module docstring)."""

    id: str
    modality: str
    chunk_index: int
    relation: str
    preview: str = ""

    def to_payload(self) -> dict:
        """The JSON object stored in the ``links`` payload list (``preview`` only when non-empty)."""
        payload = {"id": self.id, "modality": self.modality, "chunk_index": self.chunk_index, "relation": self.relation}
        if self.preview:
            payload["preview"] = self.preview
        return payload


def build_links(document_id: str, version: int, chunks: Sequence[ChunkRef], *,
                max_per_relation: int = MAX_LINKS_PER_RELATION) -> dict[tuple[str, int], list[Link]]:
    """Link the chunks of one document version.

    Args:
        document_id, version: the version (for the point ids).
        chunks: all its chunks, every modality; ``(modality, chunk_index)`` must be unique.
        max_per_relation: the most links of one relation on one chunk (the nearest, in chunk order, are kept).

    Returns:
        ``{(modality, chunk_index): [Link, ...]}`` with an entry (maybe empty) for every chunk; each list in the
        relation order of ``RELATIONS``, then by the linked chunk's index.

    Raises:
        ValueError: two chunks share a ``(modality, chunk_index)``.
    """
    keys = [(ref.modality, ref.chunk_index) for ref in chunks]
    if len(set(keys)) != len(keys):
        raise ValueError("chunk refs must have unique (modality, chunk_index) pairs")
    links: dict[tuple[str, int], list[Link]] = {key: [] for key in keys}

    def add(source: ChunkRef, target: ChunkRef, relation: str) -> None:
        links[(source.modality, source.chunk_index)].append(
            Link(id=point_id(document_id, version, target.modality, target.chunk_index), modality=target.modality,
                 chunk_index=target.chunk_index, relation=relation, preview=_preview(target.text)))

    for source, targets, relation in _relations(chunks):
        for target in _nearest(source, targets, max_per_relation):
            add(source, target, relation)
    order = {relation: i for i, relation in enumerate(RELATIONS)}
    for key in links:
        links[key].sort(key=lambda link: (order[link.relation], link.chunk_index, link.modality))
    return links


def _relations(chunks: Sequence[ChunkRef]) -> Iterable[tuple[ChunkRef, list[ChunkRef], str]]:
    """Every (chunk, related chunks, relation) triple of the three relations."""
    texts_by_page: dict[int, list[ChunkRef]] = defaultdict(list)
    pictures_by_page: dict[int, list[ChunkRef]] = defaultdict(list)
    tiles_by_parent: dict[int, list[ChunkRef]] = defaultdict(list)
    pictures: dict[int, ChunkRef] = {}
    segments: list[ChunkRef] = []
    for ref in chunks:
        if ref.modality == "text" and ref.page is not None:
            texts_by_page[ref.page].append(ref)
        elif ref.modality == "image" and ref.kind == "tile" and ref.parent_index is not None:
            tiles_by_parent[ref.parent_index].append(ref)
        elif ref.modality == "image":
            pictures[ref.chunk_index] = ref
            if ref.page is not None:
                pictures_by_page[ref.page].append(ref)
        elif ref.modality == "audio":
            segments.append(ref)
    # A page's text and its pictures.
    for page, pictures_here in pictures_by_page.items():
        for text in texts_by_page.get(page, []):
            yield text, pictures_here, "page_image"
        for picture in pictures_here:
            yield picture, texts_by_page.get(page, []), "page_text"
    # A picture and its tiles.
    for parent_index, tiles in tiles_by_parent.items():
        parent = pictures.get(parent_index)
        if parent is None:
            continue
        yield parent, tiles, "tile"
        for tile in tiles:
            yield tile, [parent], "tile_of"
    # An audio segment and its neighbours in time.
    segments.sort(key=lambda ref: (ref.start_s if ref.start_s is not None else float("inf"), ref.chunk_index))
    for i, segment in enumerate(segments):
        if i > 0:
            yield segment, [segments[i - 1]], "previous"
        if i + 1 < len(segments):
            yield segment, [segments[i + 1]], "next"


def _nearest(source: ChunkRef, targets: Sequence[ChunkRef], limit: int) -> list[ChunkRef]:
    if len(targets) <= limit:
        return list(targets)
    nearest = sorted(targets, key=lambda ref: (abs(ref.chunk_index - source.chunk_index), ref.chunk_index))[:limit]
    return sorted(nearest, key=lambda ref: ref.chunk_index)


def _preview(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1].rstrip() + "\u2026"
