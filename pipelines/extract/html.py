"""HTML: the main text of a page, with its headings as Markdown ``#`` lines, as one :class:`Section`.

Input: the raw bytes of a ``text/html`` file. Output: ``[Section(text, page=None)]`` where the text is the page's
main content as trafilatura renders it in Markdown (boilerplate such as navigation, footers and scripts left out;
no links or images), reduced to text by :func:`pipelines.extract.text.markdown_text` like a Markdown file, so both
give the same kind of text: headings as ``#`` lines (the chunker follows them), table cells between ``" | "``, no
emphasis marks. When trafilatura finds no main content, the whole visible body text is used instead, one block
element per line.

Decoding (WHATWG Encoding and HTML "determining the character encoding"): a byte-order mark wins; bytes that are
valid UTF-8 with non-ASCII characters are UTF-8 (a page that declares Latin-1 but is valid UTF-8 was mislabelled);
otherwise the ``<meta charset>`` (or ``http-equiv`` ``content-type``) in the first 1024 bytes is obeyed; otherwise
:func:`pipelines.extract.text.decode_text` guesses.
"""

from __future__ import annotations

import codecs
import html as html_lib
import logging
import re

import lxml.etree
import lxml.html
import trafilatura

from core.errors import ExtractionError
from pipelines.extract.base import Section
from pipelines.extract.text import BOMS, decode_text, markdown_text, normalise_newlines

logger = logging.getLogger(__name__)

#: How far into the bytes a ``<meta charset>`` is looked for (WHATWG HTML, "prescan a byte stream": 1024 bytes).
META_PRESCAN_BYTES = 1024

_META_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9_.:\-]+)""", re.IGNORECASE)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title\s*>", re.IGNORECASE | re.DOTALL)
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>", re.IGNORECASE)

#: WHATWG Encoding maps these labels to windows-1252; a ``<meta>`` that says UTF-16 means UTF-8 (HTML, "prescan").
_LABEL_ALIASES = {
    "iso-8859-1": "cp1252",
    "iso8859-1": "cp1252",
    "iso_8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "l1": "cp1252",
    "us-ascii": "cp1252",
    "ascii": "cp1252",
    "cp819": "cp1252",
    "windows-1252": "cp1252",
    "utf-16": "utf-8",
    "utf-16le": "utf-8",
    "utf-16be": "utf-8",
}

#: Elements whose text is never shown.
_INVISIBLE = ("script", "style", "noscript", "template", "head", "svg", "iframe", "object")
#: Elements that start a new line in the fallback rendering.
_BLOCKS = frozenset(
    "address article aside blockquote br dd div dl dt fieldset figcaption figure footer form h1 h2 h3 h4 h5 h6 "
    "header hr li main nav ol p pre section table tbody td th thead tfoot tr ul".split()
)
_HEADING_LEVELS = {f"h{level}": level for level in range(1, 7)}


class HtmlExtractor:
    """Extract the main text of an HTML page as Markdown.

    Stateless and cheap to build; safe to share between threads.

    Args:
        include_tables: keep tables (rendered as Markdown pipe tables).
    """

    def __init__(self, *, include_tables: bool = True) -> None:
        self.include_tables = include_tables

    def extract(self, data: bytes, path: str) -> list[Section]:
        """Extract an HTML page.

        Args:
            data: the file's bytes.
            path: the document's relative path (used in error details only).

        Returns:
            ``[Section(text, page=None)]``: Markdown with ``#`` headings; the page ``<title>`` is the first line
            (a level-1 heading) when the main content does not already begin with it.

        Raises:
            ExtractionError: ``empty_file`` for 0 bytes, ``empty_content`` when the page has no visible text,
                ``binary_content`` when the bytes are not text, ``html_unparseable`` when the markup cannot be
                parsed at all.
        """
        if not data:
            raise ExtractionError("empty_file", f"{path} has 0 bytes")
        markup = normalise_newlines(decode_html(data))
        markup = _XML_DECLARATION.sub("", markup, count=1)
        if not markup.strip():
            raise ExtractionError("empty_content", f"{path} holds only whitespace")
        try:
            text = trafilatura.extract(
                markup,
                output_format="markdown",
                include_comments=False,
                include_tables=self.include_tables,
                include_links=False,
                include_images=False,
            )
        except Exception as exc:  # trafilatura raises what lxml raises; any of it means "cannot parse"
            logger.warning("trafilatura failed on %s: %s; using the whole body text", path, exc)
            text = None
        if text and text.strip():
            text = markdown_text(text)  # tidy already, and _clean would unindent its code blocks
        else:
            text = _clean(body_text(markup, path))
        title = _title(markup)
        if title and title.casefold() not in text[: len(title) + 200].casefold():
            text = f"# {title}\n\n{text}" if text else f"# {title}"
        if not text.strip():
            raise ExtractionError("empty_content", f"{path} has no visible text")
        return [Section(text=text, page=None)]


def decode_html(data: bytes) -> str:
    """Decode HTML bytes, obeying a byte-order mark, then UTF-8, then ``<meta charset>``, then a guess.

    Args:
        data: the page's bytes.

    Returns:
        The markup as a string.

    Raises:
        ExtractionError: ``binary_content`` when the bytes are not text (see
            :func:`pipelines.extract.text.decode_text`).
    """
    if data.startswith(tuple(bom for bom, _ in BOMS)) or b"\x00" in data[:4096]:
        return decode_text(data)  # a BOM, or UTF-16/UTF-32 without one (its NUL bytes are valid UTF-8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        return text
    match = _META_CHARSET.search(data[:META_PRESCAN_BYTES])
    if match is not None:
        label = match.group(1).decode("ascii", errors="ignore").strip().lower()
        encoding = _LABEL_ALIASES.get(label, label)
        try:
            codecs.lookup(encoding)
        except LookupError:
            logger.debug("unknown <meta charset> %r; guessing", label)
        else:
            return data.decode(encoding, errors="replace")
    return decode_text(data)


def body_text(markup: str, path: str = "") -> str:
    """All visible text of a page's body, one block element per line and headings as ``#`` lines.

    The fallback when trafilatura finds no main content (a page that is all navigation, a tiny page).

    Args:
        markup: the decoded HTML.
        path: the document's path, for error details.

    Returns:
        The text (possibly empty).

    Raises:
        ExtractionError: ``html_unparseable`` when lxml cannot parse the markup.
    """
    try:
        root = lxml.html.document_fromstring(markup)
    except (lxml.etree.ParserError, ValueError) as exc:
        raise ExtractionError("html_unparseable", f"{path}: {exc}") from exc
    for element in list(root.iter(*_INVISIBLE)):
        if element.getparent() is not None:
            element.drop_tree()
    body = root.find("body")
    if body is None:
        body = root
    parts: list[str] = []
    _render(body, parts)
    return "".join(parts)


def fragment_text(markup: str) -> str:
    """The visible text of an HTML fragment, as :func:`body_text` renders it, whitespace tidied.

    For raw HTML inside Markdown (a README's centred logo and badges, ``<details>``), which is a fragment, often a
    lone tag.

    Args:
        markup: the fragment.

    Returns:
        Its text; ``""`` when it has none (a lone closing tag or a comment, which lxml calls an empty document).
    """
    try:
        return _clean(body_text(markup))
    except ExtractionError:
        return ""


def _render(element: lxml.html.HtmlElement, parts: list[str]) -> None:
    tag = element.tag if isinstance(element.tag, str) else ""
    if tag in _HEADING_LEVELS:
        heading = " ".join(element.text_content().split())
        if heading:
            parts.append(f"\n\n{'#' * _HEADING_LEVELS[tag]} {heading}\n\n")
    else:
        block = tag in _BLOCKS
        if block:
            parts.append("\n")
        if element.text and tag:
            parts.append(element.text)
        for child in element:
            _render(child, parts)
        if block:
            parts.append("\n")
    if element.tail:
        parts.append(element.tail)


def _clean(text: str) -> str:
    lines = [" ".join(line.split()) if line.strip() else "" for line in text.split("\n")]
    out = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
    return out.strip()


def _title(markup: str) -> str:
    match = _TITLE.search(markup[:20000])
    if match is None:
        return ""
    return " ".join(html_lib.unescape(re.sub(r"<[^>]+>", "", match.group(1))).split())


def html_properties(data: bytes) -> dict:
    """What an HTML file says of itself: ``title`` (its ``<title>``), when it has one."""
    title = _title(decode_html(data))
    return {"title": title} if title else {}
