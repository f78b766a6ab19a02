"""The stored format and the compression advisor: pure, no I/O."""

from __future__ import annotations

import io
import os
import struct
import threading
import zlib

import miniaudio
import numpy as np
import pytest
import soundfile
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.compression import (
    THREAD_THRESHOLD_BYTES,
    ZSTD_DECODE_THREAD_BYTES,
    CompressionAdvisor,
    compression_stats,
    decode_in_thread,
    encode,
)
from proxy.core.packing import (
    FORMAT_VERSION,
    HEADER_SIZE,
    MAGIC,
    Codec,
    CorruptEntry,
    codec_for,
    crc32,
    pack,
    pcm_layout,
    read_header,
    unpack,
)

SPEECHLIKE = (
    b"RIFF" + bytes(2000) + struct.pack("<4000h", *[(i * 37) % 900 - 450 for i in range(4000)])
)


@pytest.mark.parametrize("codec", list(Codec))
@pytest.mark.parametrize("level", range(1, 10))
def test_round_trip_is_byte_exact_for_every_codec_and_level(codec: Codec, level: int) -> None:
    packed = pack(SPEECHLIKE, codec, level)
    # Not a WAV file: the FLAC codec stores it with zlib.
    used = Codec.ZLIB if codec is Codec.FLAC else codec
    assert packed.codec is used and packed.original_size == len(SPEECHLIKE)
    assert read_header(packed.data) == (used, len(SPEECHLIKE), zlib.crc32(SPEECHLIKE))
    assert unpack(packed.data) == SPEECHLIKE
    if codec is not Codec.NONE:
        assert packed.stored_size < len(SPEECHLIKE)


@given(st.binary(max_size=3000), st.sampled_from(list(Codec)))
def test_round_trip_any_bytes(audio: bytes, codec: Codec) -> None:
    assert unpack(pack(audio, codec, 3).data) == audio


@pytest.mark.parametrize("codec", list(Codec))
def test_any_flipped_byte_is_caught(codec: Codec) -> None:
    data = bytearray(pack(SPEECHLIKE, codec, 6).data)
    # Bytes 5-6 are reserved and ignored; every other byte is covered.
    for position in (0, 3, 4, 7, 12, 16, HEADER_SIZE, len(data) // 2, len(data) - 1):
        corrupted = bytearray(data)
        corrupted[position] ^= 0x5A
        with pytest.raises(CorruptEntry):
            unpack(bytes(corrupted))


@given(st.binary(max_size=5000))
def test_the_checksum_is_zlibs_crc32(audio: bytes) -> None:
    # Entries written with zlib's CRC-32 must keep verifying with the faster one.
    assert crc32(audio) == zlib.crc32(audio)
    assert crc32(memoryview(audio)) == zlib.crc32(audio)


def test_an_entry_packed_by_zlib_alone_is_read() -> None:
    # The format as written before ISA-L checked it: zlib's stream, zlib's checksum.
    header = struct.pack(
        "<3sBBxxQI", MAGIC, FORMAT_VERSION, Codec.ZLIB, len(SPEECHLIKE), zlib.crc32(SPEECHLIKE)
    )
    for level in (1, 6, 9):
        assert unpack(header + zlib.compress(SPEECHLIKE, level)) == SPEECHLIKE
    corrupt = bytearray(header + zlib.compress(SPEECHLIKE, 6))
    corrupt[HEADER_SIZE + 40] ^= 1
    with pytest.raises(CorruptEntry):
        unpack(bytes(corrupt))


def test_zstd_entries_decode_in_many_threads_at_once() -> None:
    bodies = [os.urandom(64) * (100 + i) + SPEECHLIKE for i in range(8)]
    packed = [pack(body, Codec.ZSTD, 6).data for body in bodies]
    wrong: list[int] = []

    def read(turns: int) -> None:
        for turn in range(turns):
            i = turn % len(bodies)
            if unpack(packed[i]) != bodies[i]:
                wrong.append(i)

    threads = [threading.Thread(target=read, args=(200,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not wrong and not any(t.is_alive() for t in threads)


def test_what_decodes_in_a_worker_thread() -> None:
    assert not decode_in_thread(Codec.NONE, 10 * 1024 * 1024)
    for codec in (Codec.ZLIB, Codec.FLAC):
        assert not decode_in_thread(codec, THREAD_THRESHOLD_BYTES - 1)
        assert decode_in_thread(codec, THREAD_THRESHOLD_BYTES)
    assert not decode_in_thread(Codec.ZSTD, ZSTD_DECODE_THREAD_BYTES - 1)
    assert decode_in_thread(Codec.ZSTD, ZSTD_DECODE_THREAD_BYTES)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"TTC",
        b"RIFF" + bytes(40),
        pack(b"abc").data[:-1],
        pack(SPEECHLIKE, Codec.ZLIB).data[:-10],
    ],
)
def test_short_foreign_or_truncated_bodies_are_corrupt(data: bytes) -> None:
    with pytest.raises(CorruptEntry):
        unpack(data)


def test_unknown_codec_or_version_is_corrupt() -> None:
    data = bytearray(pack(b"abc").data)
    data[4] = 9  # codec
    with pytest.raises(CorruptEntry, match="codec"):
        unpack(bytes(data))
    data = bytearray(pack(b"abc").data)
    data[3] = 2  # version
    with pytest.raises(CorruptEntry, match="version"):
        unpack(bytes(data))


def test_advisor_threshold_is_strictly_above() -> None:
    advisor = CompressionAdvisor(True, threshold_bytes=100 * 1024, min_saving=0.05)
    assert not advisor.should_try(100 * 1024, "audio/wav")
    assert advisor.should_try(100 * 1024 + 1, "audio/wav")
    assert not CompressionAdvisor(False, 0, 0.05).should_try(10**6, "audio/wav")


def test_advisor_remembers_formats_that_do_not_pay_and_reprobes() -> None:
    advisor = CompressionAdvisor(True, threshold_bytes=0, min_saving=0.05, probe_every=5)
    assert advisor.should_try(1000, "audio/mpeg")
    advisor.learn("audio/mpeg", paid=False)
    tries = [advisor.should_try(1000, "audio/mpeg") for _ in range(10)]
    assert tries.count(True) == 2  # one probe every 5 entries
    assert advisor.should_try(1000, "audio/wav")  # other formats unaffected
    advisor.learn("audio/mpeg", paid=True)
    assert advisor.should_try(1000, "audio/mpeg")


async def test_encode_stores_incompressible_audio_uncompressed() -> None:
    advisor = CompressionAdvisor(True, threshold_bytes=0, min_saving=0.05)
    mp3_like = b"ID3\x04" + os.urandom(200_000)
    first = await encode(mp3_like, "audio/mpeg", advisor, Codec.ZLIB, 6)
    assert first.tried and first.packed.codec is Codec.NONE
    second = await encode(mp3_like, "audio/mpeg", advisor, Codec.ZLIB, 6)
    assert not second.tried  # remembered: not even tried
    wav = await encode(SPEECHLIKE * 30, "audio/wav", advisor, Codec.ZLIB, 6)
    assert wav.tried and wav.packed.codec is Codec.ZLIB


def test_stats_block_has_the_seeds_keys_and_arithmetic() -> None:
    block = compression_stats(
        enabled=True,
        threshold_kb=100,
        level=6,
        compressed_entries=42,
        compressed_bytes=5 * 1024 * 1024,
        compressed_original_bytes=12 * 1024 * 1024,
    )
    assert list(block) == [
        "enabled", "threshold_kb", "compression_level", "compressed_entries",
        "compressed_size_mb", "original_size_mb", "space_saved_mb", "compression_ratio",
    ]  # fmt: skip
    assert block["space_saved_mb"] == 7.0
    assert block["compression_ratio"] == 2.4
    empty = compression_stats(
        enabled=False, threshold_kb=1, level=1, compressed_entries=0,
        compressed_bytes=0, compressed_original_bytes=0,
    )  # fmt: skip
    assert empty["compression_ratio"] == 0.0


# -- FLAC: 16-bit PCM and WAV, bit-exact --------------------------------------------------


def wav(
    samples: bytes,
    *,
    channels: int = 1,
    bits: int = 16,
    rate: int = 24000,
    tag: int = 1,
    before: bytes = b"",
    after: bytes = b"",
    data_size: int | None = None,
) -> bytes:
    """A RIFF/WAVE file around ``samples``, with optional chunks before and after the data."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    if tag == 0xFFFE:  # WAVE_FORMAT_EXTENSIBLE: the PCM sub-format GUID
        fmt += struct.pack("<HHI", 22, bits, 0) + b"\x01\x00\x00\x00\x00\x00\x10\x00"
        fmt += b"\x80\x00\x00\xaa\x00\x38\x9b\x71"
    size = len(samples) if data_size is None else data_size
    pad = b"\0" if len(samples) % 2 and data_size is None else b""
    body = (
        b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + before
        + b"data" + struct.pack("<I", size) + samples + pad + after
    )  # fmt: skip
    return b"RIFF" + struct.pack("<I", len(body)) + body


def chunk(name: bytes, payload: bytes) -> bytes:
    return name + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) % 2 else b"")


@pytest.fixture(scope="module")
def real_speech() -> bytes:
    """24 kHz 16-bit mono speech as the demo upstream answers OpenAI clients."""
    from proxy.demo.espeak import SAMPLE_RATE, synthesize_in_a_fresh_process
    from proxy.demo.formats import resample

    text = "Welcome to the hotel. Breakfast is served from seven to ten in the dining room."
    return resample(synthesize_in_a_fresh_process(text, "en", 1.0), SAMPLE_RATE, 24000)


@pytest.mark.parametrize("level", [1, 6, 9])
def test_flac_round_trip_is_bit_exact_on_real_speech(real_speech: bytes, level: int) -> None:
    for audio, media_type in ((wav(real_speech), "audio/wav"), (real_speech, "audio/pcm")):
        packed = pack(audio, Codec.FLAC, level, media_type)
        assert packed.codec is Codec.FLAC
        assert read_header(packed.data) == (Codec.FLAC, len(audio), zlib.crc32(audio))
        assert unpack(packed.data) == audio
        # What the codec is for: far fewer bytes than zlib on speech.
        assert packed.stored_size < 0.85 * pack(audio, Codec.ZLIB, 9).stored_size


SAMPLES = struct.pack("<3001h", *[(i * 37) % 900 - 450 for i in range(3001)])


@pytest.mark.parametrize(
    ("name", "audio", "media_type", "expected"),
    [
        ("odd data length", wav(SAMPLES + b"\x07"), "audio/wav", Codec.FLAC),
        ("odd raw PCM", SAMPLES + b"\x07", "audio/pcm", Codec.FLAC),
        ("L16 with parameters", SAMPLES, "audio/L16; rate=24000", Codec.FLAC),
        ("stereo", wav(SAMPLES[:6000], channels=2), "audio/wav", Codec.FLAC),
        ("stereo, half a frame left", wav(SAMPLES, channels=2), "audio/wav", Codec.FLAC),
        ("extensible 16-bit", wav(SAMPLES, tag=0xFFFE), "audio/wav", Codec.FLAC),
        ("8-bit", wav(SAMPLES, bits=8), "audio/wav", Codec.ZLIB),
        ("24-bit", wav(SAMPLES[:6000], bits=24), "audio/wav", Codec.ZLIB),
        ("float", wav(SAMPLES[:6000], bits=32, tag=3), "audio/wav", Codec.ZLIB),
        ("six channels", wav(SAMPLES[:6000], channels=6), "audio/wav", Codec.ZLIB),
        (
            "chunks before and after the data",
            wav(
                SAMPLES,
                before=chunk(b"LIST", b"INFOISFT\x05\0\0\0proxy"),
                after=chunk(b"id3 ", b"tag"),
            ),
            "audio/wav",
            Codec.FLAC,
        ),
        ("streamed: size unknown", wav(SAMPLES, data_size=0xFFFFFFFF), "audio/wav", Codec.FLAC),
        ("claims more than it has", wav(SAMPLES, data_size=10**6), "audio/wav", Codec.FLAC),
        ("no samples", wav(b""), "audio/wav", Codec.ZLIB),
        ("data before fmt", b"RIFF\0\0\0\0WAVEdata\4\0\0\0abcd", "audio/wav", Codec.ZLIB),
        ("header only", wav(SAMPLES)[:30], "audio/wav", Codec.ZLIB),
        ("MP3", b"ID3\x04" + SAMPLES, "audio/mpeg", Codec.ZLIB),
    ],
)
def test_flac_handles_or_falls_back_on_every_kind_of_body(
    name: str, audio: bytes, media_type: str, expected: Codec
) -> None:
    assert codec_for(audio, Codec.FLAC, media_type) is expected, name
    packed = pack(audio, Codec.FLAC, 6, media_type)
    assert packed.codec is expected
    assert unpack(packed.data) == audio


def test_the_samples_are_located_exactly() -> None:
    extra = chunk(b"LIST", b"abc")
    audio = wav(SAMPLES + b"\x07", before=extra, after=chunk(b"junk", b"x"))
    start, end, channels, rate = pcm_layout(audio) or (0, 0, 0, 0)
    assert audio[start:end] == SAMPLES and (channels, rate) == (1, 24000)
    assert pcm_layout(SAMPLES, "audio/mpeg") is None


def test_a_corrupt_flac_payload_is_caught(real_speech: bytes) -> None:
    audio = wav(real_speech[:40000])
    data = pack(audio, Codec.FLAC, 6, "audio/wav").data
    flac_start = HEADER_SIZE + 8 + 44  # framing, then the WAV header kept as it was
    assert data[flac_start : flac_start + 4] == b"fLaC"
    for position in (HEADER_SIZE + 1, HEADER_SIZE + 20, flac_start + 2, flac_start + 200,
                     len(data) // 2, len(data) - 3):  # fmt: skip
        corrupted = bytearray(data)
        corrupted[position] ^= 0x5A
        with pytest.raises(CorruptEntry):
            unpack(bytes(corrupted))
    with pytest.raises(CorruptEntry):
        unpack(data[: len(data) // 2])  # cut short


@given(st.binary(max_size=2000), st.sampled_from([1, 2]), st.booleans())
def test_flac_round_trips_any_samples(samples: bytes, channels: int, raw: bool) -> None:
    audio = samples if raw else wav(samples, channels=channels)
    assert unpack(pack(audio, Codec.FLAC, 5, "audio/pcm" if raw else "audio/wav").data) == audio


async def test_encode_with_flac_stores_wav_as_flac_and_mp3_as_it_is(real_speech: bytes) -> None:
    advisor = CompressionAdvisor(True, threshold_bytes=0, min_saving=0.05)
    speech = await encode(wav(real_speech), "audio/wav", advisor, Codec.FLAC, 6)
    assert speech.tried and speech.packed.codec is Codec.FLAC
    mp3_like = b"ID3\x04" + os.urandom(100_000)
    mp3 = await encode(mp3_like, "audio/mpeg", advisor, Codec.FLAC, 6)
    assert mp3.tried and mp3.packed.codec is Codec.NONE


# -- FLAC written by libFLAC with short blocks; streams libsndfile wrote still read ---------


def streaminfo(stream: bytes) -> tuple[int, int, int, int]:
    """(min block size, max block size, sample rate, total samples) of a FLAC stream."""
    assert stream[:4] == b"fLaC" and stream[4] & 0x7F == 0  # STREAMINFO comes first
    min_block, max_block = struct.unpack_from(">HH", stream, 8)
    packed = int.from_bytes(stream[18:26], "big")  # rate 20 bits, channels 3, bits 5, total 36
    return min_block, max_block, packed >> 44, packed & (2**36 - 1)


def libsndfile_flac(samples: bytes, rate: int, level: int) -> bytes:
    """A FLAC stream of 16-bit mono ``samples`` as libsndfile writes it (the encoder before)."""
    out = io.BytesIO()
    array = np.frombuffer(samples, dtype="<i2").reshape(-1, 1)
    soundfile.write(out, array, rate, format="FLAC", subtype="PCM_16",
                    compression_level=(level - 1) / 8)  # fmt: skip
    return out.getvalue()


@pytest.mark.parametrize(("rate", "block"), [(24000, 1024), (48000, 2048), (16000, 688)])
def test_flac_streams_have_short_blocks_and_a_standard_decoder_reads_them(
    real_speech: bytes, rate: int, block: int
) -> None:
    audio = wav(real_speech, rate=rate)
    data = pack(audio, Codec.FLAC, 9, "audio/wav").data
    stream = data[HEADER_SIZE + 8 + 44 :]  # framing, then the WAV header kept as it was
    assert streaminfo(stream) == (block, block, rate, len(real_speech) // 2)
    # dr_flac (through miniaudio) is not libFLAC: the stream is plain, standard FLAC.
    decoded = miniaudio.flac_read_s16(stream)
    assert (decoded.sample_rate, decoded.nchannels) == (rate, 1)
    assert decoded.samples.tobytes() == real_speech
    assert unpack(data) == audio


def test_short_blocks_store_speech_in_fewer_bytes_than_libsndfiles_stream(
    real_speech: bytes,
) -> None:
    for level in (6, 9):
        ours = pack(real_speech, Codec.FLAC, level, "audio/pcm").stored_size - HEADER_SIZE - 8
        assert ours < len(libsndfile_flac(real_speech, 24000, level)), level


@pytest.mark.parametrize("level", [1, 6, 9])
def test_flac_entries_libsndfile_wrote_are_still_read(real_speech: bytes, level: int) -> None:
    audio = wav(real_speech, after=chunk(b"LIST", b"INFOtest"))
    prefix, suffix = audio[:44], audio[44 + len(real_speech) :]
    payload = (
        struct.pack("<II", len(prefix), len(suffix)) + prefix + suffix
        + libsndfile_flac(real_speech, 24000, level)
    )  # fmt: skip
    header = struct.pack(
        "<3sBBxxQI", MAGIC, FORMAT_VERSION, Codec.FLAC, len(audio), zlib.crc32(audio)
    )
    assert streaminfo(payload[8 + len(prefix) + len(suffix) :])[0] in (1152, 4096)  # its presets
    assert unpack(header + payload) == audio
    corrupt = bytearray(header + payload)
    corrupt[len(corrupt) // 2] ^= 0x5A
    with pytest.raises(CorruptEntry):
        unpack(bytes(corrupt))


def test_a_rate_outside_flacs_streamable_subset_is_still_stored_as_flac(
    real_speech: bytes,
) -> None:
    audio = wav(real_speech[:48000], rate=70001)  # not a multiple of 10 above 65535 Hz
    packed = pack(audio, Codec.FLAC, 6, "audio/wav")
    assert packed.codec is Codec.FLAC
    assert streaminfo(packed.data[HEADER_SIZE + 8 + 44 :])[2] == 70001
    assert unpack(packed.data) == audio


def test_flac_entries_encode_in_many_threads_at_once(real_speech: bytes) -> None:
    # libFLAC calls back into Python for every block: each encoder must get its own bytes.
    bodies = [wav(real_speech[i * 2000 : i * 2000 + 60000]) for i in range(6)]
    wrong: list[int] = []

    def write(turns: int, offset: int) -> None:
        for turn in range(turns):
            i = (turn + offset) % len(bodies)
            if unpack(pack(bodies[i], Codec.FLAC, 6, "audio/wav").data) != bodies[i]:
                wrong.append(i)

    threads = [threading.Thread(target=write, args=(12, n)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not wrong and not any(t.is_alive() for t in threads)
