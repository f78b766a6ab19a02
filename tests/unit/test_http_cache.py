"""Pure unit tests of proxy.core.http_cache: validators, conditional requests, byte ranges."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.http_cache import (
    Plan,
    http_date,
    make_etag,
    not_modified,
    parse_range,
    plan_response,
)

ETAG = make_etag("ab" * 32, 0xDEADBEEF)
LM_MS = 1_700_000_000_123  # Tue, 14 Nov 2023 22:13:20 GMT
LM = http_date(LM_MS)


def plan(**headers: str) -> Plan:
    lowered = {k.lower().replace("_", "-"): v for k, v in headers.items()}
    return plan_response(lowered, length=1000, etag=ETAG, last_modified_ms=LM_MS)


def test_etag_is_strong_and_depends_on_key_and_content() -> None:
    assert ETAG == '"abababababababababab-deadbeef"'
    assert make_etag("ab" * 32, 1) != ETAG
    assert make_etag("cd" * 32, 0xDEADBEEF) != ETAG


def test_http_date_is_imf_fixdate() -> None:
    assert LM == "Tue, 14 Nov 2023 22:13:20 GMT"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-99", (0, 99)),
        ("bytes=0-0", (0, 0)),
        ("bytes=990-", (990, 999)),
        ("bytes=-10", (990, 999)),
        ("bytes=-5000", (0, 999)),
        ("bytes=100-5000", (100, 999)),
        ("BYTES = 1 - 2", (1, 2)),
        ("bytes=1000-", False),
        ("bytes=1000-1001", False),
        ("bytes=-0", False),
        ("bytes=5-3", None),
        ("bytes=-", None),
        ("bytes=0-1,5-6", None),  # several ranges: the whole body instead
        ("items=0-1", None),
        ("bytes=a-b", None),
    ],
)
def test_parse_range(header: str, expected: object) -> None:
    assert parse_range(header, 1000) == expected


def test_nothing_is_satisfiable_in_an_empty_body() -> None:
    assert parse_range("bytes=-1", 0) is False
    assert parse_range("bytes=0-", 0) is False


@given(length=st.integers(1, 10_000), first=st.integers(0, 20_000), last=st.integers(0, 20_000))
def test_a_satisfiable_range_lies_inside_the_body(length: int, first: int, last: int) -> None:
    for header in (f"bytes={first}-{last}", f"bytes={first}-", f"bytes=-{last}"):
        parsed = parse_range(header, length)
        if isinstance(parsed, tuple):
            start, end = parsed
            assert 0 <= start <= end < length


def test_plain_request_is_200() -> None:
    assert plan() == Plan(200)


def test_range_is_206() -> None:
    assert plan(range="bytes=10-19") == Plan(206, 10, 19)


def test_unsatisfiable_range_is_416() -> None:
    assert plan(range="bytes=5000-") == Plan(416)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"if-none-match": ETAG}, True),
        ({"if-none-match": f'"x", {ETAG}'}, True),
        ({"if-none-match": f"W/{ETAG}"}, True),  # weak comparison
        ({"if-none-match": "*"}, True),
        ({"if-none-match": '"x"'}, False),
        ({"if-modified-since": LM}, True),
        ({"if-modified-since": "Wed, 15 Nov 2023 00:00:00 GMT"}, True),
        ({"if-modified-since": "Mon, 13 Nov 2023 00:00:00 GMT"}, False),
        ({"if-modified-since": "not a date"}, False),
        ({"if-none-match": '"x"', "if-modified-since": LM}, False),  # the tag decides
        ({}, False),
    ],
)
def test_not_modified(headers: dict[str, str], expected: bool) -> None:
    assert not_modified(headers, ETAG, LM_MS) is expected


def test_304_wins_over_range() -> None:
    assert plan(if_none_match=ETAG, range="bytes=0-1") == Plan(304)


@pytest.mark.parametrize(
    ("if_range", "expected"),
    [
        (ETAG, Plan(206, 0, 9)),
        ('"other"', Plan(200)),
        (f"W/{ETAG}", Plan(200)),  # If-Range needs a strong match
        (LM, Plan(206, 0, 9)),
        ("Wed, 15 Nov 2023 00:00:00 GMT", Plan(200)),  # only the exact date matches
        ("Mon, 13 Nov 2023 00:00:00 GMT", Plan(200)),
        ("garbage", Plan(200)),
    ],
)
def test_if_range(if_range: str, expected: Plan) -> None:
    assert plan(range="bytes=0-9", if_range=if_range) == expected


def test_if_range_without_range_is_ignored() -> None:
    assert plan(if_range='"other"') == Plan(200)
