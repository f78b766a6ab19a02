"""The pure parts of observability: prices, request ids, the result an access line names,
and the shipped Grafana dashboard's shape."""

from __future__ import annotations

import json
import re

import pytest

from proxy.core.pricing import cost_of, price_per_million
from proxy.observability.access_log import cache_result, request_id_from
from tests.support.paths import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "tts-cache-proxy.json"


def test_prices_most_specific_wins() -> None:
    prices = {"default": 15.0, "elevenlabs": 180.0, "elevenlabs:Rachel": 300.0}
    assert price_per_million(prices, "elevenlabs", "Rachel") == 300.0
    assert price_per_million(prices, "elevenlabs", "Adam") == 180.0
    assert price_per_million(prices, "openai", "alloy") == 15.0
    assert price_per_million({}, "openai", "alloy") == 0.0
    assert cost_of(2_000_000, 15.0) == 30.0


@pytest.mark.parametrize(
    ("header", "kept"),
    [("abc-123", True), ("4bf92f35.77b3:da6a", True), ("a b", False), ("x" * 129, False),
     ("", False), (None, False), ("é", False)],
)  # fmt: skip
def test_request_id_is_kept_only_when_sane(header: str | None, kept: bool) -> None:
    rid = request_id_from(header)
    assert (rid == header) is kept
    assert re.fullmatch(r"[A-Za-z0-9._:@/+=-]{1,128}", rid)


def test_cache_result_from_answer_headers() -> None:
    assert cache_result(200, {"X-Cache": "HIT"}) == "hit"
    assert (
        cache_result(200, {"X-Cache": "MISS", "Cache-Status": "tts-cache; fwd=miss; stored"})
        == "miss"
    )
    assert cache_result(
        200, {"X-Cache": "MISS", "Cache-Status": "tts-cache; fwd=miss; collapsed"}
    ) == ("coalesced")
    assert cache_result(502, {"X-Cache": "BYPASS"}) == "bypass"
    assert cache_result(400, {}) == "error"
    assert cache_result(200, {}) == "other"


def test_dashboard_is_importable_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job"} <= variables
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("hit ratio", "requests by result", "hit latency", "miss latency", "upstream",
                  "size", "cleanup", "compression", "cost", "characters"):  # fmt: skip
        assert topic in titles, topic
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
