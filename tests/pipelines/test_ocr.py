"""Offline OCR on the example screenshots (RapidOCR, and Tesseract when installed), reading order, and image chunks
carrying the OCR text."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from core.errors import ConfigurationError
from pipelines.chunk.image import ImageChunker
from pipelines.extract import extract_document
from pipelines.ocr import NoOcr, OcrLine, make_ocr, ocr_text, reading_order

pytestmark = pytest.mark.unit

IMAGES = Path(__file__).resolve().parents[2] / "examples" / "images"


@pytest.fixture(scope="module")
def add_one_item():
    path = IMAGES / "rustdoc-add-one.png"
    return extract_document(path.read_bytes(), "images/rustdoc-add-one.png").images[0]


@pytest.fixture(scope="module")
def rapidocr():
    return make_ocr("rapidocr")


@pytest.fixture(scope="module")
def add_one_lines(rapidocr, add_one_item):
    return rapidocr.recognize(add_one_item.image)


def test_rapidocr_reads_add_one(add_one_lines) -> None:
    text = ocr_text(add_one_lines)
    assert "add_one" in text
    assert "Adds one to the number given." in text
    assert "pub fn add_one(x: i32) -> i32" in text
    assert all(0.5 <= line.score <= 1.0 for line in add_one_lines)
    assert all(0 <= line.box[0] < line.box[2] <= 3013 and 0 <= line.box[1] < line.box[3] <= 1561 for line in add_one_lines)


def test_reading_order_reads_the_sidebar_before_the_content(add_one_lines) -> None:
    text = ocr_text(add_one_lines)
    assert text.index("In crate") < text.index("Type")  # the sidebar column comes first, whole
    assert text.index("let arg = 5;") < text.index("assert_eq!(6, answer);")
    assert "Source Settings Help Summary" in text  # one row, left to right


def test_image_chunk_carries_the_ocr_text(rapidocr, add_one_item) -> None:
    chunks = ImageChunker(rapidocr).chunk([add_one_item])
    assert "add_one" in chunks[0].text and "Adds one to the number given." in chunks[0].text
    tiles = [chunk for chunk in chunks if chunk.kind == "tile"]
    assert tiles and any("Adds one to the number given." in tile.text for tile in tiles)
    assert all(len(tile.text) < len(chunks[0].text) for tile in tiles)


def test_rapidocr_on_a_blank_picture_finds_nothing(rapidocr) -> None:
    assert rapidocr.recognize(Image.new("RGB", (200, 100), "white")) == []


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract-ocr is not installed")
def test_tesseract_reads_add_one(add_one_item) -> None:
    text = ocr_text(make_ocr("tesseract").recognize(add_one_item.image))
    assert "add_one" in text and "Adds one to the number given." in text


def test_unknown_or_missing_engines() -> None:
    with pytest.raises(ConfigurationError):
        make_ocr("abbyy")
    with pytest.raises(ConfigurationError, match="tesseract"):
        make_ocr("tesseract", binary="no-such-tesseract-binary")
    assert isinstance(make_ocr("none"), NoOcr) and NoOcr().recognize(Image.new("RGB", (4, 4))) == []


def line(text: str, left: int, top: int, right: int, bottom: int) -> OcrLine:
    return OcrLine(text, 1.0, (left, top, right, bottom))


def test_reading_order_columns_then_rows() -> None:
    lines = [
        line("body two", 400, 200, 900, 230),
        line("nav one", 10, 100, 150, 130),
        line("body one", 400, 100, 900, 130),
        line("nav two", 10, 200, 150, 230),
        line("title", 400, 20, 600, 50),
        line("right", 700, 22, 800, 48),
    ]
    assert [[l.text for l in row] for row in reading_order(lines)] == [
        ["nav one"], ["nav two"], ["title", "right"], ["body one"], ["body two"]
    ]


def test_reading_order_keeps_one_row_whole_despite_gaps() -> None:
    lines = [line("Settings", 2000, 10, 2200, 40), line("Source", 100, 12, 250, 38), line("Help", 2300, 10, 2400, 40)]
    assert ocr_text(lines) == "Source Settings Help"


def test_slightly_overlapping_lines_are_separate_rows() -> None:
    lines = [line("first line", 0, 0, 500, 30), line("second line", 0, 26, 500, 56)]
    assert ocr_text(lines) == "first line\nsecond line"
    assert ocr_text([]) == "" and reading_order([]) == []
