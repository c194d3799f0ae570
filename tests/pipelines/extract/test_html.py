"""The HTML extractor: main text as Markdown, charset handling, the whole-body fallback, bad input."""

from __future__ import annotations

import pytest

from core.errors import ExtractionError
from pipelines.extract import extract_sections
from pipelines.extract.html import HtmlExtractor, body_text, decode_html

pytestmark = pytest.mark.unit

ARTICLE = """<!DOCTYPE html>
<html lang="fr">
<head>
  <meta charset="{charset}">
  <title>Guide du café</title>
  <style>body {{ font-family: serif; }}</style>
  <script>window.tracker = "do-not-index";</script>
</head>
<body>
  <nav><a href="/">Accueil</a> | <a href="/menu">Menu du site</a> | <a href="/contact">Contact</a></nav>
  <article>
    <h1>Guide du café</h1>
    <p>Le meilleur café de la ville sert un espresso naïve et généreux, préparé avec des grains torréfiés
       sur place chaque matin. Le résumé de la carte tient sur une page, mais chaque boisson mérite le détour.</p>
    <h2>Horaires d'ouverture</h2>
    <p>Ouvert de sept heures du matin jusqu'à tard le soir, tous les jours de la semaine sauf le dimanche,
       quand l'équipe nettoie les machines et prépare les pâtisseries de la semaine suivante.</p>
    <h3>Jours fériés</h3>
    <p>Les jours fériés, le café ouvre à dix heures et ferme à dix-huit heures, avec une carte réduite
       de boissons chaudes et de crêpes sucrées préparées à la commande.</p>
  </article>
  <footer>© 2024 Café du coin - mentions légales - plan du site</footer>
</body>
</html>
"""


def _article(charset: str) -> bytes:
    return ARTICLE.format(charset=charset).encode("utf-8" if charset.lower() == "utf-8" else charset)


def test_main_text_with_markdown_headings() -> None:
    [section] = HtmlExtractor().extract(_article("utf-8"), "cafe.html")
    text = section.text
    assert section.page is None
    assert "# Guide du café" in text.splitlines()
    assert "## Horaires d'ouverture" in text.splitlines()
    assert "### Jours fériés" in text.splitlines()
    assert "espresso naïve et généreux" in text
    # boilerplate, scripts and styles are left out
    assert "do-not-index" not in text
    assert "font-family" not in text
    assert "mentions légales" not in text


def test_meta_charset_latin1_is_respected() -> None:
    data = _article("iso-8859-1")
    assert b"caf\xe9" in data  # really Latin-1 bytes
    [section] = HtmlExtractor().extract(data, "cafe.html")
    assert "Le meilleur café de la ville" in section.text
    assert "naïve" in section.text and "crêpes" in section.text


def test_meta_http_equiv_charset() -> None:
    html = (
        '<html><head><meta http-equiv="Content-Type" content="text/html; charset=windows-1251">'
        "<title>Новости</title></head><body><article><p>"
        + "Привет, это новостная статья о погоде в Москве и её окрестностях. " * 6
        + "</p></article></body></html>"
    )
    assert "Привет, это новостная статья" in decode_html(html.encode("cp1251"))
    [section] = HtmlExtractor().extract(html.encode("cp1251"), "news.html")
    assert "новостная статья о погоде" in section.text


def test_utf8_bytes_win_over_a_wrong_meta_charset() -> None:
    html = '<html><head><meta charset="iso-8859-1"></head><body><p>Crème brûlée à la carte.</p></body></html>'
    assert "Crème brûlée" in decode_html(html.encode("utf-8"))


def test_utf16_page_with_bom() -> None:
    [section] = HtmlExtractor().extract(_article("utf-8").decode().encode("utf-16"), "cafe.html")
    assert "espresso naïve" in section.text


def test_fallback_to_whole_body_when_no_main_content() -> None:
    html = b"""<html><head><title>Links</title></head><body>
      <nav><ul><li><a href="/a">Alpha page</a></li><li><a href="/b">Beta page</a></li></ul></nav>
    </body></html>"""
    [section] = HtmlExtractor().extract(html, "links.html")
    assert "Alpha page" in section.text and "Beta page" in section.text


def test_body_text_renders_blocks_and_headings() -> None:
    text = body_text(
        "<html><head><style>p{}</style></head><body><h2>Title here</h2><div>one<br>two</div>"
        "<!-- a comment --><p>three <b>four</b></p><script>bad()</script></body></html>"
    )
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines == ["## Title here", "one", "two", "three four"]


def test_title_becomes_first_heading_when_missing_from_content() -> None:
    html = (
        "<html><head><title>Release notes 4.2</title></head><body><article><p>"
        + "This release fixes the upload resumption bug and speeds up ingest of large PDF files. " * 4
        + "</p></article></body></html>"
    ).encode()
    [section] = HtmlExtractor().extract(html, "notes.html")
    assert section.text.startswith("# Release notes 4.2\n")


def test_html_dispatched_by_bytes_even_with_txt_extension() -> None:
    content_type, [section] = extract_sections(_article("utf-8"), "cafe.txt")
    assert content_type == "text/html"
    assert "## Horaires d'ouverture" in section.text


def test_empty_page() -> None:
    with pytest.raises(ExtractionError) as info:
        HtmlExtractor().extract(b"<html><head></head><body>  \n </body></html>", "blank.html")
    assert info.value.reason == "empty_content"


def test_zero_bytes() -> None:
    with pytest.raises(ExtractionError) as info:
        HtmlExtractor().extract(b"", "zero.html")
    assert info.value.reason == "empty_file"


def test_whitespace_only() -> None:
    with pytest.raises(ExtractionError) as info:
        HtmlExtractor().extract(b"  \n\t ", "blank.html")
    assert info.value.reason == "empty_content"


def test_utf16_page_without_bom() -> None:
    [section] = HtmlExtractor().extract(_article("utf-8").decode().encode("utf-16-le"), "cafe.html")
    assert "espresso naïve" in section.text
