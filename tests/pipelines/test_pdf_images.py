"""PDFs with pictures and without a text layer: embedded images become image items tied to their page, a scanned
page is rendered and OCR'd (never zero chunks), and a page that raises in the renderer fails the file alone."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import pypdfium2 as pdfium
import pytest
from PIL import Image

from core.errors import ExtractionError
from pipelines.chunk.image import ImageChunker
from pipelines.extract import extract_document
from pipelines.extract.pdf import PdfExtractor
from pipelines.link import ChunkRef, build_links

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "examples" / "images"
SPEC = ROOT / "examples" / "pdf" / "shared-mime-info-spec.pdf"


def make_pdf(pages: list[dict], *, broken_page: int | None = None) -> bytes:
    """A PDF built by hand: each page ``{"lines": [...], "images": [(Image, (x, y, w, h)), ...]}`` (points).

    Text is Helvetica at 11 pt; each image is an RGB XObject (FlateDecode) drawn with ``cm``/``Do``. With
    ``broken_page``, that page's entry in ``Kids`` points at an object that is not a page dictionary.
    """
    objects: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    page_ids = []
    for spec in pages:
        ops, xobjects = [], []
        for number, (image, (x, y, w, h)) in enumerate(spec.get("images", [])):
            rgb = image.convert("RGB")
            data = zlib.compress(rgb.tobytes())
            xobject = add(b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB "
                          b"/BitsPerComponent 8 /Filter /FlateDecode /Length %d >>\nstream\n" % (rgb.width, rgb.height, len(data))
                          + data + b"\nendstream")
            xobjects.append(b"/Im%d %d 0 R" % (number, xobject))
            ops.append(f"q {w} 0 0 {h} {x} {y} cm /Im{number} Do Q")
        if spec.get("lines"):
            ops += ["BT", "/F1 11 Tf", "14 TL", "72 720 Td"] + [f"({text}) Tj T*" for text in spec["lines"]] + ["ET"]
        stream = "\n".join(ops).encode("cp1252")
        content = add(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        resources = b"<< /Font << /F1 %d 0 R >> /XObject << %s >> >>" % (font, b" ".join(xobjects))
        page_ids.append((add(b""), content, resources))
    pages_id = add(b"")
    for page_id, content, resources in page_ids:
        objects[page_id - 1] = (b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
                                b"/Resources %s >>" % (pages_id, content, resources))
    kids = [b"%d 0 R" % page_id for page_id, _, _ in page_ids]
    if broken_page is not None:
        kids[broken_page - 1] = b"%d 0 R" % font  # a font where a page should be
    objects[pages_id - 1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), len(kids))
    catalog = add(b"<< /Type /Catalog /Pages %d 0 R >>" % pages_id)
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, catalog, xref)
    return bytes(out)


def picture(colour: str, size=(120, 80)) -> Image.Image:
    image = Image.new("RGB", size, colour)
    image.paste("black", (10, 10, 30, 30))
    return image


def scanned_pdf(source: Path) -> bytes:
    """A "scan": the picture as the only content of its page (Pillow's PDF writer; no text layer)."""
    buffer = io.BytesIO()
    Image.open(source).convert("RGB").save(buffer, format="PDF", resolution=200)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def rapidocr():
    from pipelines.ocr import make_ocr

    return make_ocr("rapidocr")


def test_embedded_images_become_items_tied_to_their_page() -> None:
    data = make_pdf([
        {"lines": ["The first page has a figure below this line of text."],
         "images": [(picture("red"), (72, 400, 240, 160))]},
        {"lines": ["The second page has only text, and quite a lot of it."]},
        {"lines": ["The third page has two figures beside each other."],
         "images": [(picture("green"), (72, 300, 200, 150)), (picture("blue"), (300, 300, 200, 150))]},
    ])
    content = PdfExtractor().extract_content(data, "figures.pdf")
    assert [section.page for section in content.sections] == [1, 2, 3]
    assert [(item.page, item.source) for item in content.images] == [(1, "pdf_embedded"), (3, "pdf_embedded"), (3, "pdf_embedded")]
    assert [item.index for item in content.images] == [0, 1, 2]
    assert content.images[0].page_box == pytest.approx((72, 400, 312, 560))
    assert content.images[0].pixels().mode == "RGB" and content.images[0].pixels().size == (120, 80)
    assert content.images[1].pixels().getpixel((60, 60)) == (0, 128, 0)  # "green"
    assert content.ocr_pages == []


def test_tiny_and_repeated_images_are_skipped() -> None:
    logo = picture("purple")
    data = make_pdf([
        {"lines": ["A page with a logo and a bullet image, nothing else."], "images": [(logo, (0, 0, 60, 40)),
                                                                                       (Image.new("RGB", (8, 8)), (5, 5, 8, 8))]},
        {"lines": ["The same logo again on the second page of the report."], "images": [(logo, (0, 0, 60, 40))]},
    ])
    content = PdfExtractor().extract_content(data, "logo.pdf")
    assert [item.page for item in content.images] == [1]
    assert content.skipped_images == 2


def test_scanned_pdf_is_rendered_and_ocr_finds_add_one(rapidocr) -> None:
    data = scanned_pdf(IMAGES / "rustdoc-add-one.png")
    with pytest.raises(ExtractionError) as info:  # the text-only API still says there is no text layer
        PdfExtractor().extract(data, "scan.pdf")
    assert info.value.reason == "pdf_no_text"
    extracted = extract_document(data, "scans/rustdoc.pdf")
    assert extracted.content_type == "application/pdf" and extracted.sections == []
    assert extracted.ocr_pages == [1] and len(extracted.images) == 1
    page = extracted.images[0]
    assert page.source == "pdf_page" and page.page == 1 and max(page.width, page.height) == 2000
    chunks = ImageChunker(rapidocr).chunk(extracted.images)
    assert chunks and "add_one" in chunks[0].text  # never "ready" with zero chunks
    assert all(chunk.page == 1 for chunk in chunks)


def test_scan_with_a_stamped_page_number_is_still_rendered() -> None:
    data = make_pdf([{"lines": ["12"], "images": [(picture("white", (400, 500)), (0, 0, 612, 792))]}])
    content = PdfExtractor().extract_content(data, "stamped.pdf")
    assert content.ocr_pages == [1] and [item.source for item in content.images] == ["pdf_page"]
    assert [section.text for section in content.sections] == ["12"]


def test_blank_pages_are_not_rendered() -> None:
    data = make_pdf([{"lines": ["Only the first page has words; the second page is blank."]}, {}])
    content = PdfExtractor().extract_content(data, "blank.pdf")
    assert content.images == [] and content.ocr_pages == [] and len(content.sections) == 1


def test_text_pdf_is_unchanged() -> None:
    content = PdfExtractor().extract_content(SPEC.read_bytes(), "pdf/shared-mime-info-spec.pdf")
    assert content.sections == PdfExtractor().extract(SPEC.read_bytes(), "pdf/shared-mime-info-spec.pdf")
    assert content.images == [] and content.page_count == 17


def test_page_that_raises_in_the_renderer_fails_the_file(monkeypatch) -> None:
    data = make_pdf([{"lines": ["Page one has its text layer and needs no rendering."]},
                     {"images": [(picture("grey", (300, 400)), (0, 0, 612, 792))]}])

    def explode(self, *args, **kwargs):
        raise pdfium.PdfiumError("renderer failed")

    monkeypatch.setattr(pdfium.PdfPage, "render", explode)
    with pytest.raises(ExtractionError) as info:
        extract_document(data, "bad-render.pdf")
    assert info.value.reason == "pdf_render_failed" and "page 2" in info.value.detail
    # the next file goes on: a text PDF needs no renderer
    assert extract_document(SPEC.read_bytes(), "spec.pdf").sections


def test_page_that_cannot_be_loaded_fails_the_file() -> None:
    data = make_pdf([{"lines": ["Page one is fine and has plenty of text on it."]}, {"lines": ["Page two."]}],
                    broken_page=2)
    document = pdfium.PdfDocument(data)
    pages = len(document)
    document.close()
    if pages < 2:
        pytest.skip("PDFium dropped the broken page from the page tree")
    with pytest.raises(ExtractionError) as info:
        extract_document(data, "broken.pdf")
    assert info.value.reason == "pdf_render_failed" and "page 2" in info.value.detail


def test_rendering_can_be_switched_off() -> None:
    data = make_pdf([{"images": [(picture("grey", (300, 400)), (0, 0, 612, 792))]}])
    with pytest.raises(ExtractionError) as info:
        PdfExtractor(render_scans=False, embedded_images=False).extract_content(data, "scan.pdf")
    assert info.value.reason == "pdf_no_text"
    content = PdfExtractor(render_scans=False).extract_content(data, "scan.pdf")
    assert [item.source for item in content.images] == ["pdf_embedded"]


def test_page_text_and_its_images_are_linked() -> None:
    from pipelines.chunk.image import plan_image_chunks

    data = make_pdf([
        {"lines": ["A page of text with one figure, described in these words here."],
         "images": [(picture("red", (2000, 400)), (72, 300, 400, 80))]},
        {"lines": ["A second page without figures but with enough words to be text."]},
    ])
    content = PdfExtractor().extract_content(data, "linked.pdf")
    text_refs = [ChunkRef("text", i, page=section.page) for i, section in enumerate(content.sections)]
    image_chunks = plan_image_chunks(content.images, first_index=len(text_refs))
    links = build_links("doc", 1, text_refs + [ChunkRef.of(chunk) for chunk in image_chunks])
    assert [link.relation for link in links[("text", 0)]] == ["page_image"]
    assert links[("text", 1)] == []
    picture_links = links[("image", image_chunks[0].chunk_index)]
    assert [link.relation for link in picture_links] == ["page_text"] + ["tile"] * (len(image_chunks) - 1)
