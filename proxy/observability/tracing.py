"""OpenTelemetry traces of the request path (the ``[otel]`` extra, setting ``otel_enabled``).

Every OpenTelemetry import of the proxy is here. The request path calls four hooks:

- :func:`serving` wraps the speech routes' handlers in the ``SERVER`` span of the request;
- :func:`lookups` and :func:`writes` give the processor the cache's reads and writes, each
  in its span (``tts_cache.lookup``, ``tts_cache.store``);
- :func:`upstream_call` is the ``CLIENT`` span of one upstream request, whose W3C
  ``traceparent`` it writes into the outgoing headers.

Off (the default), :func:`serving`, :func:`lookups` and :func:`writes` return what they
were given, once, when the application is built: a hit pays nothing for tracing, not
even a flag. :func:`upstream_call` hands a miss a shared no-op. Tracing is one state per
process (like OpenTelemetry's own global provider): the last :func:`configure` decides.

Trust: an incoming ``traceparent`` only chooses the parent of the request span. It is not
one of the request headers a key covers (:attr:`proxy.core.routes.RouteRule.headers`
holds none unless a route lists it), and an answer whose ``Vary`` names it is not stored
(:func:`proxy.core.policy.vary_refusal`). With tracing on, the upstream receives the
proxy's own ``traceparent`` (and ``tracestate``) instead of the client's.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ..config.errors import ConfigError
from ..core.keys import CacheKey
from ..core.routes import RouteRule, find_rule
from .access_log import cache_result

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    _API = True
except ImportError:  # the [otel] extra is not installed: tracing can only stay off
    _API = False

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

    from ..config.settings import Settings
    from ..store.schema import CachedAudio, EntryLabels
    from ..store.writes import StoreResult

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
INSTALL_HINT = "pip install 'tts-cache-proxy[otel]'"
SERVICE_NAME = "tts-cache-proxy"
# Span attributes of this proxy's own (the rest follow OpenTelemetry's HTTP conventions).
STATUS = "tts_cache.status"  # hit, miss, coalesced, stale, partial, bypass, error, other
KEY_PREFIX = "tts_cache.key_prefix"  # the first 12 hex digits of the key, as in the logs
_KEY_DIGITS = 12

_tracer: Tracer | None = None


def installed() -> bool:
    """Whether the OpenTelemetry API and SDK can be imported (the ``[otel]`` extra)."""
    return _API and importlib.util.find_spec("opentelemetry.sdk") is not None


def enabled() -> bool:
    """Whether this process traces requests."""
    return _tracer is not None


def configure(settings: Settings) -> None:
    """Turn tracing on or off for this process, as ``otel_enabled`` says.

    On, spans go to the tracer provider already set globally (one of
    ``opentelemetry-instrument``'s, or an embedding program's), else to one made here:
    the SDK's, exporting over OTLP/HTTP in batches, configured by the standard
    ``OTEL_*`` variables (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_SERVICE_NAME``,
    ``OTEL_TRACES_SAMPLER``...). ``OTEL_TRACES_EXPORTER=console`` prints them instead.
    """
    global _tracer
    if not settings.otel_enabled:
        _tracer = None
        return
    if not installed():
        raise ConfigError(f"otel_enabled: tracing needs OpenTelemetry: {INSTALL_HINT}")
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):  # none set yet
        provider = _own_provider()
        trace.set_tracer_provider(provider)
    _tracer = provider.get_tracer("proxy")


def _own_provider() -> trace.TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    exporter: SpanExporter
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "console":
        exporter = ConsoleSpanExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ConfigError(
                f"otel_enabled: the OTLP/HTTP span exporter is missing: {INSTALL_HINT}"
            ) from None
        exporter = OTLPSpanExporter()
    provider = TracerProvider(resource=resource)  # OTEL_TRACES_SAMPLER, if set, applies
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


# -- the request span -------------------------------------------------------------


def rule_route(rules: Sequence[RouteRule]) -> Callable[[web.Request], str | None]:
    """``http.route`` of a speech request: the path template of the rule serving it."""

    def route(request: web.Request) -> str | None:
        found = find_rule(rules, request.method, request.path)
        return found[0].path if found is not None else None

    return route


def serving(handler: Handler, route: Callable[[web.Request], str | None]) -> Handler:
    """``handler`` inside a ``SERVER`` span per request, whose parent is the request's
    ``traceparent`` (if valid); ``handler`` itself while tracing is off."""
    tracer = _tracer
    if tracer is None:
        return handler

    @functools.wraps(handler)
    async def traced(request: web.Request) -> web.StreamResponse:
        parent = propagate.extract(request.headers)
        template = route(request)
        attributes: dict[str, Any] = {
            "http.request.method": request.method,
            "url.path": request.path,
            "url.scheme": request.scheme,
            "network.protocol.version": f"{request.version.major}.{request.version.minor}",
        }
        if template is not None:
            attributes["http.route"] = template
        name = f"{request.method} {template}" if template is not None else request.method
        with tracer.start_as_current_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            set_status_on_exception=False,
        ) as span:
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # answered by aiohttp (a redirect, a 4xx)
                _answered(span, exc.status, None)
                raise
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.set_attribute("error.type", type(exc).__qualname__)
                raise
            _answered(span, response.status, response)
            return response

    return traced


def _answered(span: Span, status: int, response: web.StreamResponse | None) -> None:
    span.set_attribute("http.response.status_code", status)
    if response is not None:
        result = getattr(response, "access_result", None) or cache_result(status, response.headers)
        span.set_attribute(STATUS, result)
    if status >= 500:  # a server span's 4xx is the client's error, not ours
        span.set_status(Status(StatusCode.ERROR))
        span.set_attribute("error.type", str(status))


# -- the cache's reads and writes -------------------------------------------------


class Lookups(Protocol):
    """The cache reads of the hit path (:class:`proxy.store.service.AudioCacheService`)."""

    def hot_hit(self, key: CacheKey) -> CachedAudio | None: ...

    async def get_or_stale(
        self, key: CacheKey, *, hot_tried: bool = False
    ) -> tuple[CachedAudio | None, CachedAudio | None]: ...


class Writes(Protocol):
    """The cache write of the miss path (:class:`proxy.store.service.AudioCacheService`)."""

    async def put(
        self,
        key: CacheKey,
        audio: bytes,
        *,
        media_type: str,
        ttl_seconds: int,
        labels: EntryLabels,
        headers: Sequence[tuple[str, str]] = (),
    ) -> StoreResult: ...


def lookups(service: Lookups) -> Lookups:
    """``service``'s reads, each in a ``tts_cache.lookup`` span; ``service`` when off."""
    return service if _tracer is None else _TracedLookups(service, _tracer)


def writes(service: Writes) -> Writes:
    """``service``'s writes, each in a ``tts_cache.store`` span; ``service`` when off."""
    return service if _tracer is None else _TracedWrites(service, _tracer)


def _lookup_span(tracer: Tracer, key: CacheKey) -> AbstractContextManager[Span]:
    prefix = key.hex[:_KEY_DIGITS]
    request_span = trace.get_current_span()  # the request's, when it is traced here
    if request_span.is_recording():
        request_span.set_attribute(KEY_PREFIX, prefix)
    return tracer.start_as_current_span("tts_cache.lookup", attributes={KEY_PREFIX: prefix})


class _TracedLookups:
    __slots__ = ("_service", "_tracer")

    def __init__(self, service: Lookups, tracer: Tracer) -> None:
        self._service = service
        self._tracer = tracer

    def hot_hit(self, key: CacheKey) -> CachedAudio | None:
        with _lookup_span(self._tracer, key) as span:
            span.set_attribute("tts_cache.tier", "hot")
            found = self._service.hot_hit(key)
            span.set_attribute("tts_cache.lookup.result", "miss" if found is None else "hit")
            return found

    async def get_or_stale(
        self, key: CacheKey, *, hot_tried: bool = False
    ) -> tuple[CachedAudio | None, CachedAudio | None]:
        with _lookup_span(self._tracer, key) as span:
            span.set_attribute("tts_cache.tier", "redis" if hot_tried else "hot,redis")
            fresh, stale = await self._service.get_or_stale(key, hot_tried=hot_tried)
            result = "hit" if fresh is not None else "stale" if stale is not None else "miss"
            span.set_attribute("tts_cache.lookup.result", result)
            return fresh, stale


class _TracedWrites:
    __slots__ = ("_service", "_tracer")

    def __init__(self, service: Writes, tracer: Tracer) -> None:
        self._service = service
        self._tracer = tracer

    async def put(
        self,
        key: CacheKey,
        audio: bytes,
        *,
        media_type: str,
        ttl_seconds: int,
        labels: EntryLabels,
        headers: Sequence[tuple[str, str]] = (),
    ) -> StoreResult:
        with self._tracer.start_as_current_span("tts_cache.store") as span:
            span.set_attribute(KEY_PREFIX, key.hex[:_KEY_DIGITS])
            span.set_attribute("tts_cache.store.bytes", len(audio))
            result = await self._service.put(
                key, audio, media_type=media_type, ttl_seconds=ttl_seconds, labels=labels,
                headers=headers,
            )  # fmt: skip
            span.set_attribute("tts_cache.store.stored", result.stored)
            span.set_attribute("tts_cache.store.stored_bytes", result.stored_size)
            if not result.stored:
                span.set_attribute("tts_cache.store.reason", result.reason)
            return result


# -- the upstream call ------------------------------------------------------------


class UpstreamCall:
    """One upstream request's span: told the status when the answer's head arrives."""

    __slots__ = ("_span",)

    def __init__(self, span: Span | None) -> None:
        self._span = span

    def answered(self, status: int) -> None:
        span = self._span
        if span is None:
            return
        span.set_attribute("http.response.status_code", status)
        if status >= 400:  # a client span's 4xx is an error too (the conventions say so)
            span.set_status(Status(StatusCode.ERROR))
            span.set_attribute("error.type", str(status))


class _Untraced(AbstractContextManager[UpstreamCall]):
    """The upstream call's hook while tracing is off: one shared object, nothing done."""

    _call = UpstreamCall(None)

    def __enter__(self) -> UpstreamCall:
        return self._call

    def __exit__(self, *exc: object) -> None:
        return None


_UNTRACED = _Untraced()


@contextmanager
def _traced_call(
    tracer: Tracer, method: str, url: URL, headers: CIMultiDict[str]
) -> Iterator[UpstreamCall]:
    attributes: dict[str, Any] = {
        "http.request.method": method,
        # Without the query: one can carry a credential (and it is the client's to say).
        "url.full": str(url.with_query(None).with_fragment(None)),
        "server.address": url.host or "",
    }
    if url.port is not None:
        attributes["server.port"] = url.port
    with tracer.start_as_current_span(
        method, kind=SpanKind.CLIENT, attributes=attributes, set_status_on_exception=False
    ) as span:
        # The client's trace context is replaced by ours (its own went into our parent).
        for name in propagate.get_global_textmap().fields:
            headers.popall(name, None)
        propagate.inject(headers)
        try:
            yield UpstreamCall(span)
        except Exception as exc:
            kind = getattr(exc, "kind", None)  # UpstreamError's: timeout, connect, protocol
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            span.set_attribute("error.type", kind or type(exc).__qualname__)
            raise


def upstream_call(
    method: str, url: URL, headers: CIMultiDict[str]
) -> AbstractContextManager[UpstreamCall]:
    """The ``CLIENT`` span of a request to ``url``, whose context it injects into
    ``headers``; a shared no-op while tracing is off (the headers then go as they are)."""
    tracer = _tracer
    if tracer is None:
        return _UNTRACED
    return _traced_call(tracer, method, url, headers)
