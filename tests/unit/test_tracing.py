"""The tracing hooks while tracing is off (the default): each hands back what it was
given, so the hit path pays nothing; and the settings around tracing."""

from __future__ import annotations

from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict
from yarl import URL

from proxy.config.settings import load_settings
from proxy.core.routes import build_rules
from proxy.observability import tracing


class Service:
    """Stands in for the service the hooks would wrap: they must not touch it."""


async def handler(request: object) -> object:
    return request


def test_tracing_is_off_by_default_and_every_hook_is_a_pass_through() -> None:
    settings = load_settings(env={})
    assert settings.otel_enabled is False
    tracing.configure(settings)
    assert not tracing.enabled()
    service = Service()
    assert tracing.lookups(service) is service
    assert tracing.writes(service) is service
    assert tracing.serving(handler, lambda _: None) is handler


def test_the_upstream_hook_off_is_one_shared_no_op_and_leaves_the_headers() -> None:
    headers = CIMultiDict({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    first = tracing.upstream_call("POST", URL("http://127.0.0.1:9/v1"), headers)
    second = tracing.upstream_call("POST", URL("http://127.0.0.1:9/v1"), CIMultiDict())
    assert first is second
    with first as call:
        call.answered(500)
    assert headers == CIMultiDict({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})


def test_the_route_of_a_request_is_its_rules_path_template() -> None:
    route = tracing.rule_route(build_rules(["openai", "elevenlabs"]))
    assert route(make_mocked_request("POST", "/v1/audio/speech")) == "/v1/audio/speech"
    elevenlabs = make_mocked_request("POST", "/v1/text-to-speech/abc")
    assert route(elevenlabs) == "/v1/text-to-speech/{voice_id}"
    assert route(make_mocked_request("GET", "/v1/models")) is None


def test_otel_enabled_reads_from_the_environment_and_the_sdks_variables_are_not_settings() -> None:
    warnings: list[str] = []
    env = {
        "OTEL_ENABLED": "true",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
        "OTEL_SERVICE_NAME": "front-desk",
    }
    settings = load_settings(env=env, warnings=warnings)
    assert settings.otel_enabled is True
    assert warnings == []
