"""Plain text and Markdown: decode the bytes, whatever their encoding, into one :class:`Section`.

Input: the raw bytes of a ``text/plain`` or ``text/markdown`` file. Output: ``[Section(text, page=None)]`` with
``\\n`` line ends and no byte-order mark. Plain text is kept as written. Markdown is reduced to its text by
:func:`markdown_text` (a CommonMark parser, so search results show words, not badges, image URLs or raw HTML): its
headings stay ``#`` lines and its code stays fenced, which is what the chunker reads.

Decoding order (WHATWG Encoding, "decode", https://encoding.spec.whatwg.org/#decode: a BOM wins): a byte-order
mark; UTF-16/UTF-32 without one (columns of zero bytes); strict UTF-8; then charset-normalizer's guess, where among
equally clean candidates windows-1252 is preferred (the WHATWG default for legacy Western text, and what
"ISO-8859-1" means on the web).
"""

from __future__ import annotations

import codecs
import logging
import re

import charset_normalizer
import markdown_it

from core.errors import ExtractionError
from pipelines.extract.base import Section, utf16_or_32_without_bom

logger = logging.getLogger(__name__)

#: Byte-order marks, longest first (a UTF-32 LE BOM begins with the UTF-16 LE one).
BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)

#: Above this share of control or replacement characters, decoded "text" is taken for binary data.
MAX_CONTROL_RATIO = 0.05

#: Control characters (Unicode category Cc) other than the whitespace ones and ESC (ANSI colours in logs),
#: surrogates, and U+FFFD (what an undecodable byte becomes).
_BAD_CHARS = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f-\x9f\ud800-\udfff\ufffd]")

#: Among charset-normalizer candidates that are equally clean (chaos within this of the cleanest), these are
#: preferred, in order: it otherwise often names cp1250 or cp1257 for Latin-1 text ("naïve" becomes "naďve").
_PREFERRED_LEGACY = ("utf_8", "ascii", "cp1252", "latin_1")
_CHAOS_TOLERANCE = 0.1


def decode_text(data: bytes) -> str:
    """Decode the bytes of a text file into a string.

    Args:
        data: the file's bytes.

    Returns:
        The text, without a leading byte-order mark; line ends are left as they were.

    Raises:
        ExtractionError: ``binary_content`` when the bytes hold NUL bytes outside UTF-16/UTF-32, when no
            encoding fits, or when more than ``MAX_CONTROL_RATIO`` of the decoded characters are control or
            replacement characters.
    """
    text = _decode(data)
    if text.startswith("\ufeff"):
        text = text[1:]
    _check_printable(text)
    return text


def _decode(data: bytes) -> str:
    for bom, encoding in BOMS:
        if data.startswith(bom):
            return data[len(bom) :].decode(encoding, errors="replace")
    if b"\x00" in data:
        encoding = utf16_or_32_without_bom(data)
        if encoding is None:
            raise ExtractionError("binary_content", "the data holds NUL bytes and is not UTF-16 or UTF-32 text")
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as exc:
            raise ExtractionError(
                "binary_content", f"the data looks like {encoding} but does not decode: {exc}"
            ) from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    matches = list(charset_normalizer.from_bytes(data))
    if not matches:
        raise ExtractionError("binary_content", "no text encoding fits the data")
    cleanest = min(match.chaos for match in matches)
    clean = [match for match in matches if match.chaos <= cleanest + _CHAOS_TOLERANCE]
    for encoding in _PREFERRED_LEGACY:
        for match in clean:
            if match.encoding == encoding:
                return str(match)
    logger.debug("decoded as %s (charset-normalizer)", clean[0].encoding)
    return str(clean[0])


def _check_printable(text: str) -> None:
    if not text:
        return
    bad = len(_BAD_CHARS.findall(text))
    if bad / len(text) > MAX_CONTROL_RATIO:
        raise ExtractionError(
            "binary_content", f"{bad} of {len(text)} decoded characters are control or replacement characters"
        )


def normalise_newlines(text: str) -> str:
    """Turn ``\\r\\n`` and lone ``\\r`` line ends into ``\\n`` and drop NUL characters.

    Args:
        text: decoded text.

    Returns:
        The same text with ``\\n`` line ends.
    """
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")


class TextExtractor:
    """Extract a plain-text or Markdown file as one section.

    Stateless and cheap to build; safe to share between threads.

    Args:
        markdown: the files are Markdown: reduce them to their text (:func:`markdown_text`).
    """

    def __init__(self, *, markdown: bool = False) -> None:
        self.markdown = markdown

    def extract(self, data: bytes, path: str) -> list[Section]:
        """Decode a text file.

        Args:
            data: the file's bytes.
            path: the document's relative path (used in error details only).

        Returns:
            ``[Section(text, page=None)]``, the text with ``\\n`` line ends (for Markdown, its text).

        Raises:
            ExtractionError: ``empty_file`` for 0 bytes, ``empty_content`` when the text is only whitespace,
                ``binary_content`` (see :func:`decode_text`).
        """
        if not data:
            raise ExtractionError("empty_file", f"{path} has 0 bytes")
        text = normalise_newlines(decode_text(data))
        if not text.strip():
            raise ExtractionError("empty_content", f"{path} holds only whitespace")
        if self.markdown:
            text = markdown_text(text)
            if not text.strip():
                raise ExtractionError("empty_content", f"{path} has no visible text")
        return [Section(text=text, page=None)]


#: CommonMark with GFM tables. Every link and image destination is accepted (markdown-it refuses ``data:`` and
#: ``javascript:`` ones, which then stay behind as literal ``![...](data:...)`` text): no destination is ever
#: rendered here, so none is unsafe, and a refused one would leak its URI into the text.
_MARKDOWN = markdown_it.MarkdownIt("commonmark").enable("table")
_MARKDOWN.validateLink = lambda url: True

#: YAML front matter: kept as written (not Markdown; ``markdown_properties`` reads its ``title:``).
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(?:.*\n)*?---[ \t]*(?:\n|\Z)")
#: A ``data:`` URI written as text (a bare one is not a link, so the parser leaves it): never worth indexing.
_DATA_URI = re.compile(r"\bdata:[\w.+-]+/[\w.+-]+(?:;[\w.+=-]+)*,[^\s)\]\"'<>]*")


def markdown_text(markdown: str) -> str:
    """The text of a Markdown document, as a reader sees it rendered.

    Kept: the words of paragraphs, headings (as ``#`` lines, setext ones too, so the chunker follows them), list
    items (``-`` or ``1.`` lines), table cells (``" | "`` between cells, a line per row), link text, and code blocks
    and inline code verbatim (code blocks between bare fences of backticks, so that the chunker does not take a ``#``
    comment in them for a heading). Dropped: images (with their alt text, mostly badge labels), link destinations,
    emphasis marks, thematic breaks and ``data:`` URIs. Raw HTML (README headers, badges, ``<details>``) is reduced
    to its visible text by :func:`pipelines.extract.html.fragment_text`. YAML front matter is kept as written.

    Args:
        markdown: the document, with ``\\n`` line ends.

    Returns:
        The text, blocks separated by a blank line.
    """
    front = _FRONT_MATTER.match(markdown)
    head = front.group(0) if front else ""
    parts: list[str] = [head + "\n"] if head else []
    lists: list[list] = []  # per open list: [is a bullet list, the next item's number]
    prefix = ""  # the marker of the list item whose first block is still to come
    heading = ""  # the ``#`` marks of the open heading
    cells: list[str] | None = None  # the open table row's cells
    for token in _MARKDOWN.parse(markdown[len(head) :]):
        kind = token.type
        if kind in ("bullet_list_open", "ordered_list_open"):
            lists.append([kind == "bullet_list_open", int(token.attrGet("start") or 1)])
        elif kind in ("bullet_list_close", "ordered_list_close"):
            lists.pop()
            if not lists:
                parts.append("\n")  # a tight list's last item ends with a single line break
        elif kind == "list_item_open":
            bullet, number = lists[-1]
            prefix = "  " * (len(lists) - 1) + ("- " if bullet else f"{number}{token.markup} ")
            lists[-1][1] = number + 1
        elif kind == "list_item_close":
            prefix = ""
        elif kind == "heading_open":
            heading = "#" * int(token.tag[1])
        elif kind == "heading_close":
            heading = ""
            parts.append("\n\n")
        elif kind == "paragraph_close":
            parts.append("\n" if token.hidden else "\n\n")  # hidden: a paragraph of a tight list
        elif kind == "tr_open":
            cells = []
        elif kind == "tr_close" and cells is not None:
            parts.append(" | ".join(cells) + "\n")
            cells = None
        elif kind == "table_close":
            parts.append("\n")
        elif kind == "inline":
            text = "\n".join(line.strip() for line in _inline_text(token.children or []).split("\n")).strip()
            if cells is not None:
                cells.append(" ".join(text.split()))
            elif text and heading:
                parts.append(f"{heading} {' '.join(text.split())}")
            elif text:
                parts.append(prefix + text)
                prefix = ""
        elif kind in ("fence", "code_block"):
            fence = token.markup if kind == "fence" else "```"
            parts.append(f"{fence}\n{token.content}{fence}\n\n")
        elif kind == "html_block":
            text = _html_text(token.content)
            if text:
                parts.append(f"{prefix}{text}\n\n")
                prefix = ""
    text = _DATA_URI.sub("", "".join(parts))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def _inline_text(children: list) -> str:
    """The text of a paragraph's, heading's or cell's inline tokens: words, link text and code, nothing else."""
    parts = []
    for child in children:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append("\n")
        elif child.type == "html_inline":  # one tag at a time: only a line break or a whole element says something
            parts.append(_html_text(child.content) or ("\n" if child.content[:3].lower() == "<br" else ""))
        # image (its alt text is in its own children), link_open/close, em/strong/s: no text of their own
    return "".join(parts)


def _html_text(markup: str) -> str:
    from pipelines.extract.html import fragment_text  # imported here: the html module imports this one

    return fragment_text(markup)


_FRONT_MATTER_TITLE = re.compile(r"\A---[ \t]*\n(?:.*\n)*?title:[ \t]*(?P<title>.+?)[ \t]*\n(?:.*\n)*?---[ \t]*(?:\n|\Z)")
_ATX_H1 = re.compile(r"^#[ \t]+(?P<title>.+?)[ \t#]*$", re.MULTILINE)


def markdown_properties(text: str) -> dict:
    """What a Markdown file says of itself: ``title``, from YAML front matter (``title:``), else its first
    level-one heading (``# Title``); absent when it has neither."""
    match = _FRONT_MATTER_TITLE.match(text[:20000])
    if match:
        return {"title": match.group("title").strip("'\"")}
    match = _ATX_H1.search(text[:200000])
    if match:
        return {"title": re.sub(r"[*_`]", "", match.group("title"))}
    return {}
