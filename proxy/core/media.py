"""Whether a body's first bytes are what its media type says: audio, not an error page.

Upstreams do answer 200 with ``Content-Type: audio/wav`` and a JSON error as the body (a
gateway, a quota page, a misconfigured proxy). Stored, that error would be replayed as
audio until its TTL ends. Pure: no I/O, just the container signatures.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection

# Headerless sample streams: any bytes may be audio, so only documents are refused.
RAW_TYPES = frozenset(
    {
        "audio/pcm", "audio/l8", "audio/l16", "audio/l24", "audio/x-pcm", "audio/raw",
        "audio/x-raw", "audio/basic", "audio/mulaw", "audio/x-mulaw", "audio/alaw",
        "audio/x-alaw",
    }
)  # fmt: skip
# How many first bytes sniff() reads at most.
SNIFF_BYTES = 64

# An object's first key or end, an array's first value or end; markup's first tag. Two
# bytes, not one: raw samples start with '{' or '<' one time in 256.
_JSON_START = re.compile(
    rb'\A(?:\xef\xbb\xbf)?[ \t\r\n]*(?:\{[ \t\r\n]*["}]|\[[ \t\r\n]*[\[{"\-0-9tfn\]])'
)
_MARKUP_START = re.compile(rb"\A(?:\xef\xbb\xbf)?[ \t\r\n]*<[!?/A-Za-z]")


def _wav(b: bytes) -> bool:
    return b[:4] in (b"RIFF", b"RF64", b"BW64") and b[8:12] == b"WAVE"


def _mpeg(b: bytes) -> bool:
    # An ID3v2 tag, or an MPEG audio frame: 11 sync bits set.
    return b[:3] == b"ID3" or (len(b) >= 2 and b[0] == 0xFF and b[1] & 0xE0 == 0xE0)


def _adts(b: bytes) -> bool:
    # An ADTS frame (12 sync bits set), or the ID3 tag that streamed AAC often starts with.
    return b[:3] == b"ID3" or (len(b) >= 2 and b[0] == 0xFF and b[1] & 0xF0 == 0xF0)


def _ogg(b: bytes) -> bool:
    return b[:4] == b"OggS"


def _flac(b: bytes) -> bool:
    return b[:4] == b"fLaC"


def _webm(b: bytes) -> bool:
    return b[:4] == b"\x1a\x45\xdf\xa3"  # the EBML header of WebM and Matroska


def _mp4(b: bytes) -> bool:
    return b[4:8] == b"ftyp"


def _aiff(b: bytes) -> bool:
    return b[:4] == b"FORM" and b[8:12] in (b"AIFF", b"AIFC")


_SIGNATURES: dict[str, Callable[[bytes], bool]] = {
    **dict.fromkeys(("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"), _wav),
    **dict.fromkeys(("audio/mpeg", "audio/mp3", "audio/mpeg3", "audio/x-mpeg", "audio/x-mp3"),
                    _mpeg),
    **dict.fromkeys(("audio/aac", "audio/aacp", "audio/x-aac"), _adts),
    **dict.fromkeys(("audio/ogg", "audio/opus", "audio/vorbis", "application/ogg"), _ogg),
    **dict.fromkeys(("audio/flac", "audio/x-flac"), _flac),
    **dict.fromkeys(("audio/webm", "audio/x-matroska"), _webm),
    **dict.fromkeys(("audio/mp4", "audio/m4a", "audio/x-m4a"), _mp4),
    **dict.fromkeys(("audio/aiff", "audio/x-aiff"), _aiff),
}  # fmt: skip
_CONTAINERS = (_wav, _mpeg, _ogg, _flac, _webm, _mp4, _aiff)


def base_type(media_type: str) -> str:
    """``Audio/WAV; rate=22050`` -> ``audio/wav``."""
    return media_type.split(";", 1)[0].strip().lower()


def looks_like_document(first_bytes: bytes) -> bool:
    """Whether the body starts like JSON, HTML or XML (an error page, not samples)."""
    return bool(_JSON_START.match(first_bytes) or _MARKUP_START.match(first_bytes))


def sniff(media_type: str, first_bytes: bytes, *, pcm_types: Collection[str] = ()) -> bool:
    """Whether ``first_bytes`` (at least the first ``SNIFF_BYTES``, or the whole body) are
    audio of ``media_type``.

    Containers must start with their signature. Raw sample types (``RAW_TYPES``, and the
    media types a route declares in ``pcm_types``, e.g. ``application/octet-stream``) can
    hold any bytes, so only a JSON, HTML or XML start refuses them. Other ``audio/*``
    types are judged as raw. Octet-stream not declared as PCM must carry a known
    container signature; any other type is not audio.
    """
    base = base_type(media_type)
    check = _SIGNATURES.get(base)
    if check is not None:
        return check(first_bytes)
    if base in RAW_TYPES or base in pcm_types or base.startswith("audio/"):
        return bool(first_bytes) and not looks_like_document(first_bytes)
    if base == "application/octet-stream":
        return any(container(first_bytes) for container in _CONTAINERS)
    return False
