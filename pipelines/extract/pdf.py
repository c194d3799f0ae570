"""PDF: the text layer of each page, as one :class:`Section` per page, and its pictures, with PDFium (pypdfium2).

Input: the raw bytes of an ``application/pdf`` file. Output of :meth:`PdfExtractor.extract`: ``[Section(text,
page=n), ...]`` with ``n`` 1-based, in page order, pages without text left out. Output of
:meth:`PdfExtractor.extract_content`: a :class:`PdfContent` with those sections and the page's pictures as
:class:`pipelines.extract.image.ImageItem`: each embedded image object (``source="pdf_embedded"``, its place on the
page in ``page_box``), and, for a page without a text layer (a scan), the whole page rendered
(``source="pdf_page"``) for OCR, so a scanned PDF is never indexed with zero chunks.

The text of a page is normalised (:func:`normalise_page_text`): line-end hyphens joined ("extrac-\\ntion" →
"extraction"), the lines of a paragraph reflowed into one, runs of spaces collapsed, paragraph breaks kept as a
blank line, and a running header (the same first line on most pages) and a bare page number as the last line
dropped. :meth:`PdfExtractor.extract` gives no text for scanned pages; :meth:`PdfExtractor.extract_content` renders
them (``PdfPage.render``) for the OCR of the image stage.

Limits, so one hostile PDF cannot hold a worker (each an :class:`core.errors.ExtractionError` with its own reason):

=======================  ==========================================================================================
``too_many_pages``       more than ``max_pages`` pages, read from the page tree as the file opens, before any page
``page_too_large``       a page to render for OCR so out of proportion that, fitted into ``max_render_pixels``, its
                         shorter side would be under ``MIN_RENDER_SIDE_PX`` pixels (nothing on it could be read). A
                         page that is merely large is rendered at a smaller scale to fit, never refused
``too_many_ocr_pages``   more than ``max_ocr_pages`` pages to render for OCR: counted before rendering (pages with
                         no text but with content), and enforced as pages are rendered. The document fails rather
                         than being indexed with its later pages silently missing (as ``pdf_render_failed`` does)
``timeout``              the ``deadline`` passed (checked before each page is read and before each is rendered)
=======================  ==========================================================================================
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import math
import re
from collections import Counter
from typing import TYPE_CHECKING

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from core.errors import ExtractionError
from pipelines.extract.base import Section, check_deadline

if TYPE_CHECKING:
    from pipelines.extract.image import ImageItem

logger = logging.getLogger(__name__)

#: A line shorter than this share of the page's typical full line ends its paragraph (or is a heading, a code
#: line, a table row): it is not joined to the next one.
SHORT_LINE_RATIO = 0.7
#: A first line repeated on at least this share of the pages (and on 3 or more) is a running header.
RUNNING_HEADER_RATIO = 0.5

#: Characters PDFium gives for hyphens it generated at a line break, and the soft hyphen.
_SOFT_HYPHENS = "\x02\ufffe\u00ad"
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")
_HYPHENATED = re.compile(r"([^\W\d_])[-\u2010" + _SOFT_HYPHENS + r"]\n([a-z\u00df-\u00ff])")
_BULLET = re.compile(r"^(?:[\u2022\u25e6\u25aa\u2023\u2043\u2219*\-\u2013]\s|\(?\d{1,3}[.)]\s|\d+(?:\.\d+)+\.?\s)")
_PAGE_NUMBER = re.compile(r"^(?:page\s+)?\d{1,5}(?:\s*(?:/|of)\s*\d{1,5})?$", re.IGNORECASE)
_SENTENCE_END = ".!?:;\u3002\uff01\uff1f"

#: An embedded image smaller than this on either side (pixels) is decoration (a bullet, a rule, an icon): skipped.
MIN_IMAGE_SIDE_PX = 32
#: At most this many embedded images are kept from one page, and from one document.
MAX_IMAGES_PER_PAGE = 32
MAX_IMAGES_PER_DOCUMENT = 256
#: A page is rendered for OCR at this resolution (dots per inch), unless its longer side would exceed
#: ``RENDER_MAX_SIDE_PX`` pixels (RapidOCR scales a picture down to 2000 pixels for detection anyway).
RENDER_DPI = 200
RENDER_MAX_SIDE_PX = 2000
#: Defaults of the limits (``Settings.max_pdf_pages``, ``max_render_pixels``, ``max_ocr_pages``).
MAX_PAGES = 2000
MAX_RENDER_PIXELS = 4_000_000
MAX_OCR_PAGES = 200
#: A page whose shorter side would render under this many pixels (fitted into the pixel cap) is ``page_too_large``.
MIN_RENDER_SIDE_PX = 16
#: A page whose text layer has fewer characters than this, and whose largest image covers at least
#: ``SCAN_COVERAGE`` of it, is a scan with a stray text (a stamped page number): it is rendered and OCR'd too.
MIN_PAGE_TEXT_CHARS = 16
SCAN_COVERAGE = 0.5
#: Embedded images with more pixels are skipped (``pipelines.extract.image.DEFAULT_MAX_PIXELS``; Pillow is only
#: imported when pictures are extracted, so the text path does not need it).
DEFAULT_MAX_PIXELS = 64_000_000


@dataclasses.dataclass
class PdfContent:
    """Everything :meth:`PdfExtractor.extract_content` found in a PDF.

    Attributes:
        sections: the text layer, one :class:`Section` per page with text (as :meth:`PdfExtractor.extract`).
        images: embedded pictures and rendered scanned pages, in page order, ``index`` 0..n-1.
        page_count: pages in the document.
        ocr_pages: 1-based numbers of the pages rendered for OCR (no text layer, or a scan with a stray text).
        skipped_images: embedded images left out (too small, too large, repeated, undecodable, over the caps).
    """

    sections: list[Section]
    images: list[ImageItem]
    page_count: int
    ocr_pages: list[int] = dataclasses.field(default_factory=list)
    skipped_images: int = 0


class PdfExtractor:
    """Extract the text layer of a PDF, one section per page, and (:meth:`extract_content`) its pictures.

    Stateless and cheap to build. PDFium is not thread-safe; pypdfium2 serialises calls into it, so one instance
    may be shared, but throughput comes from processes (Ray workers), not threads.

    Args:
        drop_running_headers: drop a first line that repeats on most pages, and a last line that is a bare page
            number.
        embedded_images: :meth:`extract_content` returns the embedded images (at least ``MIN_IMAGE_SIDE_PX`` a
            side, each distinct picture once, at most ``MAX_IMAGES_PER_PAGE`` a page and
            ``MAX_IMAGES_PER_DOCUMENT`` in all).
        render_scans: :meth:`extract_content` renders each page without a text layer (that draws anything) at
            ``RENDER_DPI``, its longer side at most ``RENDER_MAX_SIDE_PX`` pixels.
        max_pixels: embedded images with more pixels are skipped (a decompression bomb inside a PDF).
        max_pages: a PDF with more pages fails as ``too_many_pages`` before any page is read.
        max_render_pixels: a page is rendered at no more pixels than this (at a smaller scale when it is large).
        max_ocr_pages: a PDF with more pages to render for OCR fails as ``too_many_ocr_pages``.
    """

    def __init__(self, *, drop_running_headers: bool = True, embedded_images: bool = True, render_scans: bool = True,
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_pages: int = MAX_PAGES,
                 max_render_pixels: int = MAX_RENDER_PIXELS, max_ocr_pages: int = MAX_OCR_PAGES) -> None:
        if max_pages < 1 or max_render_pixels < 1 or max_ocr_pages < 0:
            raise ValueError(f"max_pages={max_pages} and max_render_pixels={max_render_pixels} must be at least 1, "
                             f"max_ocr_pages={max_ocr_pages} at least 0")
        self.drop_running_headers = drop_running_headers
        self.embedded_images = embedded_images
        self.render_scans = render_scans
        self.max_pixels = max_pixels
        self.max_pages = max_pages
        self.max_render_pixels = max_render_pixels
        self.max_ocr_pages = max_ocr_pages

    def extract(self, data: bytes, path: str, *, deadline: float | None = None) -> list[Section]:
        """Extract every page that has text.

        Args:
            data: the file's bytes.
            path: the document's relative path (used in error details only).
            deadline: a ``time.monotonic()`` instant after which extraction stops (``timeout``); ``None``: none.

        Returns:
            One :class:`Section` per page with text, ``page`` 1-based, in page order.

        Raises:
            ExtractionError: ``empty_file`` for 0 bytes; ``pdf_encrypted`` when the PDF needs a password;
                ``pdf_corrupt`` when PDFium cannot open it or it has no pages; ``pdf_no_text`` when no page has a
                text layer (a scanned document: OCR is not enabled); ``too_many_pages``, ``timeout``.
        """
        document = _open(data, path)
        try:
            self._check_page_count(document, path)
            pages = self._normalised_pages(document, path, deadline)
        finally:
            document.close()
        sections = [Section(text=text, page=number) for number, text in enumerate(pages, start=1) if text.strip()]
        if not sections:
            raise ExtractionError(
                "pdf_no_text",
                f"none of the {len(pages)} pages of {path} has a text layer; OCR of scanned pages is not enabled",
            )
        return sections

    def extract_content(self, data: bytes, path: str, *, deadline: float | None = None) -> PdfContent:
        """Extract the text layer and the pictures: embedded images, and renders of pages without text.

        Args:
            data: the file's bytes.
            path: the document's relative path (used in error details only).
            deadline: a ``time.monotonic()`` instant after which extraction stops (``timeout``); ``None``: none.

        Returns:
            The :class:`PdfContent`; it has at least one section or one image (a page without text is rendered).

        Raises:
            ExtractionError: ``empty_file``, ``pdf_encrypted``, ``pdf_corrupt`` (as :meth:`extract`);
                ``pdf_render_failed`` when a page that needs rendering (no text layer) cannot be loaded or rendered,
                since indexing the rest would leave that page silently out; ``pdf_no_text`` when no page has text
                and rendering is switched off (``render_scans=False``); ``too_many_pages``, ``page_too_large``,
                ``too_many_ocr_pages`` and ``timeout`` (see the module docstring).
        """
        document = _open(data, path)
        try:
            self._check_page_count(document, path)
            objects: list[int] = []
            pages = self._normalised_pages(document, path, deadline, objects)
            if self.render_scans:  # pages with content and no text at all are rendered: refuse before the first
                scans = sum(1 for text, count in zip(pages, objects) if not text.strip() and count > 0)
                if scans > self.max_ocr_pages:
                    raise self._too_many_ocr_pages(path, scans)
            content = PdfContent(sections=[], images=[], page_count=len(pages))
            seen: set[str] = set()
            for number, text in enumerate(pages, start=1):
                check_deadline(deadline, path, f"page {number} of {len(pages)}")
                if text.strip():
                    content.sections.append(Section(text=text, page=number))
                self._page_pictures(document, number, text, path, content, seen)
        finally:
            document.close()
        if not content.sections and not content.images:
            raise ExtractionError("pdf_no_text", f"none of the {len(pages)} pages of {path} has a text layer or a picture")
        return content

    def _check_page_count(self, document: pdfium.PdfDocument, path: str) -> None:
        pages = len(document)
        if pages > self.max_pages:
            raise ExtractionError("too_many_pages",
                                  f"{path} has {pages:,} pages, over SLUICE_MAX_PDF_PAGES={self.max_pages:,}")

    def _too_many_ocr_pages(self, path: str, count: int) -> ExtractionError:
        return ExtractionError("too_many_ocr_pages", f"{path} has {count:,} or more pages without a text layer to "
                               f"render for OCR, over SLUICE_MAX_OCR_PAGES={self.max_ocr_pages:,}")

    def render_scale(self, width: float, height: float, path: str = "<pdf>", number: int = 1) -> float:
        """The scale (pixels per point) a ``width`` x ``height`` page (points) is rendered at for OCR.

        ``RENDER_DPI``, lowered so that the longer side is at most ``RENDER_MAX_SIDE_PX`` and the area at most
        ``max_render_pixels``: a large page is rendered smaller, not refused.

        Raises:
            ExtractionError: ``page_too_large`` when, so scaled, the shorter side would be under ``MIN_RENDER_SIDE_PX``
                pixels (a page of absurd proportions, or a size PDFium reports as not finite).
        """
        width, height = float(width), float(height)
        if not (math.isfinite(width) and math.isfinite(height)) or width <= 0 or height <= 0:
            raise ExtractionError("page_too_large",
                                  f"page {number} of {path} has no usable size ({width} x {height} pt)")
        scale = min(RENDER_DPI / 72.0, RENDER_MAX_SIDE_PX / max(width, height),
                    math.sqrt(self.max_render_pixels / (width * height)))
        if min(width, height) * scale < MIN_RENDER_SIDE_PX:
            raise ExtractionError(
                "page_too_large",
                f"page {number} of {path} is {width:,.0f} x {height:,.0f} pt: within SLUICE_MAX_RENDER_PIXELS="
                f"{self.max_render_pixels:,} its shorter side would be under {MIN_RENDER_SIDE_PX} pixels")
        for _ in range(100):  # the bitmap's sides are rounded up to whole pixels: stay within the cap after that
            if math.ceil(width * scale) * math.ceil(height * scale) <= self.max_render_pixels:
                break
            scale *= 0.995
        return scale

    def _page_pictures(self, document: pdfium.PdfDocument, number: int, text: str, path: str,
                       content: PdfContent, seen: set[str]) -> None:
        """Add the pictures of page ``number`` to ``content``: its render when it is a scan, else its images."""
        from pipelines.extract.image import ImageItem, to_rgb

        scanned = len(text.strip()) < MIN_PAGE_TEXT_CHARS
        if not scanned and not self.embedded_images:
            return
        page = None
        try:
            page = document[number - 1]
            images = list(page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_IMAGE,), max_depth=4))
            width, height = page.get_size()
            if scanned and text.strip():  # a little text: a scan only when a picture covers most of the page
                scanned = any(_area(image.get_bounds()) >= SCAN_COVERAGE * width * height for image in images)
            elif scanned and pdfium_c.FPDFPage_CountObjects(page) == 0:
                return  # a blank page: nothing to render
            if scanned and self.render_scans:
                if len(content.ocr_pages) >= self.max_ocr_pages:
                    raise self._too_many_ocr_pages(path, len(content.ocr_pages) + 1)
                scale = self.render_scale(width, height, path, number)
                picture = page.render(scale=scale).to_pil()
                content.images.append(ImageItem(image=to_rgb(picture), source="pdf_page", page=number,
                                                index=len(content.images), content_type="image/x-pdf-render",
                                                page_box=(0.0, 0.0, float(width), float(height))).pack())
                content.ocr_pages.append(number)
                return
            if not self.embedded_images:
                return
            for image in images[:MAX_IMAGES_PER_PAGE]:
                full = len(content.images) >= MAX_IMAGES_PER_DOCUMENT
                item = None if full else self._embedded(image, number, path, len(content.images), seen)
                if item is None:
                    content.skipped_images += 1
                else:
                    content.images.append(item.pack())
            content.skipped_images += max(0, len(images) - MAX_IMAGES_PER_PAGE)
        except ExtractionError:
            raise
        except Exception as exc:  # noqa: BLE001 - PDFium and Pillow raise many types on a broken page
            if scanned and self.render_scans:
                raise ExtractionError("pdf_render_failed", f"page {number} of {path} cannot be rendered: "
                                      f"{type(exc).__name__}: {exc}") from exc
            logger.warning("the images of page %d of %s are unreadable: %s", number, path, exc)
        finally:
            if page is not None:
                page.close()

    def _embedded(self, image: pdfium.PdfImage, number: int, path: str, index: int, seen: set[str]) -> ImageItem | None:
        """One embedded image as an item, or ``None`` when it is skipped (logged at debug level)."""
        from pipelines.extract.image import ImageItem, to_rgb

        try:
            px_width, px_height = image.get_px_size()
            if min(px_width, px_height) < MIN_IMAGE_SIDE_PX or px_width * px_height > self.max_pixels:
                logger.debug("page %d of %s: image of %dx%d pixels skipped", number, path, px_width, px_height)
                return None
            try:  # rendered: the image's matrix (a flip, a rotation) and soft mask applied, at its own resolution
                bitmap = image.get_bitmap(render=True)
            except pdfium.PdfiumError:
                bitmap = image.get_bitmap(render=False)
            picture = to_rgb(bitmap.to_pil())
        except Exception as exc:  # noqa: BLE001 - an undecodable image (JBIG2 without support...) is skipped
            logger.warning("page %d of %s: an embedded image is unreadable: %s", number, path, exc)
            return None
        if picture.width * picture.height > self.max_pixels:
            return None
        digest = hashlib.blake2b(picture.tobytes(), digest_size=16).hexdigest()
        if digest in seen:  # the same picture on many pages (a logo): indexed once, on its first page
            return None
        seen.add(digest)
        left, bottom, right, top = image.get_bounds()
        return ImageItem(image=picture, source="pdf_embedded", page=number, index=index,
                         content_type="image/x-pdf-bitmap", page_box=(left, bottom, right, top))

    def _normalised_pages(self, document: pdfium.PdfDocument, path: str, deadline: float | None = None,
                          objects: list[int] | None = None) -> list[str]:
        """The normalised text of every page (``""`` for a page without text), running headers dropped; each page's
        count of page objects is appended to ``objects`` when given (0 for a page that cannot be read)."""
        raw_pages = self._page_texts(document, path, deadline, objects)
        if not raw_pages:
            raise ExtractionError("pdf_corrupt", f"{path} has no readable pages")
        page_lines = [_page_lines(text) for text in raw_pages]
        if self.drop_running_headers:
            _drop_running_lines(page_lines)
        return [_reflow(lines) for lines in page_lines]

    @staticmethod
    def _page_texts(document: pdfium.PdfDocument, path: str, deadline: float | None = None,
                    objects: list[int] | None = None) -> list[str]:
        texts: list[str] = []
        failed = 0
        total = len(document)
        for index in range(total):
            check_deadline(deadline, path, f"reading page {index + 1} of {total}")
            page = textpage = None
            try:
                page = document[index]
                textpage = page.get_textpage()
                texts.append(textpage.get_text_bounded())
                if objects is not None:
                    objects.append(int(pdfium_c.FPDFPage_CountObjects(page)))
            except pdfium.PdfiumError as exc:
                failed += 1
                logger.warning("page %d of %s is unreadable: %s", index + 1, path, exc)
                texts.append("")
                if objects is not None:
                    objects.append(0)
            finally:
                if textpage is not None:
                    textpage.close()
                if page is not None:
                    page.close()
        if texts and failed == len(texts):
            raise ExtractionError("pdf_corrupt", f"none of the {failed} pages of {path} can be read")
        return texts


def _open(data: bytes, path: str) -> pdfium.PdfDocument:
    if not data:
        raise ExtractionError("empty_file", f"{path} has 0 bytes")
    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if getattr(exc, "err_code", None) == pdfium_c.FPDF_ERR_PASSWORD:
            raise ExtractionError("pdf_encrypted", f"{path} is encrypted and needs a password") from exc
        raise ExtractionError("pdf_corrupt", f"{path} cannot be opened: {exc}") from exc


def _area(bounds: tuple[float, float, float, float]) -> float:
    left, bottom, right, top = bounds
    return max(0.0, right - left) * max(0.0, top - bottom)


def normalise_page_text(text: str) -> str:
    """Clean the raw text of one PDF page.

    Steps: ``\\r\\n`` → ``\\n``; runs of spaces and tabs (and other Unicode spaces) → one space; a word
    hyphenated at a line end joined when the next line begins in lower case ("extrac-\\ntion" → "extraction");
    the lines of a paragraph joined with a space; a paragraph break (a blank line) after a short line that ends
    a sentence; a single line break after another short line (a heading, a code line, a table row) or before a
    list item. Running headers are not removed here (that needs the other pages; see ``PdfExtractor``).

    Args:
        text: the text PDFium gives for a page (lines separated by ``\\r\\n``).

    Returns:
        The normalised text, stripped; ``""`` when the page has no visible text.
    """
    return _reflow(_page_lines(text))


def _page_lines(text: str) -> list[str]:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    text = _HYPHENATED.sub(r"\1\2", text)
    for char in _SOFT_HYPHENS:
        text = text.replace(char, "")
    return [_SPACES.sub(" ", line).strip() for line in text.split("\n")]


def _reflow(lines: list[str]) -> str:
    lengths = sorted(len(line) for line in lines if line)
    if not lengths:
        return ""
    full = lengths[int(0.9 * (len(lengths) - 1))]
    out: list[str] = []
    for index, line in enumerate(lines):
        if not line:
            if out and out[-1] != "\n\n":
                out[-1:] = [out[-1], "\n\n"] if out[-1] != "\n" else ["\n\n"]
            continue
        if out and out[-1] not in ("\n", "\n\n"):
            out.append(" ")
        out.append(line)
        following = next((nxt for nxt in lines[index + 1 :] if nxt), None)
        if following is None:
            break
        if len(line) < SHORT_LINE_RATIO * full:
            out.append("\n\n" if line[-1] in _SENTENCE_END else "\n")
        elif _BULLET.match(following):
            out.append("\n")
    return "".join(out).strip()


def _drop_running_lines(pages: list[list[str]]) -> None:
    """Drop, in place, a running header and a last line that is a bare page number.

    The running header (a first line repeated on most pages) is kept where it first occurs: there it is usually the
    document's title.
    """
    firsts = [next((line for line in lines if line), None) for lines in pages]
    counts = Counter(line for line in firsts if line)
    header = None
    if counts:
        line, count = counts.most_common(1)[0]
        if count >= 3 and count >= RUNNING_HEADER_RATIO * len(pages):
            header = line
    seen_header = False
    for lines in pages:
        nonblank = [i for i, line in enumerate(lines) if line]
        if len(nonblank) < 2:
            continue
        if header is not None and lines[nonblank[0]] == header:
            if seen_header:
                lines[nonblank[0]] = ""
            seen_header = True
        if _PAGE_NUMBER.match(lines[nonblank[-1]]):
            lines[nonblank[-1]] = ""


#: A PDF date (ISO 32000-1, 7.9.4): ``D:YYYYMMDDHHmmSSOHH'mm'``, every part after the year optional.
_PDF_DATE = re.compile(r"^(?:D:)?(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:([Zz+\-])(\d{2})?'?(\d{2})?'?)?")


def parse_pdf_date(text: str) -> dt.datetime | None:
    """A PDF date string as an aware ``datetime`` (no zone: UTC), or ``None`` when it is not one."""
    match = _PDF_DATE.match((text or "").strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, sign, tz_h, tz_m = match.groups()
    offset = dt.timedelta(hours=int(tz_h or 0), minutes=int(tz_m or 0))
    zone = dt.timezone(-offset if sign == "-" else offset) if sign in ("+", "-") else dt.timezone.utc
    try:
        return dt.datetime(int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0),
                           int(second or 0), tzinfo=zone)
    except ValueError:
        return None


def pdf_properties(data: bytes, page_count: int | None = None) -> dict:
    """What a PDF's document information says: ``title``, ``author``, ``subject``, ``created`` and ``page_count``.

    Fields the PDF does not fill are absent (nothing is guessed from the text).
    """
    found: dict = {}
    try:
        document = pdfium.PdfDocument(data)
    except Exception:  # noqa: BLE001 - extraction itself reports a PDF that does not open
        return found
    try:
        info = document.get_metadata_dict(skip_empty=True)
        found["page_count"] = page_count if page_count is not None else len(document)
    except Exception:  # noqa: BLE001 - a broken info dictionary only loses these fields
        return found
    finally:
        document.close()
    for key, name in (("title", "Title"), ("author", "Author"), ("subject", "Subject")):
        if info.get(name):
            found[key] = str(info[name])
    created = parse_pdf_date(str(info.get("CreationDate") or ""))
    if created is not None:
        found["created"] = created
    return found
