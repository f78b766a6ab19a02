"""The demo upstream really speaks (espeak-ng), deterministically, with OpenAI's errors.
The contracts of both APIs, formats and SDKs are in test_demo_contract.py."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from proxy.demo.upstream import SPEECH_CALLS, create_demo_upstream_app
from tests.support.speech import speech_body

BODY = speech_body("Bienvenido al hotel", voice="es")


@pytest.fixture
async def demo(aiohttp_client: Any) -> Any:
    return await aiohttp_client(create_demo_upstream_app())


async def speak(demo: Any, **changes: Any) -> bytes:
    r = await demo.post("/v1/audio/speech", json={**BODY, **changes})
    assert r.status == 200, await r.text()
    return bytes(await r.read())


async def test_wav_is_real_non_silent_speech(demo: Any) -> None:
    audio = await speak(demo)
    riff, size, wave, fmt, _, pcm_format, channels, rate, _, _, bits, data, length = struct.unpack(
        "<4sI4s4sIHHIIHH4sI", audio[:44]
    )
    assert (riff, wave, fmt, data) == (b"RIFF", b"WAVE", b"fmt ", b"data")
    assert (pcm_format, channels, rate, bits) == (1, 1, 24000, 16)  # OpenAI's rate
    assert size == len(audio) - 8 and length == len(audio) - 44
    assert length > 24000  # more than half a second of speech
    samples = struct.unpack(f"<{length // 2}h", audio[44:])
    assert max(abs(s) for s in samples) > 3000


async def test_same_request_same_bytes_and_pcm_matches_wav(demo: Any) -> None:
    first, second = await speak(demo), await speak(demo)
    assert first == second
    pcm = await speak(demo, response_format="pcm")
    assert pcm == first[44:]


@pytest.mark.parametrize(
    "change", [{"voice": "en"}, {"speed": 1.5}, {"input": "Bienvenida al hotel"}]
)
async def test_what_changes_the_sound_changes_the_bytes(demo: Any, change: dict[str, Any]) -> None:
    assert await speak(demo) != await speak(demo, **change)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**BODY, "voice": "no-such-voice"}, "voice"),
        ({**BODY, "input": "  "}, "input"),
        ({**BODY, "input": 3}, "input"),
        ({**BODY, "speed": 9}, "speed"),
        ({**BODY, "speed": "fast"}, "speed"),
        ({**BODY, "response_format": "ogg"}, "response_format"),
        ({k: v for k, v in BODY.items() if k != "model"}, "model"),
    ],
)
async def test_bad_requests_name_the_param(demo: Any, body: dict[str, Any], param: str) -> None:
    r = await demo.post("/v1/audio/speech", json=body)
    assert r.status == 400
    assert (await r.json())["error"]["param"] == param


async def test_malformed_json_is_400(demo: Any) -> None:
    r = await demo.post("/v1/audio/speech", data=b"{oops")
    assert r.status == 400
    assert "JSON" in (await r.json())["error"]["message"]


async def test_calls_are_counted(demo: Any) -> None:
    await speak(demo)
    await speak(demo, voice="en")
    assert demo.app[SPEECH_CALLS]["speech"] == 2
