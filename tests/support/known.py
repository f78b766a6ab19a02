"""A proxy's known hits (proxy.request.known_hits), for tests of that path: the memo, and
a request sent until its connection answers it from the memo."""

from __future__ import annotations

import logging

import pytest

from proxy.app import PROCESSOR
from proxy.request.known_hits import KnownHits

from .proxies import ProxyClient
from .raw_http import Answer, exchange


def known_of(client: ProxyClient) -> KnownHits:
    known = client.app[PROCESSOR].known
    assert known is not None
    return known


async def until_known(client: ProxyClient, request: bytes) -> Answer:
    """Send ``request`` (each time on a new connection) until the connection answers it
    as a known hit; that answer."""
    assert client.port is not None
    known = known_of(client)
    for _ in range(16):
        before = known.answered
        (answer,) = await exchange(client.port, request)
        assert answer.status_line == "HTTP/1.1 200 OK", answer.status_line
        if known.answered == before + 1:
            return answer
    raise AssertionError("the request was never answered as a known hit")


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The error records logged, but for redis-py's reports of its own objects (from
    earlier tests' proxies, stopped mid-command) when the collector finalizes them: not
    the path under test's to answer for."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and not r.getMessage().startswith("Unclosed ")
    ]
