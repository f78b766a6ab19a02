"""OpenTelemetry traces through a real proxy, Valkey and loopback upstream (otel_enabled):
the spans of a miss and a hit, their links, the traceparent the upstream receives, and
that a client's trace context never changes what is cached."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from proxy.config.settings import load_settings
from proxy.observability import tracing
from proxy.store.embedded import free_port
from tests.support.loopback_upstream import LoopbackUpstream
from tests.support.proxies import ProxyFactory
from tests.support.speech import SPEECH_PATH, speech_body
from tests.support.waits import eventually, until_filled

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"

_EXPORTER = InMemorySpanExporter()
_WATCHED: list[TracerProvider] = []


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The spans this process exports, from a clean slate; tracing off again afterwards."""
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(TracerProvider())
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider), "another tracer provider was set globally"
    if provider not in _WATCHED:
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        _WATCHED.append(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    tracing.configure(load_settings(env={}))
    _EXPORTER.clear()


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def of_kind(exporter: InMemorySpanExporter, kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is kind]


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def parent_of(span: ReadableSpan) -> str | None:
    return f"{span.parent.span_id:016x}" if span.parent is not None else None


async def traced_proxy(make_proxy: ProxyFactory, upstream_url: str, **settings: Any) -> Any:
    return await make_proxy(upstream_url, client_auth="none", otel_enabled=True, **settings)


async def test_a_miss_is_request_lookup_upstream_and_store_under_the_callers_trace(
    spans: InMemorySpanExporter,
    upstream: tuple[LoopbackUpstream, str],
    make_proxy: ProxyFactory,
) -> None:
    fake, url = upstream
    client = await traced_proxy(make_proxy, url)
    r = await client.post(
        SPEECH_PATH,
        json=speech_body("Welcome to the hotel."),
        headers={"traceparent": TRACEPARENT, "tracestate": "vendor=abc"},
    )
    assert r.status == 200
    await r.read()
    await until_filled(client)
    await eventually(lambda: named(spans, "tts_cache.store"), what="no store span")
    await eventually(lambda: of_kind(spans, SpanKind.SERVER), what="no request span")

    (request,) = of_kind(spans, SpanKind.SERVER)
    (lookup,) = named(spans, "tts_cache.lookup")
    (call,) = of_kind(spans, SpanKind.CLIENT)
    (store,) = named(spans, "tts_cache.store")
    trace_id, request_id = hex_ids(request)
    assert trace_id == TRACE_ID  # the caller's trace goes on
    assert parent_of(request) == CLIENT_SPAN
    for child in (lookup, call, store):
        assert hex_ids(child)[0] == TRACE_ID
        assert parent_of(child) == request_id

    assert request.name == "POST /v1/audio/speech"
    attributes = dict(request.attributes or {})
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.route"] == "/v1/audio/speech"
    assert attributes["http.response.status_code"] == 200
    assert attributes["tts_cache.status"] == "miss"
    key = r.headers["X-Audio-Cache-Key"]
    assert attributes["tts_cache.key_prefix"] == key[:12]
    assert request.status.status_code is StatusCode.UNSET

    assert dict(lookup.attributes or {})["tts_cache.lookup.result"] == "miss"
    call_attributes = dict(call.attributes or {})
    assert call_attributes["http.request.method"] == "POST"
    assert call_attributes["http.response.status_code"] == 200
    assert call_attributes["url.full"] == f"{url}/v1/audio/speech"
    assert call_attributes["server.address"] == "127.0.0.1"
    store_attributes = dict(store.attributes or {})
    assert store_attributes["tts_cache.store.stored"] is True
    assert store_attributes["tts_cache.key_prefix"] == key[:12]

    # The upstream was called with the proxy's context: the caller's trace, our span.
    (sent,) = fake.requests
    assert sent["headers"]["traceparent"] == f"00-{TRACE_ID}-{hex_ids(call)[1]}-01"  # sampled
    assert sent["headers"]["tracestate"] == "vendor=abc"


async def test_a_hit_is_request_and_lookup_and_another_traceparent_keeps_the_key(
    spans: InMemorySpanExporter,
    upstream: tuple[LoopbackUpstream, str],
    make_proxy: ProxyFactory,
) -> None:
    fake, url = upstream
    client = await traced_proxy(make_proxy, url)
    body = speech_body("Our check-in time is three o'clock.")
    first = await client.post(SPEECH_PATH, json=body, headers={"traceparent": TRACEPARENT})
    await first.read()
    await until_filled(client)
    await eventually(lambda: named(spans, "tts_cache.store"), what="no store span")
    await eventually(lambda: of_kind(spans, SpanKind.SERVER), what="no request span")
    _EXPORTER.clear()

    other_trace = "0af7651916cd43dd8448eb211c80319c"
    second = await client.post(
        SPEECH_PATH, json=body, headers={"traceparent": f"00-{other_trace}-b7ad6b7169203331-01"}
    )
    assert second.status == 200
    assert await second.read() == await first.read()
    assert second.headers["X-Cache"] == "HIT"
    assert second.headers["X-Audio-Cache-Key"] == first.headers["X-Audio-Cache-Key"]
    assert fake.calls["openai"] == 1

    await eventually(lambda: of_kind(spans, SpanKind.SERVER), what="no request span")
    (request,) = of_kind(spans, SpanKind.SERVER)
    assert of_kind(spans, SpanKind.CLIENT) == []
    assert named(spans, "tts_cache.store") == []
    assert hex_ids(request)[0] == other_trace
    assert dict(request.attributes or {})["tts_cache.status"] == "hit"
    # The hot tier first (not holding it yet: a miss there), then Redis, which answers.
    lookups = [dict(s.attributes or {}) for s in named(spans, "tts_cache.lookup")]
    assert [(a["tts_cache.tier"], a["tts_cache.lookup.result"]) for a in lookups] == [
        ("hot", "miss"),
        ("redis", "hit"),
    ]
    assert {parent_of(s) for s in named(spans, "tts_cache.lookup")} == {hex_ids(request)[1]}

    async def hot_lookup_only() -> bool:  # once the hot tier admits it (a hit or two)
        _EXPORTER.clear()
        again = await client.post(SPEECH_PATH, json=body)
        assert again.headers["X-Cache"] == "HIT"
        await again.read()
        await eventually(lambda: of_kind(spans, SpanKind.SERVER), what="no request span")
        tiers = [dict(s.attributes or {}) for s in named(spans, "tts_cache.lookup")]
        return [(a["tts_cache.tier"], a["tts_cache.lookup.result"]) for a in tiers] == [
            ("hot", "hit")
        ]

    await eventually(hot_lookup_only, what="the hot tier never answered alone")


async def test_an_upstream_error_answer_marks_the_upstream_and_request_spans(
    spans: InMemorySpanExporter,
    upstream: tuple[LoopbackUpstream, str],
    make_proxy: ProxyFactory,
) -> None:
    fake, url = upstream
    fake.mode = "error"
    client = await traced_proxy(make_proxy, url)
    r = await client.post(SPEECH_PATH, json=speech_body("Something went wrong."))
    assert r.status == 500
    await r.read()
    await eventually(lambda: of_kind(spans, SpanKind.SERVER), what="no request span")
    (request,) = of_kind(spans, SpanKind.SERVER)
    (call,) = of_kind(spans, SpanKind.CLIENT)
    assert call.status.status_code is StatusCode.ERROR
    assert dict(call.attributes or {})["http.response.status_code"] == 500
    assert request.status.status_code is StatusCode.ERROR
    assert parent_of(request) is None  # no traceparent came: a trace of its own
    assert parent_of(call) == hex_ids(request)[1]


async def test_an_unreachable_upstream_marks_the_spans_with_the_kind_of_failure(
    spans: InMemorySpanExporter, make_proxy: ProxyFactory
) -> None:
    client = await traced_proxy(make_proxy, f"http://127.0.0.1:{free_port()}")
    r = await client.post(
        SPEECH_PATH, json=speech_body("Nobody is there."), headers={"traceparent": TRACEPARENT}
    )
    assert r.status == 502
    await r.read()
    await eventually(lambda: of_kind(spans, SpanKind.SERVER), what="no request span")
    (request,) = of_kind(spans, SpanKind.SERVER)
    (call,) = of_kind(spans, SpanKind.CLIENT)
    assert call.status.status_code is StatusCode.ERROR
    assert dict(call.attributes or {})["error.type"] == "connect"
    assert request.status.status_code is StatusCode.ERROR
    assert dict(request.attributes or {})["http.response.status_code"] == 502


async def test_a_malformed_traceparent_starts_a_trace_and_is_not_sent_on(
    spans: InMemorySpanExporter,
    upstream: tuple[LoopbackUpstream, str],
    make_proxy: ProxyFactory,
) -> None:
    fake, url = upstream
    client = await traced_proxy(make_proxy, url)
    r = await client.post(
        SPEECH_PATH,
        json=speech_body("A forged context."),
        headers={"traceparent": "00-not-a-trace-01", "tracestate": "vendor=forged"},
    )
    assert r.status == 200
    await r.read()
    await eventually(lambda: of_kind(spans, SpanKind.SERVER), what="no request span")
    (request,) = of_kind(spans, SpanKind.SERVER)
    (call,) = of_kind(spans, SpanKind.CLIENT)
    assert parent_of(request) is None
    (sent,) = fake.requests
    trace_id, span_id = hex_ids(call)
    assert sent["headers"]["traceparent"].startswith(f"00-{trace_id}-{span_id}-")  # then flags
    assert "tracestate" not in sent["headers"]  # it belonged to the refused traceparent


async def test_a_passed_through_request_is_a_bypass_with_its_upstream_span(
    spans: InMemorySpanExporter,
    upstream: tuple[LoopbackUpstream, str],
    make_proxy: ProxyFactory,
) -> None:
    _, url = upstream
    client = await traced_proxy(make_proxy, url)
    r = await client.get("/other/voices", headers={"traceparent": TRACEPARENT})
    assert r.status == 200
    await r.read()
    await eventually(lambda: of_kind(spans, SpanKind.SERVER), what="no request span")
    (request,) = of_kind(spans, SpanKind.SERVER)
    (call,) = of_kind(spans, SpanKind.CLIENT)
    assert request.name == "GET"  # no route rule: no http.route
    assert "http.route" not in dict(request.attributes or {})
    assert dict(request.attributes or {})["tts_cache.status"] == "bypass"
    assert parent_of(call) == hex_ids(request)[1]


async def test_tracing_off_makes_no_spans_and_forwards_the_callers_context(
    spans: InMemorySpanExporter,
    upstream: tuple[LoopbackUpstream, str],
    make_proxy: ProxyFactory,
) -> None:
    fake, url = upstream
    client = await make_proxy(url, client_auth="none")
    assert not tracing.enabled()
    headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=abc"}
    body = speech_body("Tracing is off.")
    for _ in range(2):
        r = await client.post(SPEECH_PATH, json=body, headers=headers)
        assert r.status == 200
        await r.read()
        await until_filled(client)
    assert r.headers["X-Cache"] == "HIT"
    assert fake.calls["openai"] == 1
    assert spans.get_finished_spans() == ()
    (sent,) = fake.requests  # a transparent proxy: the caller's context, as sent
    assert sent["headers"]["traceparent"] == TRACEPARENT
    assert sent["headers"]["tracestate"] == "vendor=abc"
