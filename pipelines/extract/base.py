"""What every extractor returns, and how a file's content type is decided.

Inputs: the raw bytes of one document version, its relative path and, optionally, the content type the uploader
declared. Output of every extractor: a list of :class:`Section` (one per PDF page, or one for a whole text file),
which the chunker turns into chunks.

The content type is decided by what the bytes *are* before what the name or the uploader *says*, so a file whose
extension lies is handled by its content (WHATWG MIME Sniffing, https://mimesniff.spec.whatwg.org/, sections 7.1
and 8; the magic numbers are those listed there and in the freedesktop.org shared MIME-info database).
"""

from __future__ import annotations

import dataclasses
import mimetypes
import posixpath
import re

#: The content types that ``pipelines.extract`` turns into text.
TEXT_PLAIN = "text/plain"
TEXT_MARKDOWN = "text/markdown"
TEXT_HTML = "text/html"
APPLICATION_PDF = "application/pdf"
OCTET_STREAM = "application/octet-stream"
SUPPORTED_TYPES = frozenset({TEXT_PLAIN, TEXT_MARKDOWN, TEXT_HTML, APPLICATION_PDF})

#: How many leading bytes the sniffers look at (WHATWG MIME Sniffing reads a 1445-byte resource header).
SNIFF_BYTES = 1445

#: Byte signatures, checked in order against the start of the data: (prefix, MIME type).
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", APPLICATION_PDF),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"PK\x03\x04", "application/zip"),
    (b"PK\x05\x06", "application/zip"),
    (b"PK\x07\x08", "application/zip"),
    (b"\x7fELF", "application/x-executable"),
    (b"MZ", "application/x-msdownload"),
    (b"\x1f\x8b", "application/gzip"),
    (b"BZh", "application/x-bzip2"),
    (b"\xfd7zXZ\x00", "application/x-xz"),
    (b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (b"\x28\xb5\x2f\xfd", "application/zstd"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "application/x-ole-storage"),
    (b"OggS\x00", "audio/ogg"),
    (b"fLaC", "audio/flac"),
    (b"ID3", "audio/mpeg"),
    (b"SQLite format 3\x00", "application/vnd.sqlite3"),
)

#: RIFF containers: bytes 8..12 name the format.
_RIFF_FORMATS = {b"WAVE": "audio/wav", b"WEBP": "image/webp", b"AVI ": "video/x-msvideo"}

#: Extensions that name a type we extract, lower-case with the dot.
_EXTENSIONS = {
    ".md": TEXT_MARKDOWN,
    ".markdown": TEXT_MARKDOWN,
    ".mdown": TEXT_MARKDOWN,
    ".mkd": TEXT_MARKDOWN,
    ".txt": TEXT_PLAIN,
    ".text": TEXT_PLAIN,
    ".htm": TEXT_HTML,
    ".html": TEXT_HTML,
    ".xhtml": TEXT_HTML,
    ".pdf": APPLICATION_PDF,
}

#: Bytes that never occur in text (WHATWG MIME Sniffing 7.2, "binary data byte": 0x00-0x08, 0x0B, 0x0E-0x1A,
#: 0x1C-0x1F).
_BINARY_BYTES = frozenset([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x1B), *range(0x1C, 0x20)])

#: Control characters that text does not hold (C0 less tab, line feed, vertical tab, form feed, carriage return
#: and escape; DEL; C1), and U+FFFD.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f-\x9f\ufffd]")

_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")


@dataclasses.dataclass(frozen=True)
class Section:
    """A run of extracted text that a chunk never crosses.

    Attributes:
        text: the extracted text (``\\n`` line ends; Markdown headings as ``#`` lines where the source had them).
        page: the 1-based page number for a PDF page, ``None`` for the whole text of a non-paginated file.
    """

    text: str
    page: int | None = None


def sniff_content_type(data: bytes, path: str, declared: str = "") -> str:
    """Decide a file's MIME type from its bytes, then its extension, then the declared type.

    The order: (1) magic numbers at the start of the bytes (PDF, PNG, JPEG, GIF, TIFF, ZIP, ELF, gzip, WAV, ...);
    (2) HTML markup at the start (``<!doctype html`` or ``<html`` in the first bytes of a document that begins
    with ``<``); (3) the extension (``.md``/``.markdown`` → Markdown, ``.txt`` → plain text, ``.htm``/``.html``
    → HTML, ``.pdf`` → PDF); (4) the declared type when it is one we extract; (5) plain text when the bytes look
    like text; (6) the type the extension suggests (``mimetypes``), the declared type, or
    ``application/octet-stream``.

    Args:
        data: the file's bytes (only the first ``SNIFF_BYTES`` are read).
        path: the document's relative path; only its extension is used.
        declared: the ``Content-Type`` the uploader gave, parameters allowed (``text/html; charset=utf-8``), or
            ``""``.

    Returns:
        A lower-case MIME type without parameters: one of ``text/plain``, ``text/markdown``, ``text/html``,
        ``application/pdf`` (see ``SUPPORTED_TYPES``), or another type, which no extractor here handles (e.g.
        ``image/png``, ``application/octet-stream``).
    """
    head = data[:SNIFF_BYTES]
    magic = _sniff_magic(head)
    if magic is not None:
        return magic
    if _looks_like_html(head):
        return TEXT_HTML
    extension = posixpath.splitext(path.lower())[1]
    if extension in _EXTENSIONS:
        return _EXTENSIONS[extension]
    declared_type = declared.split(";", 1)[0].strip().lower()
    if declared_type in SUPPORTED_TYPES:
        return declared_type
    if looks_like_text(head):
        return TEXT_PLAIN
    guessed, _ = mimetypes.guess_type(path, strict=False)
    return guessed or declared_type or OCTET_STREAM


def looks_like_text(head: bytes) -> bool:
    """Whether the first bytes of a file look like text in some encoding.

    True for a Unicode byte-order mark, for UTF-16/UTF-32 without one (the zero bytes of ASCII characters fall
    in a regular column), and for data without "binary data bytes" (WHATWG MIME Sniffing 7.2).

    Args:
        head: the first bytes of the file (a few KiB is enough).

    Returns:
        ``False`` for empty data or data with binary bytes.
    """
    if not head:
        return False
    if head.startswith(_BOMS):
        return True
    if b"\x00" in head:
        return utf16_or_32_without_bom(head) is not None
    binary = sum(1 for byte in head if byte in _BINARY_BYTES)
    return binary == 0


def utf16_or_32_without_bom(data: bytes) -> str | None:
    """Guess UTF-16 or UTF-32 without a byte-order mark from where the zero bytes fall.

    Text that is mostly ASCII or Latin-1 has a zero high byte in every UTF-16 code unit (and three in every
    UTF-32 one), so zeros gather at odd offsets (little-endian) or even offsets (big-endian).

    Args:
        data: the bytes, or their first few KiB.

    Returns:
        ``"utf-32-le"``, ``"utf-32-be"``, ``"utf-16-le"``, ``"utf-16-be"``, or ``None`` when no column of zeros
        stands out.
    """
    sample = data[:4096]
    guess = None
    size = len(sample) - len(sample) % 4
    if size >= 8:
        units = size // 4
        columns = [sum(1 for i in range(k, size, 4) if sample[i] == 0) / units for k in range(4)]
        if columns[0] < 0.2 and min(columns[1:]) > 0.9:
            guess = "utf-32-le"
        elif columns[3] < 0.2 and min(columns[:3]) > 0.9:
            guess = "utf-32-be"
    if guess is None:
        size = len(sample) - len(sample) % 2
        if size >= 4:
            units = size // 2
            even = sum(1 for i in range(0, size, 2) if sample[i] == 0) / units
            odd = sum(1 for i in range(1, size, 2) if sample[i] == 0) / units
            if odd > 0.4 and even < 0.05:
                guess = "utf-16-le"
            elif even > 0.4 and odd < 0.05:
                guess = "utf-16-be"
    if guess is None:
        return None
    # The guess must give text: few control characters (a sample cut mid-character is decoded leniently).
    decoded = sample[:size].decode(guess, errors="replace")
    controls = len(_CONTROL_CHARS.findall(decoded))
    return guess if decoded and controls / len(decoded) <= 0.05 else None


def _sniff_magic(head: bytes) -> str | None:
    for prefix, mime in _MAGIC:
        if head.startswith(prefix):
            return mime
    if head.startswith(b"RIFF") and len(head) >= 12:
        return _RIFF_FORMATS.get(head[8:12], "application/octet-stream")
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return "video/mp4"
    # A PDF may have bytes before its header; readers accept it within the first 1024 bytes (PDF 32000-1,
    # annex H.3). Only do so when what precedes is whitespace, so a text about PDFs stays text.
    stripped = head.lstrip(b" \t\r\n\x00\x0c")
    if stripped.startswith(b"%PDF-"):
        return APPLICATION_PDF
    return None


def _looks_like_html(head: bytes) -> bool:
    text = head
    for bom in _BOMS:
        if text.startswith(bom):
            text = text[len(bom) :]
            break
    text = text.lstrip(b" \t\r\n\x0c").lower()
    if not text.startswith(b"<"):
        return False
    return text.startswith((b"<!doctype html", b"<html")) or b"<html" in text[:1024] or b"<!doctype html" in text[:1024]
