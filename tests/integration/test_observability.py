"""Metrics, request ids and access logs, read back the way an operator reads them.

Real traffic through a real proxy and Valkey; ``/metrics`` is scraped and parsed with
prometheus_client's own parser; counters must move by exactly what happened. (The pure
parts: tests/unit/test_observability.py; a second replica as its own process:
tests/process/test_observability.py.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from proxy.cli import JsonFormatter
from tests.support.loopback_upstream import fake_wav
from tests.support.metrics import delta, samples, scrape_text, value
from tests.support.paths import ROOT
from tests.support.proxies import service_of
from tests.support.speech import speech_body
from tests.support.waits import eventually, until_filled

DASHBOARD = ROOT / "deploy" / "grafana" / "tts-cache-proxy.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"


# -- counters against real traffic --------------------------------------------------------


async def test_counters_move_by_exactly_what_happened(upstream: Any, make_proxy: Any) -> None:
    fake, url = upstream
    client = await make_proxy(
        url,
        audio_cache_compression_enabled=False,
        cost_per_million_characters={"default": 10.0, "openai:es": 20.0},
    )
    a, b, broken = "Bienvenido al hotel", "El desayuno es a las ocho", "Texto que falla"
    before = samples(await scrape_text(client))

    for text in (a, b):  # 2 misses, stored
        r = await client.post("/v1/audio/speech", json=speech_body(text, voice="es"))
        assert r.headers["X-Cache"] == "MISS"
        await r.read()
    await until_filled(client)
    for text in (a, a, b):  # 3 hits
        r = await client.post("/v1/audio/speech", json=speech_body(text, voice="es"))
        assert r.headers["X-Cache"] == "HIT"
        await r.read()
    fake.mode = "error"  # 1 miss the upstream fails: passed on, not stored
    r = await client.post("/v1/audio/speech", json=speech_body(broken, voice="es"))
    assert r.status == 500
    fake.mode = "ok"
    r = await client.post("/other/thing", json={})  # 1 pass-through
    assert r.headers["X-Cache"] == "BYPASS"
    r = await client.post("/v1/audio/speech", json={"model": "tts-1"})  # 1 bad request
    assert r.status == 400
    after = samples(await scrape_text(client))

    ops = "audio_cache_operations_total"
    assert delta(before, after, ops, operation="get", result="hit") == 3
    assert delta(before, after, ops, operation="get", result="miss") == 3
    assert delta(before, after, ops, operation="set", result="stored") == 2
    assert delta(before, after, ops, operation="set", result="skipped") == 1
    req = "tts_proxy_request_duration_seconds_count"
    assert delta(before, after, req, route="openai", result="hit") == 3
    assert delta(before, after, req, route="openai", result="miss") == 3
    assert delta(before, after, req, route="passthrough", result="bypass") == 1
    up = "tts_proxy_upstream_duration_seconds_count"
    assert delta(before, after, up, route="openai", status="200") == 2
    assert delta(before, after, up, route="openai", status="500") == 1
    assert (
        delta(before, after, "tts_proxy_miss_time_to_first_byte_seconds_count", route="openai") == 3
    )
    saved_chars = 2 * len(a) + len(b)
    assert delta(before, after, "tts_proxy_characters_saved_total", route="openai") == saved_chars
    assert delta(
        before, after, "tts_proxy_estimated_cost_saved_total", route="openai"
    ) == pytest.approx(saved_chars * 20.0 / 1e6)
    served = 2 * len(fake_wav(a, "es", "tts-1|wav|None")) + len(fake_wav(b, "es", "tts-1|wav|None"))
    assert delta(before, after, "tts_proxy_bytes_served_from_cache_total") == served
    assert delta(before, after, "tts_proxy_not_stored_total", reason="status") == 1

    # The gauges are the shared truth from Redis, not this process's guess.
    totals = await service_of(client).totals()
    assert value(after, "audio_cache_size_entries") == totals["entries"] == 2
    assert value(after, "audio_cache_memory_bytes") == totals["bytes"] > 0
    assert value(after, "tts_proxy_cache_max_bytes") == 100 * 1024 * 1024


# -- request ids and access logs ----------------------------------------------------------


async def test_request_id_is_honoured_and_returned_on_every_kind_of_answer(
    upstream: Any, make_proxy: Any
) -> None:
    _, url = upstream
    client = await make_proxy(url)
    calls = [
        ("post", "/v1/audio/speech", speech_body("hola", voice="es")),  # miss, streamed
        ("post", "/v1/audio/speech", speech_body("hola", voice="es")),  # hit
        ("post", "/other/x", {}),  # pass-through, streamed
        ("post", "/v1/audio/speech", {"input": 3}),  # 400 from the proxy
        ("get", "/healthz", None),
    ]
    for i, (method, path, body) in enumerate(calls):
        rid = f"req-{i}"
        r = await getattr(client, method)(path, json=body, headers={"X-Request-ID": rid})
        await r.read()
        assert r.headers["X-Request-ID"] == rid, path
        await until_filled(client)
    r = await client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-ID"])
    r = await client.get("/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-ID"])


async def test_one_access_line_per_request_without_the_text(
    upstream: Any, make_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _, url = upstream
    client = await make_proxy(url)
    secret = "Habitación 214, señor García"
    with caplog.at_level(logging.INFO, logger="proxy.access"):
        r = await client.post(
            "/v1/audio/speech", json=speech_body(secret, voice="es"), headers={"X-Request-ID": "t1"}
        )
        body = await r.read()
        # Lines are written by a thread, in batches, soon after the answer.
        await eventually(lambda: any(rec.name == "proxy.access" for rec in caplog.records))
    lines = [rec for rec in caplog.records if rec.name == "proxy.access"]
    assert len(lines) == 1
    fields = lines[0].fields  # type: ignore[attr-defined]
    assert fields["request_id"] == "t1"
    assert (fields["route"], fields["result"], fields["status"]) == ("openai", "miss", 200)
    assert fields["content_length"] == len(body) < fields["bytes_sent"] < len(body) + 1024
    assert fields["duration_ms"] > 0
    assert secret not in lines[0].getMessage() and "text" not in fields
    # JSON output carries the same fields, one object per line.
    decoded = json.loads(JsonFormatter().format(lines[0]))
    assert decoded["request_id"] == "t1" and decoded["result"] == "miss"

    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="proxy.access"):
        await (await client.post("/v1/audio/speech", json=speech_body(secret, voice="es"))).read()
        await eventually(lambda: any(rec.name == "proxy.access" for rec in caplog.records))
    (line,) = [rec for rec in caplog.records if rec.name == "proxy.access"]
    assert line.fields["text"] == secret  # type: ignore[attr-defined]
    assert line.fields["result"] == "hit"  # type: ignore[attr-defined]


async def test_access_log_can_be_turned_off(
    upstream: Any, make_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _, url = upstream
    client = await make_proxy(url, access_log=False)
    with caplog.at_level(logging.INFO, logger="proxy.access"):
        r = await client.get("/healthz")
        await asyncio.sleep(0.05)  # time for a line to be written, if one (wrongly) were
    assert "X-Request-ID" in r.headers
    assert not [rec for rec in caplog.records if rec.name == "proxy.access"]


# -- the dashboard and alerts name only metrics that exist --------------------------------

_METRIC = re.compile(r"\b((?:audio_cache|tts_proxy)_[a-z_]+)\b")


def _names_in(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in _METRIC.findall(expr)}


def _exposed(text: str) -> set[str]:
    """Every series name the scrape offers, with the suffixes of its type."""
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, ()))
        names.update(s.name for s in family.samples)
    return names


async def test_dashboard_and_alert_metrics_exist_in_a_real_scrape(
    upstream: Any, make_proxy: Any
) -> None:
    _, url = upstream
    client = await make_proxy(url, audio_cache_compression_threshold_kb=1)
    for text in ("uno", "dos", "uno"):  # misses, a hit, a compressed entry
        await (await client.post("/v1/audio/speech", json=speech_body(text, voice="es"))).read()
        await until_filled(client)
    r = await client.post("/admin/audio-cache/cleanup?force=true&target_percent=0")
    assert r.status == 200
    exposed = _exposed(await scrape_text(client))

    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs.append(dashboard["templating"]["list"][1]["definition"])
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    exprs += [rule["expr"] for rule in rules]
    wanted = _names_in(exprs)
    assert len(wanted) >= 15
    assert wanted - exposed == set()
