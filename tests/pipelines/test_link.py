"""Cross-modal links: a page's text and its pictures, a picture and its tiles, an audio segment and its neighbours."""

from __future__ import annotations

import dataclasses
import json

import pytest

from core.ids import point_id
from core.types import Chunk
from pipelines.chunk.image import ImageChunk
from pipelines.link import MAX_LINKS_PER_RELATION, PREVIEW_CHARS, ChunkRef, Link, build_links

pytestmark = pytest.mark.unit

DOC = "2b0c1f9e-0000-5000-8000-000000000001"


def relations(links: list[Link]) -> list[tuple[str, str, int]]:
    return [(link.relation, link.modality, link.chunk_index) for link in links]


def test_page_text_and_pictures_link_both_ways() -> None:
    refs = [
        ChunkRef("text", 0, page=1, text="Intro paragraph on page one."),
        ChunkRef("text", 1, page=1),
        ChunkRef("text", 2, page=2),
        ChunkRef("image", 3, page=1, kind="image", text="Figure 1: the architecture"),
        ChunkRef("image", 4, page=3, kind="image"),
    ]
    links = build_links(DOC, 2, refs)
    assert relations(links[("text", 0)]) == [("page_image", "image", 3)]
    assert relations(links[("text", 1)]) == [("page_image", "image", 3)]
    assert links[("text", 2)] == []
    assert relations(links[("image", 3)]) == [("page_text", "text", 0), ("page_text", "text", 1)]
    assert links[("image", 4)] == []  # a scanned page alone: no text chunks on its page
    assert links[("text", 0)][0].id == point_id(DOC, 2, "image", 3)
    assert links[("text", 0)][0].preview == "Figure 1: the architecture"
    assert links[("image", 3)][1].preview == ""  # unknown text: no preview


def test_picture_and_tiles() -> None:
    refs = [
        ChunkRef("image", 0, kind="image"),
        ChunkRef("image", 1, kind="tile", parent_index=0),
        ChunkRef("image", 2, kind="tile", parent_index=0),
        ChunkRef("image", 3, kind="image"),
    ]
    links = build_links(DOC, 1, refs)
    assert relations(links[("image", 0)]) == [("tile", "image", 1), ("tile", "image", 2)]
    assert relations(links[("image", 1)]) == [("tile_of", "image", 0)]
    assert relations(links[("image", 2)]) == [("tile_of", "image", 0)]
    assert links[("image", 3)] == []


def test_audio_segments_link_to_their_neighbours_in_time() -> None:
    refs = [ChunkRef("audio", 0, start_s=0.0), ChunkRef("audio", 2, start_s=9.5), ChunkRef("audio", 1, start_s=4.0)]
    links = build_links(DOC, 1, refs)
    assert relations(links[("audio", 0)]) == [("next", "audio", 1)]
    assert relations(links[("audio", 1)]) == [("previous", "audio", 0), ("next", "audio", 2)]
    assert relations(links[("audio", 2)]) == [("previous", "audio", 1)]


def test_text_and_audio_chunks_with_the_same_index_are_distinct() -> None:
    links = build_links(DOC, 1, [ChunkRef("text", 0), ChunkRef("audio", 0, start_s=0.0), ChunkRef("audio", 1, start_s=3.0)])
    assert links[("text", 0)] == []
    assert links[("audio", 0)][0].id == point_id(DOC, 1, "audio", 1)
    with pytest.raises(ValueError):
        build_links(DOC, 1, [ChunkRef("text", 0), ChunkRef("text", 0)])


def test_links_per_relation_are_capped_to_the_nearest() -> None:
    pictures = [ChunkRef("image", index, page=1, kind="image") for index in range(1, 41)]
    links = build_links(DOC, 1, [ChunkRef("text", 0, page=1), *pictures])
    assert len(links[("text", 0)]) == MAX_LINKS_PER_RELATION
    assert [link.chunk_index for link in links[("text", 0)]] == list(range(1, MAX_LINKS_PER_RELATION + 1))


def test_refs_from_chunk_objects_and_payload_format() -> None:
    text = Chunk(chunk_index=0, text="x " * 200, page=4)
    picture = ImageChunk(chunk_index=1, kind="image", box=(0, 0, 10, 10), item_index=0, image_size=(10, 10), page=4)
    tile = dataclasses.replace(picture, chunk_index=2, kind="tile", parent_index=1)
    refs = [ChunkRef.of(chunk) for chunk in (text, picture, tile)]
    assert refs[0] == ChunkRef("text", 0, page=4, text="x " * 200)
    assert refs[2].kind == "tile" and refs[2].parent_index == 1
    links = build_links(DOC, 3, refs)
    payload = [link.to_payload() for link in links[("image", 1)]]
    assert payload[0] == {"id": point_id(DOC, 3, "text", 0), "modality": "text", "chunk_index": 0,
                          "relation": "page_text", "preview": payload[0]["preview"]}
    assert len(payload[0]["preview"]) == PREVIEW_CHARS and payload[0]["preview"].endswith("\u2026")
    assert payload[1] == {"id": point_id(DOC, 3, "image", 2), "modality": "image", "chunk_index": 2, "relation": "tile"}
    json.dumps(payload)  # plain JSON, for the Qdrant payload
    assert ChunkRef.of(Chunk(chunk_index=5, text="y")).page is None  # page 0 or None: no page
