"""Image chunks: one chunk per picture, carrying its OCR text, plus tiles with their boxes for a large picture.

Input: the :class:`pipelines.extract.image.ImageItem` list of one document version (an image file gives one; a PDF
one per embedded picture and per rendered page without a text layer) and, for the text, an OCR engine
(:mod:`pipelines.ocr`). Output: :class:`ImageChunk` rows, ``modality == "image"``.

Two steps, so that the pipeline can fix a version's chunk count before the expensive part:

1. :func:`plan_image_chunks` lays out the chunks from the pictures' sizes alone: for each picture a whole-picture
   chunk (``kind == "image"``), then, when its longer side exceeds ``large_px``, a grid of overlapping tiles
   (``kind == "tile"``) no larger than ``tile_px`` a side (at most ``max_tiles``; past that the tiles grow).
   Deterministic: the same sizes always give the same chunks, indexes and boxes.
2. :func:`attach_text` gives each chunk the OCR text inside its box, in reading order (the whole-picture chunk all
   of it; a tile the lines whose centre lies in the tile), so an image chunk is found by text queries on the dense
   text and BM25 legs as well as through its CLIP vector.

:class:`ImageChunker` does both, with OCR, for one document. A CLIP encoder (a fixed 224 or 336 pixel input) sees a
whole 3000-pixel screenshot as a thumbnail; tiles let it see each part at a usable scale.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Literal

from PIL import Image

from pipelines.extract.image import ImageItem, ImageSource
from pipelines.ocr import OcrEngine, OcrLine, ocr_text

#: A picture whose longer side is above this many pixels is also cut into tiles.
DEFAULT_LARGE_PX = 1536
#: The most pixels on a side of a tile (before the ``max_tiles`` cap grows them).
DEFAULT_TILE_PX = 1024
#: At most this many tiles per picture.
DEFAULT_MAX_TILES = 16
#: Share of a tile's side that overlaps its neighbour (text cut by one tile's edge is whole in the next).
DEFAULT_OVERLAP = 0.1

ChunkKind = Literal["image", "tile"]
Box = tuple[int, int, int, int]


@dataclasses.dataclass(frozen=True)
class ImageChunk:
    """A picture, or a tile of one, to embed with the image model (and, through its OCR text, the text model).

    Attributes:
        chunk_index: position within the document version (see :func:`plan_image_chunks`'s ``first_index``).
        kind: ``"image"`` for a whole picture, ``"tile"`` for a part of one.
        box: ``(left, top, right, bottom)`` in pixels of the picture (right and bottom exclusive); the whole
            picture ``(0, 0, width, height)`` for ``kind == "image"``.
        item_index: the :attr:`ImageItem.index` of the picture.
        image_size: ``(width, height)`` of the whole picture, pixels.
        parent_index: for a tile, the ``chunk_index`` of its whole-picture chunk; ``None`` for a picture.
        page: 1-based PDF page, ``None`` for an image file.
        source: where the picture came from (``file``, ``pdf_embedded``, ``pdf_page``).
        text: the OCR text inside ``box`` in reading order (``\\n`` between rows), ``""`` when none.
        modality: always ``"image"``.
    """

    chunk_index: int
    kind: ChunkKind
    box: Box
    item_index: int
    image_size: tuple[int, int]
    parent_index: int | None = None
    page: int | None = None
    source: ImageSource = "file"
    text: str = ""
    modality: str = "image"


def tile_boxes(width: int, height: int, *, tile_px: int = DEFAULT_TILE_PX, large_px: int = DEFAULT_LARGE_PX,
               max_tiles: int = DEFAULT_MAX_TILES, overlap: float = DEFAULT_OVERLAP) -> list[Box]:
    """The tiles of a ``width`` x ``height`` picture, row by row, left to right.

    Along each side, ``n = ceil((side - o) / (t - o))`` tiles of ``t = min(tile_px, side)`` pixels with ``o =
    overlap * t`` are spread evenly from edge to edge (so they overlap by at least ``o``). When ``cols * rows``
    exceeds ``max_tiles``, ``t`` grows by 25 % until it does not.

    Args:
        width, height: the picture's size, pixels.
        tile_px: the preferred tile side, pixels. large_px: no tiles unless ``max(width, height) > large_px``.
        max_tiles: the most tiles. overlap: 0 <= overlap < 0.5.

    Returns:
        ``(left, top, right, bottom)`` boxes, ``[]`` for a picture not larger than ``large_px``.

    Raises:
        ValueError: a non-positive size or ``tile_px``, ``max_tiles`` below 1, ``overlap`` out of range.
    """
    if width < 1 or height < 1 or tile_px < 1 or max_tiles < 1 or not 0 <= overlap < 0.5:
        raise ValueError(f"bad tiling of {width}x{height}: tile_px={tile_px}, max_tiles={max_tiles}, overlap={overlap}")
    if max(width, height) <= large_px:
        return []
    tile = tile_px
    while True:
        xs, ys = _spread(width, tile, overlap), _spread(height, tile, overlap)
        if len(xs) * len(ys) <= max_tiles:
            break
        tile = int(math.ceil(tile * 1.25))
    return [(x0, y0, x1, y1) for y0, y1 in ys for x0, x1 in xs]


def _spread(side: int, tile: int, overlap: float) -> list[tuple[int, int]]:
    size = min(tile, side)
    step = size - int(overlap * size)
    count = 1 if size >= side else int(math.ceil((side - size) / max(1, step))) + 1
    if count == 1:
        return [(0, size)]
    starts = [round(i * (side - size) / (count - 1)) for i in range(count)]
    return [(start, start + size) for start in starts]


def plan_image_chunks(items: Sequence[ImageItem], first_index: int = 0, *, tile_px: int = DEFAULT_TILE_PX,
                      large_px: int = DEFAULT_LARGE_PX, max_tiles: int = DEFAULT_MAX_TILES,
                      overlap: float = DEFAULT_OVERLAP) -> list[ImageChunk]:
    """Lay out the chunks of a document's pictures from their sizes (no OCR, no model).

    Args:
        items: the pictures, in document order.
        first_index: the ``chunk_index`` of the first chunk (the number of text chunks before them, so that one
            version's chunks share one index space).
        tile_px, large_px, max_tiles, overlap: see :func:`tile_boxes`.

    Returns:
        For each picture, its whole-picture chunk then its tiles; ``chunk_index`` consecutive from
        ``first_index``; ``text`` empty.
    """
    chunks: list[ImageChunk] = []
    index = first_index
    for item in items:
        width, height = item.width, item.height
        parent = index
        chunks.append(ImageChunk(chunk_index=index, kind="image", box=(0, 0, width, height), item_index=item.index,
                                 image_size=(width, height), page=item.page, source=item.source))
        index += 1
        for box in tile_boxes(width, height, tile_px=tile_px, large_px=large_px, max_tiles=max_tiles, overlap=overlap):
            chunks.append(ImageChunk(chunk_index=index, kind="tile", box=box, item_index=item.index,
                                     image_size=(width, height), parent_index=parent, page=item.page,
                                     source=item.source))
            index += 1
    return chunks


def attach_text(chunks: Sequence[ImageChunk], lines_by_item: Mapping[int, Sequence[OcrLine]]) -> list[ImageChunk]:
    """Give each chunk the OCR text inside its box.

    Args:
        chunks: planned chunks (:func:`plan_image_chunks`).
        lines_by_item: the OCR lines of each picture, by :attr:`ImageItem.index`, in that picture's pixels.

    Returns:
        The chunks, in the same order, with ``text`` set: all lines for a whole picture; for a tile, the lines
        whose box centre lies inside it; rows in reading order (:func:`pipelines.ocr.ocr_text`).
    """
    out = []
    for chunk in chunks:
        lines = lines_by_item.get(chunk.item_index, ())
        if chunk.kind == "tile":
            left, top, right, bottom = chunk.box
            lines = [line for line in lines if left <= line.center[0] < right and top <= line.center[1] < bottom]
        out.append(dataclasses.replace(chunk, text=ocr_text(lines)))
    return out


def crop(image: Image.Image, chunk: ImageChunk) -> Image.Image:
    """The pixels of ``chunk`` in its picture (the picture itself for a whole-picture chunk)."""
    if chunk.box == (0, 0, *image.size):
        return image
    return image.crop(chunk.box)


class ImageChunker:
    """Chunk a document's pictures, with OCR text.

    Args:
        ocr: the OCR engine (``pipelines.ocr.make_ocr``); ``None`` leaves every chunk's text empty.
        tile_px, large_px, max_tiles, overlap: see :func:`tile_boxes`.
    """

    def __init__(self, ocr: OcrEngine | None, *, tile_px: int = DEFAULT_TILE_PX, large_px: int = DEFAULT_LARGE_PX,
                 max_tiles: int = DEFAULT_MAX_TILES, overlap: float = DEFAULT_OVERLAP) -> None:
        tile_boxes(1, 1, tile_px=tile_px, large_px=large_px, max_tiles=max_tiles, overlap=overlap)  # validates
        self.ocr = ocr
        self.layout = {"tile_px": tile_px, "large_px": large_px, "max_tiles": max_tiles, "overlap": overlap}

    def plan(self, items: Sequence[ImageItem], first_index: int = 0) -> list[ImageChunk]:
        """:func:`plan_image_chunks` with this chunker's layout."""
        return plan_image_chunks(items, first_index, **self.layout)

    def recognize(self, items: Sequence[ImageItem]) -> dict[int, list[OcrLine]]:
        """OCR each picture once (whole picture; tiles take their share of its lines)."""
        if self.ocr is None:
            return {}
        return {item.index: self.ocr.recognize(item.pixels()) for item in items}

    def chunk(self, items: Sequence[ImageItem], first_index: int = 0) -> list[ImageChunk]:
        """Plan, OCR and attach text: the finished chunks of ``items``.

        Raises:
            ExtractionError: ``ocr_failed`` from the engine.
        """
        return attach_text(self.plan(items, first_index), self.recognize(items))
