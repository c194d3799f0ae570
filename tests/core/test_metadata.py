"""The metadata manager (``core.metadata``): what user metadata may hold, filters on it, and S3 user metadata."""

from __future__ import annotations

import datetime as dt

import pytest

from core.metadata import (
    MAX_BYTES,
    MetadataError,
    clean_properties,
    from_s3_user_metadata,
    validate_metadata,
    validate_metadata_filter,
    validate_property_filter,
)

pytestmark = pytest.mark.unit


def test_every_allowed_shape_is_kept_as_given():
    given = {"dept": "legal", "year": 2024, "score": 0.5, "reviewed": False, "tags": ["a", "b"], "Key_9": "",
             "empty": []}
    assert validate_metadata(given) == given
    assert validate_metadata({}) == {}


@pytest.mark.parametrize(
    "value, key",
    [
        ({"bad-key": "x"}, "bad-key"),
        ({"": "x"}, ""),
        ({"k" * 65: "x"}, "k" * 65),
        ({"ünicode": "x"}, "ünicode"),
        ({"nested": {"a": 1}}, "nested"),
        ({"none": None}, "none"),
        ({"mixed": ["a", 1]}, "mixed"),
        ({"deep": [["a"]]}, "deep"),
        ({"long": "x" * 1025}, "long"),
        ({"item": ["x" * 1025]}, "item"),
        ({"inf": float("inf")}, "inf"),
        ({"nan": float("nan")}, "nan"),
        ({"huge": 2**64}, "huge"),
        ({"surrogate": "\ud800"}, "surrogate"),
    ],
)
def test_each_invalid_value_is_refused_naming_its_key(value, key):
    with pytest.raises(MetadataError) as caught:
        validate_metadata(value)
    assert caught.value.key == key[:80]


@pytest.mark.parametrize("value", [[], "text", 3, None, {f"k{i}": "v" for i in range(65)},
                                   {f"k{i}": "x" * 1000 for i in range(9)}])
def test_the_whole_object_is_refused_when_it_is_no_object_or_too_big(value):
    with pytest.raises(MetadataError) as caught:
        validate_metadata(value)
    assert caught.value.key == ""


def test_the_size_limit_counts_compact_utf8_json():
    value = "é" * 1000  # 2 bytes each in UTF-8
    fits = {f"k{i}": value for i in range((MAX_BYTES - 200) // 2010)}
    assert validate_metadata(fits) == fits
    with pytest.raises(MetadataError, match="bytes"):
        validate_metadata({f"k{i}": value for i in range(5)})


def test_s3_user_metadata_becomes_metadata_and_bad_entries_are_left_out_with_a_reason():
    metadata, refused = from_s3_user_metadata({"Retention-Class": "gold", "dept": "ops", "bad.key": "x"})
    assert metadata == {"retention_class": "gold", "dept": "ops"}
    assert len(refused) == 1 and "bad.key" in refused[0]
    assert from_s3_user_metadata({}) == ({}, [])


def test_filters_on_metadata_are_checked():
    assert validate_metadata_filter({"dept": ["a", "b"], "year": 2024, "ok": True}) == {
        "dept": ["a", "b"], "year": 2024, "ok": True}
    for bad, key in (({"bad-key": 1}, "bad-key"), ({"k": {"gte": 1}}, "k"), ({"k": []}, "k"), ({"k": None}, "k")):
        with pytest.raises(MetadataError) as caught:
            validate_metadata_filter(bad)
        assert caught.value.key == key
    with pytest.raises(MetadataError):
        validate_metadata_filter({})


def test_filters_on_properties_take_ranges_on_numbers_and_times_only():
    checked = validate_property_filter({"page_count": {"gte": 2, "lt": 10}, "created": {"gte": "2024-01-31"},
                                        "language": ["en", "de"], "captured_at": "2024-05-01T10:00:00Z"})
    assert checked["page_count"] == {"gte": 2, "lt": 10}
    assert checked["created"] == {"gte": dt.datetime(2024, 1, 31, tzinfo=dt.timezone.utc)}
    assert checked["captured_at"]["gte"] == checked["captured_at"]["lte"]
    for bad, key in (({"colour": "red"}, "colour"), ({"title": {"gte": 1}}, "title"),
                     ({"page_count": {"between": 1}}, "page_count"), ({"created": {"gte": "yesterday"}}, "created"),
                     ({"page_count": {"gte": "3"}}, "page_count")):
        with pytest.raises(MetadataError) as caught:
            validate_property_filter(bad)
        assert caught.value.key == key


def test_properties_keep_only_known_fields_of_the_right_type():
    moment = dt.datetime(2024, 1, 2, 3, 4, 5)
    assert clean_properties({"title": "  A   title ", "author": "", "page_count": 3, "width": True, "created": moment,
                             "duration_s": 1.23456, "colour": "red", "language": None}) == {
        "title": "A title", "page_count": 3, "created": "2024-01-02T03:04:05+00:00", "duration_s": 1.235}
