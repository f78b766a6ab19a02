"""The miss's wire to the upstream: speech requests written whole on pooled HTTP/1.1
connections, answers read by llhttp (through ``httptools``).

A miss's time to first byte is the proxy's own work plus the upstream's, and aiohttp's
client was most of the former: building its request and reading the answer's head cost a
miss about twice what writing the request as one prepared buffer and feeding the answer to
llhttp does. Fills send one kind of request (GET or POST with a body in hand, never HEAD,
never an upgrade), so this client does only that; pass-through requests, WebSockets and
streamed bodies keep aiohttp's.

What it keeps from aiohttp's client, so the upstream sees the same request: the header
order (Host, the forwarded headers, then ``Accept`` and ``User-Agent`` if absent), UTF-8
header values, ``Content-Length`` on every request, the system's certificate store for
https, and the three timeouts (connect, between reads, total). What it adds: a connection
is reused only after its answer ended exactly where its framing said, with nothing after
it; a byte the upstream sends outside an answer ends the connection, so no answer can be
read as another request's.
"""

from __future__ import annotations

import asyncio
import inspect
import ssl
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, cast

import httptools
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

# A reader that falls this far behind stops the socket's reads until it catches up.
_HIGH_WATER = 1 << 20
_LOW_WATER = 1 << 18
# What an answer may send outside its body before the body starts again or ends: its head
# (with any informational answers before it) and its trailers. llhttp bounds none of it,
# and httptools holds a header's bytes until the header ends: without this bound an
# upstream could fill the proxy's memory with one endless header or a flood of 103s.
MAX_HEAD_BYTES = 256 * 1024


def _verified_context() -> ssl.SSLContext:
    """The system's certificate store, hostnames checked, HTTP/1.1 offered by ALPN."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


def _happy_eyeballs(loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    """aiohttp's 0.25 s Happy Eyeballs delay (an address family that does not answer costs
    0.25 s, not the whole connect timeout), on a loop that has it: uvloop's
    ``create_connection`` takes no such argument and tries the addresses in turn."""
    kind = type(loop)
    options = _EYEBALLS.get(kind)
    if options is None:
        takes = "happy_eyeballs_delay" in inspect.signature(loop.create_connection).parameters
        options = _EYEBALLS[kind] = {"happy_eyeballs_delay": 0.25} if takes else {}
    return options


_EYEBALLS: dict[type, dict[str, Any]] = {}


class WireError(Exception):
    """The upstream's bytes are not an HTTP/1.1 answer, or the connection broke."""


class WireTimeout(TimeoutError):
    """The upstream took longer than a timeout allows."""


class _Pool:
    """The connections open to the upstream, and those of them waiting for a request."""

    def __init__(self, max_idle: int) -> None:
        self.max_idle = max_idle
        self.idle: list[_Connection] = []
        self.open: set[_Connection] = set()


class _Connection(asyncio.Protocol):
    """One connection to the upstream, carrying one request at a time."""

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.answer: WireAnswer | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._names: list[tuple[str, str]] = []
        self._head_size = 0

    # Transport callbacks.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; both are stream transports.
        self.transport = cast(asyncio.Transport, transport)
        self._pool.open.add(self)

    def data_received(self, data: bytes) -> None:
        answer = self.answer
        if answer is None or answer.ended:  # bytes outside an answer: not to be trusted
            self.close()
            return
        received = answer.received
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if answer.ended:  # whole, but followed by bytes: the answer stands, not the line
                answer.reusable = False
            else:
                # A callback's own error says more than llhttp's "User callback error".
                reason = exc.__context__ if isinstance(exc.__context__, WireError) else exc
                answer.fail(WireError(f"the upstream's answer is not valid HTTP: {reason}"))
            self.close()
            return
        answer.framing = answer.framing + len(data) if answer.received == received else 0
        if answer.framing > MAX_HEAD_BYTES and not answer.ended:
            answer.fail(WireError("the upstream's answer head or trailers are too large"))
            self.close()

    def eof_received(self) -> bool | None:
        return False  # the transport closes itself, and connection_lost ends the answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._pool.open.discard(self)
        if self in self._pool.idle:
            self._pool.idle.remove(self)
        answer = self.answer
        if answer is not None and not answer.ended:
            answer.lost(cleanly=exc is None)

    def stop_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def go_on_reading(self) -> None:
        if self.transport is not None and self.transport.is_reading() is False:
            self.transport.resume_reading()

    # llhttp callbacks (a name that raises makes feed_data raise HttpParserCallbackError).

    def on_message_begin(self) -> None:
        self._names = []
        self._head_size = 0
        answer = self.answer
        if answer is None or answer.ended:
            raise WireError("a second answer to one request")

    def on_header(self, name: bytes, value: bytes) -> None:
        # The read-by-read bound (data_received) misses a head that came in one read.
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD_BYTES:
            raise WireError("the upstream's answer head or trailers are too large")
        self._names.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        assert self.answer is not None
        if status < 100:  # not an HTTP status; 0 would also read as "no head yet" below
            raise WireError(f"the upstream's status {status:03d} is not an HTTP status")
        if 100 <= status < 200:
            if status == 101:
                raise WireError("the upstream switched protocols on a speech request")
            return  # an informational answer (103 Early Hints, say): the real one follows
        self.answer.head(status, self._names)

    def on_body(self, body: bytes) -> None:
        assert self.answer is not None
        self.answer.body(body)

    def on_message_complete(self) -> None:
        answer = self.answer
        assert answer is not None
        if answer.status == 0:
            return  # the end of an informational answer
        answer.complete(self._parser.should_keep_alive())

    # Ours.

    def reusable(self) -> bool:
        # Request bytes still unwritten mean the answer came before the upstream read the
        # whole request: the rest would reach it as the start of the next request.
        transport = self.transport
        return (
            transport is not None
            and not transport.is_closing()
            and transport.get_write_buffer_size() == 0
        )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def release(self, now: float) -> None:
        """Back to the pool if its answer ended cleanly and both sides keep it open."""
        answer = self.answer
        self.answer = None
        pool = self._pool
        if answer is not None and answer.reusable and self.reusable():
            if len(pool.idle) >= pool.max_idle:
                self.close()
                return
            self._parser = httptools.HttpResponseParser(self)
            # An answer whose last read passed the high-water mark ended with reads paused,
            # and a reader may stop before taking it all: a paused connection would never
            # hear the next answer.
            self.go_on_reading()
            self.idle_since = now
            pool.idle.append(self)
        else:
            self.close()


class WireAnswer:
    """An upstream answer: its head once it arrived, its body as it comes."""

    def __init__(self, connection: _Connection, read_timeout: float, deadline: float) -> None:
        self._connection = connection
        self._read_timeout = read_timeout
        self._deadline = deadline
        self.status = 0
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        self.content = self  # read as ``answer.content.iter_any()``, like aiohttp's
        self.ended = False
        self.reusable = False
        self._released = False
        self._framed = False  # by Content-Length or chunks: a close before the end is a cut
        self._chunks: list[bytes] = []
        self._buffered = 0
        self.received = 0  # the body's bytes so far
        self.framing = 0  # bytes read since the body last grew (see MAX_HEAD_BYTES)
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._head_seen = asyncio.get_running_loop().create_future()

    # From the connection.

    def head(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.status = status
        self.headers = CIMultiDictProxy(CIMultiDict(headers))
        self._framed = "content-length" in self.headers or "transfer-encoding" in self.headers
        if not self._head_seen.done():
            self._head_seen.set_result(None)

    def body(self, data: bytes) -> None:
        self._chunks.append(bytes(data))
        self._buffered += len(data)
        self.received += len(data)
        if self._buffered > _HIGH_WATER:
            self._connection.stop_reading()
        self._wake()

    def complete(self, keep_alive: bool) -> None:
        self.ended = True
        self.reusable = keep_alive
        self._wake()

    def lost(self, *, cleanly: bool) -> None:
        if self.status and not self._framed and cleanly:
            self.complete(keep_alive=False)  # a body framed by the connection's end
            return
        self.fail(WireError("the upstream closed the connection before the end of its answer"))

    def fail(self, error: Exception) -> None:
        self.ended = True
        self._error = error
        if not self._head_seen.done():
            self._head_seen.set_exception(error)
            self._head_seen.exception()  # retrieved here: no "never retrieved" warning
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # For the reader.

    def _timeout(self) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise WireTimeout("the upstream's answer took longer than the total timeout")
        return min(left, self._read_timeout)

    async def wait_head(self) -> None:
        try:
            async with asyncio.timeout(self._timeout()):
                await self._head_seen
        except TimeoutError:
            raise WireTimeout("the upstream did not answer in time") from None

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive, whatever arrived since the last step joined."""
        while True:
            if self._chunks:
                chunks = self._chunks
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                self._chunks = []
                self._buffered = 0
                self._connection.go_on_reading()
                yield data
                continue
            if self._error is not None:
                raise self._error
            if self.ended:
                return
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(self._timeout()):
                    await self._waiter
            except TimeoutError:
                self.fail(WireTimeout("the upstream stopped sending its answer"))
            finally:
                self._waiter = None

    async def __aenter__(self) -> WireAnswer:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def release(self) -> None:
        """Give the connection back (pooled only after an answer read to its end); once."""
        if self._released:
            return
        self._released = True
        if not self.ended:
            self.reusable = False
        self._connection.release(time.monotonic())


class UpstreamWire:
    """Pooled connections to one upstream (its scheme, host and port)."""

    def __init__(
        self,
        base: URL,
        *,
        connect_timeout: float,
        read_timeout: float,
        total_timeout: float,
        idle_seconds: float = 15.0,
        max_idle: int = 100,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"not an http(s) URL: {base}")
        self._host = base.host
        self._port = base.port or (443 if base.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = None
        if base.scheme == "https":
            self._ssl = ssl_context or _verified_context()
        # RFC 9110 §7.2: the authority without userinfo, the port only when not the default.
        self._host_header = base.host_port_subcomponent or self._host
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._total_timeout = total_timeout
        self._idle_seconds = idle_seconds
        self._pool = _Pool(max_idle)

    @property
    def idle(self) -> int:
        """Connections open and waiting for a request."""
        return len(self._pool.idle)

    @property
    def open(self) -> int:
        """Connections open, idle or carrying a request."""
        return len(self._pool.open)

    def prepared(self, method: str, target: str, headers: CIMultiDict[str], body: bytes) -> bytes:
        """The request's bytes, as aiohttp's client would write them."""
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self._host_header}"]
        for name, value in headers.items():
            if name.lower() == "host":
                continue
            lines.append(f"{name}: {value}")
        if "Accept" not in headers:
            lines.append("Accept: */*")
        if "User-Agent" not in headers:
            lines.append(f"User-Agent: {SERVER_SOFTWARE}")
        lines.append(f"Content-Length: {len(body)}")
        head = "\r\n".join(lines)
        # A line break in a name or value would let whoever set it write headers of their
        # own: the only ones in the head are those the join put between its lines.
        breaks = len(lines) - 1
        if head.count("\n") != breaks or head.count("\r") != breaks or "\x00" in head:
            raise ValueError("a request header holds a line break or NUL")
        if " " in target or "\t" in target:
            raise ValueError("the request target holds white space")
        return head.encode("utf-8") + b"\r\n\r\n" + body

    async def request(
        self, method: str, target: str, headers: CIMultiDict[str], body: bytes
    ) -> WireAnswer:
        """Write the request and wait for its answer's head. Raises WireTimeout, WireError,
        OSError (connecting), ValueError (a header that cannot be written)."""
        data = self.prepared(method, target, headers, body)
        deadline = time.monotonic() + self._total_timeout
        connection = self._pooled() or await self._connect(deadline)
        answer = WireAnswer(connection, self._read_timeout, deadline)
        connection.answer = answer
        assert connection.transport is not None
        try:
            connection.transport.write(data)
            await answer.wait_head()
        except BaseException:
            connection.answer = None
            connection.close()
            raise
        return answer

    def _pooled(self) -> _Connection | None:
        now = time.monotonic()
        idle = self._pool.idle
        while idle:
            connection = idle.pop()
            if connection.reusable() and now - connection.idle_since < self._idle_seconds:
                return connection
            connection.close()
        return None

    async def _connect(self, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        timeout = min(self._connect_timeout, max(deadline - time.monotonic(), 0.0))
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self._pool),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                    **_happy_eyeballs(loop),
                )
        except TimeoutError:
            raise WireTimeout("connecting to the upstream timed out") from None
        return connection

    async def close(self) -> None:
        """Close every connection, idle or not."""
        for connection in list(self._pool.open):
            connection.close()
        self._pool.idle.clear()
