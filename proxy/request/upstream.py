"""The upstream TTS API: the only place requests leave the proxy.

The destination is always the configured upstream; the client only chooses the path and
query below its base URL, and never with dot-segments.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ..observability import tracing
from .upstream_wire import UpstreamWire, WireAnswer, WireError, WireTimeout

# RFC 9110 §7.6.1 hop-by-hop headers, plus what the proxy must set itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length"}
# Request headers that describe the body or the exchange as the client sent them: the
# proxy forwards the body decoded, and has answered any Expect itself.
_NOT_FORWARDED_ON_REQUESTS = _NOT_FORWARDED | {"content-encoding", "expect"}
# What cannot stand in a request line's query as it is: controls, space, '#', non-ASCII.
_UNSAFE_IN_QUERY = re.compile(r"[\x00-\x20\x7f#]|[^\x00-\x7f]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SEPARATORS = re.compile(r"[/\\]")
_DECODE_ROUNDS = 3


class UpstreamError(Exception):
    """The upstream could not be reached or did not answer in time."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


class UnsafePath(ValueError):
    """A request path that could escape the upstream's base path, or name the admin API."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class BadHeader(ValueError):
    """A request header value that cannot be sent on (not valid UTF-8)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the value of the {name} header is not valid UTF-8")
        self.field = f"header:{name}"


def strip_hop_by_hop(headers: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """End-to-end headers only: everything but the standard hop-by-hop set, Host and
    Content-Length.

    Names listed in ``Connection`` are deliberately not removed (RFC 9110 §7.6.1 would):
    a client could list ``Accept`` or a tenant header there, so that the proxy keys on a
    header the upstream never sees, and the answer to one request is stored under another's
    key. The standard hop-by-hop headers are removed whatever ``Connection`` says.
    """
    return CIMultiDict((k, v) for k, v in headers if k.lower() not in _NOT_FORWARDED)


def upstream_query(raw_query: str) -> str:
    """The client's query as the upstream receives it: byte for byte, except for what
    cannot stand in a request line (controls, space, '#', non-ASCII), percent-encoded."""
    return _UNSAFE_IN_QUERY.sub(lambda m: quote(m.group(), safe=""), raw_query)


def _decoded(raw_path: str) -> str:
    """The path percent-decoded until nothing changes (a few rounds at most): what a
    server behind the upstream, or in front of the proxy, might end up reading."""
    text = raw_path
    for _ in range(_DECODE_ROUNDS):
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    return text


def names_admin(decoded_path: str) -> bool:
    """Whether a path normalizes to /admin or below it: case folded, backslashes taken as
    slashes, empty and '.' segments and ``;parameters`` dropped, '..' resolved."""
    segments: list[str] = []
    for part in _SEPARATORS.split(decoded_path.lower()):
        segment = part.split(";", 1)[0].strip()
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return segments[:1] == ["admin"]


def check_path(raw_path: str) -> None:
    """Refuse paths whose segments (even percent-encoded) are '.' or '..', that hold control
    characters or backslashes, or odd forms; and any path the admin API could be reached by
    (the proxy's router answers /admin itself: a variant that got past it is a 404)."""
    decoded = _decoded(raw_path)
    if names_admin(decoded):
        raise UnsafePath(
            "paths under /admin belong to the proxy's admin API, which answers them only in "
            "their exact form (on the admin port when admin_port is set)",
            status=404,
        )
    if not raw_path.startswith("/") or raw_path.startswith("//"):
        raise UnsafePath("the request target must be an origin-form path")
    if not raw_path.isascii():  # raw bytes some HTTP parsers let through (RFC 3986 §2.1)
        raise UnsafePath("the request path must be ASCII, any other byte percent-encoded")
    if _CONTROL.search(decoded):
        raise UnsafePath("the request path contains a control character")
    if "\\" in decoded:
        raise UnsafePath("the request path contains a backslash")
    for segment in decoded.split("/"):
        if segment in (".", ".."):
            raise UnsafePath("the request path contains dot-segments")


def check_header_values(headers: Iterable[tuple[str, str]]) -> None:
    """Raise :class:`BadHeader` for a value that is not valid UTF-8 (aiohttp reads such
    bytes as lone surrogates, which cannot be sent on)."""
    for name, value in headers:
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise BadHeader(name) from None


@dataclass(frozen=True)
class UpstreamSettings:
    base_url: str
    connect_timeout: float
    read_timeout: float
    total_timeout: float
    api_key: str | None = None
    api_key_header: str = "Authorization"
    api_key_format: str = "Bearer {key}"
    # Misses on the lean client (upstream_wire.py); False: on aiohttp's, like the rest.
    lean_misses: bool = True


class UpstreamClient:
    """Sends requests to the configured upstream: a miss's on its own pooled wire
    (:mod:`proxy.request.upstream_wire`), everything else with one pooled aiohttp session."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self.base = URL(settings.base_url)
        self._base_path = self.base.raw_path.rstrip("/")
        self.session: aiohttp.ClientSession | None = None
        self.wire: UpstreamWire | None = None
        # WebSocket sessions last as long as they are used: no total timeout applies.
        self.ws_session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self.settings.lean_misses:
            self.wire = UpstreamWire(
                self.base,
                connect_timeout=self.settings.connect_timeout,
                read_timeout=self.settings.read_timeout,
                total_timeout=self.settings.total_timeout,
            )
        # auto_decompress off: bytes pass through (and are cached) exactly as sent.
        self.session = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(
                total=self.settings.total_timeout,
                connect=self.settings.connect_timeout,
                sock_read=self.settings.read_timeout,
            ),
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

        self.ws_session = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=self.settings.connect_timeout,
                sock_connect=self.settings.connect_timeout,
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self.wire is not None:
            await self.wire.close()
        if self.session is not None:
            await self.session.close()
        if self.ws_session is not None:
            await self.ws_session.close()

    def url_for(self, raw_path: str, raw_query: str) -> URL:
        check_path(raw_path)
        # encoded=True throughout: the query was percent-encoded by the client already, and
        # encoding it again would turn %C3%A9 into %25C3%25A9 (another text, another sound).
        return URL.build(
            scheme=self.base.scheme,
            authority=self.base.raw_authority,
            path=self._base_path + raw_path,
            query_string=upstream_query(raw_query),
            encoded=True,
        )

    def outgoing_headers(
        self, incoming: Mapping[str, str] | CIMultiDictProxy[str], *, identity: bool
    ) -> CIMultiDict[str]:
        items = incoming.items()
        check_header_values(items)
        headers = CIMultiDict(
            (k, v) for k, v in items if k.lower() not in _NOT_FORWARDED_ON_REQUESTS
        )
        for name in ("range", "if-range", "if-none-match", "if-modified-since") if identity else ():
            headers.popall(name, None)  # cacheable requests fetch the whole audio
        if identity:
            headers["Accept-Encoding"] = "identity"
        if self.settings.api_key:
            headers[self.settings.api_key_header] = self.settings.api_key_format.format(
                key=self.settings.api_key
            )
        return headers

    async def request(
        self,
        method: str,
        raw_path: str,
        raw_query: str,
        headers: CIMultiDict[str],
        body: bytes | aiohttp.StreamReader | None,
    ) -> aiohttp.ClientResponse:
        """Open the upstream response (headers read, body not yet). Raises UpstreamError."""
        assert self.session is not None, "UpstreamClient.start() was not awaited"
        url = self.url_for(raw_path, raw_query)
        with tracing.upstream_call(method, url, headers) as call:  # a no-op unless tracing
            try:
                response = await self.session.request(
                    method, url, headers=headers, data=body, allow_redirects=False
                )
            except TimeoutError as exc:
                raise UpstreamError(504, "timeout", "the upstream TTS service timed out") from exc
            except aiohttp.ClientConnectorError as exc:
                raise UpstreamError(
                    502, "connect", "cannot connect to the upstream TTS service"
                ) from exc
            except (aiohttp.ClientError, asyncio.IncompleteReadError, OSError) as exc:
                message = f"the upstream TTS service failed: {exc}"
                raise UpstreamError(502, "protocol", message) from exc
            call.answered(response.status)
        return response

    async def speech(
        self, method: str, raw_path: str, raw_query: str, headers: CIMultiDict[str], body: bytes
    ) -> WireAnswer | aiohttp.ClientResponse:
        """A miss's request (GET or POST, its body in hand): the answer's head read, its
        body not yet. Raises UpstreamError, as :meth:`request` does."""
        if self.wire is None:  # upstream_miss_client: aiohttp
            return await self.request(method, raw_path, raw_query, headers, body)
        url = self.url_for(raw_path, raw_query)
        with tracing.upstream_call(method, url, headers) as call:  # a no-op unless tracing
            try:
                answer = await self.wire.request(method, url.raw_path_qs, headers, body)
            except WireTimeout as exc:
                raise UpstreamError(504, "timeout", "the upstream TTS service timed out") from exc
            except WireError as exc:
                message = f"the upstream TTS service failed: {exc}"
                raise UpstreamError(502, "protocol", message) from exc
            except ValueError as exc:  # a header set by the operator that cannot be sent
                raise UpstreamError(502, "protocol", str(exc)) from exc
            except OSError as exc:
                raise UpstreamError(
                    502, "connect", "cannot connect to the upstream TTS service"
                ) from exc
            call.answered(answer.status)
        return answer

    async def ws_connect(
        self,
        raw_path: str,
        raw_query: str,
        headers: CIMultiDict[str],
        *,
        protocols: tuple[str, ...],
        max_msg_size: int,
    ) -> aiohttp.ClientWebSocketResponse:
        """Open a WebSocket to the upstream (its base URL with the ws or wss scheme). Raises
        UpstreamError, with the upstream's status when it refused the handshake."""
        assert self.ws_session is not None, "UpstreamClient.start() was not awaited"
        url = self.url_for(raw_path, raw_query)
        url = url.with_scheme("wss" if url.scheme == "https" else "ws")
        try:
            async with asyncio.timeout(self.settings.connect_timeout + self.settings.read_timeout):
                return await self.ws_session.ws_connect(
                    url,
                    headers=headers,
                    protocols=protocols,
                    max_msg_size=max_msg_size,
                    autoping=False,  # pings and pongs are the client's, relayed
                    autoclose=True,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
                )
        except aiohttp.WSServerHandshakeError as exc:
            status = exc.status if 400 <= exc.status < 500 else 502
            raise UpstreamError(
                status, "handshake", f"the upstream refused the WebSocket ({exc.status})"
            ) from exc
        except TimeoutError as exc:
            raise UpstreamError(504, "timeout", "the upstream TTS service timed out") from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError(
                502, "connect", "cannot connect to the upstream TTS service"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(502, "protocol", f"the upstream TTS service failed: {exc}") from exc
