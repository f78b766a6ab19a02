"""The proxy's connections: aiohttp's own, except that a known hit is answered as its
bytes arrive (:mod:`proxy.request.known_hits`).

aiohttp parses what a connection receives into requests and queues them for the task that
serves the connection. :class:`HitConnection` looks at the queue before that task does:
while the connection is idle (its task waiting, nothing queued, nothing being written),
each request at the head of the queue that is a known hit is answered at once, by one
write; the first that is not, and all after it, go to aiohttp as they would have, so
answers keep the order of their requests. A known request whose body comes in a later
read than its head (httpx, under the OpenAI SDK, writes them apart) waits for it here,
briefly, rather than waking aiohttp's task for a request that then needs no task. The
parser, its limits and its errors stay aiohttp's.

This leans on aiohttp's connection internals (its queue, the waiter of its task, its
keep-alive clock), which the version bounds in pyproject.toml pin; if they are not there,
the connection is aiohttp's alone (logged once), and tests/integration/test_known_hits.py
fails, rather than anything being answered wrongly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import HttpVersion11, web
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler

from ..observability.access_log import known_line
from ..state import PROCESSOR
from .known_hits import Answer, Known, KnownHits

log = logging.getLogger(__name__)

# What the answers here rely on, checked once on the first connection.
_INTERNALS = (
    "_waiter",
    "_messages",
    "_parser",
    "_upgraded",
    "_payload_parser",
    "_buffer_paused",
    "_next_keepalive_close_time",
    "_keepalive_handle",
    "_keepalive_timeout",
    "_process_keepalive",
    "_request_in_progress",
    "_handler_waiter",
    "_close",
    "_force_close",
)
_PAYLOAD = ("_buffer", "_buffer_offset")


# What the connection did with the request at the head of its queue.
_ANSWERED, _NOT_KNOWN, _BODY_TO_COME, _READING = range(4)
# How long a known request's head waits here for its body (clients such as httpx, under
# the OpenAI SDK, write the head and the body apart): past it, aiohttp takes the request,
# which could not be answered before its body either.
HOLD_SECONDS = 0.05


class HitConnection(RequestHandler):
    """A connection of the proxy's listener (see the module's docstring)."""

    __slots__ = ("_held", "_held_since", "_known", "_parked", "_reading", "_remote")

    def __init__(self, manager: web.Server, known: KnownHits | None, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._known = known
        self._remote: str | None = None
        # While the request at the head of the queue is this connection's (a known head
        # waiting for its body, or a known request whose entry is being read), the waiter
        # of aiohttp's task is kept here, so that nothing parsed meanwhile wakes it.
        self._parked: asyncio.Future[None] | None = None
        self._held: asyncio.TimerHandle | None = None
        self._held_since = 0.0
        self._reading: asyncio.Task[None] | None = None

    def data_received(self, data: bytes) -> None:
        if self._parked is not None:  # the head of the queue is ours: later ones queue
            super().data_received(data)
            held = self._held
            if held is not None:  # the body of the held head may be here now
                held.cancel()
                self._held = None
                self._serve_queue(self._held_since, may_hold=False)
            return
        known = self._known
        waiter = self._waiter
        if (
            known is None
            or not len(known)
            or waiter is None  # the connection's task is busy with a request
            or waiter.done()
            or self._messages
            or self._upgraded
            or self._payload_parser is not None
            or self._paused  # the client is not reading what it was sent
            or self.transport is None
        ):
            super().data_received(data)
            return
        started = time.perf_counter()
        # aiohttp wakes the connection's task for what it parses: not for what is answered
        # here, which it must never see.
        self._parked = waiter
        self._waiter = None
        try:
            super().data_received(data)
        finally:
            self._serve_queue(started, may_hold=True)

    def _serve_queue(self, started: float, *, may_hold: bool) -> None:
        """Answer the known hits at the head of the queue; then give the rest (if any) to
        aiohttp's task, unless the head is still ours (held, or its entry being read)."""
        known = self._known
        messages = self._messages
        while (
            known is not None
            and messages
            and not self._buffer_paused
            and not (self._close or self._force_close)
        ):
            message, payload = messages[0]
            verdict = self._answer(known, message, payload, started)
            if verdict == _ANSWERED:
                messages.popleft()
                continue
            if verdict == _READING:
                return
            if verdict == _BODY_TO_COME and may_hold and len(messages) == 1:
                self._held = self._loop.call_later(HOLD_SECONDS, self._release)
                self._held_since = started
                return
            break
        self._unpark()

    def _unpark(self) -> None:
        waiter = self._parked
        if waiter is None:
            return
        self._parked = None
        self._waiter = waiter
        if waiter.done():
            return
        if self._messages:
            # aiohttp's task answers the request at the head of the queue even once the
            # connection is closing (a graceful shutdown waits for it), then ends it.
            waiter.set_result(None)
        elif self._close or self._force_close:
            waiter.cancel()  # what close() does to an idle connection's waiter

    def _release(self) -> None:
        self._held = None
        self._unpark()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._held is not None:
            self._held.cancel()
            self._held = None
        if self._reading is not None:
            self._reading.cancel()
            self._reading = None
        self._unpark()
        super().connection_lost(exc)

    def _answer(self, known: KnownHits, message: Any, payload: Any, started: float) -> int:
        raw_headers = getattr(message, "raw_headers", None)
        if (
            raw_headers is None  # a parse error, answered by aiohttp
            or message.version != HttpVersion11
            or message.should_close
            or message.upgrade
        ):
            return _NOT_KNOWN
        if not payload.is_eof():  # its body is not all here
            if known.may_know(message.method, message.path, raw_headers):
                return _BODY_TO_COME
            return _NOT_KNOWN
        if payload is EMPTY_PAYLOAD:
            body = b""
        elif payload._buffer_offset:  # read from already: not this path's
            return _NOT_KNOWN
        else:
            body = b"".join(payload._buffer)
        transport = self.transport
        if transport is None or self._paused or transport.get_write_buffer_size():
            return _NOT_KNOWN  # aiohttp's writer waits for the client to read
        entry = known.entry((message.method, message.path, raw_headers, body))
        if entry is None:
            return _NOT_KNOWN
        answer = known.hot(entry, message.method)
        if answer is None:
            self._reading = self._loop.create_task(self._read(known, entry, message, started))
            return _READING
        self._send(known, answer, started)
        return _ANSWERED

    async def _read(self, known: KnownHits, entry: Known, message: Any, started: float) -> None:
        """Answer the head of the queue from the store; else hand it to aiohttp (its full
        path reads again, and answers a miss or a store error as it always does)."""
        # Like a request of aiohttp's own: a graceful shutdown waits for it.
        self._request_in_progress = True
        answer = None
        try:
            answer = await known.stored(entry, message.method)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the full path answers it, and reports it
            log.debug("known hit not read from the store: %r", exc)
        finally:
            self._reading = None
            self._request_in_progress = False
            if self._handler_waiter is not None:
                self._handler_waiter.set_result(None)
        transport = self.transport
        messages = self._messages
        if (
            answer is None
            or transport is None
            or transport.is_closing()
            or not messages
            or messages[0][0] is not message
        ):
            self._unpark()
            return
        messages.popleft()
        try:
            self._send(known, answer, started)
            self._serve_queue(time.perf_counter(), may_hold=True)
        except Exception:  # as aiohttp does with a connection whose handling broke
            log.exception("known hit: the connection is closed")
            self.force_close()

    def _send(self, known: KnownHits, answer: Answer, started: float) -> None:
        transport = self.transport
        assert transport is not None and self._parser is not None
        self._parser.message_consumed()
        if self._manager is not None:
            self._manager.requests_count += 1
        transport.write(answer.data)
        if answer.tail:
            transport.write(answer.tail)
        known.sent(answer, started)
        loop = self._loop
        # The connection's idle clock starts again, as after any answer.
        close_time = loop.time() + self._keepalive_timeout
        self._next_keepalive_close_time = close_time
        if self._keepalive_handle is None:
            self._keepalive_handle = loop.call_at(close_time, self._process_keepalive)
        access = self.access_logger
        if self._logging_enabled and access is not None:
            fields = answer.fields
            fields["duration_ms"] = round((time.perf_counter() - started) * 100_000) / 100
            fields["remote"] = self._remote_address()
            known_line(access.logger, fields, answer.known.text)

    def _remote_address(self) -> str:
        remote = self._remote
        if remote is None:
            peer = self.peername
            if peer is None:
                remote = ""
            elif isinstance(peer, (list, tuple)):
                remote = str(peer[0])
            else:
                remote = str(peer)
            self._remote = remote
        return remote


class ProxyServer(web.Server):
    """aiohttp's server, making :class:`HitConnection` connections."""

    known: KnownHits | None = None

    def __call__(self) -> RequestHandler:
        return HitConnection(self, self.known, loop=self._loop, **self._kwargs)


_checked: bool | None = None


def _internals_present() -> bool:
    global _checked
    if _checked is None:
        missing = [name for name in _INTERNALS if not hasattr(RequestHandler, name)]
        missing += [name for name in _PAYLOAD if not hasattr(StreamReader, name)]
        _checked = not missing
        if missing:
            log.warning(
                "this aiohttp lacks %s: known hits go through the full request path",
                ", ".join(missing),
            )
    return _checked


class ProxyRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer the proxy app's known hits (when the
    app has a request path: the admin listener's has none)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        processor = self.app.get(PROCESSOR)
        if processor is None or processor.known is None or not _internals_present():
            return server
        # The server aiohttp made, with our connections: its constructor's arguments are
        # the application's own (handler, request factory, handler_args).
        server.__class__ = ProxyServer
        assert isinstance(server, ProxyServer)
        server.known = processor.known
        return server
