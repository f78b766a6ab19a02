"""The demo upstream honours OpenAI's and ElevenLabs' contracts: their real SDKs, with their
defaults, get audio that independent decoders read at the promised rate, and the same
request gives the same bytes, also from another server process."""

from __future__ import annotations

import array
import asyncio
import base64
import io
import itertools
import json
import math
import os
import signal
import struct
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import av
import miniaudio
import openai
import pytest
import soundfile
from elevenlabs.client import AsyncElevenLabs
from elevenlabs.core.api_error import ApiError

from proxy.demo.formats import resample
from proxy.demo.upstream import create_demo_upstream_app
from proxy.demo.voices import OPENAI_VOICES, is_espeak_voice
from proxy.store.embedded import free_port
from tests.support.servers import served

TEXT = "Welcome to the hotel. Breakfast is served at seven."
SPEECH = {"model": "tts-1", "input": TEXT, "voice": "alloy"}
OPENAI_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
# Every voice name OpenAI's SDK documents; the task asked for the first eleven.
SDK_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage",
              "shimmer", "verse", "marin", "cedar")  # fmt: skip


@pytest.fixture
async def demo() -> AsyncIterator[str]:
    async with served(create_demo_upstream_app()) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, **body: Any) -> tuple[int, Any, bytes]:
    async with http.post(url, json=body) as r:
        return r.status, r.headers, await r.read()


async def speak(http: aiohttp.ClientSession, demo: str, **changes: Any) -> bytes:
    status, _, audio = await post(http, demo + "/v1/audio/speech", **{**SPEECH, **changes})
    assert status == 200, audio
    return audio


def seconds(pcm: bytes, rate: int = 24_000) -> float:
    return len(pcm) / 2 / rate


def loud(samples: Any) -> bool:
    return max(abs(s) for s in samples) > 3000


def decoded_by_pyav(data: bytes) -> tuple[str, str, int, int, int]:
    """(container, codec, sample rate, channels, samples) as FFmpeg reads ``data``."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        count = sum(frame.samples for frame in container.decode(stream))
        ctx = stream.codec_context
        return container.format.name, ctx.name, ctx.sample_rate, ctx.layout.nb_channels, count


# --- the SDKs with their defaults -------------------------------------------------------


async def test_openai_sdk_defaults_get_mp3_at_24khz(demo: str, http: Any) -> None:
    client = openai.AsyncOpenAI(base_url=demo + "/v1", api_key="demo", max_retries=0)
    response = await client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT)
    mp3 = response.content
    assert response.response.headers["content-type"] == "audio/mpeg"
    info = miniaudio.mp3_get_info(mp3)
    assert (info.sample_rate, info.nchannels) == (24_000, 1)
    pcm = await speak(http, demo, response_format="pcm")
    assert abs(info.duration - seconds(pcm)) < 0.1  # the encoder pads at most a frame or two
    assert loud(miniaudio.mp3_read_s16(mp3).samples)
    await client.close()


async def test_openai_sdk_errors_carry_openais_shape(demo: str) -> None:
    client = openai.AsyncOpenAI(base_url=demo + "/v1", api_key="demo", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.audio.speech.create(model="tts-1", voice="no-such-voice", input=TEXT)
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict)
    assert set(body) == {"message", "type", "param", "code"}
    assert (body["type"], body["param"]) == ("invalid_request_error", "voice")
    assert "alloy" in body["message"]
    await client.close()


async def test_elevenlabs_sdk_defaults_get_mp3_at_44100(demo: str) -> None:
    client = AsyncElevenLabs(base_url=demo, api_key="demo")
    mp3 = b"".join(
        [c async for c in client.text_to_speech.convert(voice_id="JBFqnCBsd6RMkjVDRZzb", text=TEXT)]
    )
    info = miniaudio.mp3_get_info(mp3)
    assert (info.sample_rate, info.nchannels) == (44_100, 1)  # mp3_44100_128, ElevenLabs' default
    assert info.duration > 1.0
    assert loud(miniaudio.mp3_read_s16(mp3).samples)
    streamed = b"".join(
        [c async for c in client.text_to_speech.stream(voice_id="JBFqnCBsd6RMkjVDRZzb", text=TEXT)]
    )
    assert streamed == mp3


async def test_elevenlabs_sdk_lists_voices_and_models(demo: str) -> None:
    client = AsyncElevenLabs(base_url=demo, api_key="demo")
    listed = await client.voices.get_all()
    assert {v.voice_id for v in listed.voices} == set(OPENAI_VOICES)
    searched = await client.voices.search()
    assert searched.total_count == len(OPENAI_VOICES) and not searched.has_more
    models = await client.models.list()
    assert "eleven_multilingual_v2" in {m.model_id for m in models}


async def test_openai_sdk_lists_models(demo: str) -> None:
    client = openai.AsyncOpenAI(base_url=demo + "/v1", api_key="demo", max_retries=0)
    ids = {m.id async for m in client.models.list()}
    assert {"tts-1", "tts-1-hd", "gpt-4o-mini-tts"} <= ids
    await client.close()


# --- OpenAI's formats -------------------------------------------------------------------


async def test_pcm_is_raw_24khz_16bit_and_wav_wraps_it(demo: str, http: Any) -> None:
    status, headers, pcm = await post(
        http, demo + "/v1/audio/speech", **SPEECH, response_format="pcm"
    )
    assert status == 200 and headers["Content-Type"] == "audio/pcm"
    assert headers["X-Sample-Rate"] == "24000"
    assert len(pcm) % 2 == 0 and 1.5 < seconds(pcm) < 8.0
    assert loud(struct.unpack(f"<{len(pcm) // 2}h", pcm))
    wav = await speak(http, demo, response_format="wav")
    info = miniaudio.wav_get_info(wav)
    assert (info.sample_rate, info.nchannels, info.sample_width) == (24_000, 1, 2)
    assert wav[:4] == b"RIFF" and wav[44:] == pcm


async def test_flac_is_lossless_24khz_mono(demo: str, http: Any) -> None:
    flac, pcm = (
        await speak(http, demo, response_format="flac"),
        await speak(http, demo, response_format="pcm"),
    )
    assert flac[:4] == b"fLaC"
    decoded = miniaudio.flac_read_s16(flac)
    assert (decoded.sample_rate, decoded.nchannels) == (24_000, 1)
    assert decoded.samples.tobytes() == pcm
    data, rate = soundfile.read(io.BytesIO(flac), dtype="int16")
    assert rate == 24_000 and data.tobytes() == pcm


async def test_opus_is_ogg_opus_at_24khz_mono(demo: str, http: Any) -> None:
    opus, pcm = (
        await speak(http, demo, response_format="opus"),
        await speak(http, demo, response_format="pcm"),
    )
    assert opus[:4] == b"OggS" and opus[28:36] == b"OpusHead"
    assert opus[14:18] == bytes(4)  # a fixed stream serial, not a random one
    channels, _, input_rate = struct.unpack("<BHI", opus[37:44])
    assert (channels, input_rate) == (1, 24_000)
    info = soundfile.info(io.BytesIO(opus))
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("OGG", "OPUS", 24_000, 1)
    assert abs(info.duration - seconds(pcm)) < 0.05  # the granule positions end the stream exactly


async def test_aac_is_adts_at_24khz_mono(demo: str, http: Any) -> None:
    aac, pcm = (
        await speak(http, demo, response_format="aac"),
        await speak(http, demo, response_format="pcm"),
    )
    # The first ADTS header: the sync word, the profile, sampling-frequency index 6 = 24 kHz,
    # 1 channel.
    assert aac[0] == 0xFF and aac[1] & 0xF0 == 0xF0
    assert (aac[2] >> 2) & 0x0F == 6
    assert aac[2] >> 6 == 1  # AAC-LC
    assert ((aac[2] & 1) << 2) | (aac[3] >> 6) == 1
    container, codec, rate, channels, samples = decoded_by_pyav(aac)
    assert (container, codec, rate, channels) == ("aac", "aac", 24_000, 1)
    assert abs(samples / 24_000 - seconds(pcm)) < 0.15  # AAC frames are 1024 samples


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("mp3", "audio/mpeg"), ("opus", "audio/ogg"), ("aac", "audio/aac"), ("flac", "audio/flac"),
     ("wav", "audio/wav"), ("pcm", "audio/pcm")],
)  # fmt: skip
async def test_each_format_has_its_type_and_is_the_same_twice(
    demo: str, http: Any, fmt: str, content_type: str
) -> None:
    url = demo + "/v1/audio/speech"
    status, headers, first = await post(http, url, **SPEECH, response_format=fmt)
    assert status == 200 and headers["Content-Type"] == content_type
    assert headers["X-Sample-Rate"] == "24000"
    assert headers["Content-Length"] == str(len(first))
    _, _, second = await post(http, url, **SPEECH, response_format=fmt)
    assert first == second


def test_resampling_to_24khz_keeps_the_pitch_and_the_length() -> None:
    n = 22_050
    tone = array.array(
        "h", (round(8000 * math.sin(2 * math.pi * 1000 * i / 22_050)) for i in range(n))
    )
    out = array.array("h")
    out.frombytes(resample(tone.tobytes(), 22_050, 24_000))
    assert len(out) == math.ceil(n * 24_000 / 22_050)
    middle = out[2400:21600]  # 0.8 s, a tenth of a second away from the ends
    rising = sum(1 for a, b in itertools.pairwise(middle) if a < 0 <= b)
    assert rising in (799, 800, 801)  # still 1 kHz
    assert 7000 < max(middle) < 9000
    assert resample(tone.tobytes(), 22_050, 24_000) == out.tobytes()


# --- voices, speed, models, instructions ------------------------------------------------


async def test_every_openai_voice_sounds_different(demo: str, http: Any) -> None:
    audios = [await speak(http, demo, voice=v, response_format="pcm") for v in SDK_VOICES]
    assert len(set(audios)) == len(SDK_VOICES) == 13
    assert all(1.0 < seconds(a) < 8.0 for a in audios)


def test_every_openai_voice_is_an_espeak_voice() -> None:
    assert all(is_espeak_voice(v) for v in OPENAI_VOICES.values())
    assert not is_espeak_voice("en-gb") and not is_espeak_voice("en+nope")


async def test_breathy_voices_sound_the_same_a_second_later(demo: str, http: Any) -> None:
    # espeak-ng seeds their noise from the clock unless told otherwise.
    first = await speak(http, demo, voice="coral", response_format="pcm")  # en-us+f3: breathy
    await asyncio.sleep(1.1)
    assert await speak(http, demo, voice="coral", response_format="pcm") == first


async def test_espeak_voice_names_and_voice_objects_are_accepted(demo: str, http: Any) -> None:
    spanish = await speak(
        http, demo, voice="es", input="Bienvenido al hotel", response_format="pcm"
    )
    assert seconds(spanish) > 0.5
    variant = await speak(http, demo, voice="en-us+f3", response_format="pcm")
    assert variant == await speak(http, demo, voice="coral", response_format="pcm")
    as_object = await speak(http, demo, voice={"id": "coral"}, response_format="pcm")
    assert as_object == variant


async def test_speed_is_honoured_over_openais_whole_range(demo: str, http: Any) -> None:
    normal = seconds(await speak(http, demo, response_format="pcm"))
    slowest = seconds(await speak(http, demo, response_format="pcm", speed=0.25))
    fastest = seconds(await speak(http, demo, response_format="pcm", speed=4.0))
    assert 3.0 < slowest / normal < 5.0
    assert 0.2 < fastest / normal < 0.35


@pytest.mark.parametrize(
    "model", ["tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-12-15"]
)
async def test_models_are_accepted_and_instructions_ignored(
    demo: str, http: Any, model: str
) -> None:
    plain = await speak(http, demo, response_format="pcm")
    assert (
        await speak(
            http, demo, response_format="pcm", model=model, instructions="Speak cheerfully."
        )
        == plain
    )


@pytest.mark.parametrize(
    ("change", "param"),
    [({"voice": "no-such-voice"}, "voice"), ({"voice": {"name": "x"}}, "voice"),
     ({"speed": 0.2}, "speed"), ({"speed": 4.5}, "speed"), ({"speed": True}, "speed"),
     ({"model": "tts-2"}, "model"), ({"response_format": "ogg"}, "response_format"),
     ({"instructions": 5}, "instructions"), ({"stream_format": "chunks"}, "stream_format"),
     ({"stream_format": "sse"}, "stream_format"), ({"input": "x" * 4097}, "input")],
)  # fmt: skip
async def test_bad_requests_get_openais_error_shape(
    demo: str, http: Any, change: dict[str, Any], param: str
) -> None:
    status, headers, body = await post(http, demo + "/v1/audio/speech", **{**SPEECH, **change})
    assert status == 400 and headers["Content-Type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


# --- server-sent events -----------------------------------------------------------------


def parse_events(stream: bytes) -> list[dict[str, Any]]:
    blocks = [b for b in stream.decode().split("\n\n") if b.strip()]
    assert all(b.startswith("data: ") and "\n" not in b for b in blocks)
    return [json.loads(b.removeprefix("data: ")) for b in blocks]


@pytest.mark.parametrize("fmt", ["pcm", "mp3"])
async def test_sse_events_carry_the_same_audio(demo: str, http: Any, fmt: str) -> None:
    body = {**SPEECH, "model": "gpt-4o-mini-tts", "response_format": fmt}
    status, headers, stream = await post(
        http, demo + "/v1/audio/speech", **body, stream_format="sse"
    )
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    events = parse_events(stream)
    *deltas, done = events
    assert len(deltas) > 1 and {e["type"] for e in deltas} == {"speech.audio.delta"}
    assert all(set(e) == {"type", "audio"} for e in deltas)
    assert set(done) == {"type", "usage"} and done["type"] == "speech.audio.done"
    usage = done["usage"]
    assert set(usage) == {"input_tokens", "output_tokens", "total_tokens"}
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert audio == await speak(http, demo, **body)


async def test_openai_sdk_reads_the_sse_stream(demo: str) -> None:
    client = openai.AsyncOpenAI(base_url=demo + "/v1", api_key="demo", max_retries=0)
    async with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts",
        voice="nova",
        input=TEXT,
        response_format="pcm",
        stream_format="sse",
    ) as response:
        lines = [line async for line in response.iter_lines() if line]
    kinds = [json.loads(line.removeprefix("data: "))["type"] for line in lines]
    assert kinds[-1] == "speech.audio.done" and set(kinds[:-1]) == {"speech.audio.delta"}
    await client.close()


# --- ElevenLabs -------------------------------------------------------------------------


async def eleven(
    http: Any, demo: str, voice_id: str, fmt: str | None = None, **body: Any
) -> tuple[Any, bytes]:
    query = f"?output_format={fmt}" if fmt else ""
    async with http.post(
        f"{demo}/v1/text-to-speech/{voice_id}{query}", json={"text": TEXT, **body}
    ) as r:
        assert r.status == 200, await r.text()
        return r.headers, await r.read()


@pytest.mark.parametrize("rate", [8000, 16_000, 22_050, 24_000, 44_100, 48_000])
async def test_elevenlabs_pcm_at_the_asked_rate(demo: str, http: Any, rate: int) -> None:
    headers, pcm = await eleven(http, demo, "alloy", f"pcm_{rate}")
    assert headers["Content-Type"] == "audio/pcm" and headers["X-Sample-Rate"] == str(rate)
    openai_pcm = await speak(http, demo, response_format="pcm")
    assert len(pcm) % 2 == 0
    assert abs(seconds(pcm, rate) - seconds(openai_pcm)) < 0.01
    if rate == 24_000:  # the same voice at the same rate through either API: the same audio
        assert pcm == openai_pcm


@pytest.mark.parametrize(
    ("fmt", "rate"), [("mp3_22050_32", 22_050), ("mp3_44100_64", 44_100), ("mp3_24000_48", 24_000)]
)
async def test_elevenlabs_mp3_at_the_asked_rate(demo: str, http: Any, fmt: str, rate: int) -> None:
    headers, mp3 = await eleven(http, demo, "nova", fmt)
    assert headers["Content-Type"] == "audio/mpeg"
    info = miniaudio.mp3_get_info(mp3)
    assert (info.sample_rate, info.nchannels) == (rate, 1)


async def test_elevenlabs_other_formats_decode(demo: str, http: Any) -> None:
    _, wav = await eleven(http, demo, "sage", "wav_16000")
    assert miniaudio.wav_get_info(wav).sample_rate == 16_000
    _, opus = await eleven(http, demo, "sage", "opus_48000_64")
    assert soundfile.info(io.BytesIO(opus)).samplerate == 48_000
    _, ulaw = await eleven(http, demo, "sage", "ulaw_8000")
    _, pcm8k = await eleven(http, demo, "sage", "pcm_8000")
    assert len(ulaw) * 2 == len(pcm8k)  # one byte a sample


async def test_elevenlabs_any_voice_id_speaks_and_always_the_same(demo: str, http: Any) -> None:
    _, first = await eleven(http, demo, "21m00Tcm4TlvDq8ikWAM", "pcm_24000")
    _, again = await eleven(http, demo, "21m00Tcm4TlvDq8ikWAM", "pcm_24000")
    assert first == again and seconds(first) > 1.0
    others = {(await eleven(http, demo, f"opaque-id-{i}", "pcm_24000"))[1] for i in range(6)}
    assert len(others) > 1  # ids spread over the voices
    _, spanish = await eleven(http, demo, "JBFqnCBsd6RMkjVDRZzb", "pcm_24000", language_code="es")
    assert spanish != (await eleven(http, demo, "JBFqnCBsd6RMkjVDRZzb", "pcm_24000"))[1]


async def test_elevenlabs_speed_setting_is_honoured(demo: str, http: Any) -> None:
    _, normal = await eleven(http, demo, "onyx", "pcm_24000")
    _, slow = await eleven(
        http, demo, "onyx", "pcm_24000", voice_settings={"speed": 0.7, "stability": 0.5}
    )
    assert seconds(slow) > 1.2 * seconds(normal)


@pytest.mark.parametrize(
    ("query", "body", "loc"),
    [("?output_format=mp3_44100_999", {"text": TEXT}, ["query", "output_format"]),
     ("", {"text": ""}, ["body", "text"]), ("", {"model_id": "x"}, ["body", "text"]),
     ("", {"text": TEXT, "voice_settings": {"speed": 2}}, ["body", "voice_settings.speed"]),
     ("", {"text": TEXT, "voice_settings": 3}, ["body", "voice_settings"])],
)  # fmt: skip
async def test_elevenlabs_bad_requests_name_the_field(
    demo: str, http: Any, query: str, body: dict[str, Any], loc: list[str]
) -> None:
    async with http.post(f"{demo}/v1/text-to-speech/alloy{query}", json=body) as r:
        assert r.status == 422
        assert (await r.json())["detail"][0]["loc"] == loc


async def test_elevenlabs_sdk_sees_a_422(demo: str) -> None:
    client = AsyncElevenLabs(base_url=demo, api_key="demo")
    with pytest.raises(ApiError) as caught:
        async for _ in client.text_to_speech.convert(
            voice_id="x", text=TEXT, output_format="mp3_1_1"
        ):
            pass
    assert caught.value.status_code == 422


# --- through the proxy ------------------------------------------------------------------


async def test_both_sdks_through_the_proxy_miss_then_hit(demo: str, make_proxy: Any) -> None:
    proxy = await make_proxy(demo)
    base = str(proxy.make_url("")).rstrip("/")
    oa = openai.AsyncOpenAI(base_url=base + "/v1", api_key="demo", max_retries=0)
    el = AsyncElevenLabs(base_url=base, api_key="demo")
    answers: list[tuple[str, bytes, str, bytes]] = []
    for _ in range(2):
        spoken = await oa.audio.speech.with_raw_response.create(
            model="tts-1", voice="nova", input=TEXT
        )
        async with el.text_to_speech.with_raw_response.convert(voice_id="nova", text=TEXT) as raw:
            eleven = b"".join([c async for c in raw.data])
            answers.append(
                (spoken.headers["x-cache"], spoken.content, raw.headers["x-cache"], eleven)
            )
        await asyncio.sleep(0.05)  # the fill stores right after the last byte
    (miss, mp3, eleven_miss, eleven_mp3), (hit, mp3_again, eleven_hit, eleven_again) = answers
    assert (miss, hit, eleven_miss, eleven_hit) == ("MISS", "HIT", "MISS", "HIT")
    assert mp3_again == mp3 and eleven_again == eleven_mp3
    assert miniaudio.mp3_get_info(mp3).sample_rate == 24_000
    assert miniaudio.mp3_get_info(eleven_mp3).sample_rate == 44_100
    await oa.close()


# --- the same bytes from another process ------------------------------------------------


async def start_demo_upstream() -> tuple[str, Any]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.cli", "demo-upstream", "--host", "127.0.0.1",
        "--port", str(port), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        env=os.environ.copy(),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            assert proc.returncode is None, "the demo upstream exited"
            try:
                async with session.get(base + "/healthz") as r:
                    if r.status == 200:
                        return base, proc
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    proc.kill()
    raise AssertionError("the demo upstream did not start")


async def every_answer(http: Any, base: str) -> list[bytes]:
    answers = [await speak(http, base, response_format=fmt) for fmt in OPENAI_FORMATS]
    answers.append(await speak(http, base, voice="coral"))  # a breathy variant
    answers += [(await eleven(http, base, "some-voice", fmt))[1] for fmt in (None, "opus_48000_32")]
    return answers


@pytest.mark.slow
async def test_two_server_processes_give_the_same_bytes(http: Any) -> None:
    servers = [await start_demo_upstream(), await start_demo_upstream()]
    try:
        first, second = [await every_answer(http, base) for base, _ in servers]
    finally:
        for _, proc in servers:
            proc.send_signal(signal.SIGINT)
            await asyncio.wait_for(proc.wait(), 30)
    assert len(first) == 9 and all(first)
    assert first == second
