"""The stored format and the compression advisor: pure, no I/O."""

from __future__ import annotations

import os
import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.core.compression import CompressionAdvisor, compression_stats, encode
from proxy.core.packing import HEADER_SIZE, Codec, CorruptEntry, pack, read_header, unpack

SPEECHLIKE = (
    b"RIFF" + bytes(2000) + struct.pack("<4000h", *[(i * 37) % 900 - 450 for i in range(4000)])
)


@pytest.mark.parametrize("codec", list(Codec))
@pytest.mark.parametrize("level", range(1, 10))
def test_round_trip_is_byte_exact_for_every_codec_and_level(codec: Codec, level: int) -> None:
    packed = pack(SPEECHLIKE, codec, level)
    assert packed.codec is codec and packed.original_size == len(SPEECHLIKE)
    assert read_header(packed.data) == (codec, len(SPEECHLIKE), zlib.crc32(SPEECHLIKE))
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
