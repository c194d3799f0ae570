"""Extractors: turn a document version's bytes into text sections, by what the bytes are.

Input: the raw bytes of one file, its relative path and the content type the uploader declared (may be ``""``).
Output: the sniffed content type and a list of :class:`Section` (one per PDF page, one for a text, Markdown or
HTML file). Every failure is an :class:`core.errors.ExtractionError` with a stable reason code:

=====================  ==========================================================
``empty_file``         0 bytes
``empty_content``      only whitespace, or no visible text
``binary_content``     bytes named as text that are not text
``unsupported_type``   a type no extractor here handles (images, audio, archives...)
``html_unparseable``   markup that cannot be parsed at all
``pdf_corrupt``        a PDF that PDFium cannot open, or without readable pages
``pdf_encrypted``      a PDF that needs a password
``pdf_no_text``        a PDF without a text layer (scanned; OCR is not enabled)
=====================  ==========================================================
"""

from __future__ import annotations

from core.errors import ExtractionError
from pipelines.extract.base import (
    APPLICATION_PDF,
    SUPPORTED_TYPES,
    TEXT_HTML,
    TEXT_MARKDOWN,
    TEXT_PLAIN,
    Section,
    sniff_content_type,
)
from pipelines.extract.html import HtmlExtractor
from pipelines.extract.pdf import PdfExtractor
from pipelines.extract.text import TextExtractor, decode_text

__all__ = [
    "SUPPORTED_TYPES",
    "HtmlExtractor",
    "PdfExtractor",
    "Section",
    "TextExtractor",
    "decode_text",
    "extract_sections",
    "sniff_content_type",
]

_EXTRACTORS = {
    TEXT_PLAIN: TextExtractor(),
    TEXT_MARKDOWN: TextExtractor(),
    TEXT_HTML: HtmlExtractor(),
    APPLICATION_PDF: PdfExtractor(),
}


def extract_sections(data: bytes, path: str, content_type: str = "") -> tuple[str, list[Section]]:
    """Sniff a file's type and extract its text sections.

    Args:
        data: the file's bytes.
        path: the document's relative path (its extension is a hint; the bytes win).
        content_type: the declared MIME type, or ``""``.

    Returns:
        ``(content_type, sections)``: the sniffed type (``text/plain``, ``text/markdown``, ``text/html`` or
        ``application/pdf``) and at least one non-empty :class:`Section`.

    Raises:
        ExtractionError: ``empty_file`` for 0 bytes; ``unsupported_type`` (the detail names the type) for a type
            no extractor handles; and the reasons of each extractor (see the module docstring).
    """
    if not data:
        raise ExtractionError("empty_file", f"{path} has 0 bytes")
    sniffed = sniff_content_type(data, path, content_type)
    extractor = _EXTRACTORS.get(sniffed)
    if extractor is None:
        raise ExtractionError("unsupported_type", f"{path} is {sniffed}, which has no text extractor")
    return sniffed, extractor.extract(data, path)
