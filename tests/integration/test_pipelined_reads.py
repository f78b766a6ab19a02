"""The hit path's own pipelined connection, against real Valkey servers: same answers as
redis-py, in order under concurrency and cancellation, and store failures surfacing as
redis-py's errors (a stuck server as a timeout) with the link coming back afterwards."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as StoreConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as StoreTimeoutError

from proxy.store.embedded import EmbeddedValkey
from proxy.store.pipelined import IN_FLIGHT_BYTES, MIN_IN_FLIGHT, READ_BUFFER_BYTES, PipelinedReads

FIELDS = (b"body", b"type", b"missing")


async def fill(url: str, n: int) -> list[str]:
    keys = [f"pr:{uuid.uuid4().hex}:{i}" for i in range(n)]
    client = aioredis.Redis.from_url(url)
    async with client.pipeline(transaction=False) as pipe:
        for i, key in enumerate(keys):
            pipe.hset(key, mapping={"body": os.urandom(i * 97 % 20000), "type": f"audio/{i}"})
        await pipe.execute()
    await client.aclose()
    return keys


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_many_concurrent_reads_match_redis_py(transport: str, valkey: EmbeddedValkey) -> None:
    if transport == "unix":
        unix = EmbeddedValkey()
        unix.start()
        url = unix.url
    else:
        url = valkey.url
    try:
        keys = await fill(url, 300)
        keys.insert(7, "pr:absent")
        reads = PipelinedReads(url, FIELDS)
        got = await asyncio.gather(*(reads.hmget(k) for k in keys))
        client = aioredis.Redis.from_url(url)
        want = [await client.hmget(k, FIELDS) for k in keys]
        await client.aclose()
        assert got == want
        assert got[7] == [None, None, None]
        assert all(values[2] is None and values[0] is not None for values in got[8:])
        await reads.aclose()
    finally:
        if transport == "unix":
            unix.stop()


async def test_replies_larger_and_smaller_than_the_read_buffer_come_back_whole(
    valkey: EmbeddedValkey,
) -> None:
    # Replies span several reads into the link's buffer, and several end in one read.
    sizes = [READ_BUFFER_BYTES * 4 + 3, 17, READ_BUFFER_BYTES, READ_BUFFER_BYTES - 1, 0]
    sizes += [140_000, 5, READ_BUFFER_BYTES + 1, 20_000] * 4
    bodies = [os.urandom(size) for size in sizes]
    keys = [f"pr:{uuid.uuid4().hex}:{i}" for i in range(len(bodies))]
    client = aioredis.Redis.from_url(valkey.url)
    for key, body in zip(keys, bodies, strict=True):
        await client.hset(key, mapping={"body": body, "type": str(len(body))})
    await client.aclose()
    reads = PipelinedReads(valkey.url, FIELDS)
    for _ in range(2):  # the second round reuses the buffer the first one filled
        got = await asyncio.gather(*(reads.hmget(k) for k in keys))
        assert [values[0] for values in got] == bodies
        assert [values[1] for values in got] == [str(size).encode() for size in sizes]
    await reads.aclose()


async def test_a_cancelled_read_does_not_shift_the_others(valkey: EmbeddedValkey) -> None:
    keys = await fill(valkey.url, 50)
    reads = PipelinedReads(valkey.url, FIELDS)
    tasks = [asyncio.ensure_future(reads.hmget(k)) for k in keys]
    await asyncio.sleep(0)  # one turn of the loop: sent, not yet answered
    for task in tasks[::3]:
        task.cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    for i, (key, result) in enumerate(zip(keys, done, strict=True)):
        if i % 3:
            assert isinstance(result, list) and result[1] == f"audio/{keys.index(key)}".encode()
    assert (await reads.hmget(keys[4]))[1] == b"audio/4"
    await reads.aclose()


async def test_password_and_database_are_honoured(private_valkey: EmbeddedValkey) -> None:
    admin = redis.Redis(port=private_valkey.port)
    admin.config_set("requirepass", "s3cret")
    try:
        url = f"redis://:s3cret@127.0.0.1:{private_valkey.port}/3"
        keys = await fill(url, 3)
        reads = PipelinedReads(url, FIELDS)
        assert (await reads.hmget(keys[2]))[1] == b"audio/2"
        await reads.aclose()
        wrong = PipelinedReads(f"redis://:nope@127.0.0.1:{private_valkey.port}/3", FIELDS)
        with pytest.raises(ResponseError):
            await wrong.hmget(keys[0])
        await wrong.aclose()
    finally:
        redis.Redis(port=private_valkey.port, password="s3cret").config_set("requirepass", "")


async def test_a_stuck_store_times_out_and_the_link_comes_back(
    private_valkey: EmbeddedValkey,
) -> None:
    keys = await fill(private_valkey.url, 3)
    reads = PipelinedReads(private_valkey.url, FIELDS, socket_timeout=0.3)
    assert (await reads.hmget(keys[0]))[1] == b"audio/0"
    assert private_valkey.process is not None
    os.kill(private_valkey.process.pid, signal.SIGSTOP)
    started = asyncio.get_running_loop().time()
    with pytest.raises(StoreTimeoutError):
        await asyncio.gather(reads.hmget(keys[1]), reads.hmget(keys[2]))
    assert 0.25 < asyncio.get_running_loop().time() - started < 1.5
    os.kill(private_valkey.process.pid, signal.SIGCONT)
    assert (await reads.hmget(keys[1]))[1] == b"audio/1"
    await reads.aclose()


async def test_a_dead_store_fails_fast_and_a_restarted_one_is_read_again(
    private_valkey: EmbeddedValkey,
) -> None:
    reads = PipelinedReads(private_valkey.url, FIELDS, socket_timeout=1.0, connect_timeout=0.5)
    keys = await fill(private_valkey.url, 2)
    assert (await reads.hmget(keys[1]))[1] == b"audio/1"
    private_valkey.stop()
    with pytest.raises(StoreConnectionError):
        await reads.hmget(keys[1])
    with pytest.raises(StoreConnectionError):
        await reads.hmget(keys[1])  # reconnecting fails too, promptly
    private_valkey.start()
    keys = await fill(private_valkey.url, 2)
    assert (await reads.hmget(keys[0]))[1] == b"audio/0"
    await reads.aclose()


async def _large_entries(url: str, n: int, size: int) -> tuple[list[str], list[bytes]]:
    bodies = [os.urandom(size) for _ in range(n)]
    keys = [f"pr:{uuid.uuid4().hex}:{i}" for i in range(n)]
    client = aioredis.Redis.from_url(url)
    async with client.pipeline(transaction=False) as pipe:
        for key, body in zip(keys, bodies, strict=True):
            pipe.hset(key, mapping={"body": body, "type": b"big"})
        await pipe.execute()
    await client.aclose()
    return keys, bodies


async def test_large_replies_are_asked_for_a_few_at_a_time_and_all_come_back_in_order(
    valkey: EmbeddedValkey,
) -> None:
    size = 300_000  # over IN_FLIGHT_BYTES / MIN_IN_FLIGHT: the link keeps MIN_IN_FLIGHT out
    keys, bodies = await _large_entries(valkey.url, 24, size)
    reads = PipelinedReads(valkey.url, FIELDS)
    assert (await reads.hmget(keys[0]))[0] == bodies[0]  # the replies' size, learned
    tasks = [asyncio.ensure_future(reads.hmget(k)) for k in keys]
    most = 0
    for _ in range(10_000):
        link = reads._link
        assert link is not None
        most = max(most, len(link.waiting))
        if all(task.done() for task in tasks):
            break
        await asyncio.sleep(0)
    got = await asyncio.gather(*tasks)
    assert [values[0] for values in got] == bodies
    assert 1 <= most <= MIN_IN_FLIGHT
    assert IN_FLIGHT_BYTES // size < MIN_IN_FLIGHT
    await reads.aclose()


async def test_small_replies_stay_pipelined_together(valkey: EmbeddedValkey) -> None:
    keys = await fill(valkey.url, 64)
    reads = PipelinedReads(valkey.url, FIELDS)
    await reads.hmget(keys[0])
    tasks = [asyncio.ensure_future(reads.hmget(k)) for k in keys]
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the turn after: every one of them sent in one write
    link = reads._link
    assert link is not None and len(link.waiting) + sum(t.done() for t in tasks) == len(keys)
    got = await asyncio.gather(*tasks)
    assert [values[1] for values in got] == [f"audio/{i}".encode() for i in range(64)]
    await reads.aclose()


async def test_commands_waiting_their_turn_fail_with_a_stuck_store_and_the_link_comes_back(
    private_valkey: EmbeddedValkey,
) -> None:
    keys, bodies = await _large_entries(private_valkey.url, 12, 300_000)
    reads = PipelinedReads(private_valkey.url, FIELDS, socket_timeout=0.3)
    assert (await reads.hmget(keys[0]))[0] == bodies[0]
    assert private_valkey.process is not None
    os.kill(private_valkey.process.pid, signal.SIGSTOP)
    try:
        done = await asyncio.wait_for(
            asyncio.gather(*(reads.hmget(k) for k in keys), return_exceptions=True), 5
        )
    finally:
        os.kill(private_valkey.process.pid, signal.SIGCONT)
    assert all(isinstance(result, StoreTimeoutError) for result in done)
    assert (await reads.hmget(keys[3]))[0] == bodies[3]
    await reads.aclose()


async def test_commands_waiting_their_turn_fail_when_the_link_is_closed(
    valkey: EmbeddedValkey,
) -> None:
    keys, _ = await _large_entries(valkey.url, 12, 300_000)
    reads = PipelinedReads(valkey.url, FIELDS)
    await reads.hmget(keys[0])
    tasks = [asyncio.ensure_future(reads.hmget(k)) for k in keys]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    await reads.aclose()
    done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert all(isinstance(r, (StoreConnectionError, list)) for r in done)
    assert any(isinstance(r, StoreConnectionError) for r in done)
