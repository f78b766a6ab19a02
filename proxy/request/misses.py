"""Misses: one upstream call per key, streamed to every waiting client while it fills the cache.

A fill (:mod:`proxy.request.fill`) runs as its own task; identical misses in this process
join it, and :mod:`proxy.request.coalescing` makes replicas sharing Redis join it too. The
answer is checked before and after its body (:mod:`proxy.core.policy`) and stored only
when it passes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from zlib import crc32

from aiohttp import web
from multidict import CIMultiDict
from redis.exceptions import RedisError

from ..config.settings import Settings
from ..core.keys import CacheKey
from ..core.outcomes import CacheStatus, Forward, Result
from ..core.policy import Directive, refusal_after_body, refusal_before_body, replayable
from ..core.routes import RouteRule
from ..observability import tracing
from ..observability.access_log import tag
from ..observability.metrics import METRICS
from ..store.service import AudioCacheService, CachedAudio, EntryLabels
from . import sse as sse_form
from .access import Access
from .coalescing import Claim, ClusterFlights, FlightSettings
from .errors import json_error
from .fill import Fill, FillRegistry
from .hits import Hits
from .upstream import UpstreamClient, UpstreamError, strip_hop_by_hop

log = logging.getLogger(__name__)

# Headers the proxy sets on answers to speech requests; never copied from the upstream.
_OWN_HEADERS = frozenset({"cache-status", "x-cache", "x-audio-cache-key", "content-location"})
# Requests that need the whole answer before it can be planned (validators, ranges).
_WHOLE_ANSWER_HEADERS = ("Range", "If-None-Match", "If-Modified-Since")


@dataclass(frozen=True)
class Outgoing:
    """The request a miss sends upstream."""

    method: str
    path: str  # raw path below the upstream's base
    query: str
    headers: CIMultiDict[str]
    body: bytes
    # Speech events asked for: the media type of the audio they carry (see request.sse).
    sse_media_type: str | None = None


class Misses:
    """Starts or joins fills, runs them against the upstream, and streams them to clients."""

    def __init__(
        self,
        settings: Settings,
        service: AudioCacheService,
        upstream: UpstreamClient,
        hits: Hits,
        access: Access,
    ) -> None:
        self.access = access
        self.settings = settings
        self.service = service
        self.writes = tracing.writes(service)  # the service itself unless tracing is on
        self.upstream = upstream
        self.hits = hits
        self.fills = FillRegistry(continue_when_abandoned=settings.fill_continue_after_disconnect)
        self.flights: ClusterFlights | None = None
        self._verdicts: set[asyncio.Future[None]] = set()
        if settings.coalescing_enabled:
            self.flights = ClusterFlights(
                service.redis,
                prefix=settings.audio_cache_key_prefix,
                settings=FlightSettings(
                    lock_seconds=settings.coalescing_lock_seconds,
                    wait_seconds=settings.coalescing_wait_seconds,
                    poll_seconds=min(0.25, settings.redis_socket_timeout_seconds / 2),
                    max_stream_bytes=settings.max_entry_bytes,
                ),
                breaker=service.breaker,
                fetch=service.fetch,
                commands=service.pipelined,
            )

    def claim(self, key: CacheKey, sse: bool) -> Claim | None:
        """Start taking the lead of ``key``'s cross-replica flight ahead of its lookup
        (see :meth:`ClusterFlights.claim`); :meth:`let_go` it whatever happens."""
        if self.flights is None or sse:  # an events flight has a key of its own
            return None
        return self.flights.claim(key)

    def let_go(self, claim: Claim) -> None:
        """Give up ``claim`` unless the fill started for its key adopted it."""
        if self.flights is not None:
            self.flights.let_go(claim)

    def start(
        self,
        rule: RouteRule,
        key: CacheKey,
        outgoing: Outgoing,
        labels: EntryLabels,
        ttl: int,
        directive: Directive,
        started: float,
        *,
        credential: str | None = None,
        private: bool = False,
        not_stored: str | None = None,
    ) -> tuple[Fill, bool]:
        """Join the fill in flight for ``key`` (False), or start one (True): identical
        misses, in this process or on any replica, make one upstream call. A ``private``
        fill (an upstream credential not yet accepted) is shared only by requests with the
        same credential, here and on other replicas, and never settles for a stored
        answer: no one gets audio through another caller's call unless the upstream
        accepted their own credential. With a ``not_stored`` reason (a one-off segment,
        say) the answer is streamed and never stored, and the reason is counted."""

        async def lead(fill: Fill) -> None:
            await self._run(
                fill, rule, outgoing, key, labels, ttl, started, credential, not_stored, private
            )

        sse = outgoing.sse_media_type is not None
        flight = sse_form.flight_key(key) if sse else key
        flight = flight.for_credential(credential or "") if private else flight

        async def runner(fill: Fill) -> None:
            if self.flights is None:
                await lead(fill)
                return
            # A refresh must reach the upstream, so it never settles for a stored answer.
            use = directive is Directive.USE and not private and not sse and not not_stored
            recheck = self.service.fetch_fresh if use else None
            await self.flights.run(fill, flight, lead, recheck=recheck, entry=key)

        return self.fills.join_or_start(flight.hex, runner)

    async def _run(
        self,
        fill: Fill,
        rule: RouteRule,
        outgoing: Outgoing,
        key: CacheKey,
        labels: EntryLabels,
        ttl: int,
        started: float,
        credential: str | None,
        not_stored: str | None = None,
        private: bool = False,
    ) -> None:
        t0 = time.perf_counter()
        try:
            upstream = await self.upstream.speech(
                outgoing.method, outgoing.path, outgoing.query, outgoing.headers, outgoing.body
            )
        except UpstreamError as exc:
            METRICS.upstream_errors.labels(exc.kind).inc()
            await fill.finish(complete=False, error=exc)
            fill.settle(stored=False, refusal="upstream_error")
            return
        try:  # until the body's loop below holds the answer, it is given back here
            # A refusal, or the first success of a credential (a private fill), is kept before
            # its client hears of it; an accepted credential's renewal goes on beside the body.
            later = not private and upstream.status not in (401, 403)
            if not later:
                await self.access.upstream_answered(credential, upstream.status)
            lowered = _lowered(upstream.headers.items())
            refusal = refusal_before_body(
                status=upstream.status,
                headers=lowered,
                max_entry_bytes=self.settings.max_entry_bytes,
                keyed_headers=rule.headers,
            )
            await fill.set_head(
                upstream.status,
                [(k, v) for k, v in upstream.headers.items() if k.lower() not in _OWN_HEADERS],
            )
        except BaseException:
            upstream.release()
            raise
        complete = False
        first = True
        verdict: asyncio.Future[None] | None = None
        try:
            async with upstream:
                async for chunk in upstream.content.iter_any():
                    await fill.add(chunk)
                    if first:
                        first = False
                        arrived = time.perf_counter()
                        # Readers write the first bytes before this task goes on (even to
                        # count them): a body that came whole would otherwise be checked
                        # and stored first.
                        await asyncio.sleep(0)
                        METRICS.time_to_first_byte.labels(labels.route).observe(arrived - started)
                        verdict = self._accepted(
                            fill, credential if later else None, upstream.status
                        )
                complete = True
        except Exception as exc:  # the upstream broke off mid-body
            METRICS.upstream_errors.labels("truncated").inc()
            log.warning("upstream answer for %s cut short: %r", key.hex[:12], exc)
        METRICS.upstream_duration.labels(labels.route, str(upstream.status)).observe(
            time.perf_counter() - t0
        )
        if first:  # an empty body
            verdict = self._accepted(None, credential if later else None, upstream.status)
        if verdict is not None and (refusal is not None or not complete):
            await verdict  # such an answer's last byte goes out at its end, not once settled
        await fill.finish(complete=complete)
        await fill.past_first_bytes()  # the first bytes go out before the store's work
        audio = fill.body()
        media_type = lowered.get("content-type", "application/octet-stream")
        headers = replayable(upstream.headers.items(), rule.replay_headers)
        checked = lowered
        if (
            refusal is None
            and complete
            and outgoing.sse_media_type is not None
            and sse_form.is_events(media_type)
        ):
            stored = sse_form.entry_of(audio, outgoing.sse_media_type, headers)
            if isinstance(stored, str):
                refusal = stored
            else:
                audio, media_type, headers = stored.audio, stored.media_type, stored.headers
                checked = {"content-type": media_type}  # the events' length is not the audio's
        if refusal is None:
            refusal = refusal_after_body(
                headers=checked,
                body=audio,
                complete=complete,
                max_entry_bytes=self.settings.max_entry_bytes,
                pcm_types=rule.pcm_types,
                json_audio=rule.expected_audio(outgoing.query, outgoing.body),
            )
        if refusal is None:
            refusal = not_stored
        if refusal is not None:
            METRICS.not_stored.labels(refusal).inc()
            METRICS.operations.labels("set", "skipped").inc()
            await _settle(fill, verdict, stored=False, refusal=refusal)
            return
        try:
            result = await self.writes.put(
                key,
                audio,
                media_type=media_type,
                ttl_seconds=ttl,
                labels=labels,
                headers=headers,
            )
        except RedisError as exc:
            log.warning("could not store %s: %s", key.hex[:12], exc)
            METRICS.redis_errors.labels("set").inc()
            METRICS.operations.labels("set", "error").inc()
            await _settle(fill, verdict, stored=False, refusal="store_error")
            return
        refused = None if result.stored else result.reason
        await _settle(fill, verdict, stored=result.stored, refusal=refused)

    def _accepted(
        self, fill: Fill | None, credential: str | None, status: int
    ) -> asyncio.Future[None] | None:
        """Renew an accepted credential's verdict in the background: a Redis write that
        would otherwise delay the answer's first byte. With the ``fill`` whose first
        chunk was just handed over, it starts once those bytes are out
        (:meth:`Fill.past_first_bytes`); without (an empty body), at once. It runs beside
        the store; the fill ends only after it. None when there is nothing to keep."""
        if credential is None:
            return None

        async def renew() -> None:
            if fill is not None:
                await fill.past_first_bytes()
            await self.access.upstream_answered(credential, status)

        verdict = asyncio.ensure_future(renew())
        self._verdicts.add(verdict)  # held until done, even when the fill is cancelled
        verdict.add_done_callback(self._verdicts.discard)
        return verdict

    async def serve(
        self,
        request: web.Request,
        rule: RouteRule,
        fill: Fill,
        key: CacheKey,
        *,
        fwd: Forward,
        leader: bool = True,
        stale: CachedAudio | None = None,
        sse: bool = False,
    ) -> tuple[web.StreamResponse, Result]:
        """Stream a fill to this client; ranged or conditional requests wait for it to end.
        With a ``stale`` copy, an upstream failure is answered with it instead. ``sse``:
        the client asked for speech events (the fill holds the upstream's)."""
        with fill.reader():  # entered before any await: an abandoned fill counts its readers
            await fill.wait_head()
            if stale is not None and (fill.status is None or fill.status >= 500):
                failed = fill.status or (fill.error.status if fill.error else 502)
                status = CacheStatus(fwd=Forward.STALE, fwd_status=failed, detail="stale-if-error")
                if sse:
                    return self.hits.events(stale, status=status), status.result
                return await self.hits.serve(request, stale, status=status), status.result
            # RFC 9211: a request that rode on another's upstream call was "collapsed".
            collapsed = not leader or fill.origin != "upstream"
            status = CacheStatus(fwd=fwd, collapsed=collapsed)
            if fill.status is None:
                error = fill.error or UpstreamError(502, "protocol", "the upstream gave no answer")
                response = json_error(error.status, error.message, upstream_error=error.kind)
                response.headers["Cache-Status"] = status.render()
                response.headers["X-Cache"] = status.x_cache
                return response, status.result
            wants_whole = not sse and (
                request.method == "HEAD" or any(h in request.headers for h in _WHOLE_ANSWER_HEADERS)
            )
            if wants_whole and fill.status == 200:
                await fill.wait_done()
                if fill.stored:
                    cached = await self._stored_answer(fill, key, rule)
                    status = status.but(stored=True)
                    return await self.hits.serve(request, cached, status=status), status.result
            return await self._stream(request, rule, fill, key, status), status.result

    async def _stream(
        self,
        request: web.Request,
        rule: RouteRule,
        fill: Fill,
        key: CacheKey,
        status: CacheStatus,
    ) -> web.StreamResponse:
        assert fill.status is not None
        refusal = refusal_before_body(
            status=fill.status,
            headers=_lowered(fill.headers),
            max_entry_bytes=self.settings.max_entry_bytes,
            keyed_headers=rule.headers,
        )
        response = web.StreamResponse(status=fill.status)
        for name, value in strip_hop_by_hop(fill.headers).items():
            response.headers.add(name, value)
        if fill.finished and fill.complete:
            response.content_length = fill.size
        else:  # the first bytes go out before the body has all arrived: as the upstream said
            response.content_length = _declared_length(fill.status, fill.headers)
        self.hits.mark(response, key, status.but(stored=refusal is None))
        tag(request, response)
        try:
            await response.prepare(request)
            if request.method != "HEAD":
                # Read-your-writes: the last byte goes out once the entry is stored, so a
                # client that has the whole answer and asks again gets a hit, here or on
                # any replica. Only one byte is held back, not a whole chunk: holding the
                # chunk delayed the first byte by one upstream chunk interval.
                last = b""
                async for chunk in fill.stream():
                    if not chunk:
                        continue
                    data = last + chunk if last else chunk
                    if len(data) > 1:
                        await response.write(memoryview(data)[:-1])
                    last = data[-1:]
                if refusal is None and fill.complete:
                    await fill.wait_done()
                if last:
                    await response.write(last)
            if not fill.complete:
                # Close the connection so the client can tell the answer was cut short.
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
        except ConnectionResetError:
            log.debug("client left during the miss of %s; the fill goes on", key.hex[:12])
        return response

    async def _stored_answer(self, fill: Fill, key: CacheKey, rule: RouteRule) -> CachedAudio:
        """The entry just stored, read back so its validators match later hits."""
        try:
            cached = await self.service.fetch(key)
        except RedisError:
            cached = None
        return cached if cached is not None else self._as_cached(fill, key, rule)

    def _as_cached(self, fill: Fill, key: CacheKey, rule: RouteRule) -> CachedAudio:
        audio = fill.body()
        now = int(time.time() * 1000)
        ttl_ms = max(self.settings.audio_cache_ttl_seconds * 1000, 0)
        headers = {k.lower(): v for k, v in fill.headers}
        return CachedAudio(
            key=key,
            audio=audio,
            media_type=headers.get("content-type", "application/octet-stream"),
            headers=tuple(replayable(fill.headers, rule.replay_headers)),
            created_ms=now,
            expires_ms=now + ttl_ms,
            content_class="",
            checksum=crc32(audio),
        )


async def _settle(
    fill: Fill, verdict: asyncio.Future[None] | None, *, stored: bool, refusal: str | None
) -> None:
    if verdict is not None:
        await verdict
    fill.settle(stored=stored, refusal=refusal)


def _declared_length(status: int, headers: Iterable[tuple[str, str]]) -> int | None:
    """The upstream's Content-Length, when it framed its body with one (bytes pass through
    as they came, so it holds for the answer too; one cut short is closed early)."""
    if status < 200 or status in (204, 304):
        return None
    lowered = _lowered(headers)
    length = lowered.get("content-length", "")
    if "transfer-encoding" in lowered or not length.isdigit():
        return None
    return int(length)


def _lowered(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers by lower-cased name; a repeated Vary's values all kept (RFC 9110 §5.3)."""
    out: dict[str, str] = {}
    for name, value in headers:
        name = name.lower()
        out[name] = f"{out[name]}, {value}" if name == "vary" and name in out else value
    return out
