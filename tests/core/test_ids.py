"""The path rules and deterministic ids of docs/DESIGN.md."""

import unicodedata

import pytest

from core.errors import InvalidPathError
from core.ids import document_id, normalise_path, object_key, point_id

pytestmark = pytest.mark.unit


def test_nfc_and_nfd_spellings_are_one_document():
    nfc = unicodedata.normalize("NFC", "notes/café.md")
    nfd = unicodedata.normalize("NFD", "notes/café.md")
    assert nfc != nfd
    assert normalise_path(nfd) == nfc
    assert document_id("acme", nfc) == document_id("acme", nfd)
    assert object_key("acme", nfd) == f"acme/{nfc}"


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/etc/passwd", "relative"),
        ("a/../b", "'..'"),
        ("a//b", "empty segment"),
        ("a/", "empty segment"),
        ("a/./b", "'.'"),
        ("bad\x00name", "control"),
        ("tab\tname", "control"),
        ("x" * 256, "255 bytes"),
        ("", "empty"),
        ("  ", "white space"),
        ("docs/ \u3000/a.md", "white space"),
    ],
)
def test_hostile_paths_are_rejected_with_the_rule_named(path, reason):
    with pytest.raises(InvalidPathError) as info:
        normalise_path(path)
    assert reason in str(info.value)


def test_key_longer_than_1024_bytes_is_rejected():
    path = "/".join(["é" * 100] * 6)  # 200 bytes per segment, 1205 bytes in all
    with pytest.raises(InvalidPathError, match="1024"):
        object_key("acme", path)


def test_ids_are_deterministic_and_distinct():
    doc = document_id("acme", "a.md")
    assert doc == document_id("acme", "a.md")
    assert doc != document_id("other", "a.md")
    ids = {point_id(doc, v, "text", i) for v in (1, 2) for i in range(50)}
    assert len(ids) == 100
    assert point_id(doc, 1, "text", 0) == point_id(doc, 1, "text", 0)


def test_bad_tenant_is_rejected():
    with pytest.raises(InvalidPathError):
        document_id("a/b", "x.md")
