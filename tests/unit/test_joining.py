"""Joining pieces of audio into one answer: pcm, wav and mp3 decode cleanly and last as
long as their pieces plus the pauses; anything else is refused."""

from __future__ import annotations

import io
import math
import struct

import miniaudio
import pytest
import soundfile

from proxy.core.joining import (
    DEFAULT_PAUSE_MS,
    NotJoinable,
    PcmFormat,
    Splicer,
    join,
    joinable,
)
from proxy.demo.formats import AudioFormat, encode

RATE = 22050
SECONDS = (1.4, 0.9, 2.1)


def tone(seconds: float, hz: float = 440.0) -> bytes:
    n = int(seconds * RATE)
    return struct.pack(
        f"<{n}h", *(int(8000 * math.sin(2 * math.pi * hz * i / RATE)) for i in range(n))
    )


def pieces(codec: str, sample_rate: int = 24000) -> list[bytes]:
    fmt = AudioFormat(codec, sample_rate)  # type: ignore[arg-type]
    return [encode(tone(s, 300 + 100 * i), RATE, fmt) for i, s in enumerate(SECONDS)]


def soundfile_seconds(audio: bytes) -> float:
    info = soundfile.info(io.BytesIO(audio))
    return float(info.frames / info.samplerate)


def miniaudio_seconds(audio: bytes) -> float:
    decoded = miniaudio.decode(audio)
    return float(decoded.num_frames / decoded.sample_rate)


def expected_seconds(parts: list[bytes], pause_ms: int) -> float:
    return sum(soundfile_seconds(p) for p in parts) + (len(parts) - 1) * pause_ms / 1000


def test_media_types() -> None:
    assert joinable("audio/wav") == "wav" and joinable("audio/x-wav; codecs=1") == "wav"
    assert joinable("audio/mpeg") == "mp3" and joinable("AUDIO/MPEG") == "mp3"
    assert joinable("audio/pcm") == "pcm"
    for other in ("audio/ogg", "audio/aac", "audio/flac", "audio/webm", "audio/basic", ""):
        assert joinable(other) is None


@pytest.mark.parametrize("pause_ms", [0, DEFAULT_PAUSE_MS, 500])
def test_wav_join_has_one_header_exact_sizes_and_every_sample(pause_ms: int) -> None:
    parts = pieces("wav")
    joined = join("wav", parts, pause_ms)
    assert joined.count(b"RIFF") == 1 and joined.count(b"WAVE") == 1
    assert struct.unpack("<I", joined[4:8])[0] == len(joined) - 8
    samples, rate = soundfile.read(io.BytesIO(joined), dtype="int16")
    assert rate == 24000
    pause = round(24000 * pause_ms / 1000)
    at = 0
    for part in parts:
        own, _ = soundfile.read(io.BytesIO(part), dtype="int16")
        assert (samples[at : at + len(own)] == own).all()
        at += len(own)
        if at < len(samples):
            assert not samples[at : at + pause].any()
            at += pause
    assert at == len(samples)
    assert soundfile_seconds(joined) == pytest.approx(expected_seconds(parts, pause_ms), rel=1e-3)
    assert miniaudio_seconds(joined) == pytest.approx(expected_seconds(parts, pause_ms), rel=1e-3)


def test_streamed_wav_says_its_length_is_unknown_and_still_decodes() -> None:
    parts = pieces("wav")
    splicer = Splicer("wav", DEFAULT_PAUSE_MS)
    streamed = splicer.first(parts[0]) + b"".join(splicer.then(p) for p in parts[1:])
    assert streamed[4:8] == b"\xff\xff\xff\xff"
    assert streamed[streamed.index(b"data") + 4 :][:4] == b"\xff\xff\xff\xff"
    complete = join("wav", parts, DEFAULT_PAUSE_MS)
    assert streamed[44:] == complete[44:]
    expected = expected_seconds(parts, DEFAULT_PAUSE_MS)
    assert soundfile_seconds(streamed) == pytest.approx(expected, rel=1e-3)
    assert miniaudio_seconds(streamed) == pytest.approx(expected, rel=1e-3)


def test_wav_pieces_of_different_formats_are_not_joined() -> None:
    with pytest.raises(NotJoinable, match="different formats"):
        join("wav", [pieces("wav", 24000)[0], pieces("wav", 16000)[1]], DEFAULT_PAUSE_MS)
    with pytest.raises(NotJoinable):
        join("wav", [pieces("wav")[0], b'{"error": "quota"}'], DEFAULT_PAUSE_MS)


def test_pcm_join() -> None:
    parts = pieces("pcm")
    joined = join("pcm", parts, 250)
    pause = b"\0" * (round(24000 * 0.25) * 2)
    assert joined == pause.join(parts)
    eight_bit = join("pcm", [b"\x10\x20", b"\x30"], 1, PcmFormat(8000, 1, 1))
    assert eight_bit == b"\x10\x20" + b"\x80" * 8 + b"\x30"
    with pytest.raises(NotJoinable):
        join("pcm", [b"\0\0", b"\0"], 100)


# From 150 ms on: the pause absorbs each piece's encoder delay and padding (about 70 ms).
@pytest.mark.parametrize("pause_ms", [150, DEFAULT_PAUSE_MS, 500])
@pytest.mark.parametrize("sample_rate", [24000, 44100])
def test_mp3_join_decodes_and_lasts_the_pieces_plus_the_pauses(
    pause_ms: int, sample_rate: int
) -> None:
    parts = pieces("mp3", sample_rate)
    joined = join("mp3", parts, pause_ms)
    assert b"Info" not in joined and b"Xing" not in joined and b"LAME" not in joined[:400]
    expected = expected_seconds(parts, pause_ms)
    assert soundfile_seconds(joined) == pytest.approx(expected, rel=0.01)
    assert miniaudio_seconds(joined) == pytest.approx(expected, rel=0.01)
    samples, rate = soundfile.read(io.BytesIO(joined), dtype="int16")
    assert rate == sample_rate and abs(samples).max() > 4000  # the tones are there


def test_streamed_mp3_equals_the_complete_join() -> None:
    parts = pieces("mp3")
    splicer = Splicer("mp3", DEFAULT_PAUSE_MS)
    streamed = splicer.first(parts[0]) + b"".join(splicer.then(p) for p in parts[1:])
    assert streamed == join("mp3", parts, DEFAULT_PAUSE_MS)


def test_mp3_tags_are_dropped() -> None:
    parts = pieces("mp3")
    id3v2 = b"ID3\x04\x00\x00\x00\x00\x00\x0a" + b"\0" * 10
    id3v1 = b"TAG" + b"\0" * 125
    tagged = [id3v2 + p + id3v1 for p in parts]
    assert join("mp3", tagged, DEFAULT_PAUSE_MS) == join("mp3", parts, DEFAULT_PAUSE_MS)


def test_mp3_pieces_must_share_rate_and_be_mp3() -> None:
    with pytest.raises(NotJoinable, match="different"):
        join("mp3", [pieces("mp3", 24000)[0], pieces("mp3", 44100)[1]], DEFAULT_PAUSE_MS)
    with pytest.raises(NotJoinable, match="no MPEG"):
        join("mp3", [pieces("mp3")[0], b"<html>busy</html>"], DEFAULT_PAUSE_MS)
    with pytest.raises(NotJoinable, match="truncated"):
        join("mp3", [pieces("mp3")[0][:-7]], DEFAULT_PAUSE_MS)
    with pytest.raises(NotJoinable):
        join("mp3", [], DEFAULT_PAUSE_MS)
