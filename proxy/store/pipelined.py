"""The hit path's reads on a connection of their own, written back to back, parsed by hiredis.

redis-py spends most of a hit's Redis time in Python around the command (a pooled
connection, retries, a timed read per reply, the parser's layers). Here each HMGET is a few
bytes appended to one buffer, every command of an event-loop turn leaves in one write, and
replies, which Redis sends in order, are matched to their waiters first in, first out.
The numbers are in README ("Hits").

How many commands are out at once is bounded by the bytes their replies are expected to
carry (:data:`IN_FLIGHT_BYTES`, from the replies seen so far); the rest wait their turn,
in order, and leave as replies come back.

Plain servers only (``redis://`` and ``unix://``): a Redis Cluster or TLS store keeps
:class:`proxy.store.batching.ReadBatcher`. Failures are redis-py's exceptions, so the breaker and
the fail-open path treat them as any other store error.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from typing import Any, cast

import hiredis
from redis.connection import parse_url
from redis.exceptions import ConnectionError as StoreConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as StoreTimeoutError

Values = list[bytes | None]


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def command(*args: bytes) -> bytes:
    """One command in RESP."""
    return b"*%d\r\n" % len(args) + b"".join(_bulk(a) for a in args)


# Replies are read into one buffer kept for the link's life: a plain protocol gets each read
# as a new bytes object of up to 256 KiB, allocated and shrunk on every read (a 137 KB hit
# spent ~7 µs less CPU reading this way, see docs/performance.md).
READ_BUFFER_BYTES = 256 * 1024
# The replies the store may be sending at once, in bytes: with 64 hits of 137 KB entries out
# together, the store wrote megabytes ahead of the proxy, which then read and decoded them
# from memory gone cold (a 137 KB zstd read cost ~20 µs more at 64 readers than at 16; held
# to this, at 64 readers as little as at 16: bench/store_reads, docs/performance.md). Small
# replies stay as pipelined as before: the bound counts bytes, not commands.
IN_FLIGHT_BYTES = 768 * 1024
MIN_IN_FLIGHT = 4
# Replies between halvings of the running average (so it follows what is being read).
_AVERAGE_OVER = 256


class _Link(asyncio.BufferedProtocol):
    """One open connection: what was sent and not yet answered, in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(protocolError=StoreConnectionError, replyError=ResponseError)
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.lost: Exception | None = None
        # Told when replies came back or the link failed (the commands waiting to be sent
        # may go now, or must fail).
        self.drained: Callable[[], None] | None = None
        self._buffer = bytearray(READ_BUFFER_BYTES)
        self._view = memoryview(self._buffer)
        self._received = 0  # bytes, and the replies they made, since the last halving
        self._replies = 0

    def room(self) -> int:
        """How many more commands may be sent now."""
        replies = self._replies
        if not replies:
            return 1 << 30  # nothing read yet to size them by
        average = max(1, self._received // replies)
        return max(MIN_IN_FLIGHT, IN_FLIGHT_BYTES // average) - len(self.waiting)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; both are stream transports.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        reader = self.reader
        # hiredis takes any buffer (its stubs name str and bytes) and copies what it keeps.
        reader.feed(self._buffer, 0, nbytes)  # type: ignore[arg-type]
        self._received += nbytes
        waiting = self.waiting
        replies = 0
        while (reply := reader.gets()) is not False:
            if not waiting:  # a reply nobody asked for: the stream is out of step
                self.fail(StoreConnectionError("unexpected reply from the store"))
                return
            replies += 1
            future, _ = waiting.popleft()
            if future.done():  # its request was cancelled meanwhile
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
        if replies:
            self._replies += replies
            if self._replies >= _AVERAGE_OVER:
                self._replies //= 2
                self._received //= 2
            if self.drained is not None:
                self.drained()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(StoreConnectionError(f"connection to the store lost: {exc or 'closed'}"))

    def fail(self, error: Exception) -> None:
        """Every waiter learns ``error``; the link is not used again."""
        if self.lost is None:
            self.lost = error
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)
        if self.transport is not None:
            self.transport.abort()
        drained, self.drained = self.drained, None
        if drained is not None:
            drained()


class PipelinedReads:
    """``HMGET key fields`` over one pipelined connection to a plain Redis or Valkey."""

    def __init__(
        self,
        url: str,
        fields: Sequence[bytes],
        *,
        socket_timeout: float = 2.0,
        connect_timeout: float = 1.0,
    ) -> None:
        self._where: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        self._head = b"*%d\r\n" % (2 + len(fields)) + _bulk(b"HMGET")
        self._tail = b"".join(_bulk(f) for f in fields)
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self._link: _Link | None = None
        self._connecting: asyncio.Future[_Link] | None = None
        self._outgoing: list[bytes] = []
        self._outgoing_futures: list[asyncio.Future[Any]] = []
        self._scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None

    @staticmethod
    def supports(url: str) -> bool:
        return url.startswith(("redis://", "unix://"))

    async def hmget(self, key: str) -> Values:
        """The fields of ``key``, sent with this event-loop turn's other reads."""
        reply: Values = await self._queued(self._head + _bulk(key.encode()) + self._tail)
        return reply

    async def call(self, *args: bytes) -> Any:
        """Any one command (a flight's EVALSHA, say), sent with this turn's other commands
        in the order they were asked for; an error reply is raised as redis-py's."""
        return await self._queued(command(*args))

    async def _queued(self, encoded: bytes) -> Any:
        link = self._link
        if link is None or link.lost is not None:
            link = await self._connect()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._outgoing.append(encoded)
        self._outgoing_futures.append(future)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._send)
        return await future

    def _send(self) -> None:
        """Send what is waiting, as much as the link has room for (the rest when replies
        come back); fail it all when the link is gone."""
        self._scheduled = False
        link = self._link
        if link is None or link.lost is not None or link.transport is None:
            futures = self._outgoing_futures
            self._outgoing, self._outgoing_futures = [], []
            error = link.lost if link is not None else None
            for future in futures:
                if not future.done():
                    future.set_exception(error or StoreConnectionError("not connected"))
            return
        room = link.room()
        if room <= 0:
            return  # sent when replies come back (link.drained)
        if room >= len(self._outgoing):
            data, futures = b"".join(self._outgoing), self._outgoing_futures
            self._outgoing, self._outgoing_futures = [], []
        else:
            data, futures = b"".join(self._outgoing[:room]), self._outgoing_futures[:room]
            del self._outgoing[:room], self._outgoing_futures[:room]
        now = asyncio.get_running_loop().time()
        link.waiting.extend((f, now) for f in futures)
        link.transport.write(data)
        if self._watchdog is None:
            self._watch_at(now + self.socket_timeout)

    def _drained(self) -> None:
        if self._outgoing and not self._scheduled:
            self._send()

    def _watch_at(self, when: float) -> None:
        self._watchdog = asyncio.get_running_loop().call_at(when, self._watch)

    def _watch(self) -> None:
        """A reply overdue by ``socket_timeout`` means a stuck store: drop the link."""
        self._watchdog = None
        link = self._link
        if link is None or not link.waiting or link.lost is not None:
            return
        _, sent_at = link.waiting[0]
        due = sent_at + self.socket_timeout
        if asyncio.get_running_loop().time() >= due:
            link.fail(StoreTimeoutError(f"no reply from the store within {self.socket_timeout} s"))
        else:
            self._watch_at(due)

    async def _connect(self) -> _Link:
        """The open link, connecting first if needed (concurrent callers share one try)."""
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done():
                self._connecting = None

    async def _open(self) -> _Link:
        loop = asyncio.get_running_loop()
        where = self._where
        try:
            async with asyncio.timeout(self.connect_timeout):
                if "path" in where:
                    _, link = await loop.create_unix_connection(_Link, where["path"])
                else:
                    host, port = where.get("host", "localhost"), where.get("port", 6379)
                    _, link = await loop.create_connection(_Link, host, port)
                hello = []
                if where.get("password"):
                    user = where.get("username")
                    credentials = [user, where["password"]] if user else [where["password"]]
                    hello.append(command(b"AUTH", *(str(c).encode() for c in credentials)))
                if where.get("db"):
                    hello.append(command(b"SELECT", str(where["db"]).encode()))
                replies = [loop.create_future() for _ in hello]
                link.waiting.extend((f, loop.time()) for f in replies)
                if hello and link.transport is not None:
                    link.transport.write(b"".join(hello))
                for reply in replies:
                    await reply
        except (OSError, TimeoutError) as exc:  # asyncio.timeout raises TimeoutError
            raise StoreConnectionError(f"cannot connect to the store: {exc!r}") from exc
        old, self._link = self._link, link
        link.drained = self._drained
        if old is not None and old.lost is None:
            old.fail(StoreConnectionError("replaced"))
        return link

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._link is not None:
            self._link.fail(StoreConnectionError("closed"))
            self._link = None
