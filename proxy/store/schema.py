"""What the store holds for one entry: its hash fields and its index record (pure).

An entry is one HASH (:meth:`proxy.store.keyspace.Keyspace.entry`). Its fields are written
by :func:`entry_fields` (through ``scripts/put.lua``, which stores them as given) and read
back by :func:`cached_audio` and :func:`entry_info`. ``scripts/touch.lua`` is the one
other place that reads or writes them: it adds to ``n`` and sets ``la`` after reading
``cls`` and ``tn``. The body field holds :mod:`proxy.core.packing`'s format.

Its index record is compact JSON in the shard's index (it outlives the entry, so the
bookkeeping can be undone when Redis expires it): built by :func:`index_record`, read by
:meth:`IndexRecord.parse` and by ``scripts/prelude.lua`` (``rec.s``, ``rec.c``...).
``tests/test_schema.py`` holds the Lua files to the names defined here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ..core.header_text import FORBIDDEN_VALUE, unwritable
from ..core.keys import CacheKey
from ..core.packing import Packed
from ..core.policy import replayable
from ..core.sse import USAGE_HEADER

# -- the entry's hash fields ------------------------------------------------------------

BODY = "b"  # packed audio: proxy.core.packing's header, then the payload
MEDIA_TYPE = "ct"
# Replayed upstream headers: a JSON list of [name, value]. One more pair may be there,
# never replayed: core.sse.USAGE_HEADER, the usage reported with speech events.
HEADERS = "hd"
CREATED = "c"  # ms since the epoch
EXPIRES = "x"  # ms: the end of freshness (the key itself may be kept longer, stale)
TTL = "t"  # seconds of freshness it was stored with
CLASS = "cls"  # content class (welcome_message, ...)
HITS = "n"  # hit count, added to in batches by touch.lua
LAST_ACCESS = "la"  # ms, set by touch.lua
ORIGINAL_SIZE = "os"
STORED_SIZE = "ss"
CODEC = "cd"  # codec name: none, zlib, zstd
CHECKSUM = "ck"  # crc32 of the original audio (also in the body's header)
ROUTE = "r"
VOICE = "v"
MODEL = "m"
TENANT = "tn"

ENTRY_FIELDS = (
    BODY, MEDIA_TYPE, HEADERS, CREATED, EXPIRES, TTL, CLASS, HITS, LAST_ACCESS,
    ORIGINAL_SIZE, STORED_SIZE, CODEC, CHECKSUM, ROUTE, VOICE, MODEL, TENANT,
)  # fmt: skip

# What a hit reads (one HMGET), in the order cached_audio() takes them.
HIT_FIELDS = tuple(f.encode() for f in (BODY, MEDIA_TYPE, HEADERS, CREATED, EXPIRES, CLASS))
# What a metadata lookup reads, in the order entry_info() takes them.
INFO_FIELDS = tuple(
    f.encode()
    for f in (
        ORIGINAL_SIZE, STORED_SIZE, CODEC, CREATED, EXPIRES, HITS, LAST_ACCESS, CLASS,
        TENANT, ROUTE, VOICE, MODEL, MEDIA_TYPE,
    )
)  # fmt: skip
# What cleanup ranks by, besides the index record.
USAGE_FIELDS = (HITS.encode(), LAST_ACCESS.encode())

# -- the index record's keys (short: one record per entry, decoded in Lua) ---------------

RECORD_FIELDS = ("s", "o", "z", "c", "t", "v", "m", "r", "cr")


@dataclass(frozen=True, slots=True)
class EntryLabels:
    """What an entry is, for TTLs, purges, stats and cleanup."""

    content_class: str = "default"
    route: str = ""
    voice: str = ""
    model: str = ""
    tenant: str = ""


@dataclass(frozen=True, slots=True)
class CachedAudio:
    """A hit: the original audio and what a response needs."""

    key: CacheKey
    audio: bytes
    media_type: str
    headers: tuple[tuple[str, str], ...]
    created_ms: int
    expires_ms: int
    content_class: str
    checksum: int
    # The usage the upstream reported when the entry was filled from speech events
    # (compact JSON), "" when it was filled from a plain request.
    sse_usage: str = ""
    # What the HTTP layer derived from this entry (validators, header blocks), kept with
    # it so that a hot-tier hit does not derive them again. Not part of its value.
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class EntryInfo:
    """Metadata of one entry, read without touching it."""

    key: str
    size: int
    stored_size: int
    codec: str
    created_ms: int
    expires_ms: int
    ttl_ms: int
    hits: int
    last_access_ms: int
    content_class: str
    tenant: str
    route: str
    voice: str
    model: str
    media_type: str


@dataclass(frozen=True, slots=True)
class IndexRecord:
    """An entry's index record: what undoing its bookkeeping and ranking it need."""

    stored_size: int
    original_size: int
    codec: int
    content_class: str
    tenant: str
    voice: str
    model: str
    route: str
    created_ms: int

    @classmethod
    def parse(cls, raw: bytes | str) -> IndexRecord:
        return cls.of(load_record(raw))

    @classmethod
    def of(cls, rec: Mapping[str, Any]) -> IndexRecord:
        return cls(
            stored_size=int(rec.get("s", 0)),
            original_size=int(rec.get("o", 0)),
            codec=int(rec.get("z", 0)),
            content_class=str(rec.get("c", "default")),
            tenant=str(rec.get("t", "")),
            voice=str(rec.get("v", "")),
            model=str(rec.get("m", "")),
            route=str(rec.get("r", "")),
            created_ms=int(rec.get("cr", 0)),
        )


# -- writing ------------------------------------------------------------------------------


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def entry_fields(
    packed: Packed,
    *,
    media_type: str,
    headers: Sequence[tuple[str, str]],
    created_ms: int,
    expires_ms: int,
    ttl_seconds: int,
    labels: EntryLabels,
) -> list[Any]:
    """The entry's hash as HSET arguments: field, value, field, value..."""
    return [
        BODY, packed.data,
        MEDIA_TYPE, media_type,
        HEADERS, _compact(list(headers)),
        CREATED, created_ms,
        EXPIRES, expires_ms,
        TTL, ttl_seconds,
        CLASS, labels.content_class,
        HITS, 0,
        LAST_ACCESS, created_ms,
        ORIGINAL_SIZE, packed.original_size,
        STORED_SIZE, packed.stored_size,
        CODEC, packed.codec.name.lower(),
        CHECKSUM, packed.checksum,
        ROUTE, labels.route,
        VOICE, labels.voice,
        MODEL, labels.model,
        TENANT, labels.tenant,
    ]  # fmt: skip


def index_record(packed: Packed, labels: EntryLabels, created_ms: int) -> str:
    """The entry's index record, as stored."""
    return _compact(
        {
            "s": packed.stored_size,
            "o": packed.original_size,
            "z": int(packed.codec),
            "c": labels.content_class,
            "t": labels.tenant,
            "v": labels.voice,
            "m": labels.model,
            "r": labels.route,
            "cr": created_ms,
        }
    )


def replayable_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Upstream headers replayed on a hit by default (see :func:`proxy.core.policy.replayable`)."""
    return replayable(headers)


# -- reading ------------------------------------------------------------------------------


def load_record(raw: bytes | str) -> dict[str, Any]:
    """An index record as stored, keys and all."""
    decoded = json.loads(raw)
    if not isinstance(decoded, dict):
        raise TypeError("an index record is not a JSON object")
    return decoded


def replayed(stored: bytes) -> tuple[tuple[str, str], ...]:
    """An entry's replayed upstream headers, from their stored JSON. Entries of one upstream
    store the same few header sets, so each is decoded once, not on every read."""
    return stored_headers(stored)[0]


@lru_cache(maxsize=1024)
def stored_headers(stored: bytes) -> tuple[tuple[tuple[str, str], ...], str]:
    """An entry's stored headers: (those replayed, the speech events' usage or "")."""
    decoded = json.loads(stored)
    if not isinstance(decoded, list):
        raise TypeError("replayed headers are not a list")
    pairs = tuple((str(name), str(value)) for name, value in decoded)
    culprit = unwritable(pairs)
    if culprit is not None:  # an entry written by something else: it cannot be answered
        raise ValueError(f"stored header {culprit!r} cannot be written as it is")
    usage = next((v for n, v in pairs if n.lower() == USAGE_HEADER), "")
    return tuple(p for p in pairs if p[0].lower() != USAGE_HEADER), usage


def cached_audio(
    key: CacheKey,
    values: Sequence[bytes | None],
    audio: bytes,
    checksum: int,
    memo: dict[str, Any] | None = None,
) -> CachedAudio:
    """A hit from its :data:`HIT_FIELDS` values and its verified audio (``memo``: what was
    derived from an earlier read of the same entry, see :func:`memo_identity`). ValueError
    or TypeError when a field does not decode."""
    _, media_type, headers, created, expires, content_class = values
    replayed_headers, sse_usage = stored_headers(headers or b"[]")
    media = (media_type or b"application/octet-stream").decode()
    if FORBIDDEN_VALUE.search(media):
        raise ValueError("the stored media type cannot be written as it is")
    return CachedAudio(
        key=key,
        audio=audio,
        media_type=media,
        headers=replayed_headers,
        sse_usage=sse_usage,
        created_ms=int(created or 0),
        expires_ms=int(expires or 0),
        content_class=(content_class or b"default").decode(),
        checksum=checksum,
        memo={} if memo is None else memo,
    )


def memo_identity(values: Sequence[bytes | None], size: int, checksum: int) -> tuple[Any, ...]:
    """What a :attr:`CachedAudio.memo` is derived from besides the key (the audio's size
    and checksum, its media type, stored headers and creation time): two reads with the
    same identity may share one memo."""
    _, media_type, headers, created, _, _ = values
    return size, checksum, media_type, headers, created


def entry_info(
    key: CacheKey, values: Sequence[bytes | None], *, pending_hits: int, now_ms: int
) -> EntryInfo:
    """Metadata from its :data:`INFO_FIELDS` values; ``pending_hits`` are counted but not
    yet written."""
    text = [v.decode() if v is not None else "" for v in values]
    return EntryInfo(
        key=key.hex,
        size=int(text[0]),
        stored_size=int(text[1]),
        codec=text[2],
        created_ms=int(text[3]),
        expires_ms=int(text[4]),
        ttl_ms=max(0, int(text[4]) - now_ms),  # freshness left (a stale copy has none)
        hits=int(text[5] or 0) + pending_hits,
        last_access_ms=int(text[6] or 0),
        content_class=text[7],
        tenant=text[8],
        route=text[9],
        voice=text[10],
        model=text[11],
        media_type=text[12],
    )
