"""The PDF extractor on the real shared MIME-info specification and on PDFs built here (empty pages, hyphenation,
encryption, no text layer, garbage, truncation)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ExtractionError
from pipelines.extract import extract_sections
from pipelines.extract.pdf import PdfExtractor, normalise_page_text

pytestmark = pytest.mark.unit

SPEC = Path(__file__).resolve().parents[3] / "examples" / "pdf" / "shared-mime-info-spec.pdf"


def make_pdf(pages: list[list[str]], *, encrypt: bool = False) -> bytes:
    """A minimal valid PDF: one page per list of lines (Helvetica, WinAnsi), an empty list giving a blank page.

    With ``encrypt``, a Standard security handler (RC4, revision 2) whose user password is not empty, so no
    reader can open it without one (PDF 32000-1, 7.6.3).
    """
    objects: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    page_ids: list[tuple[int, int]] = []
    for lines in pages:
        ops = ["BT", "/F1 11 Tf", "14 TL", "72 720 Td"]
        ops += [f"({line.replace('(', '[').replace(')', ']')}) Tj T*" for line in lines]
        ops.append("ET")
        stream = "\n".join(ops).encode("cp1252") if lines else b""
        content = add(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        page_ids.append((add(b""), content))
    pages_id = add(b"")
    for page_id, content in page_ids:
        objects[page_id - 1] = (
            b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
            b"/Resources << /Font << /F1 %d 0 R >> >> >>" % (pages_id, content, font)
        )
    kids = b" ".join(b"%d 0 R" % page_id for page_id, _ in page_ids)
    objects[pages_id - 1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(page_ids))
    catalog = add(b"<< /Type /Catalog /Pages %d 0 R >>" % pages_id)
    trailer = b"<< /Size %d /Root %d 0 R" % (len(objects) + 1 + int(encrypt), catalog)
    if encrypt:
        handler = add(
            b"<< /Filter /Standard /V 1 /R 2 /Length 40 /P -44 /O <" + b"ab" * 32 + b"> /U <" + b"cd" * 32 + b"> >>"
        )
        trailer += b" /Encrypt %d 0 R /ID [<0123456789abcdef0123456789abcdef> <0123456789abcdef0123456789abcdef>]" % (
            handler
        )
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n" + trailer + b" >>\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


# --- the real specification --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spec_sections():
    return PdfExtractor().extract(SPEC.read_bytes(), "pdf/shared-mime-info-spec.pdf")


def test_spec_one_section_per_page(spec_sections) -> None:
    assert [section.page for section in spec_sections] == list(range(1, 18))
    assert all(section.text.strip() for section in spec_sections)
    assert not any("\r" in section.text for section in spec_sections)


@pytest.mark.parametrize(
    ("page", "phrase"),
    [
        (1, "This is version 0.21 of the Shared MIME-info Database specification, last updated 2 October 2018."),
        (2, "1.3. Language used in this specification"),
        (4, "2.2. The source XML files"),
        (9, 'The file starts with the magic string "MIME-Magic\\0\\n".'),
        (14, "2.11. Subclassing"),
        (14, "2.10. Storing the MIME type using Extended Attributes"),
    ],
)
def test_spec_phrase_is_on_its_page(spec_sections, page: int, phrase: str) -> None:
    by_page = {section.page: section.text for section in spec_sections}
    assert phrase in by_page[page]
    assert not any(phrase in text for number, text in by_page.items() if number != page)


def test_spec_lines_of_a_paragraph_are_reflowed(spec_sections) -> None:
    # In the PDF this sentence is broken over two lines ("...it\\r\\nis necessary...").
    assert "Frequently, it is necessary to work out the correct MIME type for a file." in spec_sections[0].text
    # Paragraph breaks survive as blank lines.
    assert "\n\n" in spec_sections[0].text


def test_spec_running_header_and_page_numbers_dropped(spec_sections) -> None:
    assert spec_sections[0].text.startswith("Shared MIME-info Database\n")  # the title stays on page 1
    for section in spec_sections[1:]:
        assert not section.text.startswith("Shared MIME-info Database")
        assert section.text.rsplit("\n", 1)[-1].strip() != str(section.page)


def test_spec_dispatched_by_bytes(spec_sections) -> None:
    content_type, sections = extract_sections(SPEC.read_bytes(), "misnamed.txt", "text/plain")
    assert content_type == "application/pdf"
    assert sections == spec_sections


# --- built PDFs --------------------------------------------------------------------------------------------------


def test_empty_pages_skipped_and_numbers_kept() -> None:
    data = make_pdf([["First page words."], [], ["Third page words."]])
    sections = PdfExtractor().extract(data, "three.pdf")
    assert [(section.page, section.text) for section in sections] == [
        (1, "First page words."),
        (3, "Third page words."),
    ]


def test_line_end_hyphen_joined() -> None:
    data = make_pdf(
        [
            [
                "The ingest pipeline reads every object from the bucket, and the text extrac-",
                "tion step turns each page of a document into clean, searchable paragraphs of text.",
                "Short last line.",
            ]
        ]
    )
    [section] = PdfExtractor().extract(data, "hyphen.pdf")
    assert "the text extraction step turns each page" in section.text
    assert "extrac-" not in section.text


def test_normalise_page_text() -> None:
    raw = (
        "A heading\r\n"
        "This   paragraph   has   far   too   many   spaces and runs over the full width of the page,\r\n"
        "so it is joined to the next line, which ends the paragraph here.\r\n"
        "\r\n"
        "\r\n"
        "\r\n"
        "Another paragraph, in which a line ends in the middle of a long and hyphen-\r\nated word that is joined.\r\n"
    )
    text = normalise_page_text(raw)
    assert "\n\n\n" not in text
    assert "This paragraph has far too many spaces and runs over the full width of the page, so it is joined" in text
    assert "hyphenated word" in text
    assert text.startswith("A heading\n")


def test_encrypted() -> None:
    with pytest.raises(ExtractionError) as info:
        PdfExtractor().extract(make_pdf([["secret words"]], encrypt=True), "locked.pdf")
    assert info.value.reason == "pdf_encrypted"


def test_no_text_layer() -> None:
    with pytest.raises(ExtractionError) as info:
        PdfExtractor().extract(make_pdf([[], []]), "scan.pdf")
    assert info.value.reason == "pdf_no_text"
    assert "OCR" in info.value.detail


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.7\n" + bytes(range(256)) * 8,  # a header, then garbage
        b"%PDF-1.4\n%%EOF\n",  # a header and nothing else
        SPEC.read_bytes()[: len(SPEC.read_bytes()) // 2],  # truncated halfway
        b"this is not a pdf at all",  # a lying extension
    ],
    ids=["garbage", "header-only", "truncated", "not-pdf"],
)
def test_corrupt(data: bytes) -> None:
    with pytest.raises(ExtractionError) as info:
        PdfExtractor().extract(data, "broken.pdf")
    assert info.value.reason == "pdf_corrupt"


def test_truncated_pdf_through_dispatch() -> None:
    with pytest.raises(ExtractionError) as info:
        extract_sections(SPEC.read_bytes()[:4000], "spec.pdf")
    assert info.value.reason == "pdf_corrupt"


def test_zero_bytes() -> None:
    with pytest.raises(ExtractionError) as info:
        PdfExtractor().extract(b"", "empty.pdf")
    assert info.value.reason == "empty_file"
