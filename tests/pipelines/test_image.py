"""Images: decoding every allowed format, EXIF orientation, hostile files (bombs, truncation, lying extensions),
content sniffing of image and audio types, the image chunk layout, and CLIP embeddings on a tiny model built here."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import ConfigurationError, ExtractionError
from pipelines.chunk.image import ImageChunker, attach_text, crop, plan_image_chunks, tile_boxes
from pipelines.extract import extract_document, extract_sections
from pipelines.extract.base import sniff_content_type
from pipelines.extract.image import ImageExtractor, ImageItem, to_rgb
from pipelines.ocr import OcrLine

pytestmark = pytest.mark.unit

IMAGES = Path(__file__).resolve().parents[2] / "examples" / "images"


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` RGB pixels (a decompression bomb's header)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + png_chunk(b"IEND", b""))


def two_colour(size=(40, 20)) -> Image.Image:
    """Red left half, blue right half."""
    image = Image.new("RGB", size, (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, size[0] // 2, size[1]))
    return image


# --- decoding --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "mime"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"),
                                           ("TIFF", "image/tiff"), ("GIF", "image/gif")])
def test_each_format_decodes_to_rgb(fmt: str, mime: str) -> None:
    data = encode(two_colour(), fmt)
    assert sniff_content_type(data, "picture.bin") == mime
    item = ImageExtractor().extract(data, f"picture.{fmt.lower()}")
    assert item.image.mode == "RGB" and item.image.size == (40, 20) and item.content_type == mime
    red = item.image.getpixel((5, 10))
    assert red[0] > 200 and red[2] < 60


def test_gif_first_frame_only() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    item = ImageExtractor().extract(data, "anim.gif")
    assert item.frames == 3
    assert item.image.getpixel((8, 8))[0] > 200


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(two_colour(), "JPEG", exif=exif.tobytes(), quality=95)
    item = ImageExtractor().extract(data, "phone.jpg")
    assert item.orientation == 6 and item.image.size == (20, 40)
    assert item.image.getpixel((10, 5))[0] > 200  # the red half is now on top
    assert item.image.getpixel((10, 35))[2] > 200


def test_transparency_is_laid_on_white() -> None:
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 0, 255))
    item = ImageExtractor().extract(encode(rgba, "PNG"), "shot.png")
    assert item.image.getpixel((4, 4)) == (255, 255, 255) and item.image.getpixel((0, 0)) == (0, 0, 0)


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    values = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    item = ImageExtractor().extract(encode(Image.fromarray(values), "PNG"), "depth.png")
    pixels = np.asarray(item.image)
    assert pixels.min() == 0 and pixels.max() == 255 and len(np.unique(pixels[..., 0])) > 32


def test_other_modes_convert() -> None:
    assert to_rgb(Image.new("CMYK", (4, 4), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    palette = Image.new("P", (4, 4), 0)
    palette.info["transparency"] = 0
    assert to_rgb(palette).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("1", (4, 4), 1)).mode == "RGB"


def test_round_trip_through_png_bytes() -> None:
    item = ImageExtractor().extract(encode(two_colour(), "PNG"), "a.png")
    again = ImageExtractor().extract(item.to_png_bytes(), "a.png")
    assert np.array_equal(np.asarray(item.image), np.asarray(again.image))


# --- hostile files ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(100_000, 100_000), (9_000, 9_000)])
def test_decompression_bomb_is_refused(size) -> None:
    # 100,000^2 trips Pillow's own DecompressionBombError; 9,000^2 = 81 MP is under Pillow's limit but over ours.
    with pytest.raises(ExtractionError) as info:
        ImageExtractor().extract(png_claiming(*size), "bomb.png")
    assert info.value.reason == "image_bomb"


def test_pixel_limit_is_configurable() -> None:
    data = encode(two_colour((100, 100)), "PNG")
    with pytest.raises(ExtractionError) as info:
        ImageExtractor(max_pixels=9_999).extract(data, "a.png")
    assert info.value.reason == "image_bomb"
    assert ImageExtractor(max_pixels=10_000).extract(data, "a.png").width == 100


def test_bomb_fails_alone_through_extract_document() -> None:
    with pytest.raises(ExtractionError) as info:
        extract_document(png_claiming(50_000, 50_000), "innocent.txt")
    assert info.value.reason == "image_bomb"
    assert extract_document(encode(two_colour(), "PNG"), "fine.png").images


@pytest.mark.parametrize("cut", ["half", "before_iend"])
def test_truncated_png(cut: str) -> None:
    data = (IMAGES / "rustdoc-add-one.png").read_bytes()
    data = data[: len(data) // 2] if cut == "half" else data[:-12]
    with pytest.raises(ExtractionError) as info:
        ImageExtractor().extract(data, "cut.png")
    assert info.value.reason == "image_truncated"


def test_truncated_jpeg() -> None:
    data = encode(Image.effect_noise((256, 256), 60).convert("RGB"), "JPEG")
    with pytest.raises(ExtractionError) as info:
        ImageExtractor().extract(data[: len(data) // 2], "cut.jpg")
    assert info.value.reason == "image_truncated"


def test_corrupt_header() -> None:
    data = bytearray(encode(two_colour(), "PNG"))
    data[20] ^= 0xFF  # inside IHDR: its CRC no longer matches
    with pytest.raises(ExtractionError) as info:
        ImageExtractor().extract(bytes(data), "bad.png")
    assert info.value.reason == "image_corrupt"


def test_format_outside_the_allowed_list_is_unsupported() -> None:
    with pytest.raises(ExtractionError) as info:
        ImageExtractor().extract(encode(two_colour(), "BMP"), "old.bmp")
    assert info.value.reason == "unsupported_type"


def test_empty_image() -> None:
    with pytest.raises(ExtractionError) as info:
        ImageExtractor().extract(b"", "empty.png")
    assert info.value.reason == "empty_file"


def test_lying_extensions_are_decided_by_the_bytes() -> None:
    png = encode(two_colour(), "PNG")
    assert extract_document(png, "notes.md").content_type == "image/png"
    text = extract_document(b"Just a few words, not a picture.\n", "photo.png")
    assert text.content_type == "text/plain" and not text.images
    # a text type declared for PNG bytes does not win either
    assert extract_document(png, "x", "text/plain").content_type == "image/png"
    # an image type declared for text bytes is not believed
    assert extract_document(b"plain words\n", "x", "image/png").content_type == "text/plain"
    # extract_sections stays the text-only API
    with pytest.raises(ExtractionError) as info:
        extract_sections(png, "picture.png")
    assert info.value.reason == "unsupported_type"


def test_binary_garbage_named_png_is_corrupt() -> None:
    with pytest.raises(ExtractionError) as info:
        extract_document(bytes(range(256)) * 4, "picture.png")
    assert info.value.reason == "image_corrupt"


# --- sniffing of audio types -----------------------------------------------------------------------------------


def mp3_frame() -> bytes:
    """An MPEG-1 layer III frame header (128 kbit/s, 44.1 kHz, no padding) and its 417-byte frame."""
    header = bytes([0xFF, 0xFB, 0x90, 0x64])
    return header + bytes(144 * 128000 // 44100 - 4)


@pytest.mark.parametrize(
    ("data", "path", "expected"),
    [
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "a.txt", "audio/wav"),
        (b"RF64\xff\xff\xff\xffWAVEds64", "a.bin", "audio/wav"),
        (b"fLaC\x00\x00\x00\x22", "song.mp3", "audio/flac"),
        (b"OggS\x00\x02" + bytes(30), "voice.wav", "audio/ogg"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00" + mp3_frame(), "a.flac", "audio/mpeg"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x04" + b"TIT2" + b"fLaC" + bytes(8), "a.mp3", "audio/flac"),
        (mp3_frame() * 3, "song.txt", "audio/mpeg"),
        (b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00", "memo.bin", "audio/mp4"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "a.wav", "image/webp"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00", "a.bin", "image/avif"),
    ],
)
def test_sniff_media_types(data: bytes, path: str, expected: str) -> None:
    assert sniff_content_type(data, path) == expected


def test_one_mpeg_sync_word_is_not_audio() -> None:
    data = bytes([0xFF, 0xFB, 0x90, 0x64]) + bytes(range(256)) * 2  # no second frame where the first ends
    assert sniff_content_type(data, "x.bin") != "audio/mpeg"
    assert sniff_content_type("ÿû text".encode("utf-8"), "notes.mp3") == "text/plain"


def test_audio_is_left_to_the_audio_extractor() -> None:
    with pytest.raises(ExtractionError) as info:
        extract_document(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(32), "a.wav")
    assert info.value.reason == "unsupported_type" and "audio/wav" in info.value.detail


# --- chunk layout ----------------------------------------------------------------------------------------------


def test_small_image_has_no_tiles() -> None:
    assert tile_boxes(1536, 1000) == []


def test_tiles_cover_the_picture_and_overlap() -> None:
    boxes = tile_boxes(3013, 1561, tile_px=1024)
    assert len(boxes) == 8
    assert all(right - left == 1024 and bottom - top == 1024 for left, top, right, bottom in boxes)
    assert min(b[0] for b in boxes) == 0 and max(b[2] for b in boxes) == 3013
    assert min(b[1] for b in boxes) == 0 and max(b[3] for b in boxes) == 1561
    first_row = sorted({(b[0], b[2]) for b in boxes})
    assert all(nxt[0] < prev[1] for prev, nxt in zip(first_row, first_row[1:]))  # neighbours overlap


def test_tile_count_is_capped() -> None:
    boxes = tile_boxes(20_000, 20_000, tile_px=512, max_tiles=16)
    assert 1 < len(boxes) <= 16
    assert max(b[2] for b in boxes) == 20_000


def test_tile_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        tile_boxes(10, 10, overlap=0.5)
    with pytest.raises(ValueError):
        tile_boxes(0, 10)


def item_of(size, index=0, page=None, source="file") -> ImageItem:
    return ImageItem(image=Image.new("RGB", size, "white"), index=index, page=page, source=source)


def test_plan_gives_picture_then_tiles_with_consecutive_indexes() -> None:
    chunks = plan_image_chunks([item_of((3000, 1500), 0), item_of((200, 100), 1)], first_index=5)
    assert [c.chunk_index for c in chunks] == list(range(5, 5 + len(chunks)))
    assert chunks[0].kind == "image" and chunks[0].box == (0, 0, 3000, 1500) and chunks[0].parent_index is None
    tiles = [c for c in chunks if c.kind == "tile"]
    assert tiles and all(t.parent_index == 5 and t.item_index == 0 for t in tiles)
    assert chunks[-1].kind == "image" and chunks[-1].item_index == 1 and chunks[-1].modality == "image"
    # the same sizes always give the same layout
    assert plan_image_chunks([item_of((3000, 1500), 0), item_of((200, 100), 1)], first_index=5) == chunks


def test_attach_text_gives_tiles_the_lines_inside_them() -> None:
    chunks = plan_image_chunks([item_of((4000, 1000))])
    lines = [OcrLine("left words", 0.9, (10, 10, 300, 40)), OcrLine("right words", 0.9, (3700, 10, 3990, 40))]
    done = attach_text(chunks, {0: lines})
    assert done[0].text == "left words right words"
    tiles = [c for c in done if c.kind == "tile"]
    assert tiles[0].text == "left words" and tiles[-1].text == "right words"
    assert all(c.text == "" for c in tiles[1:-1])


def test_chunker_runs_ocr_once_per_picture() -> None:
    calls = []

    class FakeOcr:
        name = "fake"

        def recognize(self, image):
            calls.append(image.size)
            return [OcrLine("hello", 1.0, (0, 0, 10, 10))]

    chunks = ImageChunker(FakeOcr()).chunk([item_of((3000, 1500))])
    assert calls == [(3000, 1500)] and chunks[0].text == "hello" and chunks[1].text == "hello"
    assert crop(Image.new("RGB", (3000, 1500)), chunks[1]).size == (1024, 1024)
    assert ImageChunker(None).chunk([item_of((10, 10))])[0].text == ""


def test_example_images_plan() -> None:
    for path in sorted(IMAGES.glob("*.png")):
        extracted = extract_document(path.read_bytes(), f"images/{path.name}")
        chunks = plan_image_chunks(extracted.images)
        assert chunks[0].kind == "image" and len(chunks) > 1  # screenshots of ~3000 pixels get tiles


# --- CLIP embeddings on a tiny model ---------------------------------------------------------------------------


def build_tiny_clip(folder: Path) -> Path:
    """A CLIPModel with tiny text and vision towers, its processor and a byte-level BPE tokenizer, all saved with
    ``save_pretrained`` to ``folder`` (nothing downloaded)."""
    import torch
    from tokenizers import pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    for suffix in ("", "</w>"):
        for char in alphabet:
            vocab[char + suffix] = len(vocab)
    merges = [("a", "d"), ("ad", "d</w>"), ("o", "n"), ("on", "e</w>")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    tokenizer_dir = folder / "tokenizer-src"
    tokenizer_dir.mkdir(parents=True)
    (tokenizer_dir / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tokenizer_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1, **small),
        vision_config=dict(image_size=32, patch_size=8, **small),
        projection_dim=16,
    )
    torch.manual_seed(0)
    model_dir = folder / "tiny-clip"
    CLIPModel(config).save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    return model_dir


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def encoder(tiny_clip):
    from pipelines.embed.image import ClipEncoder

    return ClipEncoder(str(tiny_clip), device="cpu", batch_size=2)


def test_clip_dimension_from_config(tiny_clip) -> None:
    from pipelines.embed.image import image_model_dimension

    assert image_model_dimension(str(tiny_clip)) == 16


def test_clip_image_vectors(encoder) -> None:
    pictures = [two_colour(), Image.new("RGB", (50, 90), "green"), Image.new("L", (30, 30), 128)]
    vectors = encoder.encode_images(pictures)
    assert vectors.shape == (3, 16) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])
    # batching does not change a vector
    assert np.allclose(encoder.encode_images(pictures[:1])[0], vectors[0], atol=1e-5)
    assert encoder.encode_images([]).shape == (0, 16)


def test_clip_text_vectors(encoder) -> None:
    vectors = encoder.encode_texts(["adds one to the number given", "a red and blue picture", "x " * 400])
    assert vectors.shape == (3, 16) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # long text cut to 77 tokens, no error
    images = encoder.encode_images([two_colour()])
    assert (vectors @ images.T).shape == (3, 1)  # one space: a text query scores pictures


def test_clip_chunks_of_an_example_image(encoder) -> None:
    item = extract_document((IMAGES / "rustdoc-add-one.png").read_bytes(), "images/rustdoc-add-one.png").images[0]
    chunks = plan_image_chunks([item])
    vectors = encoder.encode_images([crop(item.image, chunk) for chunk in chunks])
    assert vectors.shape == (len(chunks), 16)


def test_missing_image_model_is_a_configuration_error(tmp_path) -> None:
    from pipelines.embed.image import ClipEncoder

    with pytest.raises(ConfigurationError, match="SLUICE_IMAGE_MODEL"):
        ClipEncoder("")
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ConfigurationError):
        ClipEncoder(str(tmp_path), device="cpu").warm_up()
