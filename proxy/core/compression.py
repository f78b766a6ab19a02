"""When to compress: the design document's threshold, and a memory of formats where it does not pay.

MP3, Opus and AAC are already compressed; zlib over them burns CPU to save ~1%. The
advisor remembers, per media type, that recent attempts did not pay, and then only
re-probes once every ``probe_every`` entries.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from .packing import Codec, Packed, pack

# Above this size, compression runs in a worker thread so other requests keep flowing.
THREAD_THRESHOLD_BYTES = 64 * 1024
# zstd decodes speech at ~1.5 GB/s (137 KB in ~0.1 ms): below this size a worker thread's
# hop costs the loop more than the decode it saves it (bench/compression, hits table).
ZSTD_DECODE_THREAD_BYTES = 512 * 1024


def decode_in_thread(codec: Codec, size: int) -> bool:
    """Whether reading an entry of ``size`` original bytes stored with ``codec`` should
    decode in a worker thread."""
    if codec is Codec.NONE:
        return False
    if codec is Codec.ZSTD:
        return size >= ZSTD_DECODE_THREAD_BYTES
    return size >= THREAD_THRESHOLD_BYTES


@dataclass
class CompressionAdvisor:
    """Decides which entries to try compressing; learns from what it saw."""

    enabled: bool
    threshold_bytes: int
    min_saving: float  # fraction, e.g. 0.05
    probe_every: int = 20
    # media type -> entries skipped since it last failed to pay
    _skips: dict[str, int] = field(default_factory=dict)

    def should_try(self, size: int, media_type: str) -> bool:
        if not self.enabled or size <= self.threshold_bytes:
            return False
        skipped = self._skips.get(media_type)
        if skipped is None:
            return True
        if skipped + 1 >= self.probe_every:
            self._skips[media_type] = 0
            return True
        self._skips[media_type] = skipped + 1
        return False

    def pays(self, original: int, compressed: int) -> bool:
        return compressed <= original * (1.0 - self.min_saving)

    def learn(self, media_type: str, paid: bool) -> None:
        if paid:
            self._skips.pop(media_type, None)
        else:
            self._skips.setdefault(media_type, 0)


@dataclass(frozen=True, slots=True)
class Encoded:
    """The packed body and whether compression was tried."""

    packed: Packed
    tried: bool


async def encode(
    audio: bytes, media_type: str, advisor: CompressionAdvisor, codec: Codec, level: int
) -> Encoded:
    """Pack ``audio``, compressed when the advisor says to try and it pays."""
    if codec is Codec.NONE or not advisor.should_try(len(audio), media_type):
        return Encoded(pack(audio), tried=False)
    if len(audio) >= THREAD_THRESHOLD_BYTES:
        packed = await asyncio.to_thread(pack, audio, codec, level, media_type)
    else:
        packed = pack(audio, codec, level, media_type)
    paid = advisor.pays(packed.original_size, packed.stored_size)
    advisor.learn(media_type, paid)
    return Encoded(packed if paid else pack(audio), tried=True)


def compression_stats(
    *,
    enabled: bool,
    threshold_kb: float,
    level: int,
    compressed_entries: int,
    compressed_bytes: int,
    compressed_original_bytes: int,
) -> dict[str, Any]:
    """The design document's ``compression`` block of the stats, from the maintained counters."""
    mb = 1024 * 1024
    saved = compressed_original_bytes - compressed_bytes
    return {
        "enabled": enabled,
        "threshold_kb": threshold_kb,
        "compression_level": level,
        "compressed_entries": compressed_entries,
        "compressed_size_mb": round(compressed_bytes / mb, 3),
        "original_size_mb": round(compressed_original_bytes / mb, 3),
        "space_saved_mb": round(saved / mb, 3),
        "compression_ratio": round(compressed_original_bytes / compressed_bytes, 3)
        if compressed_bytes
        else 0.0,
    }
