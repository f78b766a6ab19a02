"""The stored format of cached audio: one module owns it, storages only move bytes.

A stored body is a fixed header followed by the payload::

    magic "TTC" | version u8 | codec u8 | reserved u16 | original size u64 | crc32 u32

The checksum covers the original audio, so a reader can tell garbage from audio whatever
the codec. Anything that does not decode is a ``CorruptEntry``: a miss, never bad audio.

The FLAC codec is for 16-bit PCM (raw, or the ``data`` chunk of a WAV file): a lossless
audio coder predicts each sample from the last ones, where zlib only finds repeated bytes
(on real speech it stores about half what zlib does). Its payload keeps the bytes around
the samples as they were, so the WAV header, any extra chunks and an odd last byte come
back exactly::

    prefix length u32 | suffix length u32 | prefix | suffix | FLAC stream of the samples

Anything else (MP3, 8- or 24-bit WAV, more than two channels) asked to be stored with FLAC
is stored with zlib instead.

The stream is written by libFLAC itself (the ``pyflac`` package) where it is installed, with
blocks of about 43 ms (1024 samples at 24 kHz) instead of libFLAC's 4096: speech changes
faster than that, and on the demo's speech the shorter blocks store 3-6% fewer bytes
(ratio 2.03 instead of 1.96 at level 9, 1.98 instead of 1.87 at level 6). It is a
standard FLAC stream in the streamable subset, read by libsndfile like the ones libsndfile
writes (entries from before read the same); without ``pyflac``, libsndfile writes it with
its fixed block size.
"""

from __future__ import annotations

import io
import struct
import threading
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

MAGIC = b"TTC"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<3sBBxxQI")
HEADER_SIZE = _HEADER.size

try:  # the default codec: decodes speech ~5x faster than zlib, at the same ratio
    import zstandard as _zstd

    HAVE_ZSTD = True
except ImportError:  # pragma: no cover - depends on the install
    _zstd: Any = None  # type: ignore[no-redef]
    HAVE_ZSTD = False

try:  # ISA-L: the same CRC-32 as zlib's (~10x faster) and a zlib-compatible inflate (~1.6x)
    from isal import isal_zlib as _inflater

    crc32 = _inflater.crc32
except ImportError:  # pragma: no cover - depends on the install
    _inflater: Any = zlib  # type: ignore[no-redef]
    crc32 = zlib.crc32

# A zstd decompression context is reused (making one costs a few µs per hit), one per
# thread: a context is not safe to share between threads.
_contexts = threading.local()


def _zstd_decompressor() -> Any:
    context = getattr(_contexts, "zstd", None)
    if context is None:
        context = _contexts.zstd = _zstd.ZstdDecompressor()
    return context


try:  # the FLAC codec: libsndfile through soundfile (and numpy, which soundfile needs)
    import numpy as _np
    import soundfile as _sf  # type: ignore[import-untyped]

    HAVE_FLAC = True
except (ImportError, OSError):  # pragma: no cover - depends on the install
    _np: Any = None  # type: ignore[no-redef]
    _sf: Any = None  # type: ignore[no-redef]
    HAVE_FLAC = False

try:  # libFLAC's encoder with its block size exposed (cffi); optional, see above
    import pyflac as _libflac  # type: ignore[import-untyped]

    HAVE_LIBFLAC = HAVE_FLAC
except (ImportError, OSError):  # pragma: no cover - depends on the install
    _libflac: Any = None  # type: ignore[no-redef]
    HAVE_LIBFLAC = False


class Codec(IntEnum):
    """How the payload is encoded."""

    NONE = 0
    ZLIB = 1
    ZSTD = 2
    FLAC = 3

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


_FLAC_LENGTHS = struct.Struct("<II")
_RAW_PCM_TYPES = frozenset({"audio/pcm", "audio/l16"})
_DEFAULT_RATE = 24000  # raw PCM says no rate; FLAC needs one, and it does not change the bytes


def pcm_layout(audio: bytes, media_type: str = "") -> tuple[int, int, int, int] | None:
    """(start, end, channels, sample rate) of the 16-bit samples in ``audio``, or None when it
    is not 16-bit mono or stereo PCM. A WAV file is recognised by its bytes; headerless PCM
    by its media type."""
    if audio[:4] == b"RIFF" and audio[8:12] == b"WAVE":
        return _wav_layout(audio)
    if media_type.split(";", 1)[0].strip().lower() in _RAW_PCM_TYPES:
        return 0, len(audio) // 2 * 2, 1, _DEFAULT_RATE
    return None


def _wav_layout(audio: bytes) -> tuple[int, int, int, int] | None:
    position, fmt = 12, None
    while position + 8 <= len(audio):
        chunk, size = struct.unpack_from("<4sI", audio, position)
        body = position + 8
        if chunk == b"fmt " and size >= 16 and body + 16 <= len(audio):
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", audio, body)
            if tag == 0xFFFE and size >= 40 and body + 26 <= len(audio):
                tag = struct.unpack_from("<H", audio, body + 24)[0]  # the sub-format's first bytes
            fmt = (tag, channels, rate, bits)
        elif chunk == b"data":
            if fmt is None:
                return None
            tag, channels, rate, bits = fmt
            if tag != 1 or bits != 16 or channels not in (1, 2):
                return None
            # A streamed WAV may claim more data than it has (0xFFFFFFFF, or a stale size).
            frame = 2 * channels
            length = (min(size, len(audio) - body) // frame) * frame
            return body, body + length, channels, rate if 1 <= rate <= 655350 else _DEFAULT_RATE
        position = body + size + (size & 1)
    return None


def _flac_block_size(rate: int) -> int:
    """About 43 ms of samples, a multiple of 16, within the streamable subset's 4608."""
    return min(4608, max(64, round(rate * 1024 / 24000 / 16) * 16))


def _flac_stream(samples: Any, rate: int, level: int) -> bytes:
    preset = min(max(level - 1, 0), 8)  # the setting's 1-9 onto libFLAC's presets 0-8
    if not HAVE_LIBFLAC:
        out = io.BytesIO()
        _sf.write(out, samples, rate, format="FLAC", subtype="PCM_16", compression_level=preset / 8)
        return out.getvalue()
    for subset in (True, False):  # outside the subset only for a rate it cannot name
        out = io.BytesIO()
        encoder = _libflac.StreamEncoder(
            rate,
            lambda data, *_, sink=out: sink.write(data),
            seek_callback=out.seek,  # so libFLAC fills in the stream's length at the end
            tell_callback=out.tell,
            compression_level=preset,
            blocksize=_flac_block_size(rate),
            streamable_subset=subset,
        )
        try:
            encoder.process(samples)
        except _libflac.EncoderInitException:
            continue
        if encoder.finish():
            return out.getvalue()
    raise ValueError(f"libFLAC cannot encode 16-bit PCM at {rate} Hz")


def _flac_encode(audio: bytes, layout: tuple[int, int, int, int], level: int) -> bytes:
    start, end, channels, rate = layout
    samples = _np.frombuffer(audio, dtype="<i2", count=(end - start) // 2, offset=start)
    stream = _flac_stream(samples.reshape(-1, channels), rate, level)
    prefix, suffix = audio[:start], audio[end:]
    return b"".join((_FLAC_LENGTHS.pack(len(prefix), len(suffix)), prefix, suffix, stream))


def _flac_decode(payload: memoryview) -> bytes:
    if not HAVE_FLAC:
        raise CorruptEntry("stored with FLAC, which needs the 'soundfile' package")
    prefix_len, suffix_len = _FLAC_LENGTHS.unpack_from(payload)
    start = _FLAC_LENGTHS.size
    middle = start + prefix_len + suffix_len
    if middle > len(payload):
        raise CorruptEntry("FLAC payload shorter than its framing")
    samples, _ = _sf.read(io.BytesIO(payload[middle:]), dtype="int16", always_2d=True)
    pcm = samples.astype("<i2", copy=False).tobytes()
    return b"".join(
        (payload[start : start + prefix_len], pcm, payload[start + prefix_len : middle])
    )


def codec_for(audio: bytes, codec: Codec, media_type: str = "") -> Codec:
    """The codec ``audio`` is actually stored with when ``codec`` is asked for: FLAC only
    applies to 16-bit PCM with at least one sample, zlib stands in for the rest."""
    if codec is not Codec.FLAC:
        return codec
    if not HAVE_FLAC:
        raise RuntimeError("the flac codec needs the 'soundfile' package")
    layout = pcm_layout(audio, media_type)
    return Codec.FLAC if layout is not None and layout[1] > layout[0] else Codec.ZLIB


def compress(audio: bytes, codec: Codec, level: int, media_type: str = "") -> bytes:
    """The payload for ``codec`` (for FLAC, ``codec_for`` must have chosen it)."""
    if codec is Codec.FLAC:
        layout = pcm_layout(audio, media_type)
        if layout is None:
            raise ValueError("FLAC needs 16-bit PCM")
        return _flac_encode(audio, layout, level)
    if codec is Codec.ZLIB:
        return zlib.compress(audio, level)
    if codec is Codec.ZSTD:
        if not HAVE_ZSTD:
            raise RuntimeError("the zstd codec needs the 'zstandard' package")
        return bytes(_zstd.ZstdCompressor(level=level).compress(audio))
    return audio


def pack(audio: bytes, codec: Codec = Codec.NONE, level: int = 6, media_type: str = "") -> Packed:
    """Header + payload for ``audio`` encoded with ``codec`` (see ``codec_for``)."""
    codec = codec_for(audio, codec, media_type)
    checksum = crc32(audio)
    try:
        payload = compress(audio, codec, level, media_type)
    except (ValueError, RuntimeError):  # libFLAC's and libsndfile's refusals
        if codec is not Codec.FLAC:
            raise
        codec, payload = Codec.ZLIB, zlib.compress(audio, level)  # a rate FLAC cannot store
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, codec, len(audio), checksum)
    return Packed(header + payload, codec, len(audio), checksum)


_CODECS = {int(c): c for c in Codec}  # a lookup costs less than Codec(n) on every read


def read_header(data: bytes) -> tuple[Codec, int, int]:
    """(codec, original size, checksum) of a stored body, or CorruptEntry."""
    if len(data) < HEADER_SIZE:
        raise CorruptEntry("shorter than the header")
    magic, version, codec, size, checksum = _HEADER.unpack_from(data)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise CorruptEntry("unknown magic or format version")
    known = _CODECS.get(codec)
    if known is None:
        raise CorruptEntry(f"unknown codec {codec}")
    return known, size, checksum


def unpack(data: bytes) -> bytes:
    """The original audio, verified; CorruptEntry if it does not decode or check out."""
    return decode(data, *read_header(data))


def decode(data: bytes, codec: Codec, size: int, checksum: int) -> bytes:
    """:func:`unpack` for a body whose header :func:`read_header` has read already."""
    payload = memoryview(data)[HEADER_SIZE:]
    try:
        if codec is Codec.ZLIB:
            audio = _inflater.decompress(payload, bufsize=max(size, 1))
        elif codec is Codec.ZSTD:
            if not HAVE_ZSTD:
                raise CorruptEntry("stored with zstd, which is not installed")
            audio = _zstd_decompressor().decompress(payload, max_output_size=size)
        elif codec is Codec.FLAC:
            audio = _flac_decode(payload)
        else:
            audio = bytes(payload)
    except CorruptEntry:
        raise
    except (zlib.error, ValueError, struct.error) as exc:
        raise CorruptEntry(f"does not decode: {exc}") from None
    except Exception as exc:  # zstd and libsndfile raise their own error types
        raise CorruptEntry(f"does not decode: {exc}") from None
    if len(audio) != size or crc32(audio) != checksum:
        raise CorruptEntry("size or checksum mismatch")
    return audio
