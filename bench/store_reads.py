"""Hits read from the store alone: CPU per read of the proxy's read path and of Valkey.

64 entries of real speech are stored through the cache service in an embedded Valkey on
loopback TCP; ``--readers`` tasks in this process then read them round-robin with the
hit path's own pipelined connection (no HTTP). Each round reports this process's CPU per
read (user + system), Valkey's, and the page faults each took per read. The best of
``--rounds`` is kept (other work on a shared machine only ever adds CPU).

    python -m bench.store_reads --cases 137:plain 137:zstd 20:plain
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import resource
import time
from pathlib import Path

import redis.asyncio as aioredis

from bench.loopback import speech_of_size
from proxy.core.compression import CompressionAdvisor
from proxy.core.keys import CacheKey
from proxy.store.embedded import EmbeddedValkey, free_port
from proxy.store.pipelined import PipelinedReads
from proxy.store.schema import EntryLabels
from proxy.store.service import AudioCacheService

ENTRIES = 64


def valkey_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds, minor page faults) of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(fields[7])


def own_usage() -> tuple[float, int]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_minflt


async def measure(kb: int, codec: str, readers: int, seconds: float, rounds: int) -> str:
    audio = speech_of_size(kb * 1024)
    with EmbeddedValkey(port=free_port()) as store:
        assert store.process is not None
        redis = aioredis.Redis.from_url(store.url)
        service = AudioCacheService(
            redis,
            prefix="sr",
            advisor=CompressionAdvisor(codec != "plain", 100 * 1024, 0.05),
            reads=lambda fields: PipelinedReads(store.url, fields),
        )
        keys = [CacheKey(hashlib.sha256(b"%d" % i).hexdigest()) for i in range(ENTRIES)]
        for key in keys:
            await service.put(
                key, audio, media_type="audio/wav", ttl_seconds=3600, labels=EntryLabels()
            )

        async def reader(start: int, until: float) -> int:
            n = 0
            while time.perf_counter() < until and n < 10_000_000:
                found = await service.fetch(keys[(start + n) % ENTRIES])
                if found is None or found.audio != audio:
                    raise RuntimeError("an entry did not read back as stored")
                n += 1
            return n

        until = time.perf_counter() + 0.5  # warm up: connections, buffers, the heap
        await asyncio.gather(*(reader(i, until) for i in range(readers)))
        best: tuple[float, ...] | None = None
        for _ in range(rounds):
            own0, valkey0 = own_usage(), valkey_usage(store.process.pid)
            until = time.perf_counter() + seconds
            reads = sum(await asyncio.gather(*(reader(i, until) for i in range(readers))))
            own1, valkey1 = own_usage(), valkey_usage(store.process.pid)
            per = 1e6 / reads
            figures = (
                (own1[0] - own0[0]) * per,
                (valkey1[0] - valkey0[0]) * per,
                (own1[1] - own0[1]) / reads,
                (valkey1[1] - valkey0[1]) / reads,
                reads / seconds,
            )
            if best is None or figures[0] + figures[1] < best[0] + best[1]:
                best = figures
        await service.close_reads()
        await redis.aclose()
    assert best is not None
    return (
        f"{kb:>5} KB {codec:<6} readers {readers:>3}: proxy {best[0]:6.1f} µs/read, "
        f"valkey {best[1]:6.1f} µs/read, page faults/read {best[2]:.2f} (proxy) "
        f"{best[3]:.2f} (valkey), {best[4]:,.0f} reads/s"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=["137:plain", "137:zstd", "20:plain"])
    p.add_argument("--readers", type=int, default=16)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    for case in args.cases:
        kb, _, codec = case.partition(":")
        line = asyncio.run(
            measure(int(kb), codec or "plain", args.readers, args.seconds, args.rounds)
        )
        print(line, flush=True)


if __name__ == "__main__":
    main()
