"""Extractors: turn a document version's bytes into text sections and pictures, by what the bytes are.

Input: the raw bytes of one file, its relative path and the content type the uploader declared (may be ``""``).
Output of :func:`extract_sections`: the sniffed content type and a list of :class:`Section` (one per PDF page, one
for a text, Markdown or HTML file; Markdown and HTML reduced to their text). Output of :func:`extract_document`: an
:class:`Extracted` with the sections and the pictures (:class:`ImageItem`: an image file; a PDF's embedded images
and its pages without a text layer, rendered for OCR). Every failure is an :class:`core.errors.ExtractionError` with
a stable reason code:

=====================  ==========================================================
``empty_file``         0 bytes
``empty_content``      only whitespace, or no visible text
``binary_content``     bytes named as text that are not text
``unsupported_type``   a type no extractor here handles (images, audio, archives...)
``html_unparseable``   markup that cannot be parsed at all
``pdf_corrupt``        a PDF that PDFium cannot open, or without readable pages
``pdf_encrypted``      a PDF that needs a password
``pdf_no_text``        a PDF without a text layer (``extract_sections``; ``extract_document`` renders it)
``pdf_render_failed``  a PDF page without text that PDFium cannot load or render
``image_bomb``         an image that claims more pixels than the limit
``image_truncated``    an image whose data ends early
``image_corrupt``      image bytes that do not decode
``too_many_pages``     a PDF with more pages than ``max_pages`` (checked as it opens)
``page_too_large``     a PDF page to render whose shorter side, fitted into the pixel
                       cap, would be under 16 pixels (a large page is scaled down)
``too_many_ocr_pages`` a PDF with more pages to render for OCR than ``max_ocr_pages``
``timeout``            the document ran past its ``deadline`` (checked per page)
=====================  ==========================================================

The audio extractor adds ``audio_empty``, ``audio_corrupt``, ``audio_too_long`` and ``audio_too_large`` (decoded
bytes over ``max_decoded_bytes``, from the header before decoding); see ``pipelines.extract.audio``. The limits come
from the settings (``max_pdf_pages``, ``max_render_pixels``, ``max_ocr_pages``, ``max_audio_decoded_bytes``) through
the extractors' constructors; the deadline from ``document_timeout_s``, per call.

Audio types (``AUDIO_TYPES``: WAV, FLAC, Ogg, MP3, M4A) are sniffed here and decoded by the audio extractor
(``pipelines.extract.audio``); :func:`extract_document` raises ``unsupported_type`` for them, and the prepare stage
dispatches them by :func:`is_audio`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from core.errors import ExtractionError
from core.metadata import clean_properties
from pipelines.extract.base import (
    APPLICATION_PDF,
    AUDIO_TYPES,
    IMAGE_TYPES,
    SUPPORTED_TYPES,
    TEXT_HTML,
    TEXT_MARKDOWN,
    TEXT_PLAIN,
    Section,
    sniff_content_type,
)
from pipelines.extract.html import HtmlExtractor, html_properties
from pipelines.extract.language import language_of
from pipelines.extract.pdf import PdfExtractor, pdf_properties
from pipelines.extract.text import TextExtractor, decode_text, markdown_properties

if TYPE_CHECKING:
    from pipelines.extract.image import ImageExtractor, ImageItem

__all__ = [
    "AUDIO_TYPES",
    "IMAGE_TYPES",
    "SUPPORTED_TYPES",
    "Extracted",
    "HtmlExtractor",
    "ImageExtractor",
    "ImageItem",
    "PdfExtractor",
    "Section",
    "TextExtractor",
    "decode_text",
    "extract_document",
    "extract_sections",
    "is_audio",
    "is_image",
    "sniff_content_type",
]

_EXTRACTORS = {
    TEXT_PLAIN: TextExtractor(),
    TEXT_MARKDOWN: TextExtractor(markdown=True),
    TEXT_HTML: HtmlExtractor(),
    APPLICATION_PDF: PdfExtractor(),
}
_IMAGES: ImageExtractor | None = None


def __getattr__(name: str) -> Any:
    """``ImageExtractor`` and ``ImageItem`` load on first use: the text path does not need Pillow."""
    if name in ("ImageExtractor", "ImageItem"):
        from pipelines.extract import image

        return getattr(image, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclasses.dataclass
class Extracted:
    """What :func:`extract_document` found in one document version.

    Attributes:
        content_type: the sniffed MIME type.
        sections: text sections (one per PDF page with a text layer; one for a text file; none for an image).
        images: pictures, ``index`` 0..n-1 in document order (one for an image file).
        ocr_pages: PDF pages rendered because they have no text layer (their text comes from OCR).
        properties: what the file says of itself (``core.metadata.PROPERTY_FIELDS``: a PDF's document information,
            an HTML or Markdown title, an image's size and EXIF, the text's language); absent fields are left out.
    """

    content_type: str
    sections: list[Section]
    images: list[ImageItem] = dataclasses.field(default_factory=list)
    ocr_pages: list[int] = dataclasses.field(default_factory=list)
    properties: dict[str, Any] = dataclasses.field(default_factory=dict)


def is_image(content_type: str) -> bool:
    """Whether a sniffed type is an image that :func:`extract_document` decodes."""
    return content_type in IMAGE_TYPES


def is_audio(content_type: str) -> bool:
    """Whether a sniffed type is audio, for the audio extractor."""
    return content_type in AUDIO_TYPES


def extract_document(data: bytes, path: str, content_type: str = "", *, pdf: PdfExtractor | None = None,
                     images: ImageExtractor | None = None, deadline: float | None = None) -> Extracted:
    """Sniff a file's type and extract its text sections and its pictures.

    Args:
        data: the file's bytes.
        path: the document's relative path (its extension is a hint; the bytes win).
        content_type: the declared MIME type, or ``""``.
        pdf, images: the extractors to use (their limits); the defaults otherwise.
        deadline: a ``time.monotonic()`` instant after which a PDF stops between pages with ``timeout``; ``None``:
            no limit (a single image or text file is one step).

    Returns:
        An :class:`Extracted` with at least one section or one picture.

    Raises:
        ExtractionError: ``empty_file``; ``unsupported_type`` for audio and other types without an extractor here;
            and the reasons of each extractor (see the module docstring).
    """
    if not data:
        raise ExtractionError("empty_file", f"{path} has 0 bytes")
    sniffed = sniff_content_type(data, path, content_type)
    if sniffed in IMAGE_TYPES:
        global _IMAGES
        if images is None:
            from pipelines.extract.image import ImageExtractor

            images = _IMAGES = _IMAGES or ImageExtractor()
        from pipelines.extract.image import image_properties

        item = images.extract(data, path)
        return Extracted(sniffed, [], [item], properties=clean_properties(image_properties(data, item)))
    if sniffed == APPLICATION_PDF:
        content = (pdf or _EXTRACTORS[APPLICATION_PDF]).extract_content(data, path, deadline=deadline)
        found = pdf_properties(data, content.page_count)
        return Extracted(sniffed, content.sections, content.images, content.ocr_pages,
                         properties=_with_language(found, content.sections))
    extractor = _EXTRACTORS.get(sniffed)
    if extractor is None:
        kind = "audio, for the audio extractor" if sniffed in AUDIO_TYPES else "a type without an extractor"
        raise ExtractionError("unsupported_type", f"{path} is {sniffed} ({kind})")
    sections = extractor.extract(data, path)
    if sniffed == TEXT_HTML:
        found = html_properties(data)
    elif sniffed == TEXT_MARKDOWN:
        found = markdown_properties(sections[0].text if sections else "")
    else:
        found = {}
    return Extracted(sniffed, sections, properties=_with_language(found, sections))


def _with_language(found: dict[str, Any], sections: list[Section]) -> dict[str, Any]:
    """``found`` with the language of the sections' text, cleaned (``core.metadata.clean_properties``)."""
    language = language_of("\n".join(s.text for s in sections[:50])) if sections else None
    return clean_properties({**found, "language": language})


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
