"""Speech request bodies read strictly: duplicates, lone surrogates, depth, encoding."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from proxy.core.request_json import MAX_DEPTH, BadJSON, load_object, nesting_depth
from proxy.core.routes import PRESETS, InvalidSpeechRequest, rule_from_mapping
from tests.support.proxies import ProxyFactory


def field_of(text: str) -> str:
    with pytest.raises(BadJSON) as caught:
        load_object(text)
    return caught.value.field


@pytest.mark.parametrize(
    ("text", "field"),
    [('{"voice": "a", "input": "x", "voice": "b"}', "json:voice"),
     ('{"input": "x", "voice_settings": {"speed": 1, "speed": 2}}', "json:voice_settings.speed"),
     ('{"input": "x", "items": [{"a": 1}, {"b": 1, "b": 1}]}', "json:items[1].b"),
     ('{"a": {"b": {"c": {"d": 0, "d": 0}}}}', "json:a.b.c.d"),
     ('{"x": 1, "x": 1}', "json:x")],  # equal values are still two meanings of one key
)  # fmt: skip
def test_duplicate_keys_at_any_depth_are_named(text: str, field: str) -> None:
    assert field_of(text) == field


@pytest.mark.parametrize(
    ("text", "field"),
    [('{"input": "caf\\ud800"}', "json:input"),
     ('{"input": "x", "meta": {"note": "\\udfff"}}', "json:meta.note"),
     ('{"input": "x", "tags": ["ok", "\\udc80"]}', "json:tags[1]"),
     ('{"input": "x", "\\ud800": 1}', "json:\\ud800")],
)  # fmt: skip
def test_lone_surrogates_anywhere_are_named(text: str, field: str) -> None:
    assert field_of(text) == field


def test_surrogate_pairs_are_text() -> None:
    assert load_object('{"input": "\\ud83d\\ude00"}') == {"input": "\N{GRINNING FACE}"}


def test_depth_is_bounded() -> None:
    def nested(levels: int) -> str:
        return '{"input": "x", "n": ' + "[" * (levels - 1) + "]" * (levels - 1) + "}"

    assert nesting_depth(nested(MAX_DEPTH)) == MAX_DEPTH
    load_object(nested(MAX_DEPTH))
    with pytest.raises(BadJSON) as caught:
        load_object(nested(MAX_DEPTH + 1))
    assert caught.value.field == "body"
    assert str(MAX_DEPTH) in caught.value.message


def test_depth_far_beyond_the_recursion_limit_is_a_clean_refusal() -> None:
    deep = "[" * (sys.getrecursionlimit() * 20)
    with pytest.raises(BadJSON) as caught:
        load_object('{"input": "x", "n": ' + deep + "}")
    assert caught.value.field == "body"


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"input": "[[[[{{{{" * 50 + '\\"]]' + "}" * 10})
    assert nesting_depth(text) == 1
    assert load_object(text)["input"].startswith("[[[[")


@pytest.mark.parametrize(
    "text",
    ["[1, 2]", '"input"', "", "{", '{"input": NaN}', '\ufeff{"input": "x"}', '{"input": 1e999}'],
)
def test_everything_else_that_is_not_one_object_is_refused(text: str) -> None:
    with pytest.raises(BadJSON):
        load_object(text)


def test_a_well_formed_body_is_read_as_before() -> None:
    body = {"input": "Café", "voice": "es", "speed": 1.5, "settings": {"a": [1, {"b": None}]}}
    assert load_object(json.dumps(body)) == body


def openai_describe(body: bytes, headers: dict[str, str] | None = None) -> Any:
    (rule,) = PRESETS["openai"]()
    return rule.describe(path_params={}, query="", headers=headers or {}, body=body)


@pytest.mark.parametrize(
    ("body", "field"),
    [(b'{"input": "x", "voice": "a", "voice": "b"}', "json:voice"),
     (b'{"input": "\\ud800", "voice": "a"}', "json:input"),
     (b'{"input": "x", "n": ' + b"[" * 40 + b"]" * 40 + b"}", "body"),
     (b'{"input": "caf\xe9"}', "body")],  # Latin-1, not UTF-8
)  # fmt: skip
def test_the_rule_reports_them_as_invalid_speech_requests(body: bytes, field: str) -> None:
    with pytest.raises(InvalidSpeechRequest) as caught:
        openai_describe(body)
    assert caught.value.field == field


# An OpenAI-style rule that keys Accept (the presets do not: no preset negotiates by it).
KEYING_ACCEPT = {"name": "negotiating", "method": "POST", "path": "/v1/audio/speech",
                 "text": "json:input", "headers": ["Accept"]}  # fmt: skip


def test_a_keyed_header_that_is_not_utf8_is_named() -> None:
    # aiohttp hands over undecodable header bytes as lone surrogates (surrogateescape).
    rule = rule_from_mapping(KEYING_ACCEPT)
    with pytest.raises(InvalidSpeechRequest) as caught:
        rule.describe(
            path_params={}, query="", headers={"accept": "audio/\udcff"},
            body=b'{"input": "x", "voice": "a"}',
        )  # fmt: skip
    assert caught.value.field == "header:accept"


# Through the proxy, each of these is a 400 naming the field: see
# test_proxy.test_malformed_speech_requests_are_400.


async def test_through_the_proxy_an_undecodable_keyed_header_is_a_400(
    upstream: Any, make_proxy: ProxyFactory
) -> None:
    import asyncio

    fake, url = upstream
    client = await make_proxy(url, routes=[KEYING_ACCEPT])
    assert client.port is not None
    body = b'{"model": "tts-1", "input": "Hola", "voice": "es"}'
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nAccept: audio/\xff\xfe\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(payload)["error"]["field"] == "header:accept"
    assert sum(fake.calls.values()) == 0
