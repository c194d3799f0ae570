"""PDF: the text layer of each page, as one :class:`Section` per page, with PDFium (pypdfium2).

Input: the raw bytes of an ``application/pdf`` file. Output: ``[Section(text, page=n), ...]`` with ``n`` 1-based,
in page order, pages without text left out.

The text of a page is normalised (:func:`normalise_page_text`): line-end hyphens joined ("extrac-\\ntion" →
"extraction"), the lines of a paragraph reflowed into one, runs of spaces collapsed, paragraph breaks kept as a
blank line, and a running header (the same first line on most pages) and a bare page number as the last line
dropped. Scanned pages (images without a text layer) give no text: OCR is not enabled here.
"""

from __future__ import annotations

import logging
import re
from collections import Counter

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from core.errors import ExtractionError
from pipelines.extract.base import Section

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


class PdfExtractor:
    """Extract the text layer of a PDF, one section per page.

    Stateless and cheap to build. PDFium is not thread-safe; pypdfium2 serialises calls into it, so one instance
    may be shared, but throughput comes from processes (Ray workers), not threads.

    Args:
        drop_running_headers: drop a first line that repeats on most pages, and a last line that is a bare page
            number.
    """

    def __init__(self, *, drop_running_headers: bool = True) -> None:
        self.drop_running_headers = drop_running_headers

    def extract(self, data: bytes, path: str) -> list[Section]:
        """Extract every page that has text.

        Args:
            data: the file's bytes.
            path: the document's relative path (used in error details only).

        Returns:
            One :class:`Section` per page with text, ``page`` 1-based, in page order.

        Raises:
            ExtractionError: ``empty_file`` for 0 bytes; ``pdf_encrypted`` when the PDF needs a password;
                ``pdf_corrupt`` when PDFium cannot open it or it has no pages; ``pdf_no_text`` when no page has a
                text layer (a scanned document: OCR is not enabled).
        """
        if not data:
            raise ExtractionError("empty_file", f"{path} has 0 bytes")
        try:
            document = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as exc:
            if getattr(exc, "err_code", None) == pdfium_c.FPDF_ERR_PASSWORD:
                raise ExtractionError("pdf_encrypted", f"{path} is encrypted and needs a password") from exc
            raise ExtractionError("pdf_corrupt", f"{path} cannot be opened: {exc}") from exc
        try:
            raw_pages = self._page_texts(document, path)
        finally:
            document.close()
        if not raw_pages:
            raise ExtractionError("pdf_corrupt", f"{path} has no readable pages")
        page_lines = [_page_lines(text) for text in raw_pages]
        if self.drop_running_headers:
            _drop_running_lines(page_lines)
        pages = [_reflow(lines) for lines in page_lines]
        sections = [Section(text=text, page=number) for number, text in enumerate(pages, start=1) if text.strip()]
        if not sections:
            raise ExtractionError(
                "pdf_no_text",
                f"none of the {len(pages)} pages of {path} has a text layer; OCR of scanned pages is not enabled",
            )
        return sections

    @staticmethod
    def _page_texts(document: pdfium.PdfDocument, path: str) -> list[str]:
        texts: list[str] = []
        failed = 0
        for index in range(len(document)):
            page = textpage = None
            try:
                page = document[index]
                textpage = page.get_textpage()
                texts.append(textpage.get_text_bounded())
            except pdfium.PdfiumError as exc:
                failed += 1
                logger.warning("page %d of %s is unreadable: %s", index + 1, path, exc)
                texts.append("")
            finally:
                if textpage is not None:
                    textpage.close()
                if page is not None:
                    page.close()
        if texts and failed == len(texts):
            raise ExtractionError("pdf_corrupt", f"none of the {failed} pages of {path} can be read")
        return texts


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
