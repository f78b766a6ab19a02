"""Prefetch as pure logic: request descriptions, the re-warm rule, the start-up list's
checks and a job's states."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from proxy.background.prefetch import PrefetchJob, needs_rewarm
from proxy.config.settings import ConfigError, load_settings
from proxy.core.descriptions import BadDescription, describe
from proxy.core.keys import CacheKey
from proxy.core.routes import build_rules
from proxy.request.processor import Warmed

RULES = build_rules(["openai", "elevenlabs", "get"])
PARAMS = {"model": "tts-1", "voice": "es", "response_format": "wav"}


def test_text_and_params_describe_the_same_request_as_a_body() -> None:
    by_body = describe(RULES, {"route": "openai", "body": {**PARAMS, "input": "Hola"}})
    by_text = describe(RULES, {"route": "openai", "text": "Hola", "params": PARAMS})
    as_text = describe(RULES, {"route": "openai", "body": json.dumps({**PARAMS, "input": "Hola"})})
    assert by_body.speech == by_text.speech == as_text.speech
    assert (by_body.method, by_body.path, by_body.query) == ("POST", "/v1/audio/speech", "")
    assert json.loads(by_text.body) == {**PARAMS, "input": "Hola"}


def test_query_form_and_path_routes() -> None:
    coqui = describe(RULES, {"route": "coqui", "text": "Hola", "params": {"speaker_id": "p1"}})
    assert coqui.method == "GET" and coqui.body == b""
    assert (
        coqui.speech
        == describe(RULES, {"route": "coqui", "query": "speaker_id=p1&text=Hola"}).speech
    )
    form = describe(RULES, {"route": "marytts-form", "text": "Hola", "params": {"VOICE": "v"}})
    assert form.headers["content-type"] == "application/x-www-form-urlencoded"
    assert form.speech.voice == "v"
    eleven = describe(
        RULES, {"route": "elevenlabs", "path_params": {"voice_id": "a b"}, "text": "Hola"}
    )
    assert eleven.path == "/v1/text-to-speech/a%20b" and eleven.speech.voice == "a b"
    assert (
        eleven.speech
        == describe(
            RULES,
            {"route": "elevenlabs", "path": "/v1/text-to-speech/a%20b", "body": {"text": "Hola"}},
        ).speech
    )


GOOGLE_PARAMS = {
    "voice": {"languageCode": "en-US", "name": "en-US-Neural2-C"},
    "audioConfig": {"audioEncoding": "LINEAR16"},
}
PRESETS = build_rules(["google", "azure", "polly"])


def test_text_goes_where_the_route_reads_it_nested_or_whole() -> None:
    by_text = describe(PRESETS, {"route": "google", "text": "Hi.", "params": GOOGLE_PARAMS})
    sent = {"input": {"text": "Hi."}, **GOOGLE_PARAMS}
    assert json.loads(by_text.body) == sent  # what Google takes, not {"input.text": ...}
    assert by_text.speech == describe(PRESETS, {"route": "google", "body": sent}).speech
    # Other fields of the text's parent object stay beside it.
    within = {**GOOGLE_PARAMS, "input": {"lang": "x"}}
    nested = describe(PRESETS, {"route": "google", "text": "Hi.", "params": within})
    assert json.loads(nested.body)["input"] == {"lang": "x", "text": "Hi."}
    # SSML instead of text: given where the request holds it, among the params.
    ssml = {**GOOGLE_PARAMS, "input": {"ssml": "<speak>Hi.</speak>"}}
    by_ssml = describe(PRESETS, {"route": "google", "params": ssml})
    assert by_ssml.speech == describe(PRESETS, {"route": "google", "body": ssml}).speech
    assert by_ssml.speech.text == "<speak>Hi.</speak>"
    # A whole-body route's text is the body.
    doc = "<speak version='1.0'><voice name='en-US-JennyNeural'>Hi.</voice></speak>"
    azure = describe(PRESETS, {"route": "azure", "text": doc})
    assert azure.body == doc.encode() and azure.headers["content-type"] == "application/ssml+xml"
    assert azure.speech == describe(PRESETS, {"route": "azure", "body": doc}).speech


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"route": "google", "text": "x", "params": {"input": "flat"}}, "params.input"),
        ({"route": "google", "params": GOOGLE_PARAMS}, "text"),
        ({"route": "azure", "text": "<speak/>", "params": {"voice": "v"}}, "params"),
        ({"route": "polly", "text": "x", "params": {"Text": {}}, "body": {}}, "text"),
    ],
)
def test_misplaced_text_names_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(BadDescription) as err:
        describe(PRESETS, raw)
    assert err.value.field == field


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({}, "route"),
        ({"route": "nope"}, "route"),
        ({"route": "openai", "body": 3}, "body"),
        ({"route": "openai", "body": {"voice": "es"}}, "json:input"),
        ({"route": "openai", "params": {}}, "text"),
        ({"route": "openai", "text": "x", "body": {}}, "text"),
        ({"route": "openai", "text": "x", "params": []}, "params"),
        ({"route": "openai", "text": "x", "headers": {"a": 1}}, "headers"),
        ({"route": "openai", "body": {"input": "x", "stream_format": "sse"}}, "body"),
        ({"route": "elevenlabs", "text": "x"}, "path_params"),
        ({"route": "elevenlabs", "text": "x", "path": "/v1/audio/speech"}, "path"),
        ({"route": "coqui", "text": "x", "body": {}}, "body"),
        ({"route": "coqui", "text": "x", "query": "a=1"}, "text"),
        ({"route": "coqui", "query": {"text": ["a", {}]}}, "query.text"),
        ({"route": "openai", "text": "x", "colour": 1}, "colour"),
    ],
)
def test_bad_descriptions_name_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(BadDescription) as err:
        describe(RULES, raw)
    assert err.value.field == field


def test_rewarm_rule() -> None:
    assert needs_rewarm(-2, 86400, 3600)  # gone
    assert needs_rewarm(3_599_000, 86400, 3600) and not needs_rewarm(3_601_000, 86400, 3600)
    # A TTL shorter than the margin is re-warmed at half-life, not on every check.
    assert not needs_rewarm(1_500, 2, 3600) and needs_rewarm(900, 2, 3600)


def test_prefetch_file_is_checked_at_start_up(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {route: openai, text: Hola, colour: red}\n")
    with pytest.raises(ConfigError, match=r"prefetch_file: bad.yaml\[0\]\.colour"):
        load_settings(env={}, overrides={"prefetch_file": str(bad)})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(env={}, overrides={"prefetch_file": str(tmp_path / "missing.yaml")})


def test_job_states() -> None:
    job = PrefetchJob(id="0" * 16, source="admin", total=2)
    assert job.state == "running"
    job.record(0, Warmed(CacheKey("a" * 64), "stored", True))
    job.finished_ms = 1
    assert job.state == "stopped"  # shut down before the second item
    job.record(1, Warmed(CacheKey("b" * 64), "truncated", True))
    assert job.state == "done" and job.to_json()["errors"] == [
        {"index": 1, "key": "b" * 64, "reason": "truncated"}
    ]
    assert job.upstream_calls == 2
