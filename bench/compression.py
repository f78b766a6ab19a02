"""Compression on real speech: ratio and speed per codec and level, event-loop stalls, hits.

Usage::

    python -m bench.compression [--seconds-per-case 0.3] [--hit-seconds 3]

The corpus is the demo upstream's speech (espeak-ng, Spanish and English hotel sentences)
as the demo serves it to OpenAI clients: 24 kHz 16-bit mono WAV, the same samples as raw
PCM, and the same sentences as 128 kbit/s MP3 (already compressed: what no codec helps).
Codecs: zlib and zstd (bytes), FLAC (16-bit PCM and WAV; zlib stands in for MP3).

Five tables:

1. ratio (original / stored), stored KB per second of speech, and compress / decompress
   MB/s (of original audio) per codec and level, each case repeated for
   ``--seconds-per-case``;
2. the worst stall of the event loop (lag of a 1 ms ticker) while 1 MB of speech is
   compressed and decompressed inline versus in a worker thread, as the store does above
   ``THREAD_THRESHOLD_BYTES``;
3. time to compress / decompress by body size, which places that threshold;
4. hits per second through the store from a real Valkey (embedded) for a 137 KB entry
   (WAV, and MP3) stored compressed versus plain, 16 concurrent readers, same process,
   same run, with the CPU this process spends per hit;
5. the FLAC encoders on the same samples: libsndfile's stream (what the flac codec wrote
   before, 4096-sample blocks), libFLAC's with ~43 ms blocks (what it writes now, with the
   ``pyflac`` package), and libFLAC outside the streamable subset (max LPC order 32, not
   used), all decoded by libsndfile as a hit does.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from proxy.core.compression import THREAD_THRESHOLD_BYTES, CompressionAdvisor
from proxy.core.keys import CacheKey
from proxy.core.packing import HAVE_FLAC, HAVE_LIBFLAC, HAVE_ZSTD, Codec, pack, unpack
from proxy.demo.espeak import SAMPLE_RATE, synthesize_in_a_fresh_process
from proxy.demo.formats import AudioFormat, encode, resample, wav_file
from proxy.store.client import open_redis
from proxy.store.embedded import EmbeddedValkey, free_port
from proxy.store.service import AudioCacheService, EntryLabels

SENTENCES = [
    ("es", "Bienvenido al hotel. Su habitación está en la tercera planta."),
    ("es", "El desayuno se sirve de siete a diez de la mañana en el comedor principal."),
    ("es", "Lo siento, no he entendido su petición. ¿Puede repetirla, por favor?"),
    ("es", "Tenemos habitaciones dobles disponibles esta noche desde ciento veinte euros."),
    ("en", "Welcome to the hotel. Your room is on the third floor, next to the lift."),
    ("en", "Breakfast is served from seven to ten in the main dining room."),
    ("en", "The pool and the spa are open every day until nine in the evening."),
    ("en", "Checkout is at noon. Would you like us to call you a taxi to the airport?"),
]
MB = 1024 * 1024


RATE = 24000  # what the demo answers OpenAI clients with (its engine speaks at 22050 Hz)


def speech_pcm() -> list[bytes]:
    """One 24 kHz 16-bit mono PCM stream per sentence, from the demo upstream's engine."""
    return [
        resample(synthesize_in_a_fresh_process(text, voice, 1.0), SAMPLE_RATE, RATE)
        for voice, text in SENTENCES
    ]


def speech_corpus(pcm: list[bytes] | None = None) -> list[bytes]:
    """One WAV file per sentence."""
    return [wav_file(p, RATE) for p in (pcm if pcm is not None else speech_pcm())]


def mp3_corpus(pcm: list[bytes]) -> list[bytes]:
    return [encode(p, RATE, AudioFormat("mp3", RATE, 128000)) for p in pcm]


def rate(fn: Callable[[], Any], nbytes: int, seconds: float) -> float:
    """MB/s of ``nbytes`` processed per call, repeated for about ``seconds``."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds or calls >= 10_000:
            return nbytes * calls / elapsed / MB


MEDIA_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm", "mp3": "audio/mpeg"}


def codec_table(
    samples: dict[str, list[bytes]], speech_seconds: float, seconds: float
) -> list[str]:
    codecs = (
        [Codec.NONE, Codec.ZLIB]
        + ([Codec.ZSTD] if HAVE_ZSTD else [])
        + ([Codec.FLAC] if HAVE_FLAC else [])
    )
    rows = [f"{'body':<6} {'codec':<6} {'level':>5} {'ratio':>6} {'saved':>6} "
            f"{'KB/s speech':>12} {'comp MB/s':>10} {'decomp MB/s':>12}"]  # fmt: skip
    for body_name, bodies in samples.items():
        total = sum(map(len, bodies))
        kind = MEDIA_TYPES.get(body_name, "")
        for codec in codecs:
            for level in (1,) if codec is Codec.NONE else (1, 3, 6, 9):
                packed = [pack(b, codec, level, kind) for b in bodies]
                stored = sum(p.stored_size for p in packed)
                comp = rate(
                    lambda c=codec, lv=level, bs=bodies, k=kind: [pack(b, c, lv, k) for b in bs],
                    total,
                    seconds,
                )
                decomp = rate(lambda ps=packed: [unpack(p.data) for p in ps], total, seconds)
                used = {p.codec.name.lower() for p in packed}
                name = codec.name.lower() + ("" if used == {codec.name.lower()} else "*")
                rows.append(
                    f"{body_name:<6} {name:<6} {level:>5} {total / stored:>6.2f} "
                    f"{1 - stored / total:>6.1%} {stored / speech_seconds / 1024:>12.1f} "
                    f"{comp:>10.1f} {decomp:>12.1f}"
                )
    rows.append("(* stored with another codec: FLAC is only for 16-bit PCM, zlib stands in)")
    return rows


async def worst_lag(work: Callable[[], Any], *, threaded: bool) -> tuple[float, float]:
    """(worst ticker lag ms, wall ms) while ``work`` runs inline or in a thread."""
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append((time.perf_counter() - before - 0.001) * 1000)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    lags.clear()
    start = time.perf_counter()
    if threaded:
        await asyncio.to_thread(work)
    else:
        work()
        await asyncio.sleep(0)
    wall = (time.perf_counter() - start) * 1000
    await asyncio.sleep(0.005)
    stop.set()
    await task
    return max(lags, default=0.0), wall


async def stall_table(corpus: list[bytes]) -> list[str]:
    big = b"".join(corpus)
    while len(big) < MB:
        big += b"".join(corpus)
    big = big[:MB]
    packed = pack(big, Codec.ZLIB, 6)
    rows = [f"{'1 MB speech, zlib-6':<24} {'where':<8} {'worst loop lag ms':>18} {'wall ms':>8}"]
    for name, work in (
        ("compress", lambda: pack(big, Codec.ZLIB, 6)),
        ("decompress", lambda: unpack(packed.data)),
    ):
        for threaded in (False, True):
            lag, wall = await worst_lag(work, threaded=threaded)
            where = "thread" if threaded else "inline"
            rows.append(f"{name:<24} {where:<8} {lag:>18.2f} {wall:>8.2f}")
    return rows


def size_table(corpus: list[bytes]) -> list[str]:
    speech = b"".join(corpus) * 4
    rows = [f"{'size KB':>8} {'zlib-6 comp ms':>15} {'decomp ms':>10}"]
    for kb in (16, 32, 64, 128, 256, 1024):
        body = speech[: kb * 1024]
        packed = pack(body, Codec.ZLIB, 6)
        comp = len(body) / rate(lambda b=body: pack(b, Codec.ZLIB, 6), len(body), 0.1) / MB
        dec = len(body) / rate(lambda p=packed: unpack(p.data), len(body), 0.1) / MB
        rows.append(f"{kb:>8} {comp * 1000:>15.2f} {dec * 1000:>10.2f}")
    rows.append(f"(the store moves both to a thread from {THREAD_THRESHOLD_BYTES // 1024} KB)")
    return rows


async def hits_per_second(
    service: AudioCacheService, key: CacheKey, seconds: float
) -> tuple[float, float]:
    """(hits per second, CPU µs of this process per hit, worker threads included)."""
    count = 0
    deadline = time.perf_counter() + seconds

    async def reader() -> None:
        nonlocal count
        while time.perf_counter() < deadline and count < 1_000_000:
            found = await service.fetch(key)
            assert found is not None
            count += 1

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(reader() for _ in range(16)))
    used = time.process_time() - cpu
    return count / (time.perf_counter() - start), used / max(count, 1) * 1e6


async def hit_table(pcm: list[bytes], mp3: list[bytes], seconds: float) -> list[str]:
    bodies = {
        "wav": (wav_file(b"".join(pcm), RATE)[: 137 * 1024], "audio/wav"),
        "mp3": ((b"".join(mp3) * 4)[: 137 * 1024], "audio/mpeg"),
    }
    server = EmbeddedValkey(port=free_port())
    server.start()
    redis = open_redis(server.url)
    try:
        rows = [f"{'137 KB entry':<18} {'stored KB':>10} {'hits/s':>9} {'vs plain':>9} "
                f"{'CPU us/hit':>11}"]  # fmt: skip
        for body_name, (audio, media_type) in bodies.items():
            rows += await _hits_by_codec(redis, body_name, audio, media_type, seconds)
        return rows
    finally:
        await redis.aclose()
        server.stop()


async def _hits_by_codec(
    redis: Any, body_name: str, audio: bytes, media_type: str, seconds: float
) -> list[str]:
    key = CacheKey("ab" * 32)
    rows = []
    results: list[tuple[str, int, tuple[float, float]]] = []
    for name, codec, enabled, level in (
        ("plain", Codec.ZLIB, False, 6),
        ("zlib-6", Codec.ZLIB, True, 6),
        ("zstd-6", Codec.ZSTD, True, 6),
        ("flac-6", Codec.FLAC, True, 6),
        ("flac-9", Codec.FLAC, True, 9),
    ):
        if (codec is Codec.ZSTD and not HAVE_ZSTD) or (codec is Codec.FLAC and not HAVE_FLAC):
            continue
        service = AudioCacheService(
            redis,
            prefix=f"b{uuid.uuid4().hex[:8]}",
            advisor=CompressionAdvisor(enabled, 0, 0.05),
            codec=codec,
            compression_level=level,  # 6: the default level
        )
        result = await service.put(
            key, audio, media_type=media_type, ttl_seconds=600, labels=EntryLabels()
        )
        found = await service.fetch(key)
        assert found is not None and found.audio == audio, "not served byte-identical"
        await hits_per_second(service, key, 0.3)  # warm up
        results.append((name, result.stored_size, await hits_per_second(service, key, seconds)))
    plain = results[0][2][0]
    for name, stored, (hps, cpu) in results:
        label = f"{body_name} {name}"
        rows.append(f"{label:<18} {stored / 1024:>10.1f} {hps:>9.0f} {hps / plain:>8.2f}x "
                    f"{cpu:>11.0f}")  # fmt: skip
    return rows


def _libsndfile_stream(samples: Any, level: int) -> bytes:
    import soundfile  # type: ignore[import-untyped]

    out = io.BytesIO()
    soundfile.write(out, samples, RATE, format="FLAC", subtype="PCM_16",
                    compression_level=(level - 1) / 8)  # fmt: skip
    return out.getvalue()


def _libflac_stream(samples: Any, level: int, *, max_lpc_order: int = 0) -> bytes:
    import pyflac  # type: ignore[import-untyped]
    from pyflac.encoder import _lib  # type: ignore[import-untyped]

    out = io.BytesIO()
    encoder = pyflac.StreamEncoder(
        RATE, lambda data, *_: out.write(data), seek_callback=out.seek,
        tell_callback=out.tell, compression_level=level - 1, blocksize=1024,
        streamable_subset=not max_lpc_order,
    )  # fmt: skip
    if max_lpc_order:  # not among pyflac's own settings: libFLAC's call
        _lib.FLAC__stream_encoder_set_max_lpc_order(encoder._encoder, max_lpc_order)
    encoder.process(samples)
    encoder.finish()
    return out.getvalue()


def flac_table(pcm: list[bytes], seconds: float) -> list[str]:
    """The FLAC encoders on the same raw PCM, each stream read back by libsndfile."""
    import numpy
    import soundfile

    arrays = [numpy.frombuffer(p, dtype="<i2").reshape(-1, 1) for p in pcm]
    total = sum(map(len, pcm))

    def decode(stream: bytes) -> bytes:
        samples, _ = soundfile.read(io.BytesIO(stream), dtype="int16", always_2d=True)
        return bytes(samples.tobytes())

    encoders: list[tuple[str, int, Callable[[Any, int], bytes]]] = [
        ("libsndfile, 4096-sample blocks (before)", 6, _libsndfile_stream),
        ("libsndfile, 4096-sample blocks (before)", 9, _libsndfile_stream),
    ]
    if HAVE_LIBFLAC:
        encoders += [
            ("libFLAC, 1024-sample blocks (now)", level, _libflac_stream) for level in (6, 8, 9)
        ]
        encoders.append(("libFLAC, 1024, LPC order 32, no subset", 9,
                         lambda a, lv: _libflac_stream(a, lv, max_lpc_order=32)))  # fmt: skip
    rows = [f"{'FLAC stream of raw PCM':<42} {'level':>5} {'ratio':>6} "
            f"{'comp MB/s':>10} {'decomp MB/s':>12}"]  # fmt: skip
    for name, level, encoder in encoders:
        streams = [encoder(a, level) for a in arrays]
        assert [decode(s) for s in streams] == pcm, f"{name}: not bit-exact"
        comp = rate(lambda e=encoder, lv=level: [e(a, lv) for a in arrays], total, seconds)
        decomp = rate(lambda ss=streams: [decode(s) for s in ss], total, seconds)
        stored = sum(map(len, streams))
        rows.append(f"{name:<42} {level:>5} {total / stored:>6.2f} {comp:>10.1f} {decomp:>12.1f}")
    return rows


async def main(args: argparse.Namespace) -> None:
    pcm = speech_pcm()
    corpus = speech_corpus(pcm)
    mp3 = mp3_corpus(pcm)
    seconds = sum(map(len, pcm)) / 2 / RATE
    print(f"corpus: {len(corpus)} sentences, {sum(map(len, corpus)) / 1024:.0f} KB of WAV, "
          f"{seconds:.1f} s of speech at {RATE} Hz\n")  # fmt: skip
    samples = {"wav": corpus, "pcm": pcm, "mp3": mp3, "random": [os.urandom(137_000)]}
    for table in (
        codec_table(samples, seconds, args.seconds_per_case),
        await stall_table(corpus),
        size_table(corpus),
        await hit_table(pcm, mp3, args.hit_seconds),
        flac_table(pcm, args.seconds_per_case) if HAVE_FLAC else [],
    ):
        print("\n".join(table) + "\n")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds-per-case", type=float, default=0.3)
    parser.add_argument("--hit-seconds", type=float, default=3.0)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
