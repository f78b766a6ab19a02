"""The Google, Azure, Deepgram, Cartesia, Polly and ElevenLabs-timestamps presets: every
documented field that changes the sound changes the key, and JSON answers are judged by
the audio in them."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from proxy.core.json_audio import UNKNOWN_ENCODING, ExpectedAudio, JsonAudio, decoded_audio
from proxy.core.json_audio import refusal as json_refusal
from proxy.core.keys import CacheKey, cache_key
from proxy.core.policy import refusal_after_body
from proxy.core.routes import (
    FieldRef,
    InvalidSpeechRequest,
    RuleError,
    SpeechRequest,
    build_rules,
    find_rule,
    rule_from_mapping,
)

RULES = build_rules(
    ["openai", "elevenlabs", "get", "google", "azure", "deepgram", "cartesia", "polly"]
)
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x01\x02" * 40
MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\x55" * 80
OGG = b"OggS\x00\x02" + b"\x11" * 80
RAW = b"\x80\x7f" * 60


def describe(
    method: str,
    path: str,
    *,
    body: Any = None,
    query: str = "",
    headers: dict[str, str] | None = None,
) -> SpeechRequest | None:
    found = find_rule(RULES, method, path)
    assert found is not None, path
    rule, params = found
    raw = (
        body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
    )
    return rule.describe(
        path_params=params, query=query, headers={k.lower(): v for k, v in (headers or {}).items()},
        body=raw,
    )  # fmt: skip


def key_of(speech: SpeechRequest | None) -> CacheKey:
    assert speech is not None
    return cache_key(
        upstream="http://u", route=speech.route, text=speech.text, params=speech.params,
        normalize=speech.normalize,
    )  # fmt: skip


def changed(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(document)
    *parents, last = path.split(".")
    node = out
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return out


def test_the_new_presets_match_their_endpoints() -> None:
    names = {
        ("POST", "/v1/text:synthesize"): "google",
        ("POST", "/v1beta1/text:synthesize"): "google-beta",
        ("POST", "/cognitiveservices/v1"): "azure",
        ("POST", "/v1/speak"): "deepgram",
        ("POST", "/tts/bytes"): "cartesia",
        ("POST", "/v1/speech"): "polly",
        ("POST", "/v1/text-to-speech/v1d/with-timestamps"): "elevenlabs-timestamps",
    }
    for (method, path), name in names.items():
        found = find_rule(RULES, method, path)
        assert found is not None and found[0].name == name


def test_the_default_presets_are_unchanged_by_the_new_ones() -> None:
    default = build_rules(["openai", "elevenlabs", "get"])
    assert find_rule(default, "POST", "/v1/speech") is None
    assert find_rule(default, "POST", "/v1/text:synthesize") is None


# --- Google ---------------------------------------------------------------------------

GOOGLE = {
    "input": {"text": "Welcome to the hotel."},
    "voice": {"languageCode": "en-US", "name": "en-US-Neural2-C", "ssmlGender": "FEMALE"},
    "audioConfig": {
        "audioEncoding": "MP3",
        "speakingRate": 1.0,
        "pitch": 0.0,
        "volumeGainDb": 0.0,
        "sampleRateHertz": 24000,
        "effectsProfileId": ["telephony-class-application"],
    },
}
GOOGLE_FIELDS = [
    ("input.text", "Welcome to the inn."),
    ("voice.languageCode", "en-GB"),
    ("voice.name", "en-US-Neural2-D"),
    ("voice.ssmlGender", "MALE"),
    ("audioConfig.audioEncoding", "LINEAR16"),
    ("audioConfig.speakingRate", 1.25),
    ("audioConfig.pitch", -2.0),
    ("audioConfig.volumeGainDb", 3.0),
    ("audioConfig.sampleRateHertz", 16000),
    ("audioConfig.effectsProfileId", ["headphone-class-device"]),
]


@pytest.mark.parametrize(("path", "value"), GOOGLE_FIELDS)
def test_google_every_sound_field_changes_the_key(path: str, value: Any) -> None:
    base = key_of(describe("POST", "/v1/text:synthesize", body=GOOGLE))
    assert (
        key_of(describe("POST", "/v1/text:synthesize", body=changed(GOOGLE, path, value))) != base
    )


def test_google_text_labels_and_the_rest_of_the_body() -> None:
    speech = describe("POST", "/v1/text:synthesize", body=GOOGLE)
    assert speech is not None
    assert speech.text == "Welcome to the hotel."
    assert speech.voice == "en-US-Neural2-C" and speech.model == "en-US"
    assert speech.params["json:input"] == {}
    assert speech.params["json:audioConfig"] == GOOGLE["audioConfig"]
    spaced = changed(GOOGLE, "input.text", "  Welcome to   the hotel.  ")
    assert key_of(describe("POST", "/v1/text:synthesize", body=spaced)) == key_of(speech)


def test_google_ssml_is_keyed_whole_and_apart_from_the_same_characters_as_text() -> None:
    ssml_text = "<speak>Welcome  to the hotel.</speak>"
    as_ssml = describe(
        "POST", "/v1/text:synthesize", body=changed(GOOGLE, "input", {"ssml": ssml_text})
    )
    as_text = describe(
        "POST", "/v1/text:synthesize", body=changed(GOOGLE, "input", {"text": ssml_text})
    )
    assert as_ssml is not None and as_ssml.text == ssml_text and as_ssml.normalize == ()
    assert key_of(as_ssml) != key_of(as_text)
    one_space = changed(GOOGLE, "input", {"ssml": ssml_text.replace("  ", " ")})
    assert key_of(describe("POST", "/v1/text:synthesize", body=one_space)) != key_of(as_ssml)


def test_google_without_text_or_ssml_names_the_field() -> None:
    with pytest.raises(InvalidSpeechRequest) as caught:
        describe("POST", "/v1/text:synthesize", body=changed(GOOGLE, "input", {}))
    assert caught.value.field == "json:input.text" and "ssml" in caught.value.message
    with pytest.raises(InvalidSpeechRequest) as caught:
        describe("POST", "/v1/text:synthesize", body=changed(GOOGLE, "input", "text"))
    assert caught.value.field == "json:input.text"


def test_google_v1_and_v1beta1_are_apart() -> None:
    v1 = key_of(describe("POST", "/v1/text:synthesize", body=GOOGLE))
    assert key_of(describe("POST", "/v1beta1/text:synthesize", body=GOOGLE)) != v1


# --- Azure ----------------------------------------------------------------------------

AZURE_SSML = (
    "<speak version='1.0' xml:lang='en-US'><voice name='en-US-JennyNeural'>"
    "<prosody rate='+10%'>Welcome to the hotel.</prosody></voice></speak>"
)
AZURE_HEADERS = {
    "Content-Type": "application/ssml+xml",
    "X-Microsoft-OutputFormat": "riff-24khz-16bit-mono-pcm",
    "Ocp-Apim-Subscription-Key": "k1",
}


def azure(ssml: str | bytes = AZURE_SSML, **headers: str) -> SpeechRequest | None:
    body = ssml.encode() if isinstance(ssml, str) else ssml
    return describe(
        "POST", "/cognitiveservices/v1", body=body, headers={**AZURE_HEADERS, **headers}
    )


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.replace("JennyNeural", "GuyNeural"),
        lambda s: s.replace("+10%", "+20%"),
        lambda s: s.replace("en-US'", "en-GB'"),
        lambda s: s.replace("hotel.", "hotel. "),  # never normalized: whitespace counts
        lambda s: s.replace("Welcome", "Hello"),
    ],
)
def test_azure_the_whole_ssml_document_is_the_key(edit: Callable[[str], str]) -> None:
    assert key_of(azure(edit(AZURE_SSML))) != key_of(azure())


def test_azure_output_format_is_keyed_and_the_subscription_key_is_not() -> None:
    base = key_of(azure())
    speech = azure()
    assert speech is not None and speech.text == AZURE_SSML and speech.normalize == ()
    assert key_of(azure(**{"X-Microsoft-OutputFormat": "audio-24khz-48kbitrate-mono-mp3"})) != base
    assert key_of(azure(**{"Ocp-Apim-Subscription-Key": "k2"})) == base


def test_azure_bad_bodies_name_the_body() -> None:
    for bad in (b"", b"   ", b"\xff<speak/>"):
        with pytest.raises(InvalidSpeechRequest) as caught:
            azure(bad)
        assert caught.value.field == "body"


# --- Deepgram -------------------------------------------------------------------------

DEEPGRAM_QUERY = "model=aura-asteria-en&encoding=linear16&container=wav&sample_rate=24000"


@pytest.mark.parametrize(
    "query",
    [
        "model=aura-luna-en&encoding=linear16&container=wav&sample_rate=24000",
        "model=aura-asteria-en&encoding=mulaw&container=wav&sample_rate=24000",
        "model=aura-asteria-en&encoding=linear16&container=none&sample_rate=24000",
        "model=aura-asteria-en&encoding=linear16&container=wav&sample_rate=16000",
        DEEPGRAM_QUERY + "&bit_rate=48000",
    ],
)
def test_deepgram_every_query_field_changes_the_key(query: str) -> None:
    base = key_of(describe("POST", "/v1/speak", body={"text": "Hi there."}, query=DEEPGRAM_QUERY))
    assert key_of(describe("POST", "/v1/speak", body={"text": "Hi there."}, query=query)) != base


def test_deepgram_text_and_token_auth() -> None:
    one = describe("POST", "/v1/speak", body={"text": "Hi."}, query=DEEPGRAM_QUERY,
                   headers={"Authorization": "Token a"})  # fmt: skip
    two = describe("POST", "/v1/speak", body={"text": "Hi."}, query=DEEPGRAM_QUERY,
                   headers={"Authorization": "Token b"})  # fmt: skip
    other = describe("POST", "/v1/speak", body={"text": "Bye."}, query=DEEPGRAM_QUERY)
    assert one is not None and one.voice == "aura-asteria-en"
    assert key_of(one) == key_of(two) != key_of(other)


# --- Cartesia -------------------------------------------------------------------------

CARTESIA = {
    "transcript": "Welcome to the hotel.",
    "model_id": "sonic-2",
    "voice": {"mode": "id", "id": "a0e99841-438c-4a64-b679-ae501e7d6091"},
    "output_format": {"container": "wav", "encoding": "pcm_s16le", "sample_rate": 44100},
    "language": "en",
}
CARTESIA_FIELDS = [
    ("transcript", "Welcome to the inn."),
    ("model_id", "sonic-english"),
    ("voice.mode", "embedding"),
    ("voice.id", "b7d50908-b17c-442d-ad8d-810c63997ed9"),
    ("output_format.container", "mp3"),
    ("output_format.encoding", "pcm_f32le"),
    ("output_format.sample_rate", 22050),
    ("output_format.bit_rate", 128000),
    ("language", "es"),
]


def cartesia(
    body: dict[str, Any], version: str = "2024-11-13", key: str = "k"
) -> SpeechRequest | None:
    headers = {"Cartesia-Version": version, "X-API-Key": key, "Content-Type": "application/json"}
    return describe("POST", "/tts/bytes", body=body, headers=headers)


@pytest.mark.parametrize(("path", "value"), CARTESIA_FIELDS)
def test_cartesia_every_sound_field_changes_the_key(path: str, value: Any) -> None:
    assert key_of(cartesia(changed(CARTESIA, path, value))) != key_of(cartesia(CARTESIA))


def test_cartesia_version_is_keyed_and_the_api_key_is_not() -> None:
    base = key_of(cartesia(CARTESIA))
    assert key_of(cartesia(CARTESIA, version="2025-04-16")) != base
    assert key_of(cartesia(CARTESIA, key="other")) == base
    speech = cartesia(CARTESIA)
    assert speech is not None and speech.voice == CARTESIA["voice"]["id"]  # type: ignore[index]


# --- Polly ----------------------------------------------------------------------------

POLLY = {
    "Text": "Welcome to the hotel.",
    "VoiceId": "Joanna",
    "OutputFormat": "mp3",
    "SampleRate": "22050",
    "Engine": "neural",
    "LanguageCode": "en-US",
    "TextType": "text",
    "LexiconNames": ["hotel"],
}
POLLY_FIELDS = [
    ("Text", "Welcome to the inn."),
    ("VoiceId", "Matthew"),
    ("OutputFormat", "ogg_vorbis"),
    ("SampleRate", "16000"),
    ("Engine", "standard"),
    ("LanguageCode", "en-GB"),
    ("TextType", "ssml"),
    ("LexiconNames", ["hotel", "names"]),
]


@pytest.mark.parametrize(("path", "value"), POLLY_FIELDS)
def test_polly_every_sound_field_changes_the_key(path: str, value: Any) -> None:
    base = key_of(describe("POST", "/v1/speech", body=POLLY))
    assert key_of(describe("POST", "/v1/speech", body=changed(POLLY, path, value))) != base


def test_polly_speech_marks_are_not_cached() -> None:
    assert describe("POST", "/v1/speech", body=changed(POLLY, "OutputFormat", "json")) is None
    speech = describe("POST", "/v1/speech", body=POLLY)
    assert speech is not None and speech.voice == "Joanna" and speech.model == "neural"


# --- ElevenLabs with timestamps -------------------------------------------------------

ELEVEN = {"text": "Hola.", "model_id": "eleven_multilingual_v2",
          "voice_settings": {"stability": 0.5, "similarity_boost": 0.75}}  # fmt: skip


def test_elevenlabs_timestamps_keys_like_the_plain_route_but_apart_from_it() -> None:
    path = "/v1/text-to-speech/v1d/with-timestamps"
    base = key_of(describe("POST", path, body=ELEVEN))
    assert key_of(describe("POST", "/v1/text-to-speech/v2d/with-timestamps", body=ELEVEN)) != base
    assert key_of(describe("POST", path, body=ELEVEN, query="output_format=pcm_16000")) != base
    assert (
        key_of(describe("POST", path, body=changed(ELEVEN, "model_id", "eleven_flash_v2_5")))
        != base
    )
    assert (
        key_of(describe("POST", path, body=changed(ELEVEN, "voice_settings.stability", 0.9)))
        != base
    )
    assert key_of(describe("POST", path, body=ELEVEN, query="enable_logging=false")) == base
    assert key_of(describe("POST", "/v1/text-to-speech/v1d", body=ELEVEN)) != base


# --- JSON audio: what the answer must hold --------------------------------------------


def rule(name: str) -> Any:
    return next(r for r in RULES if r.name == name)


def test_expected_audio_follows_the_request_encoding() -> None:
    google = rule("google")
    for encoding, media in [("LINEAR16", "audio/wav"), ("MP3", "audio/mpeg"),
                            ("OGG_OPUS", "audio/ogg"), ("MULAW", "audio/mulaw"),
                            ("ALAW", "audio/alaw"), ("SOMETHING_NEW", UNKNOWN_ENCODING)]:  # fmt: skip
        body = json.dumps(changed(GOOGLE, "audioConfig.audioEncoding", encoding)).encode()
        assert google.expected_audio("", body) == ExpectedAudio("audioContent", media)
    eleven = rule("elevenlabs-timestamps")
    assert eleven.expected_audio("", b"{}").media_type == "audio/mpeg"
    assert eleven.expected_audio("output_format=pcm_24000", b"{}").media_type == "audio/pcm"
    assert eleven.expected_audio("output_format=ulaw_8000", b"{}").media_type == "audio/mulaw"
    assert rule("openai").expected_audio("", b"{}") is None


def answer(field: str, audio: bytes, **extra: Any) -> bytes:
    return json.dumps({field: base64.b64encode(audio).decode(), **extra}).encode()


@pytest.mark.parametrize(
    ("media", "audio", "ok"),
    [
        ("audio/wav", WAV, True),
        ("audio/wav", RAW, False),  # LINEAR16 comes with its WAV header
        ("audio/wav", MP3, False),
        ("audio/mpeg", MP3, True),
        ("audio/mpeg", OGG, False),
        ("audio/ogg", OGG, True),
        ("audio/mulaw", RAW, True),
        ("audio/mulaw", WAV, True),  # raw types take a header too
        ("audio/alaw", b'{"error": 1}', False),
        (UNKNOWN_ENCODING, RAW, True),
        (UNKNOWN_ENCODING, b"<html>oops</html>", False),
    ],
)
def test_json_audio_judges_the_decoded_field(media: str, audio: bytes, ok: bool) -> None:
    verdict = json_refusal(ExpectedAudio("audioContent", media), answer("audioContent", audio))
    assert verdict == (None if ok else "not_audio")


@pytest.mark.parametrize(
    "body",
    [
        b'{"error": {"code": 429, "message": "quota"}}',
        b'{"audioContent": ""}',
        b'{"audioContent": "not base64!"}',
        b'{"audioContent": 12}',
        b'{"audioContent": "SUQz',  # cut short
        b"[1, 2]",
        b"ID3 not json at all",
    ],
)
def test_json_answers_without_audio_are_refused(body: bytes) -> None:
    assert decoded_audio(body, "audioContent") is None
    assert json_refusal(ExpectedAudio("audioContent", "audio/mpeg"), body) == "not_audio"


def test_a_nested_audio_field_is_found() -> None:
    body = json.dumps({"result": {"audio": base64.b64encode(MP3).decode()}}).encode()
    assert decoded_audio(body, "result.audio") == MP3


def test_refusal_after_body_decodes_json_answers_on_json_audio_routes_only() -> None:
    body = answer("audioContent", MP3, timepoints=[])
    expected = ExpectedAudio("audioContent", "audio/mpeg")
    common: dict[str, Any] = dict(body=body, complete=True, max_entry_bytes=1 << 20)
    json_headers = {"content-type": "application/json; charset=utf-8"}
    assert refusal_after_body(headers=json_headers, json_audio=expected, **common) is None
    assert refusal_after_body(headers=json_headers, **common) == "not_audio"
    # A route that answers JSON may still answer plain audio: judged as usual then.
    mp3: dict[str, Any] = dict(complete=True, max_entry_bytes=1 << 20, json_audio=expected)
    assert refusal_after_body(headers={"content-type": "audio/mpeg"}, body=MP3, **mp3) is None
    assert (
        refusal_after_body(headers={"content-type": "audio/mpeg"}, body=body, **mp3) == "not_audio"
    )
    truncated = {**json_headers, "content-length": str(len(body) + 5)}
    assert refusal_after_body(headers=truncated, json_audio=expected, **common) == "truncated"


def test_json_audio_prefixes_pick_the_longest() -> None:
    spec = JsonAudio("a", media_type="audio/mpeg", type_from="query:f",
                     types={"pcm_*": "audio/pcm", "pcm_8*": "audio/l8", "wav": "audio/wav"})  # fmt: skip
    assert spec.media_type_for(None) == "audio/mpeg"
    assert spec.media_type_for("wav") == "audio/wav"
    assert spec.media_type_for("pcm_16000") == "audio/pcm"
    assert spec.media_type_for("pcm_8000") == "audio/l8"
    assert spec.media_type_for("flac") == UNKNOWN_ENCODING


# --- Rules written in YAML ------------------------------------------------------------


def test_yaml_rules_take_nested_refs_ssml_body_and_json_audio() -> None:
    google_like = rule_from_mapping(
        {
            "name": "mine",
            "method": "POST",
            "path": "/synth",
            "text": "json:input.text",
            "ssml": "json:input.ssml",
            "voice": "json:voice.name",
            "json_audio": {"field": "audio", "type_from": "json:format",
                           "types": {"wav": "Audio/WAV"}, "media_type": "audio/mpeg"},
        }
    )  # fmt: skip
    assert google_like.ssml == FieldRef("json", "input.ssml")
    assert google_like.json_audio == JsonAudio(
        "audio", "audio/mpeg", "json:format", {"wav": "audio/wav"}
    )
    assert google_like.expected_audio("", b'{"format": "wav"}') == ExpectedAudio(
        "audio", "audio/wav"
    )
    whole = rule_from_mapping({"name": "x", "method": "POST", "path": "/x", "text": "body"})
    speech = whole.describe(path_params={}, query="", headers={}, body=b"<speak>Hi</speak>")
    assert speech is not None and speech.text == "<speak>Hi</speak>" and "body" not in speech.params


@pytest.mark.parametrize(
    "bad",
    [
        {"json_audio": "audio"},
        {"json_audio": {"media_type": "audio/mpeg"}},
        {"json_audio": {"field": "a", "extra": 1}},
        {"json_audio": {"field": "a", "type_from": "header:x"}},
        {"json_audio": {"field": "a", "types": ["mp3"]}},
        {"voice": "body"},
        {"text": "body", "ssml": "json:s"},
    ],
)
def test_bad_yaml_rules_are_refused_by_name(bad: dict[str, Any]) -> None:
    with pytest.raises(RuleError):
        rule_from_mapping({"name": "x", "method": "POST", "path": "/x", "text": "json:t", **bad})


def test_a_top_level_key_with_a_dot_is_still_found() -> None:
    dotted = rule_from_mapping({"name": "d", "method": "POST", "path": "/d", "text": "json:a.b"})
    speech = dotted.describe(
        path_params={}, query="", headers={}, body=b'{"a.b": "Hi", "a": {"b": 1}}'
    )
    assert speech is not None and speech.text == "Hi" and speech.params == {"json:a": {"b": 1}}


def test_ssml_and_text_are_apart_even_when_the_text_is_not_normalized() -> None:
    raw = rule_from_mapping(
        {"name": "r", "method": "POST", "path": "/r", "text": "json:in.text",
         "ssml": "json:in.ssml", "normalize": []}
    )  # fmt: skip
    doc = "<speak>Hi</speak>"
    as_text = raw.describe(
        path_params={}, query="", headers={}, body=json.dumps({"in": {"text": doc}}).encode()
    )
    as_ssml = raw.describe(
        path_params={}, query="", headers={}, body=json.dumps({"in": {"ssml": doc}}).encode()
    )
    assert key_of(as_text) != key_of(as_ssml)
