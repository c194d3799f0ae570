"""What each file says of itself (``Extracted.properties``), on the example corpus and on files built here."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from pipelines.extract import extract_document
from pipelines.extract.language import language_of
from pipelines.extract.pdf import parse_pdf_date

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def test_the_example_pdf_gives_its_page_count_creation_date_and_language_and_invents_no_title():
    data = (EXAMPLES / "pdf" / "shared-mime-info-spec.pdf").read_bytes()
    props = extract_document(data, "spec.pdf").properties
    assert props == {"page_count": 17, "created": "2022-04-29T17:19:08+00:00", "language": "en"}


def _pdf_with_info(info: str, text: str = "Quarterly figures of the finance team, in plain words.") -> bytes:
    """A one-page PDF with a text line and the document information dictionary ``info`` (ISO 32000-1, 14.3.3)."""
    stream = f"BT /F1 12 Tf 20 100 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 400 200] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        info.encode("latin-1"),
    ]
    out, offsets = bytearray(b"%PDF-1.7\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, len(objects), xref)
    return bytes(out)


def test_a_pdf_with_document_information_gives_title_author_and_subject():
    data = _pdf_with_info("<< /Title (Quarterly report) /Author (Ada Lovelace) /Subject (Finance) "
                          "/CreationDate (D:20240131120000+01'00') >>")
    assert extract_document(data, "report.pdf").properties == {
        "title": "Quarterly report", "author": "Ada Lovelace", "subject": "Finance",
        "created": "2024-01-31T11:00:00+00:00", "page_count": 1, "language": "en"}
    bare = extract_document(_pdf_with_info("<< /Producer (a tool) >>"), "bare.pdf").properties
    assert bare == {"page_count": 1, "language": "en"}  # nothing the file does not say


def test_the_example_screenshot_gives_its_size_and_no_exif_fields():
    data = (EXAMPLES / "images" / "rustdoc-add-one.png").read_bytes()
    assert extract_document(data, "shot.png").properties == {"width": 3013, "height": 1561}


def test_a_photo_gives_its_capture_time_and_camera_from_exif():
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "Canon EOS R5"
    exif.get_ifd(0x8769)[0x9003] = "2023:07:14 09:30:00"
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(buffer, format="JPEG", exif=exif)
    props = extract_document(buffer.getvalue(), "photo.jpg").properties
    assert props == {"width": 64, "height": 48, "captured_at": "2023-07-14T09:30:00+00:00", "camera": "Canon EOS R5"}


def test_markdown_and_html_give_their_title_and_language():
    md = extract_document((EXAMPLES / "docs" / "click.md").read_bytes(), "click.md").properties
    assert md == {"title": "Click", "language": "en"}
    front = extract_document(b"---\ntitle: 'Release notes'\n---\n# Other\n\nDas ist ein deutscher Text, "
                             b"der lang genug ist, um die Sprache zu erkennen.\n", "n.md").properties
    assert front == {"title": "Release notes", "language": "de"}
    html = extract_document(b"<html><head><title>Caf&eacute; menu</title></head><body><p>Today we serve coffee, "
                            b"tea and fresh bread with butter.</p></body></html>", "m.html").properties
    assert html == {"title": "Café menu", "language": "en"}
    assert "title" not in extract_document(b"plain words only, no heading here at all", "p.txt").properties


def test_language_is_told_only_when_confident():
    assert language_of("Le chat dort sur le canapé pendant que la pluie tombe dehors.") == "fr"
    assert language_of("ok 123") is None


def test_pdf_dates_parse_with_and_without_zones():
    assert parse_pdf_date("D:20240131").isoformat() == "2024-01-31T00:00:00+00:00"
    assert parse_pdf_date("D:20240131120000-05'00'").isoformat() == "2024-01-31T12:00:00-05:00"
    assert parse_pdf_date("D:20240131120000Z").isoformat() == "2024-01-31T12:00:00+00:00"
    assert parse_pdf_date("yesterday") is None and parse_pdf_date("D:20241399") is None
