"""A mixed folder through the real ingest: Markdown, a text PDF, screenshots, a scanned PDF, speech and music, and
hostile files. Real S3 (SeaweedFS), PostgreSQL, Redis, Ray and the embedded Qdrant; the real text model; a tiny
CLIP and a tiny Whisper built from transformers configs (no weights exist offline), RapidOCR's bundled models."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from qdrant_client import models

from core.catalog import Catalog
from core.ids import document_id, point_id
from core.objects import ObjectStore
from core.vectorstore import IMAGE_VECTOR, SPARSE_VECTOR, TEXT_VECTOR, VectorStore
from pipelines.extract.audio import decode_audio
from pipelines.ingest import Resources, run_ingest
from serve.search.engine import SearchEngine
from serve.search.query import SearchRequest
from tests.pipelines.test_audio import corrupt_middle, encode_mp3
from tests.pipelines.media_helpers import media_settings, red_square_png
from tests.pipelines.test_image import png_claiming
from tests.pipelines.test_pdf_images import make_pdf

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TENANT = "mixed"
SPEECH = ["audio/maintenance-notice.wav", "audio/safety-briefing.wav"]
NO_SPEECH = "audio/pluck-no-speech.wav"
ADD_ONE = "images/rustdoc-add-one.png"


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "not a picture")
    return buffer.getvalue()


def _hostile() -> dict[str, tuple[bytes, str]]:
    """Path → (bytes, the reason code it must fail with)."""
    png = (EXAMPLES / ADD_ONE).read_bytes()
    speech = decode_audio((EXAMPLES / SPEECH[0]).read_bytes(), SPEECH[0]).samples
    return {
        "bad/bomb.png": (png_claiming(100_000, 100_000), "image_bomb"),
        "bad/truncated.png": (png[: len(png) // 2], "image_truncated"),
        "bad/empty.wav": (b"", "audio_empty"),
        "bad/corrupt.mp3": (corrupt_middle(encode_mp3(speech[: 16_000 * 4], 16_000)), "audio_corrupt"),
        "bad/broken-render.pdf": (make_pdf([{"lines": ["Page one has its text layer and plenty of words."]},
                                            {"lines": ["Page two."]}], broken_page=2), "pdf_render_failed"),
        "bad/archive.png": (_zip(), "unsupported_type"),  # the extension lies: the bytes are a ZIP
    }


def _scan() -> bytes:
    """A scanned page: the top of the add-one screenshot as the page's only content (Pillow's PDF writer, as
    ``test_pdf_images.scanned_pdf`` does; no text layer)."""
    with Image.open(EXAMPLES / ADD_ONE) as image:
        top = image.convert("RGB").crop((0, 0, image.width, image.height // 2))
    buffer = io.BytesIO()
    top.save(buffer, format="PDF", resolution=200)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def mixed(ray_local, make_settings, tmp_path_factory):
    settings = media_settings(make_settings, tmp_path_factory)
    objects = ObjectStore(settings)
    objects.ensure_bucket()
    good = {
        "docs/fastapi.md": (EXAMPLES / "docs" / "fastapi.md").read_bytes(),
        "pdf/shared-mime-info-spec.pdf": (EXAMPLES / "pdf" / "shared-mime-info-spec.pdf").read_bytes(),
        "scans/add-one-scan.pdf": _scan(),
        "misc/red-square.txt": red_square_png(),
    }
    for path in (ADD_ONE, "images/rustdoc-crate-page.png", *SPEECH, NO_SPEECH):
        good[path] = (EXAMPLES / path).read_bytes()
    for path, data in good.items():
        objects.put_bytes(f"{TENANT}/{path}", data)
    for path, (data, _) in _hostile().items():
        objects.put_bytes(f"{TENANT}/{path}", data)
    summary = run_ingest(settings, tenant=TENANT, scan=True)
    return settings, good, summary


def _points(settings, path: str) -> list[models.Record]:
    flt = models.Filter(must=[models.FieldCondition(key="document_id",
                                                    match=models.MatchValue(value=document_id(TENANT, path)))])
    return sorted(VectorStore(settings).scroll(flt, with_vectors=True), key=lambda r: r.payload["chunk_index"])


def _search(settings, **request) -> list[dict]:
    engine = SearchEngine(settings)
    return engine.search(TENANT, SearchRequest(**request))["results"]


def test_every_good_file_indexes_and_each_hostile_one_fails_alone_with_its_reason(mixed):
    settings, good, summary = mixed
    hostile = _hostile()
    assert summary.documents_indexed == len(good), summary
    assert summary.documents_failed == len(hostile), summary
    catalog = Catalog(settings)
    try:
        for path in good:
            version = catalog.list_versions(document_id(TENANT, path))[-1]
            assert version.status == "indexed" and version.chunk_count > 0, (path, version)
            assert len(_points(settings, path)) == version.chunk_count, path
        reasons = {}
        for path in hostile:
            doc = document_id(TENANT, path)
            assert catalog.list_versions(doc)[-1].status == "failed", path
            letters = catalog.dead_letters(doc)
            assert len(letters) == 1, path
            reasons[path] = letters[0]["reason"]
            assert _points(settings, path) == [], path
    finally:
        catalog.close()
    assert reasons == {path: reason for path, (_, reason) in hostile.items()}


def test_image_chunks_carry_ocr_text_tiles_boxes_vectors_and_links(mixed):
    settings, *_ = mixed
    points = _points(settings, ADD_ONE)
    whole, tiles = points[0], points[1:]
    assert whole.payload["chunk_index"] == 0 and whole.payload["kind"] == "image"
    assert whole.payload["modality"] == "image" and whole.payload["content_type"] == "image/png"
    assert "add_one" in whole.payload["text"]
    with Image.open(EXAMPLES / ADD_ONE) as image:
        assert whole.payload["box"] == [0, 0, image.width, image.height]
    assert tiles, "a 3000-pixel screenshot is also cut into tiles"
    for tile in tiles:
        assert tile.payload["kind"] == "tile" and tile.payload["parent_index"] == 0
        left, top, right, bottom = tile.payload["box"]
        assert 0 <= left < right <= whole.payload["box"][2] and 0 <= top < bottom <= whole.payload["box"][3]
        assert tile.payload["links"] == [{"id": str(whole.id), "modality": "image", "chunk_index": 0,
                                          "relation": "tile_of"}]
        assert len(tile.vector[IMAGE_VECTOR]) == 16  # the tiny CLIP's projection_dim
    assert [link["chunk_index"] for link in whole.payload["links"] if link["relation"] == "tile"] == \
        [t.payload["chunk_index"] for t in tiles]
    assert set(whole.vector) == {TEXT_VECTOR, SPARSE_VECTOR, IMAGE_VECTOR}


def test_a_picture_without_text_has_only_its_clip_vector(mixed):
    settings, *_ = mixed
    (point,) = _points(settings, "misc/red-square.txt")
    assert point.payload["modality"] == "image" and point.payload["content_type"] == "image/png"
    assert point.payload["text"] == "" and set(point.vector) == {IMAGE_VECTOR}


def test_scanned_pdf_is_rendered_ocrd_and_searchable(mixed):
    settings, *_ = mixed
    points = _points(settings, "scans/add-one-scan.pdf")
    assert points[0].payload["image_source"] == "pdf_page" and points[0].payload["page"] == 1
    assert "add_one" in points[0].payload["text"]


def test_text_pdf_chunks_come_first_and_share_one_index_space(mixed):
    settings, *_ = mixed
    points = _points(settings, "pdf/shared-mime-info-spec.pdf")
    assert [p.payload["chunk_index"] for p in points] == list(range(len(points)))
    assert {p.payload["modality"] for p in points} == {"text"}


def test_the_add_one_query_returns_the_image_chunk_on_the_text_legs(mixed):
    settings, *_ = mixed
    for mode in ("hybrid", "sparse", "dense"):
        results = _search(settings, query="adds one to the number given", top_k=5, mode=mode)
        hits = [r for r in results if r["path"] == ADD_ONE]
        assert hits, (mode, [(r["path"], r["chunk_index"]) for r in results])
        assert hits[0]["modality"] == "image" and "add_one" in hits[0]["text"]


def test_search_returns_links_with_previews(mixed):
    settings, *_ = mixed
    results = _search(settings, query="adds one to the number given", top_k=10, mode="sparse",
                      filters={"path_prefix": "images"})
    whole = next(r for r in results if r["path"] == ADD_ONE and r["chunk_index"] == 0)
    tile_links = [link for link in whole["links"] if link["relation"] == "tile"]
    assert tile_links and all(set(link) >= {"id", "modality", "chunk_index", "relation"} for link in tile_links)
    assert tile_links[0]["id"] == point_id(whole["document_id"], whole["version"], "image", tile_links[0]["chunk_index"])
    assert any("add_one" in link.get("preview", "") for link in tile_links)  # the tile holding the code line


def test_a_text_query_reaches_a_textless_picture_through_the_clip_leg(mixed):
    settings, *_ = mixed
    with_images = _search(settings, query="a red square on white", top_k=50, modalities=["image"])
    assert {r["modality"] for r in with_images} == {"image"}
    assert "misc/red-square.txt" in {r["path"] for r in with_images}
    everything = _search(settings, query="a red square on white", top_k=50)
    assert "misc/red-square.txt" not in {r["path"] for r in everything}  # no text, no text leg finds it


def test_speech_files_give_audio_chunks_with_increasing_timestamps(mixed):
    settings, *_ = mixed
    for path in SPEECH:
        duration = decode_audio((EXAMPLES / path).read_bytes(), path).duration_s
        points = _points(settings, path)
        assert points and {p.payload["modality"] for p in points} == {"audio"}
        starts = [p.payload["start_s"] for p in points]
        assert starts == sorted(starts)
        for p in points:
            assert 0 <= p.payload["start_s"] < p.payload["end_s"] <= duration + 0.05
            assert p.payload["text"] and TEXT_VECTOR in p.vector
        if len(points) > 1:
            assert points[0].payload["links"][-1]["relation"] == "next"
            back = points[1].payload["links"][0]
            assert (back["id"], back["relation"], back["modality"]) == (str(points[0].id), "previous", "audio")


def test_audio_results_carry_their_times(mixed):
    settings, *_ = mixed
    target = _points(settings, SPEECH[0])[0]
    results = _search(settings, query=target.payload["text"][:200], top_k=20, mode="sparse", modalities=["audio"])
    hit = next(r for r in results if r["point_id"] == str(target.id))
    assert hit["start_s"] == target.payload["start_s"] and hit["end_s"] == target.payload["end_s"]


def test_music_without_speech_yields_no_transcript_text(mixed):
    settings, *_ = mixed
    (point,) = _points(settings, NO_SPEECH)
    duration = decode_audio((EXAMPLES / NO_SPEECH).read_bytes(), NO_SPEECH).duration_s
    assert point.payload["text"] == "" and point.payload["no_speech"] is True
    assert point.payload["start_s"] == 0 and point.payload["end_s"] == pytest.approx(duration, abs=0.01)
    assert point.vector in ({}, None)


@pytest.mark.unit
def test_pools_are_sized_per_modality():
    from core.settings import Settings

    small = Resources.from_cluster({"CPU": 2}, Settings(asr_model="x"))
    assert (small.embed_actors, small.image_actors, small.audio_actors) == (1, 1, 1)
    # Every pool can start at once: the heavy actors' reservations fit beside one prepare actor and a write task.
    assert small.embed_cpus + small.image_cpus + small.audio_cpus + Resources.PREPARE_CPUS + Resources.WRITE_CPUS <= 2
    assert Resources.from_cluster({"CPU": 2}, Settings(asr_model="")).audio_actors == 0
    # Beside Serve replicas holding half a CPU, the reservations shrink to what is free.
    beside = Resources.from_cluster({"CPU": 2}, Settings(asr_model=""), available={"CPU": 1.5})
    assert beside.embed_cpus + beside.image_cpus + Resources.PREPARE_CPUS + Resources.WRITE_CPUS <= 1.5
    # One actor of every stage fits on the smallest node, so losing the others never stalls a pool.
    nodes = Resources.from_cluster({"CPU": 4}, Settings(asr_model=""), node_cpus=2)
    assert nodes.embed_cpus + nodes.image_cpus + Resources.PREPARE_CPUS + Resources.WRITE_CPUS <= 2
    big = Resources.from_cluster({"CPU": 32}, Settings(asr_model="x"))
    assert (big.embed_actors, big.image_actors, big.audio_actors) == (8, 4, 4) and big.image_cpus == 1.0
    gpu = Resources.from_cluster({"CPU": 16, "GPU": 2}, Settings(asr_model="x", image_model="y"))
    assert (gpu.embed_actors, gpu.image_actors, gpu.audio_actors) == (2, 2, 2)
    assert gpu.embed_gpus + gpu.image_gpus + gpu.audio_gpus <= 1.0 and gpu.image_gpus > 0


def test_every_modality_records_what_its_file_says_in_the_catalog_and_the_payload(mixed):
    """The properties of the example recording, screenshot, PDF and Markdown file, through the real ingest."""
    import soundfile

    from core.catalog import Catalog
    from pipelines.extract.language import language_of

    settings, *_ = mixed
    info = soundfile.info(str(EXAMPLES / SPEECH[0]))
    segments = _points(settings, SPEECH[0])
    # The tiny test Whisper writes arbitrary words: the language is whatever the detector makes of them.
    spoken = language_of(" ".join(p.payload["text"] for p in segments))
    expected = {
        SPEECH[0]: {"duration_s": pytest.approx(info.frames / info.samplerate, abs=0.01),
                    "sample_rate": info.samplerate, "channels": info.channels, **({"language": spoken} if spoken else {})},
        ADD_ONE: {"width": 3013, "height": 1561},
        "pdf/shared-mime-info-spec.pdf": {"page_count": 17, "created": "2022-04-29T17:19:08+00:00", "language": "en"},
        "docs/fastapi.md": {"language": "en"},  # no level-one heading, no front matter: no title is invented
    }
    catalog = Catalog(settings)
    for path, props in expected.items():
        points = _points(settings, path)
        assert points and all(p.payload["properties"] == props for p in points), (path, points[0].payload["properties"])
        (version,) = catalog.list_versions(document_id(TENANT, path))
        assert version.properties == props, path
    (music,) = _points(settings, NO_SPEECH)
    assert music.payload["properties"] == {"duration_s": pytest.approx(0.3, abs=0.01), "sample_rate": 11025,
                                           "channels": 2}
