"""Known hits: a repeated request for a hot entry, answered from its bytes as they arrive.

A client that asks for the same sentence again sends the same bytes: request line, headers
and body. Once those bytes have been answered as a plain hit, everything
the request path decided from them is known: the route, the caller (its credential
headers), the tenant, the directive and the cache key are functions of the bytes and of
the configuration, which does not change while the process runs (the client keys file
aside, checked below). So when the same bytes come again, the connection answers them
itself (:mod:`proxy.request.connection`), below aiohttp's request layer: no request
object, no task, no handler chain, one write. That layer was most of what a hot hit cost
over a bare aiohttp server answering bytes from memory (bench/hit_path,
docs/performance.md).

What can change from one such request to the next is checked on every one, and any doubt
sends the request through the full path instead:

- the client keys file in force is the one the request was learned under;
- the caller's credential is still accepted here (``client_auth: upstream``: the
  one-second local verdict; without one, the full path asks the store);
- the entry is fresh in the hot tier, or in the store (read by the connection);
- the request's per-minute limits: a caller with any is never learned here.

What such an answer leaves behind is what the full path's plain hit leaves: the same
bytes on the wire, the hit counted, characters saved, the hit's duration, the client's
request count, and one access-log record with the same fields.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..core.clients import presented_key
from ..core.keys import CacheKey
from ..observability.access_log import REQUEST_ID_HEADER, printable, request_id_from
from ..store.service import AudioCacheService, CachedAudio
from .access import Access, Caller
from .hits import Hits, counted
from .prepared_hit import UnsafeHeader
from .savings import RouteMetrics

log = logging.getLogger(__name__)

RawHeaders = tuple[tuple[bytes, bytes], ...]
# What a request is known by: method, request target, raw header lines, body.
Wire = tuple[str, str, RawHeaders, bytes]

# Bounds on what is remembered: a caller cannot grow it past them, only make it forget.
MAX_KNOWN = 4096
MAX_KNOWN_BYTES = 8 * 1024 * 1024
MAX_BODY = 8192
# Requests whose answer is not only a function of their bytes, or whose bytes as parsed
# are not their bytes as sent.
_UNLEARNED = ("expect", "content-encoding", "transfer-encoding")


@dataclass(frozen=True, slots=True)
class Known:
    """What the full path decided for one request's bytes."""

    key: CacheKey
    caller: Caller
    tenant: str
    keys: object  # the client keys in force when it was learned
    metrics: RouteMetrics
    characters: int
    route: str
    text: str
    path: str  # as the access log writes it
    request_id: str | None  # the client's own (it sends the same one every time)
    size: int


@dataclass(frozen=True, slots=True)
class Answer:
    """One known hit's bytes, and its access-log fields but the two known once it is
    written (``duration_ms``, ``remote``)."""

    data: bytes
    fields: dict[str, Any]
    known: Known
    stored: bool  # read from the store (its hit not counted yet)
    tail: bytes = b""


class KnownHits:
    """Requests answered as plain hot hits, by their bytes; and their answers."""

    def __init__(self, access: Access, service: AudioCacheService, hits: Hits) -> None:
        self.access = access
        self.service = service
        self.hits = hits
        self._known: dict[Wire, Known] = {}
        self._heads: dict[tuple[str, str, RawHeaders], int] = {}  # of the known, counted
        self._bytes = 0
        self.answered = 0  # since start: a test's way to tell this path was taken

    def __len__(self) -> int:
        return len(self._known)

    def learn(
        self,
        request: web.BaseRequest,
        body: bytes,
        *,
        key: CacheKey,
        caller: Caller,
        tenant: str,
        metrics: RouteMetrics,
        route: str,
        text: str,
    ) -> None:
        """Remember what a plain hit was decided from, to answer its bytes again."""
        if len(body) > MAX_BODY or any(name in request.headers for name in _UNLEARNED):
            return
        raw = request.raw_headers
        wire = (request.method, request.raw_path, raw, body)
        access = self.access
        keys = access.keys
        old = self._known.get(wire)
        if old is not None and old.keys is keys:
            return
        # The caller was named by the keys in force when the request came: if they were
        # reloaded since, it is not what the keys in force say of these bytes.
        if (
            caller.key is not None
            and keys.find(presented_key(request.headers, access.headers)) is not caller.key
        ):
            return
        if old is not None:  # learned under keys since reloaded: learned again
            self._forget(wire)
        size = len(body) + len(wire[1]) + sum(len(n) + len(v) for n, v in raw)
        client_id = request.headers.get(REQUEST_ID_HEADER)
        known = Known(
            key=key,
            caller=caller,
            tenant=tenant,
            keys=keys,
            metrics=metrics,
            characters=len(text),
            route=route,
            text=text,
            path=printable(request.path),
            request_id=client_id if request_id_from(client_id) == client_id else None,
            size=size,
        )
        while self._known and (
            len(self._known) >= MAX_KNOWN or self._bytes + size > MAX_KNOWN_BYTES
        ):
            self._forget(next(iter(self._known)))
        self._known[wire] = known
        self._heads[wire[:3]] = self._heads.get(wire[:3], 0) + 1
        self._bytes += size

    def _forget(self, wire: Wire) -> None:
        self._bytes -= self._known.pop(wire).size
        head = wire[:3]
        left = self._heads[head] - 1
        if left:
            self._heads[head] = left
        else:
            del self._heads[head]

    def may_know(self, method: str, target: str, raw_headers: RawHeaders) -> bool:
        """Whether a request with this head may be known, whatever its body."""
        return (method, target, raw_headers) in self._heads

    def entry(self, wire: Wire) -> Known | None:
        """What is known of ``wire``, when the checks that do not need the entry pass: the
        keys file it was learned under is in force, its caller's credential is accepted
        here. None: the full path answers it."""
        known = self._known.get(wire)
        if known is None:
            return None
        access = self.access
        if access.keys is not known.keys or not access.verified_here(known.caller):
            return None
        return known

    def hot(self, known: Known, method: str) -> Answer | None:
        """The answer from the hot tier (the hit counted), or None when it is not there."""
        cached = self.service.hot_hit(known.key)
        if cached is None:
            return None
        return self._answer(known, method, cached, stored=False)

    async def stored(self, known: Known, method: str) -> Answer | None:
        """The answer from the store (offered to the hot tier), or None when it holds no
        fresh entry: then nothing is counted (the full path, which then answers the
        request, counts its own lookup). Store errors are raised. The hit is counted
        when the answer is :meth:`sent`."""
        cached = await self.service.peek(known.key)
        if cached is None:
            return None
        return self._answer(known, method, cached, stored=True)

    def sent(self, answer: Answer, started: float) -> None:
        """What an answer that was written leaves: the hit (if read from the store),
        characters saved, bytes served, the hit's duration since ``started``
        (``time.perf_counter``), the caller's request count."""
        known = answer.known
        if answer.stored:
            self.service.count_lookup(known.key, hit=True)
        self.access.limited(known.caller, known.tenant)  # counts it, as the full path does
        counted(known.metrics, known.characters, answer.fields["content_length"], started)
        self.answered += 1

    def _answer(
        self, known: Known, method: str, cached: CachedAudio, *, stored: bool
    ) -> Answer | None:
        try:
            wire_of = self.hits.wire(cached)
        except UnsafeHeader:
            return None  # the full path answers (and logs) it
        request_id = known.request_id or request_id_from(None)
        audio = cached.audio
        data, tail = wire_of.wire_parts(wire_of.head_now(cached), request_id, audio)
        fields: dict[str, Any] = {
            "request_id": request_id,
            "method": method,
            "path": known.path,
            "route": known.route,
            "result": "hit",
            "status": 200,
            "bytes_sent": len(data) + len(tail),
            "content_length": len(audio),
            "duration_ms": 0.0,
        }
        return Answer(data, fields, known, stored, tail)
