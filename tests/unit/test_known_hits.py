"""What the known-hits memo learns and how far it grows (proxy.request.known_hits): its
bounds, and the heads it may know (for a body that comes apart from its head)."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import make_mocked_request

from proxy.config.settings import load_settings
from proxy.core.keys import CacheKey
from proxy.request import known_hits
from proxy.request.access import ANONYMOUS, Access, Caller
from proxy.request.hits import Hits
from proxy.request.known_hits import KnownHits
from proxy.request.savings import Savings


def memo() -> KnownHits:
    settings = load_settings(env={}, overrides={"upstream_url": "http://127.0.0.1:9"})
    service: Any = None  # learning never reads the store
    return KnownHits(Access(settings), service, Hits("/audio"))


def learn(known: KnownHits, body: bytes, **headers: str) -> None:
    request = make_mocked_request("POST", "/v1/audio/speech", headers=headers)
    known.learn(
        request,
        body,
        key=CacheKey("ab" * 32),
        caller=Caller(ANONYMOUS),
        tenant="",
        metrics=Savings({}).of("openai", "alloy"),
        route="openai",
        text="Hello",
    )


def test_the_same_bytes_are_learned_once_and_their_head_is_known() -> None:
    known = memo()
    learn(known, b'{"input":"a"}', **{"Content-Length": "13"})
    learn(known, b'{"input":"a"}', **{"Content-Length": "13"})
    assert len(known) == 1
    raw = ((b"Content-Length", b"13"),)
    assert known.may_know("POST", "/v1/audio/speech", raw)
    assert not known.may_know("POST", "/v1/audio/speech", ((b"Content-Length", b"14"),))
    assert not known.may_know("GET", "/v1/audio/speech", raw)


def test_what_its_bytes_do_not_tell_is_not_learned() -> None:
    known = memo()
    learn(known, b"x" * (known_hits.MAX_BODY + 1))
    learn(known, b"{}", Expect="100-continue")
    learn(known, b"{}", **{"Content-Encoding": "gzip"})
    learn(known, b"{}", **{"Transfer-Encoding": "chunked"})
    assert len(known) == 0


def test_it_forgets_the_oldest_past_its_bounds(monkeypatch: Any) -> None:
    monkeypatch.setattr(known_hits, "MAX_KNOWN", 3)
    known = memo()
    for i in range(5):
        learn(known, b"%d" % i, **{"X-N": str(i)})
    assert len(known) == 3
    assert not known.may_know("POST", "/v1/audio/speech", ((b"X-N", b"0"),))
    assert known.may_know("POST", "/v1/audio/speech", ((b"X-N", b"4"),))
    monkeypatch.setattr(known_hits, "MAX_KNOWN_BYTES", 2023)  # the big one and no other
    learn(known, b"y" * 2000, **{"X-N": "big"})
    assert len(known) == 1  # the others went to make room
    assert known.may_know("POST", "/v1/audio/speech", ((b"X-N", b"big"),))


def test_a_head_shared_by_two_bodies_stays_known_until_both_are_gone(monkeypatch: Any) -> None:
    monkeypatch.setattr(known_hits, "MAX_KNOWN", 2)
    known = memo()
    raw = ((b"Content-Length", b"1"),)
    learn(known, b"a", **{"Content-Length": "1"})
    learn(known, b"b", **{"Content-Length": "1"})
    learn(known, b"cc", **{"Content-Length": "2"})  # the first goes
    assert known.may_know("POST", "/v1/audio/speech", raw)
    learn(known, b"dd", **{"Content-Length": "2", "X-Other": "1"})  # the second goes
    assert not known.may_know("POST", "/v1/audio/speech", raw)
