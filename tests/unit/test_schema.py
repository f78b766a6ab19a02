"""The entry's hash fields and its index record, from proxy.store.schema (pure), and the Lua
scripts held to the same names."""

from __future__ import annotations

import json
import re

from proxy.core.keys import CacheKey
from proxy.core.packing import Codec, pack
from proxy.store import schema
from proxy.store.lua import read
from proxy.store.schema import EntryLabels, IndexRecord

KEY = CacheKey("cd" * 32)
AUDIO = b"RIFF" + bytes(range(256)) * 8
LABELS = EntryLabels(
    content_class="welcome_message", route="openai", voice="alloy", model="tts-1", tenant="acme"
)
HEADERS = [("X-Sample-Rate", "24000")]


def fields_as_stored(flat: list[object]) -> dict[bytes, bytes]:
    """What Redis keeps of HSET arguments: every value as bytes."""
    pairs = zip(flat[::2], flat[1::2], strict=True)
    return {
        str(name).encode(): value if isinstance(value, bytes) else str(value).encode()
        for name, value in pairs
    }


def test_entry_fields_are_the_stored_format() -> None:
    # The hash a put has always written, field by field: entries written before this
    # module existed must read the same, and entries written now must read the same there.
    packed = pack(AUDIO, Codec.ZLIB, 6)
    flat = schema.entry_fields(
        packed, media_type="audio/wav", headers=HEADERS, created_ms=1_700_000_000_000,
        expires_ms=1_700_000_060_000, ttl_seconds=60, labels=LABELS,
    )  # fmt: skip
    assert flat == [
        "b", packed.data, "ct", "audio/wav", "hd", '[["X-Sample-Rate","24000"]]',
        "c", 1_700_000_000_000, "x", 1_700_000_060_000, "t", 60, "cls", "welcome_message",
        "n", 0, "la", 1_700_000_000_000, "os", len(AUDIO), "ss", packed.stored_size,
        "cd", "zlib", "ck", packed.checksum, "r", "openai", "v", "alloy", "m", "tts-1",
        "tn", "acme",
    ]  # fmt: skip
    assert [str(name) for name in flat[::2]] == list(schema.ENTRY_FIELDS)


def test_index_record_is_the_stored_format() -> None:
    packed = pack(AUDIO, Codec.ZLIB, 6)
    record = schema.index_record(packed, LABELS, 1_700_000_000_000)
    assert record == (
        f'{{"s":{packed.stored_size},"o":{len(AUDIO)},"z":1,"c":"welcome_message",'
        '"t":"acme","v":"alloy","m":"tts-1","r":"openai","cr":1700000000000}'
    )
    assert tuple(json.loads(record)) == schema.RECORD_FIELDS
    assert IndexRecord.parse(record.encode()) == IndexRecord(
        stored_size=packed.stored_size, original_size=len(AUDIO), codec=1,
        content_class="welcome_message", tenant="acme", voice="alloy", model="tts-1",
        route="openai", created_ms=1_700_000_000_000,
    )  # fmt: skip


def test_a_stored_entry_reads_back_as_written() -> None:
    packed = pack(AUDIO, Codec.NONE)
    flat = schema.entry_fields(
        packed, media_type="audio/wav", headers=HEADERS, created_ms=1000, expires_ms=61_000,
        ttl_seconds=60, labels=LABELS,
    )  # fmt: skip
    stored = fields_as_stored(flat)
    hit = schema.cached_audio(
        KEY, [stored.get(f) for f in schema.HIT_FIELDS], AUDIO, packed.checksum
    )
    assert (hit.audio, hit.media_type, hit.headers) == (AUDIO, "audio/wav", tuple(HEADERS))
    assert (hit.created_ms, hit.expires_ms, hit.content_class) == (1000, 61_000, "welcome_message")
    info = schema.entry_info(
        KEY, [stored.get(f) for f in schema.INFO_FIELDS], pending_hits=2, now_ms=31_000
    )
    assert (info.size, info.stored_size) == (len(AUDIO), len(packed.data))
    assert (info.codec, info.ttl_ms, info.hits, info.last_access_ms) == ("none", 30_000, 2, 1000)
    assert (info.tenant, info.route, info.voice, info.model) == ("acme", "openai", "alloy", "tts-1")
    assert info.media_type == "audio/wav" and info.key == KEY.hex


def test_missing_fields_read_as_their_defaults() -> None:
    hit = schema.cached_audio(KEY, [b"x", None, None, None, None, None], b"", 0)
    assert (hit.media_type, hit.headers, hit.content_class) == (
        "application/octet-stream", (), "default",
    )  # fmt: skip
    assert IndexRecord.parse("{}") == IndexRecord(0, 0, 0, "default", "", "", "", "", 0)


def test_only_per_response_headers_are_left_out_of_the_entry() -> None:
    kept = schema.replayable_headers(
        [("Date", "x"), ("X-Sample-Rate", "24000"), ("Set-Cookie", "a"), ("Content-Type", "a/b")]
    )
    assert kept == [("X-Sample-Rate", "24000")]


# -- the Lua side of the same format ------------------------------------------------------

SCRIPTS = ("prelude", "put", "remove", "sweep", "touch", "purge", "repair")


def test_the_scripts_read_only_index_record_keys_the_schema_defines() -> None:
    used = {m for name in SCRIPTS for m in re.findall(r"\brec\.(\w+)", read(name))}
    assert used, "the pattern must find the record's keys"
    assert used <= set(schema.RECORD_FIELDS)


def test_touch_uses_only_entry_fields_the_schema_defines() -> None:
    lines = [line for line in read("touch").splitlines() if "entry," in line]
    named = {m for line in lines for m in re.findall(r"'(\w+)'", line)} - {
        "HMGET", "HSET", "HINCRBY",
    }  # fmt: skip
    assert named == {schema.CLASS, schema.TENANT, schema.HITS, schema.LAST_ACCESS}


def test_reads_ask_for_entry_fields_only() -> None:
    known = {f.encode() for f in schema.ENTRY_FIELDS}
    assert set(schema.HIT_FIELDS) | set(schema.INFO_FIELDS) | set(schema.USAGE_FIELDS) <= known
