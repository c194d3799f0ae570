"""What every extractor returns, and how a file's content type is decided.

Inputs: the raw bytes of one document version, its relative path and, optionally, the content type the uploader
declared. Output of every text extractor: a list of :class:`Section` (one per PDF page, or one for a whole text
file), which the chunker turns into chunks; the image extractor (``pipelines.extract.image``) gives image items,
and a PDF gives both (``pipelines.extract.pdf.PdfContent``).

The content type is decided by what the bytes *are* before what the name or the uploader *says*, so a file whose
extension lies is handled by its content (WHATWG MIME Sniffing, https://mimesniff.spec.whatwg.org/, sections 7.1
and 8; the magic numbers are those listed there and in the freedesktop.org shared MIME-info database).
"""

from __future__ import annotations

import dataclasses
import mimetypes
import posixpath
import re
import time

#: The content types that ``pipelines.extract`` turns into text sections (``extract_sections``).
TEXT_PLAIN = "text/plain"
TEXT_MARKDOWN = "text/markdown"
TEXT_HTML = "text/html"
APPLICATION_PDF = "application/pdf"
OCTET_STREAM = "application/octet-stream"
SUPPORTED_TYPES = frozenset({TEXT_PLAIN, TEXT_MARKDOWN, TEXT_HTML, APPLICATION_PDF})
#: Text types: only these are trusted from a declared ``Content-Type`` (a media type must show its magic bytes).
TEXT_TYPES = frozenset({TEXT_PLAIN, TEXT_MARKDOWN, TEXT_HTML})

#: Raster images that ``pipelines.extract.image`` decodes (Pillow), and their magic numbers below.
IMAGE_PNG = "image/png"
IMAGE_JPEG = "image/jpeg"
IMAGE_WEBP = "image/webp"
IMAGE_TIFF = "image/tiff"
IMAGE_GIF = "image/gif"
IMAGE_TYPES = frozenset({IMAGE_PNG, IMAGE_JPEG, IMAGE_WEBP, IMAGE_TIFF, IMAGE_GIF})

#: Audio containers for the audio extractor (``pipelines.extract.audio``): RIFF/WAVE (and RF64), FLAC, Ogg
#: (Vorbis, Opus, FLAC in Ogg), MPEG audio (an ID3v2 tag, or a valid MPEG frame header followed by a second one).
AUDIO_WAV = "audio/wav"
AUDIO_FLAC = "audio/flac"
AUDIO_OGG = "audio/ogg"
AUDIO_MPEG = "audio/mpeg"
AUDIO_MP4 = "audio/mp4"
AUDIO_TYPES = frozenset({AUDIO_WAV, AUDIO_FLAC, AUDIO_OGG, AUDIO_MPEG, AUDIO_MP4})

#: How many leading bytes the sniffers look at (WHATWG MIME Sniffing reads a 1445-byte resource header).
SNIFF_BYTES = 1445

#: Byte signatures, checked in order against the start of the data: (prefix, MIME type).
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", APPLICATION_PDF),
    (b"\x89PNG\r\n\x1a\n", IMAGE_PNG),
    (b"\xff\xd8\xff", IMAGE_JPEG),
    (b"GIF87a", IMAGE_GIF),
    (b"GIF89a", IMAGE_GIF),
    (b"II*\x00", IMAGE_TIFF),
    (b"MM\x00*", IMAGE_TIFF),
    (b"II+\x00", IMAGE_TIFF),  # BigTIFF
    (b"MM\x00+", IMAGE_TIFF),
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
    (b"OggS\x00", AUDIO_OGG),
    (b"fLaC", AUDIO_FLAC),
    (b"SQLite format 3\x00", "application/vnd.sqlite3"),
)

#: RIFF containers (and RF64, the 64-bit WAVE of EBU Tech 3306): bytes 8..12 name the format.
_RIFF_FORMATS = {b"WAVE": AUDIO_WAV, b"WEBP": IMAGE_WEBP, b"AVI ": "video/x-msvideo"}

#: ISO base media files (``....ftyp<brand>``): brands that are not video (ISO/IEC 14496-12; the AVIF and HEIF
#: specifications register ``avif``/``avis`` and ``heic``/``heix``/``mif1``).
_FTYP_BRANDS = {b"M4A ": AUDIO_MP4, b"M4B ": AUDIO_MP4, b"avif": "image/avif", b"avis": "image/avif",
                b"heic": "image/heic", b"heix": "image/heic", b"mif1": "image/heif"}

#: MPEG audio frame headers (ISO/IEC 11172-3 2.4.2.3, 13818-3): kbit/s by bitrate index, for layer III of MPEG-1
#: and of MPEG-2/2.5; samples per second by sample-rate index, for MPEG-1, 2 and 2.5.
_MP3_BITRATES = {
    1: (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    2: (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MP3_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}

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

    The order: (1) magic numbers at the start of the bytes (PDF; PNG, JPEG, GIF, TIFF, WebP; WAV, FLAC, Ogg,
    MP3 with an ID3v2 tag or two valid MPEG layer III frame headers; ZIP, ELF, gzip, ...); (2) HTML markup at the
    start (``<!doctype html`` or ``<html`` in the first bytes of a document that begins with ``<``); (3) the
    extension (``.md``/``.markdown`` → Markdown, ``.txt`` → plain text, ``.htm``/``.html`` → HTML, ``.pdf`` →
    PDF); (4) the declared type when it is a text type (``TEXT_TYPES``: a declared image or audio type is not
    believed without its magic bytes); (5) plain text when the bytes look like text; (6) the type the extension
    suggests (``mimetypes``), the declared type, or ``application/octet-stream``.

    So a file whose extension lies is decided by its bytes: PNG bytes named ``notes.txt`` are ``image/png``, a
    PDF named ``photo.png`` is ``application/pdf``, and text named ``song.mp3`` is ``text/plain``.

    Args:
        data: the file's bytes (the first ``SNIFF_BYTES`` are read; past an ID3v2 tag, the 4 bytes after it).
        path: the document's relative path; only its extension is used.
        declared: the ``Content-Type`` the uploader gave, parameters allowed (``text/html; charset=utf-8``), or
            ``""``.

    Returns:
        A lower-case MIME type without parameters: a text type or ``application/pdf`` (``SUPPORTED_TYPES``), an
        image type (``IMAGE_TYPES``), an audio type (``AUDIO_TYPES``), or another type, which no extractor here
        handles (e.g. ``application/zip``, ``application/octet-stream``).
    """
    head = data[:SNIFF_BYTES]
    magic = _sniff_magic(head)
    if magic is None and head.startswith(b"ID3"):
        magic = _sniff_after_id3(data)
    if magic is None and _mpeg_audio_frames(head):
        magic = AUDIO_MPEG
    if magic is not None:
        return magic
    if _looks_like_html(head):
        return TEXT_HTML
    extension = posixpath.splitext(path.lower())[1]
    if extension in _EXTENSIONS:
        return _EXTENSIONS[extension]
    declared_type = declared.split(";", 1)[0].strip().lower()
    if declared_type in TEXT_TYPES:
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
    if head.startswith((b"RIFF", b"RF64")) and len(head) >= 12:
        return _RIFF_FORMATS.get(head[8:12], OCTET_STREAM)
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(head[8:12], "video/mp4")
    # A PDF may have bytes before its header; readers accept it within the first 1024 bytes (PDF 32000-1,
    # annex H.3). Only do so when what precedes is whitespace, so a text about PDFs stays text.
    stripped = head.lstrip(b" \t\r\n\x00\x0c")
    if stripped.startswith(b"%PDF-"):
        return APPLICATION_PDF
    return None


def _sniff_after_id3(data: bytes) -> str:
    """An ID3v2 tag (ID3v2.4 section 3.1: a 10-byte header whose last 4 bytes are a 28-bit "synchsafe" size) may
    precede FLAC as well as MPEG audio: look past it."""
    if len(data) >= 10:
        size = (data[6] & 0x7F) << 21 | (data[7] & 0x7F) << 14 | (data[8] & 0x7F) << 7 | (data[9] & 0x7F)
        end = 10 + size + (10 if data[5] & 0x10 else 0)  # a footer follows when flag bit 4 is set
        if data[end : end + 4] == b"fLaC":
            return AUDIO_FLAC
    return AUDIO_MPEG


def _mpeg_frame_length(header: bytes) -> int:
    """The length in bytes of the MPEG layer III frame that starts with these 4 bytes, or 0 when they are not the
    header of one (frame sync of 11 set bits, a known version, layer III, a real bitrate and sample rate)."""
    if len(header) < 4 or header[0] != 0xFF or header[1] & 0xE0 != 0xE0:
        return 0
    version = (header[1] >> 3) & 3  # 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5, 1: reserved
    layer = (header[1] >> 1) & 3  # 1: layer III
    bitrate_index, rate_index = header[2] >> 4, (header[2] >> 2) & 3
    if version == 1 or layer != 1 or bitrate_index in (0, 15) or rate_index == 3:
        return 0
    bitrate = _MP3_BITRATES[1 if version == 3 else 2][bitrate_index] * 1000
    sample_rate = _MP3_SAMPLE_RATES[version][rate_index]
    padding = (header[2] >> 1) & 1
    return (144 if version == 3 else 72) * bitrate // sample_rate + padding


def _mpeg_audio_frames(head: bytes) -> bool:
    """Whether the data starts with an MPEG layer III frame that is followed by another (as WHATWG MIME Sniffing
    6.2.3, "signature for MP3 without ID3", checks), so two random bytes ``FF Fx`` are not taken for audio."""
    length = _mpeg_frame_length(head[:4])
    return length > 0 and _mpeg_frame_length(head[length : length + 4]) > 0


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


#: The reason code of a document that ran past its deadline (``Settings.document_timeout_s``).
TIMEOUT = "timeout"


def check_deadline(deadline: float | None, path: str, where: str) -> None:
    """Fail a document whose time is up: the cooperative half of the per-document time limit.

    Extractors call this between units of work (a PDF page, an audio block), so a document that would take too long
    stops at the next unit instead of holding its worker; one unit (one page render, one decoded block) is small.

    Args:
        deadline: a ``time.monotonic()`` instant, or ``None`` for no limit.
        path: the document's path (for the detail).
        where: what was being done, for the detail (``"page 412"``, ``"audio at 1800 s"``).

    Raises:
        ExtractionError: ``timeout`` once the deadline has passed.
    """
    if deadline is not None and time.monotonic() > deadline:
        from core.errors import ExtractionError

        raise ExtractionError(TIMEOUT, f"{path} ran past its time limit (SLUICE_DOCUMENT_TIMEOUT_S) at {where}")
