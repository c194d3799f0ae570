"""Split extracted text sections into chunks sized in the embedding model's tokens.

Input: the :class:`pipelines.extract.base.Section` list of one document version. Output: a list of
:class:`core.types.Chunk` (``chunk_index``, ``text``, ``page``, ``heading``, ``start_char``, ``end_char``).

The rules, in order of strength:

1. A chunk never crosses a section (a PDF page).
2. A Markdown heading (ATX ``# Title`` or setext ``Title`` over ``===``/``---``; not inside a code fence) starts a
   new chunk, and every chunk carries the nearest heading above it. A heading with no text of its own under it
   joins the next heading's chunk. A section that fits in one chunk whole is one chunk, headings and all (so a
   short document is always exactly one chunk); it carries the heading it begins with, or ``""``.
3. A chunk holds at most ``chunk_tokens`` tokens of the tokenizer, counted without special tokens.
4. Within that budget a chunk packs whole paragraphs (blocks separated by a blank line); a paragraph too long for
   the budget is cut after a sentence end or at a line break; a sentence too long for it at a space, else at a
   pre-tokenizer word boundary (punctuation), so that the chunk re-tokenizes to the same tokens; a single word
   longer than the budget between two of its tokens (then the chunk is re-tokenized and shortened until it fits).
   A cut that would leave a chunk under a quarter of the budget is passed over for a weaker one further on.
5. Consecutive chunks of one heading's text overlap by about ``overlap_tokens`` tokens (at most that many): the
   overlap starts at a sentence start in the last ``overlap_tokens`` to ``overlap_tokens//2`` tokens if there is
   one, else at a space there, else at the first word start from ``overlap_tokens`` back.

Speed: each section is tokenized once (with offsets), and the sections of many documents in one batched call to the
Rust tokenizer (:meth:`TextChunker.chunk_documents`); every cut is then found by bisecting token offsets, so no text
is tokenized twice (except a chunk cut inside a word, which is re-tokenized to check its size).

Memory: a section's tokens with their offsets cost about 150 times its text in Python objects (an 8 MiB Markdown
file took 1.3 GB), so a section longer than ``WINDOW_CHARS`` is tokenized one window at a time: each heading's text
is cut into windows of at most that many characters at paragraph breaks (else at a line break, else a space), and
each window is chunked as the rules say. Memory then follows the window, not the file. The price, for such
sections only: no overlap across a window's edge, and a chunk never spans one (rule 4 already prefers to end a chunk
at a paragraph break).
"""

from __future__ import annotations

import bisect
import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from core.types import Chunk
from pipelines.extract.base import Section

#: A chunk that a paragraph or sentence cut would leave below this share of ``chunk_tokens`` is extended instead.
MIN_FILL_RATIO = 0.25
#: A section longer than this (characters) is tokenized one window of at most this size at a time (see "Memory").
WINDOW_CHARS = 256 * 1024

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_SETEXT_ANYWHERE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n[ \t]*\n\s*")
#: A sentence ends at ., !, ?, … or their CJK forms, maybe followed by closing quotes or brackets, then space.
_SENTENCE_END = re.compile(r"[.!?\u2026\u3002\uff01\uff1f][\"'\u201d\u2019)\]]*\s+|\n\s*")


@dataclasses.dataclass
class _Encoded:
    """One section's text and its tokens' character offsets."""

    text: str
    starts: list[int]
    ends: list[int]
    encoding: Any  # a tokenizers.Encoding, for word ids when a sentence must be cut
    word_ids: list[int | None] | None = None  # filled on first use

    def word_id_list(self) -> list[int | None]:
        if self.word_ids is None:
            self.word_ids = self.encoding.word_ids
        return self.word_ids


class TextChunker:
    """Token-sized, heading- and paragraph-aware chunking of text sections.

    Args:
        tokenizer: a fast ``transformers`` tokenizer (one with ``backend_tokenizer``), the embedding model's own,
            so that chunk sizes are in the tokens the model sees.
        chunk_tokens: the most tokens in a chunk, without special tokens; leave room for them below the model's
            maximum sequence length (all-MiniLM-L6-v2: 256 word pieces, 2 of them special).
        overlap_tokens: about how many tokens consecutive chunks of one heading's text share; ``0`` for none.

    Raises:
        ValueError: when ``chunk_tokens`` is below 2 or above the tokenizer's ``model_max_length`` less its
            special tokens, when ``overlap_tokens`` is negative or not below ``chunk_tokens``, or when
            ``tokenizer`` is not a fast tokenizer.
    """

    def __init__(self, tokenizer: Any, chunk_tokens: int = 200, overlap_tokens: int = 32) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(
                f"tokenizer={type(tokenizer).__name__} is not a fast tokenizer: load it with "
                "AutoTokenizer.from_pretrained(..., use_fast=True)"
            )
        if not isinstance(chunk_tokens, int) or chunk_tokens < 2:
            raise ValueError(f"chunk_tokens={chunk_tokens!r} must be an integer of at least 2")
        special = _special_token_count(tokenizer)
        max_length = getattr(tokenizer, "model_max_length", None)
        if isinstance(max_length, int) and 0 < max_length < 10**9 and chunk_tokens + special > max_length:
            raise ValueError(
                f"chunk_tokens={chunk_tokens} plus {special} special tokens exceeds the tokenizer's "
                f"model_max_length={max_length}: use chunk_tokens <= {max_length - special}"
            )
        if not isinstance(overlap_tokens, int) or overlap_tokens < 0 or overlap_tokens >= chunk_tokens:
            raise ValueError(
                f"overlap_tokens={overlap_tokens!r} must be an integer from 0 to chunk_tokens - 1 = {chunk_tokens - 1}"
            )
        self.tokenizer = tokenizer
        self.chunk_tokens = chunk_tokens
        self.overlap_tokens = overlap_tokens
        # A private copy without the tokenizer.json's truncation and padding (all-MiniLM-L6-v2 ships both at 128).
        self._backend = type(backend).from_str(backend.to_str())
        self._backend.no_truncation()
        self._backend.no_padding()

    def chunk(self, sections: Sequence[Section]) -> list[Chunk]:
        """Chunk one document version.

        Args:
            sections: its sections, in order (one per PDF page, or one for the whole text).

        Returns:
            Its chunks, ``chunk_index`` 0..n-1 over the whole document, none empty; ``start_char``/``end_char``
            are offsets into the text of the chunk's section (``section.text[start_char:end_char] == chunk.text``).
            An empty list when no section has any token.
        """
        return self.chunk_documents([sections])[0]

    def chunk_documents(self, documents: Sequence[Sequence[Section]]) -> list[list[Chunk]]:
        """Chunk many document versions, tokenizing all their sections in one batched call.

        Args:
            documents: for each document, its sections.

        Returns:
            For each document, its chunks (as :meth:`chunk` returns them).
        """
        texts = [section.text for sections in documents for section in sections if len(section.text) <= WINDOW_CHARS]
        encodings = self._backend.encode_batch(texts, add_special_tokens=False) if texts else []
        results: list[list[Chunk]] = []
        position = 0
        for sections in documents:
            chunks: list[Chunk] = []
            for section in sections:
                if len(section.text) > WINDOW_CHARS:
                    self._chunk_windows(section, chunks)
                    continue
                encoding = encodings[position]
                position += 1
                offsets = encoding.offsets
                encoded = _Encoded(
                    text=section.text,
                    starts=[start for start, _ in offsets],
                    ends=[end for _, end in offsets],
                    encoding=encoding,
                )
                self._chunk_section(encoded, section.page, chunks)
            results.append(chunks)
        return results

    def _chunk_section(self, encoded: _Encoded, page: int | None, out: list[Chunk]) -> None:
        starts = encoded.starts
        if not starts:
            return
        if len(starts) <= self.chunk_tokens:
            # The whole section fits: one chunk (a short document is never split at its headings), carrying the
            # heading it begins with, if any.
            segments = [(0, len(encoded.text), _leading_heading(encoded.text))]
        else:
            segments = _segments(encoded.text, _heading_lines(encoded.text))
        for seg_start, seg_end, heading in segments:
            first = bisect.bisect_left(starts, seg_start)
            stop = bisect.bisect_left(starts, seg_end)
            if stop <= first:
                continue
            for begin, end in self._cuts(encoded, first, stop, seg_start, seg_end):
                start_char, end_char = starts[begin], encoded.ends[end - 1]
                text = encoded.text[start_char:end_char]
                if text.strip():
                    out.append(
                        Chunk(
                            chunk_index=len(out),
                            text=text,
                            page=page,
                            heading=heading,
                            start_char=start_char,
                            end_char=end_char,
                        )
                    )

    def _chunk_windows(self, section: Section, out: list[Chunk]) -> None:
        """Chunk a section longer than ``WINDOW_CHARS``, one window of it tokenized at a time (module doc, "Memory")."""
        text = section.text
        for seg_start, seg_end, heading in _segments(text, _heading_lines(text)):
            for start, end in _windows(text, seg_start, seg_end, WINDOW_CHARS):
                window = text[start:end]
                encoding = self._backend.encode(window, add_special_tokens=False)
                offsets = encoding.offsets
                encoded = _Encoded(text=window, starts=[a for a, _ in offsets], ends=[b for _, b in offsets],
                                   encoding=encoding)
                if not encoded.starts:
                    continue
                for begin, stop in self._cuts(encoded, 0, len(encoded.starts), 0, len(window)):
                    start_char, end_char = encoded.starts[begin], encoded.ends[stop - 1]
                    piece = window[start_char:end_char]
                    if piece.strip():
                        out.append(Chunk(chunk_index=len(out), text=piece, page=section.page, heading=heading,
                                         start_char=start + start_char, end_char=start + end_char))

    def _cuts(self, encoded: _Encoded, first: int, stop: int, seg_start: int, seg_end: int) -> list[tuple[int, int]]:
        """Token ranges ``[begin, end)`` of the chunks of one heading's text (tokens ``first`` to ``stop``)."""
        size, overlap = self.chunk_tokens, self.overlap_tokens
        if stop - first <= size:
            return [(first, stop)]
        starts = encoded.starts
        text = encoded.text[seg_start:seg_end]
        paragraphs = _break_tokens(starts, seg_start, (m.end() for m in _BLANK_LINES.finditer(text)))
        sentences = _break_tokens(starts, seg_start, (m.end() for m in _SENTENCE_END.finditer(text)))
        # Computed only when a sentence, or the overlap, must be cut inside: tokens after a space, and tokens that
        # begin a pre-tokenizer word (after a space or at punctuation).
        spaces: list[int] | None = None
        words: list[int] | None = None
        min_fill = max(1, int(size * MIN_FILL_RATIO))
        cuts: list[tuple[int, int]] = []
        begin, begin_in_word = first, False
        while True:
            end_in_word = False
            if begin + size >= stop:
                end = stop
            else:
                limit = begin + size
                end = _last_break(paragraphs, begin + min_fill, limit) or _last_break(
                    sentences, begin + min_fill, limit
                )
                if end is None:
                    if spaces is None:
                        spaces = _space_starts(encoded, first, stop)
                        words = _word_starts(encoded.word_id_list(), first, stop)
                    end = _last_break(spaces, begin + min_fill, limit) or _last_break(words, begin + min_fill, limit)
                if end is None:  # one word longer than the budget: cut between two of its tokens
                    end, end_in_word = limit, True
            if end_in_word or begin_in_word:
                end = self._shrink_to_fit(encoded, begin, end)
            cuts.append((begin, end))
            if end >= stop:
                return cuts
            if overlap == 0 or end - begin <= overlap:
                begin, begin_in_word = end, end_in_word
                continue
            # The next chunk starts overlap//2 to overlap tokens back: at a sentence start if one is there, else at
            # the first word start from overlap tokens back, else (inside one long word) at a token.
            low, high = end - overlap, end - overlap // 2
            start = _first_break(sentences, low, high)
            if start is None:
                if spaces is None:
                    spaces = _space_starts(encoded, first, stop)
                    words = _word_starts(encoded.word_id_list(), first, stop)
                start = _first_break(spaces, low, high) or _first_break(words, low, end - 1)
            begin_in_word = start is None
            begin = max(start if start is not None else low, begin + 1)

    def _shrink_to_fit(self, encoded: _Encoded, begin: int, end: int) -> int:
        """Move a cut made inside a word back until the chunk, tokenized on its own, fits the budget.

        A word cut between two of its tokens may tokenize differently on its own ("##ing" becomes "ing").
        """
        while end > begin + 1:
            text = encoded.text[encoded.starts[begin] : encoded.ends[end - 1]]
            excess = len(self._backend.encode(text, add_special_tokens=False).ids) - self.chunk_tokens
            if excess <= 0:
                break
            end = max(begin + 1, end - excess)
        return end


def _special_token_count(tokenizer: Any) -> int:
    try:
        return int(tokenizer.num_special_tokens_to_add(pair=False))
    except (AttributeError, TypeError, NotImplementedError):
        return 2


def _windows(text: str, start: int, end: int, size: int) -> list[tuple[int, int]]:
    """``text[start:end]`` cut into ``(start, end)`` windows of at most ``size`` characters, each ending at the last
    paragraph break in it, else the last line break, else the last space (else exactly at ``size``)."""
    windows = []
    while end - start > size:
        limit = start + size
        cut = -1
        for mark in ("\n\n", "\n", " "):
            cut = text.rfind(mark, start + size // 2, limit)
            if cut > start:
                cut += len(mark)
                break
        if cut <= start:
            cut = limit
        windows.append((start, cut))
        start = cut
    windows.append((start, end))
    return windows


def _leading_heading(text: str) -> str:
    """The heading a text begins with (ATX or setext), or ``""``."""
    lines = text.lstrip("\r\n\t ").split("\n", 2)
    atx = _ATX_HEADING.match(lines[0])
    if atx:
        return atx.group(2).strip()
    if (
        len(lines) > 1
        and _SETEXT_UNDERLINE.match(lines[1])
        and not lines[0].lstrip().startswith(("-", "*", "+", "|", ">", "```", "~~~"))
    ):
        return lines[0].strip()
    return ""


def _heading_lines(text: str) -> list[tuple[int, int, str]]:
    """The Markdown headings of a text, outside code fences: ``(line_start, line_end, heading text)`` each."""
    if "#" not in text and not _SETEXT_ANYWHERE.search(text):
        return []
    headings: list[tuple[int, int, str]] = []  # (line start, line end, heading text)
    in_fence = ""
    offset = 0
    previous: tuple[int, str] | None = None  # (start, line) of the previous non-blank line
    previous_blank_before = True
    blank_before = True
    for line in text.splitlines(keepends=True):
        start, content = offset, line.rstrip("\r\n")
        offset += len(line)
        fence = _FENCE.match(content)
        if in_fence:
            if fence and fence.group(1)[0] == in_fence[0] and len(fence.group(1)) >= len(in_fence):
                in_fence = ""
            blank_before = False
            previous = None
            continue
        if fence:
            in_fence = fence.group(1)
            blank_before = False
            previous = None
            continue
        if not content.strip():
            blank_before = True
            previous = None
            continue
        atx = _ATX_HEADING.match(content)
        if atx:
            headings.append((start, start + len(content), atx.group(2).strip()))
            previous = None
            blank_before = True
            continue
        if (
            previous is not None
            and previous_blank_before
            and _SETEXT_UNDERLINE.match(content)
            and not previous[1].lstrip().startswith(("-", "*", "+", "|", ">"))
        ):
            headings.append((previous[0], start + len(content), previous[1].strip()))
            previous = None
            blank_before = True
            continue
        previous_blank_before = blank_before
        previous = (start, content)
        blank_before = False
    return headings


def _segments(text: str, headings: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Split a section's text at its headings: ``(start_char, end_char, heading)`` per heading's text.

    A heading line belongs to the segment it starts; a heading with nothing but whitespace under it merges into the
    next segment, which then carries the later (nearer) heading. Text before the first heading has heading ``""``.
    """
    if not headings:
        return [(0, len(text), "")]
    segments: list[tuple[int, int, str]] = []
    if text[: headings[0][0]].strip():
        segments.append((0, headings[0][0], ""))
    pending_start: int | None = None
    for index, (line_start, line_end, heading) in enumerate(headings):
        seg_start = line_start if pending_start is None else pending_start
        seg_end = headings[index + 1][0] if index + 1 < len(headings) else len(text)
        if not text[line_end:seg_end].strip() and index + 1 < len(headings):
            pending_start = seg_start
            continue
        pending_start = None
        segments.append((seg_start, seg_end, heading))
    return segments


def _break_tokens(starts: list[int], base: int, char_positions: Any) -> list[int]:
    """Token indices at which the given character positions (relative to ``base``) begin, sorted, unique."""
    tokens: list[int] = []
    for position in char_positions:
        token = bisect.bisect_left(starts, base + position)
        if not tokens or tokens[-1] != token:
            tokens.append(token)
    return tokens


def _last_break(breaks: list[int], low: int, high: int) -> int | None:
    """The largest break in ``[low, high]``, or ``None``."""
    index = bisect.bisect_right(breaks, high) - 1
    if index >= 0 and breaks[index] >= low:
        return breaks[index]
    return None


def _first_break(breaks: list[int], low: int, high: int) -> int | None:
    """The smallest break in ``[low, high]``, or ``None``."""
    index = bisect.bisect_left(breaks, low)
    if index < len(breaks) and breaks[index] <= high:
        return breaks[index]
    return None


def _space_starts(encoded: _Encoded, first: int, stop: int) -> list[int]:
    """Token indices in ``(first, stop)`` with a space (or other dropped characters) before them."""
    starts, ends = encoded.starts, encoded.ends
    return [index for index in range(first + 1, stop) if starts[index] > ends[index - 1]]


def _word_starts(word_ids: list[int | None], first: int, stop: int) -> list[int]:
    """Token indices in ``(first, stop)`` that begin a pre-tokenizer word (so a cut there re-tokenizes the same)."""
    return [
        index for index in range(first + 1, stop) if word_ids[index] is None or word_ids[index] != word_ids[index - 1]
    ]
