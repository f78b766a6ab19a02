"""A plain hit answered with bytes prepared for its entry, below aiohttp's response layer.

A hit carries fifteen headers. Building a ``web.Response`` with them and letting aiohttp
copy, complete and serialize them on every hit cost about a third of a hot hit's time on
20 KB audio (bench/hit_path; README, "Hits"). Yet an entry's headers are the same on every
plain hit but for Age, the remaining TTL and Date, which move once a second. So they are
serialized once per entry and second (:class:`HitWire`, kept with the entry), and a hit
writes them, its request id and the audio in one write through the request's stream
writer (:class:`PreparedHit`), with aiohttp's public writer API; audio of ``SPLIT_AT``
bytes or more in a second write, so that it is not copied to be joined to the head.

Only a *plain* hit goes this way (:func:`is_plain`): HTTP/1.1 with keep-alive, not HEAD,
no validators and no range. Everything else is answered by aiohttp as before, and the
tests hold the two to the same bytes.
"""

from __future__ import annotations

import time
from typing import Protocol

from aiohttp import HttpVersion11, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict

from ..core.header_text import unwritable
from ..core.http_cache import http_date
from ..core.outcomes import HIT
from ..observability.access_log import REQUEST_ID_HEADER

Headers = list[tuple[str, str]]

_STATUS_LINE = b"HTTP/1.1 200 OK\r\n"
# Audio this long leaves in a write of its own after the head instead of joined to it: the
# join copied the whole body once more per hit, and a second send costs less than that
# copy from here on (docs/performance.md, "Hits from Redis": the body in two writes).
SPLIT_AT = 64 * 1024
_REQUEST_ID = f"{REQUEST_ID_HEADER}: ".encode()
# Conditional and range requests need an answer planned for them (http_cache.plan_response).
CONDITIONAL = ("range", "if-none-match", "if-modified-since")


class Stamped(Protocol):
    """What the clock-bound headers of a hit are made from (a cached entry)."""

    @property
    def created_ms(self) -> int: ...
    @property
    def expires_ms(self) -> int: ...


class UnsafeHeader(ValueError):
    """A header that cannot be written as it is (it would split the answer)."""


def is_plain(request: web.BaseRequest) -> bool:
    """Whether ``request`` may be answered with a prepared hit: the answer keeps the
    connection open, carries a body and needs no planning."""
    return (
        request.version == HttpVersion11
        and request.keep_alive
        and request.method != "HEAD"
        and not any(name in request.headers for name in CONDITIONAL)
    )


def _serialized(headers: Headers) -> bytes:
    culprit = unwritable(headers)
    if culprit is not None:
        raise UnsafeHeader(f"header {culprit!r} cannot be written as it is")
    # UTF-8 as aiohttp writes headers, which drops lone surrogates (the bytes of a header
    # that was not UTF-8 when the upstream sent it, as aiohttp's client decodes them).
    text = "".join([f"{name}: {value}\r\n" for name, value in headers])
    return text.encode("utf-8", "ignore")


class HitWire:
    """One entry's answer to a plain hit, serialized: the headers that never change once,
    the ones that move with the clock (Age, Cache-Control, Cache-Status, Date) again when
    they do, at most once a second."""

    __slots__ = ("_block", "_dynamic", "_fixed", "_head", "_stamp")

    def __init__(self, fixed: Headers, length: int) -> None:
        self._fixed = [*fixed, ("Content-Length", str(length))]
        self._block = _STATUS_LINE + _serialized(self._fixed)
        self._stamp = (-1, -1, -1)
        self._head = b""
        self._dynamic: Headers = []

    def head(self, age_s: int, ttl_s: int, now_s: int) -> bytes:
        """The status line and every header but the request id, at this second."""
        if (age_s, ttl_s, now_s) != self._stamp:
            # A new list, never changed in place: answers already made keep theirs.
            self._dynamic = [
                ("Age", str(age_s)),
                ("Cache-Control", f"max-age={ttl_s}"),
                ("Cache-Status", HIT.but(ttl=ttl_s).render()),
                ("Date", http_date(now_s * 1000)),
                ("Server", SERVER_SOFTWARE),
            ]
            self._head = self._block + _serialized(self._dynamic)
            self._stamp = (age_s, ttl_s, now_s)
        return self._head

    def head_now(self, cached: Stamped) -> bytes:
        """:meth:`head` for an entry created and expiring when ``cached`` says, now."""
        now = time.time()
        now_ms = int(now * 1000)
        age_s = max(0, (now_ms - cached.created_ms) // 1000)
        ttl_s = max(0, (cached.expires_ms - now_ms) // 1000)
        return self.head(age_s, ttl_s, int(now))

    @staticmethod
    def wire_bytes(head: bytes, request_id: str | None, audio: bytes) -> bytes:
        """All the bytes of one answer: ``head``, the request id and the audio."""
        if request_id is None:
            return b"".join((head, b"\r\n", audio))
        rid = request_id.encode()
        return b"".join((head, _REQUEST_ID, rid, b"\r\n\r\n", audio))

    @staticmethod
    def wire_parts(head: bytes, request_id: str | None, audio: bytes) -> tuple[bytes, bytes]:
        """:meth:`wire_bytes` as (first write, second write): audio of ``SPLIT_AT`` bytes or
        more is the second, not copied to be joined to the head; else there is none."""
        if len(audio) >= SPLIT_AT:
            return HitWire.wire_bytes(head, request_id, b""), audio
        return HitWire.wire_bytes(head, request_id, audio), b""

    def answer(self, head: bytes, request_id: str | None, audio: bytes) -> PreparedHit:
        """The answer to one plain hit, with the head :meth:`head` gave for it."""
        return PreparedHit(head, request_id, audio, (self._fixed, self._dynamic))


class PreparedHit(web.StreamResponse):
    """A 200 whose bytes are ready: ``prepare`` writes them all, in one write.

    Its headers are fixed before it is returned (so ``prepared`` is true from the start:
    nothing may add to them), and they are only turned back into a mapping if someone
    reads them, such as the access log."""

    _fixed = False  # until __init__ is done: aiohttp's own may check ``prepared``
    access_result = "hit"  # for the access line (proxy.observability.access_log.access_fields)

    def __init__(
        self,
        head: bytes,
        request_id: str | None,
        audio: bytes,
        headers: tuple[Headers, Headers],
    ) -> None:
        super().__init__(status=200)
        self._head = head
        self._request_id = request_id
        self._audio = audio
        self._header_lists = headers
        self._view: CIMultiDict[str] | None = None
        self._sent = 0
        self._fixed = True

    def __repr__(self) -> str:
        state = "sent" if self._sent else "ready"
        return f"<PreparedHit 200 {len(self._audio)} bytes {state}>"

    @property
    def prepared(self) -> bool:
        return self._fixed

    @property
    def keep_alive(self) -> bool | None:
        return True  # only plain requests, which keep their connection, get one

    @property
    def headers(self) -> CIMultiDict[str]:
        if self._view is None:
            fixed, dynamic = self._header_lists
            view = CIMultiDict([*fixed, *dynamic])
            if self._request_id is not None:
                view[REQUEST_ID_HEADER] = self._request_id
            self._view = view
        return self._view

    @property
    def content_length(self) -> int | None:
        return len(self._audio)

    @content_length.setter
    def content_length(self, value: int | None) -> None:
        raise RuntimeError("the headers of a prepared hit are fixed")

    @property
    def body_length(self) -> int:
        return self._sent  # as on the wire, headers included, like any answer's

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        writer = request.writer
        if self._sent:
            return writer
        data, tail = HitWire.wire_parts(self._head, self._request_id, self._audio)
        if tail:
            await writer.write(data)
        # write_eof with the data waits for the client to take it, whatever its size: a
        # client pipelining requests it does not read must not make us buffer answers.
        await writer.write_eof(tail or data)
        self._sent = len(data) + len(tail)
        return writer

    async def write_eof(self, data: bytes = b"") -> None:
        return  # prepare wrote everything
