"""The metadata manager: a document's own fields (``metadata``) and what its file says (``properties``).

README, "Document metadata". Two kinds of fields travel with every version, to the catalog
(``document_versions.metadata``/``properties``, JSONB) and to every point's payload (``metadata``/``properties``):

* **metadata**: what the user attaches (``POST /v1/uploads`` ``"metadata"``, ``sluice upload --meta``, S3 user
  metadata ``x-amz-meta-*`` of objects found by ``--scan``, ``PATCH /v1/documents/{id}``). At most
  :data:`MAX_KEYS` keys, each of letters, digits and ``_`` (at most :data:`MAX_KEY_LENGTH` characters), whose values
  are strings (at most :data:`MAX_STRING_LENGTH` characters), numbers, booleans or lists of strings; at most
  :data:`MAX_BYTES` bytes as compact JSON. :func:`validate_metadata` enforces it and names the key at fault.
* **properties**: what the file itself says, extracted per modality and never invented (a field the file does not
  have is absent): :data:`PROPERTY_FIELDS` lists each with its type.

Filters (``POST /v1/search`` ``filters.metadata`` and ``filters.properties``) are checked here
(:func:`validate_metadata_filter`, :func:`validate_property_filter`) and become query conditions in the one module
that builds filters (``core.vectorstore.schema.search_conditions``).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from core.errors import SluiceError

MAX_KEYS = 64
MAX_KEY_LENGTH = 64
MAX_STRING_LENGTH = 1024
MAX_BYTES = 8 * 1024
#: Items of one list value in a filter (a stored list is bounded by ``MAX_BYTES``).
MAX_FILTER_ITEMS = 100
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_]{1,64}$")

#: The extracted properties and their types: ``keyword`` (a string matched exactly), ``integer``, ``float``,
#: ``datetime`` (RFC 3339 in UTC). Ranges (``gte``/``gt``/``lte``/``lt``) apply to the numbers and times.
PROPERTY_FIELDS: dict[str, str] = {
    "title": "keyword",  # PDF, HTML, Markdown
    "author": "keyword",  # PDF
    "subject": "keyword",  # PDF
    "created": "datetime",  # PDF
    "page_count": "integer",  # PDF
    "width": "integer",  # images
    "height": "integer",  # images
    "captured_at": "datetime",  # images (EXIF)
    "camera": "keyword",  # images (EXIF make and model)
    "duration_s": "float",  # audio
    "sample_rate": "integer",  # audio
    "channels": "integer",  # audio
    "language": "keyword",  # every text: ISO 639-1
}
RANGE_OPERATORS = ("gte", "gt", "lte", "lt")


class MetadataError(SluiceError, ValueError):
    """Metadata, or a filter on it, that breaks the rules of this module.

    Attributes:
        key: the key at fault (``""`` when the whole value is: not an object, too many keys, too large).
        detail: what is wrong, for a person.
    """

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"metadata {key!r}: {detail}" if key else f"metadata: {detail}")
        self.key = key
        self.detail = detail


def _check_key(key: Any) -> str:
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        shown = key if isinstance(key, str) else repr(key)
        raise MetadataError(str(shown)[:80], f"a key is 1 to {MAX_KEY_LENGTH} letters, digits or '_'")
    return key


def _check_string(key: str, value: str) -> str:
    if len(value) > MAX_STRING_LENGTH:
        raise MetadataError(key, f"a string is at most {MAX_STRING_LENGTH} characters; this one has {len(value)}")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise MetadataError(key, "a string must not hold lone surrogates")
    return value


def _check_value(key: str, value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > 2**63 - 1:
            raise MetadataError(key, "an integer must fit in 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise MetadataError(key, "a number must be finite")
        return value
    if isinstance(value, str):
        return _check_string(key, value)
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, str):
                raise MetadataError(key, f"a list holds strings only; found {type(item).__name__}")
            _check_string(key, item)
        return list(value)
    raise MetadataError(key, f"a value is a string, a number, a boolean or a list of strings; not {_kind(value)}")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def validate_metadata(value: Any) -> dict[str, Any]:
    """Check user metadata and return it as a new dict.

    Raises:
        MetadataError: not an object; more than :data:`MAX_KEYS` keys; a bad key or value (named); more than
            :data:`MAX_BYTES` bytes as compact JSON.
    """
    if not isinstance(value, Mapping):
        raise MetadataError("", f"metadata is a JSON object; not {_kind(value)}")
    if len(value) > MAX_KEYS:
        raise MetadataError("", f"at most {MAX_KEYS} keys; got {len(value)}")
    out = {_check_key(k): _check_value(k, v) for k, v in value.items()}
    size = len(encode(out).encode("utf-8"))
    if size > MAX_BYTES:
        raise MetadataError("", f"at most {MAX_BYTES} bytes as JSON; got {size}")
    return out


def encode(metadata: Mapping[str, Any]) -> str:
    """Compact, key-sorted JSON (the form stored in rows and columns)."""
    return json.dumps(dict(metadata), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def decode(text: str | bytes | None) -> dict[str, Any]:
    """The inverse of :func:`encode` (``""`` and ``None`` give ``{}``)."""
    return dict(json.loads(text)) if text else {}


def from_s3_user_metadata(headers: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Metadata from an object's S3 user metadata (``x-amz-meta-<name>``, values strings).

    Names are lower-cased by S3; ``-`` becomes ``_`` (``x-amz-meta-retention-class`` is ``retention_class``).

    Returns:
        ``(metadata, refused)``: the valid entries, and for each entry left out, why (logged by the caller). The
        whole set is also left out (with one reason) when it breaks the size or key-count limit.
    """
    out: dict[str, Any] = {}
    refused: list[str] = []
    for name, raw in headers.items():
        key = str(name).lower().removeprefix("x-amz-meta-").replace("-", "_")
        try:
            out[_check_key(key)] = _check_string(key, str(raw))
        except MetadataError as exc:
            refused.append(str(exc))
    try:
        return validate_metadata(out), refused
    except MetadataError as exc:
        return {}, refused + [str(exc)]


# --- filters ----------------------------------------------------------------------------------------------------


def _filter_value(key: str, value: Any) -> Any:
    if isinstance(value, list):
        if not value or len(value) > MAX_FILTER_ITEMS:
            raise MetadataError(key, f"a list in a filter holds 1 to {MAX_FILTER_ITEMS} values")
        for item in value:
            if isinstance(item, (list, Mapping)) or item is None:
                raise MetadataError(key, "a list in a filter holds strings, numbers or booleans")
            _check_value(key, item)
        return list(value)
    return _check_value(key, value)


def validate_metadata_filter(value: Any) -> dict[str, Any]:
    """Check ``filters.metadata``: ``{key: value}``, exact match, keys ANDed; a list matches any of its items.

    Raises:
        MetadataError: not an object, empty, a bad key, or a value that is no string, number, boolean or list of them.
    """
    if not isinstance(value, Mapping) or not value:
        raise MetadataError("", "filters.metadata is a non-empty object of key: value")
    if len(value) > MAX_KEYS:
        raise MetadataError("", f"at most {MAX_KEYS} keys; got {len(value)}")
    return {_check_key(k): _filter_value(k, v) for k, v in value.items()}


def _bound(key: str, kind: str, op: str, bound: Any) -> Any:
    if kind == "datetime":
        moment = parse_time(bound) if isinstance(bound, str) else None
        if moment is None:
            raise MetadataError(key, f"{op} of a time is an RFC 3339 string (2024-01-31 or 2024-01-31T12:00:00Z)")
        return moment
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound):
        raise MetadataError(key, f"{op} of a number is a finite number")
    return bound


def validate_property_filter(value: Any) -> dict[str, Any]:
    """Check ``filters.properties``: as metadata, on the :data:`PROPERTY_FIELDS`, plus ranges for numbers and times.

    A range is ``{"gte": x, "lte": y}`` (also ``gt``, ``lt``): numbers for numbers, RFC 3339 strings for times
    (returned as aware ``datetime``).

    Raises:
        MetadataError: not an object, empty, an unknown property, a range on a keyword, a bad bound or value.
    """
    if not isinstance(value, Mapping) or not value:
        raise MetadataError("", "filters.properties is a non-empty object of property: value or range")
    out: dict[str, Any] = {}
    for key, wanted in value.items():
        kind = PROPERTY_FIELDS.get(key) if isinstance(key, str) else None
        if kind is None:
            raise MetadataError(str(key)[:80], f"not a property; the properties are {', '.join(PROPERTY_FIELDS)}")
        if isinstance(wanted, Mapping):
            if kind == "keyword":
                raise MetadataError(key, "a range applies to numbers and times only")
            unknown = sorted(set(wanted) - set(RANGE_OPERATORS))
            if unknown or not wanted:
                raise MetadataError(key, f"a range has {', '.join(RANGE_OPERATORS)}; got {unknown or 'nothing'}")
            out[key] = {op: _bound(key, kind, op, bound) for op, bound in wanted.items()}
        elif kind == "datetime":
            out[key] = {"gte": _bound(key, kind, "a time", wanted), "lte": _bound(key, kind, "a time", wanted)}
        else:
            out[key] = _filter_value(key, wanted)
    return out


# --- properties -------------------------------------------------------------------------------------------------


def parse_time(text: str) -> dt.datetime | None:
    """An RFC 3339 / ISO 8601 time (a date alone is midnight UTC; no zone means UTC), or ``None``."""
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def rfc3339(moment: dt.datetime) -> str:
    """A time as RFC 3339 in UTC (a naive time is UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc).isoformat()


def clean_properties(found: Mapping[str, Any]) -> dict[str, Any]:
    """The extracted properties with their declared types; empty, unknown or ill-typed values are left out.

    Strings are stripped and cut to :data:`MAX_STRING_LENGTH`; times become RFC 3339 UTC strings.
    """
    out: dict[str, Any] = {}
    for key, value in found.items():
        kind = PROPERTY_FIELDS.get(key)
        if kind is None or value is None:
            continue
        if kind == "keyword" and isinstance(value, str):
            text = " ".join(value.split())[:MAX_STRING_LENGTH]
            if text:
                out[key] = text
        elif kind == "integer" and isinstance(value, int) and not isinstance(value, bool):
            out[key] = value
        elif kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = round(float(value), 3)
        elif kind == "datetime" and isinstance(value, dt.datetime):
            out[key] = rfc3339(value)
    return out
