"""Pure unit tests of proxy.core.outcomes: the one Cache-Status builder and parser."""

from __future__ import annotations

import pytest

from proxy.core.outcomes import HIT, CacheStatus, Forward, Result


@pytest.mark.parametrize(
    ("status", "header", "x_cache", "result"),
    [
        (HIT.but(ttl=86399), "tts-cache; hit; ttl=86399", "HIT", Result.HIT),
        (CacheStatus(fwd=Forward.MISS, stored=True), "tts-cache; fwd=miss; stored", "MISS",
         Result.MISS),
        (CacheStatus(fwd=Forward.MISS, collapsed=True), "tts-cache; fwd=miss; collapsed",
         "MISS", Result.COALESCED),
        (CacheStatus(fwd=Forward.REQUEST, stored=True), "tts-cache; fwd=request; stored",
         "MISS", Result.MISS),
        (CacheStatus(fwd=Forward.BYPASS, detail="no-store"),
         "tts-cache; fwd=bypass; detail=no-store", "BYPASS", Result.BYPASS),
        (CacheStatus(fwd=Forward.STALE, fwd_status=503, detail="stale-if-error"),
         "tts-cache; fwd=stale; fwd-status=503; detail=stale-if-error", "STALE", Result.STALE),
    ],
)  # fmt: skip
def test_render_parse_round_trip(
    status: CacheStatus, header: str, x_cache: str, result: Result
) -> None:
    assert status.render() == header
    assert CacheStatus.parse(header) == status
    assert status.x_cache == x_cache
    assert status.result is result


def test_parse_finds_this_cache_among_others() -> None:
    value = "edge; hit, tts-cache; fwd=miss; collapsed"
    assert CacheStatus.parse(value) == CacheStatus(fwd=Forward.MISS, collapsed=True)


def test_parse_ignores_other_caches_and_junk() -> None:
    assert CacheStatus.parse("edge; hit") is None
    assert CacheStatus.parse("") is None
    assert CacheStatus.parse("tts-cache; fwd=nonsense; ttl=x") == CacheStatus()
