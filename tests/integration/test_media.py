"""A body is stored only when its first bytes are the audio its media type says."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import soundfile
from aiohttp import web

from proxy.core.media import RAW_TYPES, SNIFF_BYTES, sniff
from proxy.core.policy import refusal_after_body
from proxy.core.routes import RuleError, rule_from_mapping
from proxy.demo.espeak import SAMPLE_RATE, synthesize_in_a_fresh_process
from proxy.demo.upstream import wav_file
from tests.support.proxies import ProxyFactory, service_of
from tests.support.servers import served
from tests.support.waits import until_stored


@pytest.fixture(scope="module")
def speech_pcm() -> bytes:
    """Real speech: espeak-ng's 16-bit mono PCM for one short sentence."""
    return synthesize_in_a_fresh_process("Buenos días.", "es", 1.0)


def encoded(pcm: bytes, container: str, subtype: str, rate: int = SAMPLE_RATE) -> bytes:
    """``pcm`` written by libsndfile (through soundfile) as a real file of that format."""
    out = io.BytesIO()
    with soundfile.SoundFile(
        out, "w", samplerate=rate, channels=1, format=container, subtype=subtype
    ) as f:
        f.buffer_write(pcm, dtype="int16")
    return out.getvalue()


# Formats libsndfile cannot write, built by hand from their specifications.
ADTS = bytes([0xFF, 0xF1, 0x50, 0x80, 0x02, 0x1F, 0xFC]) + b"\x21\x00" * 20  # AAC-LC, 22 kHz
WEBM = bytes.fromhex("1a45dfa3 9f4286810142f7810142f2810442f381084282847765626d")
MP4 = b"\x00\x00\x00\x1cftypM4A \x00\x00\x02\x00M4A isommp42" + b"\x00\x00\x00\x08free"

JSON_ERROR = json.dumps({"error": {"message": "quota exceeded", "type": "billing"}}).encode()
BODIES_THAT_ARE_NOT_AUDIO = [
    JSON_ERROR,
    b'  \n{"detail": "Not Found"}',
    b'[{"error": "bad"}]',
    b"\xef\xbb\xbf{\"error\": 1}",  # with a UTF-8 byte-order mark
    b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>",
    b"<html><head><title>Error</title></head></html>",
    b'<?xml version="1.0"?><Error><Code>AccessDenied</Code></Error>',
]  # fmt: skip


@pytest.mark.parametrize(
    ("media_type", "make"),
    [("audio/wav", lambda p: wav_file(p, SAMPLE_RATE)),  # the demo upstream's own WAV
     ("audio/wav", lambda p: encoded(p, "WAV", "PCM_16")),
     ("audio/x-wav", lambda p: encoded(p, "WAV", "PCM_16")),
     ("audio/wave", lambda p: encoded(p, "RF64", "PCM_16")),
     ("audio/flac", lambda p: encoded(p, "FLAC", "PCM_16")),
     ("audio/ogg", lambda p: encoded(p, "OGG", "VORBIS")),
     ("audio/opus", lambda p: encoded(p, "OGG", "OPUS", 24000)),
     ("audio/ogg; codecs=opus", lambda p: encoded(p, "OGG", "OPUS", 24000)),
     ("audio/mpeg", lambda p: encoded(p, "MP3", "MPEG_LAYER_III")),
     ("audio/mp3", lambda p: encoded(p, "MP3", "MPEG_LAYER_III")),
     ("audio/mpeg", lambda p: b"ID3\x04\x00\x00\x00\x00\x00\x00" + encoded(p, "MP3", "MPEG_LAYER_III")),
     ("audio/aiff", lambda p: encoded(p, "AIFF", "PCM_16")),
     ("audio/aac", lambda p: ADTS), ("audio/aacp", lambda p: ADTS),
     ("audio/webm", lambda p: WEBM), ("audio/mp4", lambda p: MP4),
     ("audio/pcm", lambda p: p), ("audio/L16; rate=22050", lambda p: p),
     ("Audio/WAV; rate=22050", lambda p: wav_file(p, SAMPLE_RATE))],
)  # fmt: skip
def test_real_audio_sniffs_as_its_type(
    speech_pcm: bytes, media_type: str, make: Callable[[bytes], bytes]
) -> None:
    body = make(speech_pcm)
    assert sniff(media_type, body[:SNIFF_BYTES])
    headers = {"content-type": media_type}
    assert (
        refusal_after_body(headers=headers, body=body, complete=True, max_entry_bytes=10**7) is None
    )


@pytest.mark.parametrize(
    "media_type",
    ["audio/wav", "audio/mpeg", "audio/ogg", "audio/opus", "audio/flac", "audio/aac",
     "audio/webm", "audio/mp4", "audio/pcm", "audio/L16", "audio/basic", "audio/x-unknown",
     "application/octet-stream", "application/json", "text/html", ""],
)  # fmt: skip
@pytest.mark.parametrize("body", BODIES_THAT_ARE_NOT_AUDIO)
def test_documents_are_never_audio_whatever_the_label(media_type: str, body: bytes) -> None:
    assert not sniff(media_type, body[:SNIFF_BYTES], pcm_types={"application/octet-stream"})


@pytest.mark.parametrize(
    ("media_type", "make"),
    [("audio/wav", lambda p: encoded(p, "FLAC", "PCM_16")),  # one container for another
     ("audio/flac", lambda p: wav_file(p, SAMPLE_RATE)),
     ("audio/mpeg", lambda p: encoded(p, "OGG", "VORBIS")),
     ("audio/ogg", lambda p: encoded(p, "MP3", "MPEG_LAYER_III")),
     ("audio/wav", lambda p: p),  # headerless samples labelled as WAV
     ("audio/wav", lambda p: b"RIFF\x00\x00\x00\x00AVI LIST"),  # RIFF, but a video
     ("audio/mp4", lambda p: p[:64]),
     ("audio/webm", lambda p: b"OggS" + p[:60]),
     ("audio/wav", lambda p: b"")],
)  # fmt: skip
def test_a_body_of_another_format_does_not_sniff(
    speech_pcm: bytes, media_type: str, make: Callable[[bytes], bytes]
) -> None:
    assert not sniff(media_type, make(speech_pcm)[:SNIFF_BYTES])


def test_octet_stream_needs_a_container_unless_the_route_declares_it_pcm(
    speech_pcm: bytes,
) -> None:
    assert sniff("application/octet-stream", encoded(speech_pcm, "MP3", "MPEG_LAYER_III"))
    assert sniff("application/octet-stream", wav_file(speech_pcm, SAMPLE_RATE)[:64])
    assert not sniff("application/octet-stream", speech_pcm[:64])
    assert sniff(
        "application/octet-stream", speech_pcm[:64], pcm_types={"application/octet-stream"}
    )
    assert not sniff("text/plain", speech_pcm[:64], pcm_types={"application/octet-stream"})


def test_raw_samples_that_start_with_a_brace_are_still_samples() -> None:
    # One sample in 256 starts with '{' or '<': a single byte must not refuse it.
    for head in (b"{\x00\x01\x00\xff\xff", b"<\x00\x7f\x01", b"[\x00\x00\x00"):
        assert all(sniff(t, head) for t in RAW_TYPES)


def test_a_rule_declares_its_pcm_types() -> None:
    base = {"name": "r", "method": "POST", "path": "/tts", "text": "json:text"}
    rule = rule_from_mapping({**base, "pcm_types": ["Application/Octet-Stream"]})
    assert rule.pcm_types == frozenset({"application/octet-stream"})
    assert rule_from_mapping(base).pcm_types == frozenset()
    with pytest.raises(RuleError, match="pcm_types"):
        rule_from_mapping({**base, "pcm_types": ["not a type"]})


@pytest.mark.parametrize(
    ("body", "reason"),
    [(JSON_ERROR, "not_audio"), (b"<html>oops</html>", "not_audio"), (b"RIFF\x00\x00", "not_audio")],
)  # fmt: skip
def test_refusal_after_body_refuses_a_200_wav_that_is_not_audio(body: bytes, reason: str) -> None:
    headers = {"content-type": "audio/wav"}
    assert (
        refusal_after_body(headers=headers, body=body, complete=True, max_entry_bytes=10**6)
        == reason
    )


class LyingUpstream:
    """Answers 200 ``audio/wav`` whose body is a JSON error, until told to speak."""

    def __init__(self, audio: bytes) -> None:
        self.audio = audio
        self.lying = True
        self.calls = 0

    async def speech(self, request: web.Request) -> web.Response:
        await request.read()
        self.calls += 1
        body = JSON_ERROR if self.lying else self.audio
        return web.Response(body=body, content_type="audio/wav")


@pytest.fixture
async def lying(speech_pcm: bytes) -> AsyncIterator[tuple[LyingUpstream, str]]:
    fake = LyingUpstream(wav_file(speech_pcm, SAMPLE_RATE))
    app = web.Application()
    app.router.add_post("/v1/audio/speech", fake.speech)
    async with served(app) as url:
        yield fake, url


async def test_through_the_proxy_a_json_error_labelled_wav_is_not_stored(
    lying: Any, make_proxy: ProxyFactory
) -> None:
    fake, url = lying
    client = await make_proxy(url)
    speech = {"model": "tts-1", "input": "Buenos días.", "voice": "es", "response_format": "wav"}
    first = await client.post("/v1/audio/speech", json=speech)
    assert await first.read() == JSON_ERROR  # the client gets what the upstream said
    for _ in range(50):  # until a request goes upstream again (one may join the first's fill)
        await asyncio.sleep(0.01)
        again = await client.post("/v1/audio/speech", json=speech)
        assert await again.read() == JSON_ERROR
        assert again.headers["X-Cache"] == "MISS"
        if fake.calls == 2:
            break
    assert fake.calls == 2
    assert (await service_of(client).totals())["entries"] == 0
    fake.lying = False
    for _ in range(50):  # until no request joins the last lying fill
        await asyncio.sleep(0.01)
        third = await client.post("/v1/audio/speech", json=speech)
        if await third.read() == fake.audio:
            break
    assert fake.calls == 3
    await until_stored(client, third)
    hit = await client.post("/v1/audio/speech", json=speech)
    assert hit.headers["X-Cache"] == "HIT" and await hit.read() == fake.audio
    assert fake.calls == 3
