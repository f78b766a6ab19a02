"""When to compress: the seed's threshold, and a memory of formats where it does not pay.

MP3, Opus and AAC are already compressed; zlib over them burns CPU to save ~1%. The
advisor remembers, per media type, that recent attempts did not pay, and then only
re-probes once every ``probe_every`` entries.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from .packing import Codec, Packed, pack

# Above this size, compression runs in a worker thread so other requests keep flowing.
THREAD_THRESHOLD_BYTES = 64 * 1024


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
        packed = await asyncio.to_thread(pack, audio, codec, level)
    else:
        packed = pack(audio, codec, level)
    paid = advisor.pays(packed.original_size, packed.stored_size)
    advisor.learn(media_type, paid)
    return Encoded(packed if paid else pack(audio), tried=True)
