"""Text decoding, the text extractor, content-type sniffing and the extractor dispatch."""

from __future__ import annotations

import codecs
import random
from pathlib import Path

import pytest

from core.errors import ExtractionError
from pipelines.extract import extract_sections
from pipelines.extract.base import Section, looks_like_text, sniff_content_type, utf16_or_32_without_bom
from pipelines.extract.text import TextExtractor, decode_text, markdown_text

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"

FRENCH = (
    "Le café du coin sert une cuisine naïve et généreuse. J'ai envoyé mon résumé à la société voisine, "
    "où l'on prépare des crêpes, des pâtés et des gâteaux. À bientôt, chère amie: café naïve résumé.\n"
) * 4


# --- decode_text -------------------------------------------------------------------------------------------------


def test_utf8_decodes_as_is() -> None:
    assert decode_text("naïve – “quotes” 日本語".encode()) == "naïve – “quotes” 日本語"


@pytest.mark.parametrize(
    "encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"]
)
def test_unicode_encodings_with_and_without_bom(encoding: str) -> None:
    # "utf-16"/"utf-32"/"utf-8-sig" write a BOM; the -le/-be forms do not.
    data = FRENCH.encode(encoding)
    assert decode_text(data) == FRENCH


def test_utf16_with_explicit_boms() -> None:
    assert decode_text(codecs.BOM_UTF16_LE + FRENCH.encode("utf-16-le")) == FRENCH
    assert decode_text(codecs.BOM_UTF16_BE + FRENCH.encode("utf-16-be")) == FRENCH


def test_latin1_paragraph_keeps_its_accents() -> None:
    text = decode_text(FRENCH.encode("latin-1"))
    assert text == FRENCH
    assert "naïve" in text and "résumé" in text and "crêpes" in text


def test_short_latin1_phrase() -> None:
    assert decode_text(("café naïve résumé " * 3).encode("latin-1")) == "café naïve résumé " * 3


def test_windows_1252_punctuation() -> None:
    text = "Le prix est de 20 € – c’est « très » cher. " * 3
    assert decode_text(text.encode("cp1252")) == text


def test_cyrillic_legacy_encoding() -> None:
    text = "Привет, как дела? Это тестовый текст на русском языке. " * 4
    assert decode_text(text.encode("cp1251")) == text


def test_nul_bytes_are_binary() -> None:
    with pytest.raises(ExtractionError) as info:
        decode_text(b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x03\x00>\x00" * 50)
    assert info.value.reason == "binary_content"


def test_random_bytes_are_binary() -> None:
    rng = random.Random(7)
    with pytest.raises(ExtractionError) as info:
        decode_text(bytes(rng.randrange(256) for _ in range(4096)))
    assert info.value.reason == "binary_content"
    with pytest.raises(ExtractionError) as info:
        decode_text(bytes(rng.randrange(1, 256) for _ in range(4096)))  # no NUL, still not text
    assert info.value.reason == "binary_content"


def test_utf16_detection_without_bom() -> None:
    assert utf16_or_32_without_bom(FRENCH.encode("utf-16-le")) == "utf-16-le"
    assert utf16_or_32_without_bom(FRENCH.encode("utf-16-be")) == "utf-16-be"
    assert utf16_or_32_without_bom(FRENCH.encode("utf-32-le")) == "utf-32-le"
    assert utf16_or_32_without_bom(FRENCH.encode("utf-8")) is None


# --- TextExtractor -----------------------------------------------------------------------------------------------


def test_text_extractor_one_section_with_unix_newlines() -> None:
    sections = TextExtractor().extract(b"line one\r\nline two\rline three\n", "a.txt")
    assert sections == [Section(text="line one\nline two\nline three\n", page=None)]


def test_empty_file() -> None:
    with pytest.raises(ExtractionError) as info:
        TextExtractor().extract(b"", "empty.txt")
    assert info.value.reason == "empty_file"


@pytest.mark.parametrize("data", [b"   \n\t\r\n  ", "\u3000\n".encode(), codecs.BOM_UTF8 + b"  \n"])
def test_whitespace_only(data: bytes) -> None:
    with pytest.raises(ExtractionError) as info:
        TextExtractor().extract(data, "blank.txt")
    assert info.value.reason == "empty_content"


def test_binary_named_txt() -> None:
    rng = random.Random(3)
    data = bytes(rng.randrange(256) for _ in range(2048))
    with pytest.raises(ExtractionError) as info:
        extract_sections(data, "notes.txt")
    assert info.value.reason == "binary_content"


def test_every_example_markdown_file_extracts() -> None:
    files = sorted((EXAMPLES / "docs").glob("*.md"))
    assert len(files) == 20
    for path in files:
        content_type, sections = extract_sections(path.read_bytes(), f"docs/{path.name}")
        assert content_type == "text/markdown"
        assert len(sections) == 1 and sections[0].page is None
        # Markdown is reduced to its text (tests/pipelines/extract/test_markdown.py checks what that text is)
        assert sections[0].text == markdown_text(path.read_text(encoding="utf-8").replace("\r\n", "\n"))


# --- sniffing and dispatch ---------------------------------------------------------------------------------------


PDF_BYTES = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n"
PNG_BYTES = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(40)


@pytest.mark.parametrize(
    ("data", "path", "declared", "expected"),
    [
        (b"# Title\n\ntext", "a.md", "", "text/markdown"),
        (b"# Title\n\ntext", "a.markdown", "", "text/markdown"),
        (b"plain words", "a.txt", "", "text/plain"),
        (b"<!DOCTYPE html><html><body>x</body></html>", "page.htm", "", "text/html"),
        (b"<p>fragment</p>", "page.html", "", "text/html"),
        (PDF_BYTES, "doc.pdf", "", "application/pdf"),
        # the bytes win over a lying extension or declared type
        (PDF_BYTES, "report.txt", "text/plain", "application/pdf"),
        (PNG_BYTES, "notes.txt", "", "image/png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "photo.md", "", "image/jpeg"),
        (b"GIF89a\x01\x00", "x.txt", "", "image/gif"),
        (b"PK\x03\x04\x14\x00", "book.txt", "", "application/zip"),
        (b"\x7fELF\x02\x01\x01", "run.txt", "", "application/x-executable"),
        (b"  \n<!doctype html>\n<html lang=en>", "index.md", "", "text/html"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "a.txt", "", "audio/wav"),
        # no known extension: the declared type, then the content
        (b"# Notes", "README", "text/markdown; charset=utf-8", "text/markdown"),
        (b"def f():\n    return 1\n", "script.py", "", "text/plain"),
        (b"a,b\n1,2\n", "data.csv", "text/csv", "text/plain"),
        (b"\x00\x01\x02\x03\x04binary", "blob.bin", "", "application/octet-stream"),
        (b"\x00\x01\x02\x03\x04binary", "blob.unknownext", "", "application/octet-stream"),
        # a Markdown file that merely mentions HTML stays Markdown
        (b"Use <html> tags\n\n<html>", "a.md", "", "text/markdown"),
    ],
)
def test_sniff_content_type(data: bytes, path: str, declared: str, expected: str) -> None:
    assert sniff_content_type(data, path, declared) == expected


def test_looks_like_text() -> None:
    assert looks_like_text("héllo".encode())
    assert looks_like_text("héllo wörld".encode("utf-16"))
    assert not looks_like_text(b"")
    assert not looks_like_text(b"\x00\x01\x02\x03")


def test_extract_sections_dispatches_by_sniffed_type() -> None:
    content_type, sections = extract_sections(b"<html><body><h1>Hi</h1><p>Hello there.</p></body></html>", "x.txt")
    assert content_type == "text/html"
    assert "Hello there." in sections[0].text


def test_unsupported_type_names_the_type() -> None:
    with pytest.raises(ExtractionError) as info:
        extract_sections(PNG_BYTES, "picture.png")
    assert info.value.reason == "unsupported_type"
    assert "image/png" in info.value.detail


def test_extract_sections_empty_file() -> None:
    with pytest.raises(ExtractionError) as info:
        extract_sections(b"", "empty.pdf", "application/pdf")
    assert info.value.reason == "empty_file"


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("Le café du coin sert un crème brûlée délicieux. Naïve façade, résumé déjà vu.\n\n" * 3, "latin-1"),
        ("Größere Straßen führen über die Brücke. Äpfel und Öl sind schön. " * 3, "latin-1"),
        ("Привет, как дела? Это длинный текст на русском языке, чтобы проверить кодировку. " * 3, "cp1251"),
        ("Příliš žluťoučký kůň úpěl ďábelské ódy. Dobrý den, jak se máte? Čeština je krásná. " * 3, "cp1250"),
    ],
)
def test_legacy_single_byte_encodings_are_detected(text, encoding):
    assert decode_text(text.encode(encoding)) == text
