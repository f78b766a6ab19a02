"""The stored format of cached audio: one module owns it, storages only move bytes.

A stored body is a fixed header followed by the payload::

    magic "TTC" | version u8 | codec u8 | reserved u16 | original size u64 | crc32 u32

The checksum covers the original audio, so a reader can tell garbage from audio whatever
the codec. Anything that does not decode is a ``CorruptEntry``: a miss, never bad audio.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

MAGIC = b"TTC"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<3sBBxxQI")
HEADER_SIZE = _HEADER.size

try:  # optional second codec
    import zstandard as _zstd

    HAVE_ZSTD = True
except ImportError:  # pragma: no cover - depends on the install
    _zstd: Any = None  # type: ignore[no-redef]
    HAVE_ZSTD = False


class Codec(IntEnum):
    """How the payload is encoded."""

    NONE = 0
    ZLIB = 1
    ZSTD = 2

    @classmethod
    def named(cls, name: str) -> Codec:
        return cls[name.upper()]


class CorruptEntry(ValueError):
    """Stored bytes that are not a valid entry of this format."""


@dataclass(frozen=True, slots=True)
class Packed:
    """A body ready for the store, and what it cost."""

    data: bytes
    codec: Codec
    original_size: int
    checksum: int

    @property
    def stored_size(self) -> int:
        return len(self.data)


def compress(audio: bytes, codec: Codec, level: int) -> bytes:
    """The payload for ``codec``."""
    if codec is Codec.ZLIB:
        return zlib.compress(audio, level)
    if codec is Codec.ZSTD:
        if not HAVE_ZSTD:
            raise RuntimeError("the zstd codec needs the 'zstandard' package")
        return bytes(_zstd.ZstdCompressor(level=level).compress(audio))
    return audio


def pack(audio: bytes, codec: Codec = Codec.NONE, level: int = 6) -> Packed:
    """Header + payload for ``audio`` encoded with ``codec``."""
    checksum = zlib.crc32(audio)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, codec, len(audio), checksum)
    payload = compress(audio, codec, level)
    return Packed(header + payload, codec, len(audio), checksum)


def read_header(data: bytes) -> tuple[Codec, int, int]:
    """(codec, original size, checksum) of a stored body, or CorruptEntry."""
    if len(data) < HEADER_SIZE:
        raise CorruptEntry("shorter than the header")
    magic, version, codec, size, checksum = _HEADER.unpack_from(data)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise CorruptEntry("unknown magic or format version")
    try:
        return Codec(codec), size, checksum
    except ValueError:
        raise CorruptEntry(f"unknown codec {codec}") from None


def unpack(data: bytes) -> bytes:
    """The original audio, verified; CorruptEntry if it does not decode or check out."""
    codec, size, checksum = read_header(data)
    payload = memoryview(data)[HEADER_SIZE:]
    try:
        if codec is Codec.ZLIB:
            audio = zlib.decompress(payload, bufsize=max(size, 1))
        elif codec is Codec.ZSTD:
            if not HAVE_ZSTD:
                raise CorruptEntry("stored with zstd, which is not installed")
            audio = _zstd.ZstdDecompressor().decompress(payload, max_output_size=size)
        else:
            audio = bytes(payload)
    except (zlib.error, ValueError) as exc:
        raise CorruptEntry(f"does not decode: {exc}") from None
    except Exception as exc:  # zstd raises its own error type
        raise CorruptEntry(f"does not decode: {exc}") from None
    if len(audio) != size or zlib.crc32(audio) != checksum:
        raise CorruptEntry("size or checksum mismatch")
    return audio
