"""Route rules: which requests are speech, and what of them counts for the key."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.routes import (
    InvalidSpeechRequest,
    RuleError,
    build_rules,
    find_rule,
    rule_from_mapping,
)

RULES = build_rules(["openai", "elevenlabs", "get"])


def describe(
    method: str, path: str, *, body: Any = None, query: str = "", headers: Any = None
) -> Any:
    found = find_rule(RULES, method, path)
    assert found is not None
    rule, params = found
    raw = (
        body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    )
    return rule.describe(path_params=params, query=query, headers=headers or {}, body=raw)


def test_presets_match_their_endpoints() -> None:
    assert find_rule(RULES, "POST", "/v1/audio/speech")[0].name == "openai"  # type: ignore[index]
    assert find_rule(RULES, "POST", "/v1/text-to-speech/abc")[0].name == "elevenlabs"  # type: ignore[index]
    assert find_rule(RULES, "POST", "/v1/text-to-speech/abc/stream")[0].name == "elevenlabs-stream"  # type: ignore[index]
    assert find_rule(RULES, "GET", "/process")[0].name == "marytts"  # type: ignore[index]
    assert find_rule(RULES, "HEAD", "/api/tts")[0].name == "coqui"  # type: ignore[index]
    assert find_rule(RULES, "GET", "/v1/audio/speech") is None
    assert find_rule(RULES, "POST", "/v1/audio/speech/x") is None
    assert find_rule(RULES, "POST", "/v1/text-to-speech/a/b/c") is None


def test_openai_request_keeps_every_field_but_the_text() -> None:
    speech = describe(
        "POST",
        "/v1/audio/speech",
        body={"input": "Hi", "voice": "alloy", "model": "tts-1", "speed": 1.5, "x": [1]},
    )
    assert speech.text == "Hi"
    assert speech.voice == "alloy" and speech.model == "tts-1"
    assert speech.params == {
        "json:voice": "alloy",
        "json:model": "tts-1",
        "json:speed": 1.5,
        "json:x": [1],
    }


def test_elevenlabs_takes_voice_from_path_and_ignores_logging_flag() -> None:
    speech = describe(
        "POST",
        "/v1/text-to-speech/v1d",
        body={"text": "Hola", "model_id": "m"},
        query="output_format=mp3&enable_logging=true",
    )
    assert speech.voice == "v1d" and speech.model == "m"
    assert speech.params == {
        "path:voice_id": "v1d",
        "json:model_id": "m",
        "query:output_format": "mp3",
    }


def test_sse_stream_format_is_the_plain_requests_entry_in_another_form() -> None:
    body = {"input": "Hi", "voice": "a"}
    plain = describe("POST", "/v1/audio/speech", body=body)
    sse = describe("POST", "/v1/audio/speech", body={**body, "stream_format": "sse"})
    audio = describe("POST", "/v1/audio/speech", body={**body, "stream_format": "audio"})
    assert plain is not None and sse is not None and audio is not None
    assert sse.sse and not plain.sse and not audio.sse
    assert plain.params == sse.params == audio.params


@pytest.mark.parametrize(
    ("body", "field"),
    [(b"", "json:input"), (b"{", "body"), (b"[]", "body"), (b'{"input": null}', "json:input"),
     (b'{"input": ["a"]}', "json:input"), (b'{"input": "x", "speed": NaN}', "body"),
     (b'{"input": "x", "speed": 1e999}', "json:speed"), (b"\xc3\x28", "body")],
)  # fmt: skip
def test_malformed_bodies_name_the_field(body: bytes, field: str) -> None:
    with pytest.raises(InvalidSpeechRequest) as info:
        describe("POST", "/v1/audio/speech", body=body)
    assert info.value.field == field


def test_repeated_query_parameters_are_kept_as_lists() -> None:
    speech = describe("GET", "/api/tts", query="text=Hi&style=a&style=b")
    assert speech.params["query:style"] == ["a", "b"]


def test_custom_rule_with_headers_and_bypass() -> None:
    rule = rule_from_mapping(
        {"name": "x", "method": "post", "path": "/speak/{lang}", "text": "json:t", "voice": "path:lang",
         "headers": ["X-Voice-Style"], "ignore": ["json:trace"], "bypass": {"json:mode": ["preview"]}}
    )  # fmt: skip
    params = rule.match("POST", "/speak/fr")
    assert params == {"lang": "fr"}
    body = json.dumps({"t": "Bonjour", "trace": "abc"}).encode()
    speech = rule.describe(
        path_params=params, query="", headers={"x-voice-style": "warm"}, body=body
    )
    assert speech is not None
    assert speech.params == {"path:lang": "fr", "header:x-voice-style": "warm"}
    preview = json.dumps({"t": "Bonjour", "mode": "preview"}).encode()
    assert rule.describe(path_params=params, query="", headers={}, body=preview) is None


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [({"name": "x", "method": "GET", "path": "/a", "text": "nowhere:t"}, "SOURCE:NAME"),
     ({"name": "x", "method": "GET", "path": "a", "text": "query:t"}, "must start with '/'"),
     ({"name": "x", "method": "GET", "path": "/a", "text": "path:t"}, "no {t} in path"),
     ({"name": "x", "method": "GET", "path": "/a", "text": "query:t", "colour": 1}, "unknown route field")],
)  # fmt: skip
def test_bad_rules_are_explained(raw: dict[str, Any], fragment: str) -> None:
    with pytest.raises(RuleError, match=fragment.replace("{", r"\{").replace("}", r"\}")):
        rule_from_mapping(raw)


def test_duplicate_route_names_are_refused() -> None:
    with pytest.raises(RuleError, match="unique"):
        build_rules(["openai", "openai"])


@given(st.text(max_size=60), st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"]))
def test_matcher_never_crashes(path: str, method: str) -> None:
    find_rule(RULES, method, "/" + path)


@given(st.binary(max_size=200))
def test_describe_only_raises_invalid_speech_request(body: bytes) -> None:
    rule, params = find_rule(RULES, "POST", "/v1/audio/speech")  # type: ignore[misc]
    with contextlib.suppress(InvalidSpeechRequest):
        rule.describe(path_params=params, query="", headers={}, body=body)
