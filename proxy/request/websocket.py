"""WebSocket pass-through: a client's upgrade on a path no route claims, relayed to the upstream.

Streaming TTS APIs (ElevenLabs ``stream-input``, Cartesia, Deepgram) speak over WebSockets.
Nothing of it is cached (docs/websocket-caching.md says what caching would take); the proxy
relays it as a gateway: the upstream's handshake first, so that its refusal (a bad
credential, an unknown path) reaches the client as an HTTP answer before anything is
upgraded, and the subprotocol the upstream chose is the one the client gets. Then every
text, binary, ping and pong frame goes across as it is, in both directions, and the first
side to close has its close code passed to the other.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import WSMsgType, web

from ..config.settings import Settings
from ..observability.access_log import tag
from ..observability.metrics import METRICS
from .access import Access, Caller
from .errors import json_error
from .upstream import UpstreamClient, UpstreamError

log = logging.getLogger(__name__)

# What ws_connect and WebSocketResponse write themselves (RFC 6455 §4.1, §11.3).
_HANDSHAKE_HEADERS = (
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
    "sec-websocket-accept",
)
# Codes a close frame may not carry (RFC 6455 §7.4.1): said as 1000, or 1011 after a failure.
_UNSENDABLE = frozenset({1005, 1006, 1015})
GOING_AWAY = 1001
TOO_BIG = 1009
INTERNAL_ERROR = 1011

AnySocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


def is_upgrade(request: web.Request) -> bool:
    """Whether ``request`` asks to open a WebSocket (RFC 6455 §4.1)."""
    if request.method != "GET":
        return False
    upgrade = request.headers.get("Upgrade", "")
    connection = request.headers.get("Connection", "")
    return "websocket" in _tokens(upgrade) and "upgrade" in _tokens(connection)


def _tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",") if t.strip()}


def offered_protocols(request: web.Request) -> tuple[str, ...]:
    """The subprotocols the client offers, in its order of preference."""
    offered: list[str] = []
    for value in request.headers.getall("Sec-WebSocket-Protocol", ()):
        offered += [p.strip() for p in value.split(",") if p.strip()]
    return tuple(dict.fromkeys(offered))


def sendable(code: int | None, *, failed: bool = False) -> int:
    """A close code that may be sent on, for one received (or none)."""
    if code is None or code in _UNSENDABLE or not 1000 <= code < 5000:
        return INTERNAL_ERROR if failed else 1000
    return code


@dataclass
class _Ended:
    """How one direction of a session ended: the close code for the other side."""

    code: int
    reason: str
    result: str


class _Activity:
    def __init__(self) -> None:
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()


class WebSocketRelay:
    """Relays WebSocket sessions between clients and the upstream."""

    def __init__(self, settings: Settings, upstream: UpstreamClient, access: Access) -> None:
        self.upstream = upstream
        self.access = access
        self.max_message = int(settings.websocket_max_message_kb * 1024)
        self.idle_seconds = settings.websocket_idle_timeout_seconds
        self._sessions: set[asyncio.Task[None]] = set()

    async def __call__(self, request: web.Request, caller: Caller) -> web.StreamResponse:
        headers = self.upstream.outgoing_headers(
            self.access.forwarded(request.headers), identity=False
        )
        for name in _HANDSHAKE_HEADERS:
            headers.popall(name, None)
        try:
            upstream = await self.upstream.ws_connect(
                request.rel_url.raw_path,
                request.rel_url.raw_query_string,
                headers,
                protocols=offered_protocols(request),
                max_msg_size=self.max_message,
            )
        except UpstreamError as exc:
            if exc.kind == "handshake":
                await self.access.upstream_answered(caller.credential, exc.status)
                METRICS.websocket_sessions.labels("upstream_refused").inc()
            else:
                METRICS.upstream_errors.labels(exc.kind).inc()
                METRICS.websocket_sessions.labels("upstream_unreachable").inc()
            return json_error(exc.status, exc.message, upstream_error=exc.kind)
        await self.access.upstream_answered(caller.credential, 200)
        client = web.WebSocketResponse(
            protocols=(upstream.protocol,) if upstream.protocol else (),
            max_msg_size=self.max_message,
            autoping=False,
            autoclose=False,  # the client's close is answered once passed to the upstream
        )
        tag(request, client)
        try:
            await client.prepare(request)
        except BaseException:
            await upstream.close(code=GOING_AWAY)
            raise
        # Its own task: aiohttp cancels the handler once the client's connection is gone,
        # and the upstream must still be told how the session ended.
        session = asyncio.create_task(self._session(client, upstream))
        self._sessions.add(session)
        session.add_done_callback(self._sessions.discard)
        await asyncio.shield(session)
        return client

    async def _session(
        self, client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse
    ) -> None:
        METRICS.websocket_active.inc()
        result = "error"
        try:
            result = await self._relay(client, upstream)
        finally:
            METRICS.websocket_active.dec()
            METRICS.websocket_sessions.labels(result).inc()
            if not upstream.closed:
                await upstream.close(code=GOING_AWAY)

    async def _relay(
        self, client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse
    ) -> str:
        activity = _Activity()
        tasks = {
            asyncio.create_task(self._pump(client, upstream, "to_upstream", activity)),
            asyncio.create_task(self._pump(upstream, client, "to_client", activity)),
            asyncio.create_task(self._idle(activity)),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            ended = next(iter(done)).result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        message = ended.reason.encode()[:123]  # a close frame's reason fits in 123 bytes
        if not upstream.closed:
            await upstream.close(code=ended.code, message=message)
        if not client.closed:
            await client.close(code=ended.code, message=message)
        return ended.result

    async def _pump(
        self, source: AnySocket, sink: AnySocket, direction: str, activity: _Activity
    ) -> _Ended:
        counted = METRICS.websocket_bytes.labels(direction)
        while True:
            msg = await source.receive()
            activity.touch()
            try:
                if msg.type is WSMsgType.TEXT:
                    await sink.send_str(msg.data)
                    counted.inc(len(msg.data.encode()))
                elif msg.type is WSMsgType.BINARY:
                    await sink.send_bytes(msg.data)
                    counted.inc(len(msg.data))
                elif msg.type is WSMsgType.PING:
                    await sink.ping(msg.data)
                elif msg.type is WSMsgType.PONG:
                    await sink.pong(msg.data)
                elif msg.type is WSMsgType.CLOSE:
                    return _Ended(sendable(msg.data), msg.extra or "", "closed")
                elif msg.type is WSMsgType.ERROR:  # data: the WebSocketError, with its code
                    code = getattr(msg.data, "code", None) or source.close_code
                    if code == TOO_BIG:
                        return _Ended(TOO_BIG, "message too big", "too_large")
                    return _Ended(sendable(code, failed=True), "", "error")
                else:  # CLOSING, CLOSED: the socket went away without a close frame
                    return _Ended(sendable(source.close_code or GOING_AWAY), "", "closed")
            except (ConnectionResetError, aiohttp.ClientError) as exc:
                log.debug("websocket %s send failed: %r", direction, exc)
                return _Ended(GOING_AWAY, "", "closed")

    async def _idle(self, activity: _Activity) -> _Ended:
        while True:
            left = activity.last + self.idle_seconds - time.monotonic()
            if left <= 0:
                return _Ended(GOING_AWAY, "idle timeout", "idle")
            await asyncio.sleep(left)
