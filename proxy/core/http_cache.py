"""How a stored answer is served: validators, conditional requests and byte ranges.

Pure functions over request headers and the entry's length and validators (RFC 9110).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from functools import lru_cache

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def make_etag(key_hex: str, checksum: int) -> str:
    """A strong validator: the same key and the same audio give the same tag."""
    return f'"{key_hex[:20]}-{checksum:08x}"'


def http_date(epoch_ms: int) -> str:
    return _http_date(epoch_ms // 1000)


@lru_cache(maxsize=4096)  # an entry's Last-Modified is formatted once, not per hit
def _http_date(epoch_s: int) -> str:
    return format_datetime(datetime.fromtimestamp(epoch_s, UTC), usegmt=True)


def _parse_date(value: str) -> int | None:
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


@dataclass(frozen=True, slots=True)
class Plan:
    """What to send: status and, for 206, the inclusive byte range."""

    status: int
    start: int = 0
    end: int = -1  # inclusive; -1 with status 200 means the whole body


def _etag_matches(header: str, etag: str) -> bool:
    if header.strip() == "*":
        return True
    tags = [t.strip() for t in header.split(",")]
    # If-None-Match uses weak comparison: W/"x" matches "x".
    return any(t.removeprefix("W/") == etag for t in tags)


def not_modified(headers: Mapping[str, str], etag: str, last_modified_ms: int) -> bool:
    """True when the client's copy is current (If-None-Match, else If-Modified-Since)."""
    inm = headers.get("if-none-match")
    if inm is not None:
        return _etag_matches(inm, etag)
    ims = headers.get("if-modified-since")
    if ims is not None:
        since = _parse_date(ims)
        return since is not None and last_modified_ms // 1000 <= since
    return False


def _if_range_holds(validator: str, etag: str, last_modified_ms: int) -> bool:
    """RFC 9110 §13.1.5: a strong match of the entity tag, or exactly the Last-Modified date."""
    if validator.startswith(('"', "W/")):
        return validator == etag  # a weak tag never matches
    return _parse_date(validator) == last_modified_ms // 1000


def parse_range(value: str, length: int) -> tuple[int, int] | bool | None:
    """(start, end) inclusive, None when the header is not one byte range we serve (send
    the whole body), False when it is unsatisfiable (416)."""
    m = _RANGE.match(value)
    if not m:
        return None
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0 or length == 0:
            return False
        return max(0, length - n), length - 1
    start = int(first)
    if start >= length:
        return False
    end = min(int(last), length - 1) if last else length - 1
    if end < start:
        return None
    return start, end


def plan_response(
    headers: Mapping[str, str], *, length: int, etag: str, last_modified_ms: int
) -> Plan:
    """Decide 200, 206, 304 or 416 for a GET/HEAD of a complete stored body."""
    if not_modified(headers, etag, last_modified_ms):
        return Plan(304)
    range_header = headers.get("range")
    if range_header is None:
        return Plan(200)
    if_range = headers.get("if-range")
    if if_range is not None and not _if_range_holds(if_range.strip(), etag, last_modified_ms):
        return Plan(200)
    parsed = parse_range(range_header, length)
    if parsed is None:
        return Plan(200)
    if parsed is False:
        return Plan(416)
    start, end = parsed  # type: ignore[misc]
    return Plan(206, start, end)
