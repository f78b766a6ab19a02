"""Hits: a stored answer served with validators, ranges and HEAD, or as prepared bytes.

A plain hit (see :func:`proxy.request.prepared_hit.is_plain`) is written as bytes
prepared once per entry; every other hit goes through aiohttp's response layer with
conditional requests and byte ranges planned by :mod:`proxy.core.http_cache`.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web
from multidict import CIMultiDict

from ..core.http_cache import http_date, make_etag, plan_response
from ..core.keys import CacheKey
from ..core.outcomes import HIT, CacheStatus
from ..observability.access_log import REQUEST_ID
from ..observability.metrics import METRICS
from ..observability.tally import TALLY
from ..store.service import CachedAudio
from .errors import json_error
from .prepared_hit import HitWire, UnsafeHeader
from .savings import RouteMetrics
from .sse import events_answer

log = logging.getLogger(__name__)


class Hits:
    """Answers requests from stored entries."""

    def __init__(self, audio_path_prefix: str) -> None:
        self.audio_path_prefix = audio_path_prefix.rstrip("/")

    def location(self, key: CacheKey) -> str:
        """Where the entry can be fetched by key (``GET /audio/{key}``)."""
        return f"{self.audio_path_prefix}/{key.hex}"

    def mark(self, response: web.StreamResponse, key: CacheKey, status: CacheStatus) -> None:
        """The headers every answer to a speech request carries."""
        response.headers["Cache-Status"] = status.render()
        response.headers["X-Cache"] = status.x_cache
        response.headers["X-Audio-Cache-Key"] = key.hex
        response.headers["Content-Location"] = self.location(key)

    async def serve(
        self, request: web.Request, cached: CachedAudio, *, status: CacheStatus = HIT
    ) -> web.StreamResponse:
        """A stored answer with validators, conditional requests, byte ranges and HEAD."""
        now_ms = int(time.time() * 1000)
        etag = make_etag(cached.key.hex, cached.checksum)
        ttl_s = max(0, (cached.expires_ms - now_ms) // 1000)
        age_s = max(0, (now_ms - cached.created_ms) // 1000)
        if status.hit:
            status = status.but(ttl=ttl_s)
        length = len(cached.audio)
        plan = plan_response(
            request.headers,  # case-insensitive already
            length=length,
            etag=etag,
            last_modified_ms=cached.created_ms,
        )
        headers = [
            *self.entry_headers(cached, etag),
            ("Age", str(age_s)),
            ("Cache-Control", f"max-age={ttl_s}"),
            ("Cache-Status", status.render()),
            ("X-Cache", status.x_cache),
        ]
        if plan.status == 304:
            return web.Response(status=304, headers=headers)
        if plan.status == 416:
            headers.append(("Content-Range", f"bytes */{length}"))
            return web.Response(status=416, headers=headers)
        start, end = (plan.start, plan.end) if plan.status == 206 else (0, length - 1)
        if plan.status == 206:
            headers.append(("Content-Range", f"bytes {start}-{end}/{length}"))
        headers.append(("Content-Type", cached.media_type))
        part = cached.audio if plan.status == 200 else cached.audio[start : end + 1]
        if request.method != "HEAD":
            TALLY.add(METRICS.bytes_served_from_cache, len(part))
        # On HEAD aiohttp sends the headers (Content-Length included) and not the body.
        return web.Response(status=plan.status, body=part, headers=CIMultiDict(headers))

    def events(self, cached: CachedAudio, *, status: CacheStatus = HIT) -> web.Response:
        """A stored answer as speech events, for a request that asked for them."""
        TALLY.add(METRICS.bytes_served_from_cache, len(cached.audio))
        return events_answer(cached, status, self.location(cached.key))

    def entry_headers(self, cached: CachedAudio, etag: str) -> list[tuple[str, str]]:
        """What every stored answer of an entry carries, whatever the request. (The
        replayed upstream headers never include these names: see replayable_headers.)"""
        return [
            *cached.headers,
            ("ETag", etag),
            ("Last-Modified", http_date(cached.created_ms)),
            ("Accept-Ranges", "bytes"),
            ("X-Audio-Cache-Key", cached.key.hex),
            ("Content-Location", self.location(cached.key)),
        ]

    def wire(self, cached: CachedAudio) -> HitWire:
        """The entry's answer to plain hits, its headers serialized on its first plain hit
        and kept with it (in the hot tier). Raises :class:`UnsafeHeader` when a stored
        header cannot be written."""
        wire = cached.memo.get("wire")
        if not isinstance(wire, HitWire):
            etag = make_etag(cached.key.hex, cached.checksum)
            fixed = self.entry_headers(cached, etag)
            fixed += [("X-Cache", HIT.x_cache), ("Content-Type", cached.media_type)]
            wire = cached.memo["wire"] = HitWire(fixed, len(cached.audio))
        return wire

    def plain(
        self,
        request: web.Request,
        cached: CachedAudio,
        metrics: RouteMetrics,
        characters: int,
        started: float,
    ) -> web.StreamResponse:
        """A plain hit: the whole audio behind headers serialized once for this entry
        (and kept with it in the hot tier)."""
        try:
            wire = self.wire(cached)
        except UnsafeHeader as exc:  # written by something else: aiohttp refuses it too
            log.warning("cache entry %s cannot be answered: %s", cached.key.hex, exc)
            return json_error(500, f"the cached entry cannot be answered: {exc}")
        response = wire.answer(wire.head_now(cached), request.get(REQUEST_ID), cached.audio)
        counted(metrics, characters, len(cached.audio), started)
        return response


def counted(metrics: RouteMetrics, characters: int, length: int, started: float) -> None:
    """What a plain hit of ``length`` bytes updates: characters saved, bytes served and
    the hit's duration since ``started`` (``time.perf_counter``)."""
    metrics.saved(characters)
    TALLY.add(METRICS.bytes_served_from_cache, length)
    TALLY.observe(metrics.hit_duration, time.perf_counter() - started)
