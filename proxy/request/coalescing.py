"""Single flight across replicas: one upstream call per key among every proxy sharing Redis.

The in-process half is ``FillRegistry``; this is the other half. The replica whose fill
takes the key's lock is the leader: it calls the upstream and publishes the answer, as it
arrives, to a Redis Stream. Fills on other replicas follow that stream from its first record,
so their clients (and their own in-process followers) hear the audio as it is produced.

Redis keys (named by :mod:`proxy.store.keyspace`), all in the key's shard hash tag so they
share one Redis Cluster slot::

    P:{P.NN}:fl:<key>  STRING  the leader's token (a proxy.store.lock lock); expires unless
                               the leader renews it
    P:{P.NN}:fs:<key>  STREAM  the leader's answer, record by record; expires too
    P:{P.NN}:ff:<key>  STRING  how many replicas follow (an abandoned fill is kept for them)

Stream records carry the leader's token ``t`` and a kind ``k``: ``h`` head (``s`` status,
``h`` headers as JSON), ``c`` chunk (``d`` bytes), ``e`` end of body (``ok`` 1 when whole;
on a failure before any header ``es``/``ek``/``em`` the error), ``d`` done (``st`` 1 when
stored, ``r`` why not). Records are written only while the writer holds the lock (fencing),
so a leader that lost its lock cannot mix its bytes into a successor's answer.

A follower that hears nothing for ``wait_seconds`` gives up with a 504. A follower that
finds the lock gone with no end record (the leader died) takes over if it has not yet
passed any byte to its clients; otherwise its answer ends cut short. Whenever Redis fails,
coordination fails open: the fill calls the upstream itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from redis.exceptions import RedisError, ResponseError

from ..core.breaker import CircuitBreaker
from ..core.keys import CacheKey
from ..observability.metrics import METRICS
from ..store.keyspace import Keyspace, shard_of
from ..store.lock import TokenLock
from ..store.lua import Lua
from ..store.pipelined import PipelinedReads
from ..store.schema import CachedAudio
from .fill import Fill, Runner
from .upstream import UpstreamError

log = logging.getLogger(__name__)

Recheck = Callable[[CacheKey], Awaitable[CachedAudio | None]]

_MAX_RECORD_BYTES = 1 << 20
_MAX_TAKEOVERS = 3


class _Outcome(Enum):
    DONE = "done"  # the fill has its answer (or its error)
    TAKE_OVER = "take over"  # the leader vanished before any byte: try to lead
    FAIL_OPEN = "fail open"  # Redis failed before any byte: call the upstream ourselves


@dataclass(frozen=True)
class FlightSettings:
    """Timing of the cross-replica single flight."""

    lock_seconds: float = 10.0  # a dead leader is noticed within this
    wait_seconds: float = 30.0  # the longest a follower waits for the leader's next record
    poll_seconds: float = 0.25  # one XREAD BLOCK; below the Redis socket timeout
    linger_seconds: float = 10.0  # a finished answer stays readable for late followers
    # While no one follows, the leader keeps the audio out of the stream and looks this
    # often for a follower (one EXISTS): a follower's first byte waits at most this long.
    follower_check_seconds: float = 0.05
    # An answer larger than this (the entry size limit: it will not be stored) is not
    # copied into Redis; followers call the upstream themselves. None: no bound.
    max_stream_bytes: int | None = None

    @property
    def stream_seconds(self) -> float:
        return self.lock_seconds + self.wait_seconds


@dataclass(frozen=True)
class Claim:
    """A flight's lead being taken ahead of its fill (see :meth:`ClusterFlights.claim`)."""

    key: CacheKey
    lock: TokenLock
    taken: asyncio.Future[int]  # what the flight_lead script said: 0, 1 or 2


@dataclass(frozen=True)
class FlightKeys:
    """The Redis keys of one key's flight."""

    lock: str
    stream: str
    followers: str
    stats: str  # the shard's counters: bytes written to streams are counted there
    held: str  # the shard's streams holding audio, and their bytes (for stream_bytes_held)

    @classmethod
    def of(cls, keyspace: Keyspace, key: CacheKey) -> FlightKeys:
        return cls(
            keyspace.flight_lock(key),
            keyspace.flight_stream(key),
            keyspace.flight_followers(key),
            keyspace.stats(shard_of(key)),
            keyspace.flight_bytes(shard_of(key)),
        )


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class ClusterFlights:
    """Runs each fill as the cluster's leader for its key, or as a follower of the leader."""

    def __init__(
        self,
        redis: Any,
        *,
        prefix: str,
        settings: FlightSettings | None = None,
        breaker: CircuitBreaker | None = None,
        fetch: Recheck | None = None,
        commands: PipelinedReads | None = None,
    ) -> None:
        self.redis = redis
        # The lookups' own connection: a lead taken there leaves in the same write as the
        # lookup it goes beside, and its reply is read with the lookup's. None: redis-py.
        self.commands = commands
        # Reads a stored entry without counting it: followers read there what the leader
        # did not put in the stream. None: the leader always streams the whole answer.
        self.fetch = fetch
        self.keyspace = Keyspace(prefix)
        self.settings = settings or FlightSettings()
        self.breaker = breaker
        self._publish = Lua(redis, "flight_publish")
        self._renew = Lua(redis, "flight_renew")
        self._take = Lua(redis, "flight_lead")
        self._release = Lua(redis, "lock_release")  # TokenLock.release's script
        # Leads taken beside a lookup, by key, until a fill adopts them or they are let go.
        self._claims: dict[str, Claim] = {}
        self._letting_go: set[asyncio.Future[None]] = set()
        # Keys this process leads, set when the lock is let go. A fill that failed here is
        # retried by the next request; it must not follow the failed answer's stream.
        self._leading: dict[str, asyncio.Event] = {}

    def keys(self, key: CacheKey) -> FlightKeys:
        return FlightKeys.of(self.keyspace, key)

    async def _script(self, lua: Lua, keys: list[str], args: list[Any]) -> Any:
        """Run one of the flight's scripts: on the lookups' connection when there is one
        (a few bytes in its next write, the reply read by hiredis: a fraction of a redis-py
        round trip's CPU, on the loop that also serves the miss), else through redis-py.
        A server that has not loaded it (NOSCRIPT) gets it through redis-py, which loads it."""
        commands = self.commands
        if commands is not None:
            try:
                return await commands.call(*_evalsha(lua.sha, keys, args))
            except ResponseError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise lua.source.located(exc) from exc
        return await lua(keys=keys, args=args)

    async def _exists(self, key: str) -> bool:
        if self.commands is not None:
            return bool(await self.commands.call(b"EXISTS", key.encode()))
        return bool(await self.redis.exists(key))

    async def run(
        self,
        fill: Fill,
        key: CacheKey,
        lead: Runner,
        *,
        recheck: Recheck | None = None,
        entry: CacheKey | None = None,
    ) -> None:
        """Fill ``fill``: from the upstream via ``lead`` if this replica wins the key's lock,
        else from the leader's stream. ``recheck`` reads the store once the lock is won (the
        answer may have been stored since this request missed). ``entry``: the key ``lead``
        stores the answer under (``key`` unless the flight is private)."""
        claim = self._claims.pop(key.hex, None)  # taken beside this key's lookup
        if self.breaker is not None and self.breaker.is_open:
            if claim is not None:
                self._let_go(claim)
            await lead(fill)
            return
        keys = self.keys(key)
        previous = self._leading.get(key.hex)
        if previous is not None:
            if claim is not None:  # it may have lost to the lock being let go
                self._let_go(claim)
                claim = None
            waiting = asyncio.ensure_future(previous.wait())
            await asyncio.wait([waiting], timeout=self.settings.lock_seconds)
            waiting.cancel()
        for _ in range(_MAX_TAKEOVERS + 1):
            if claim is not None:
                lock, taking, claim = claim.lock, claim.taken, None
            else:
                # One round trip: the lock, the earlier leader's records cleared, and
                # whether the answer was stored since this request missed.
                lock, taking = self._take_lead(key, keys, entry_checked=recheck is not None)
            try:
                won = await taking
                if won == 3:  # a claim that found the entry (stale, as the lookup missed)
                    lock, taking = self._take_lead(key, keys, entry_checked=recheck is not None)
                    won = await taking
            except (RedisError, OSError) as exc:
                _redis_failed("lock", exc)
                await lead(fill)
                return
            if won in (1, 2):
                fill.origin = "upstream"  # perhaps after following a leader that vanished
                released = self._leading[key.hex] = asyncio.Event()
                try:
                    # 2: the entry was there, and the records were left alone.
                    stored_since = won == 2
                    await self._lead(
                        fill, key, keys, lock, lead, recheck if stored_since else None,
                        entry, cleared=not stored_since,
                    )  # fmt: skip
                finally:
                    released.set()
                    if self._leading.get(key.hex) is released:
                        del self._leading[key.hex]
                return
            outcome = await self._follow(fill, keys)
            if outcome is _Outcome.FAIL_OPEN:
                fill.origin = "upstream"
                await lead(fill)
                return
            if outcome is _Outcome.DONE:
                return
            log.info("leader of %s vanished: taking over", key.hex[:12])
        await _give_up(fill, "coalescing_timeout", "no replica could complete this synthesis")

    def _take_lead(
        self, key: CacheKey, keys: FlightKeys, *, entry_checked: bool, ahead: bool = False
    ) -> tuple[TokenLock, asyncio.Future[int]]:
        lock = TokenLock(self.redis, keys.lock, _ms(self.settings.lock_seconds))
        stored = [self.keyspace.entry(key)] if entry_checked else []
        names = [keys.lock, keys.stream, keys.followers, *stored]
        args: list[Any] = [lock.token, lock.ttl_ms, int(ahead)]
        commands = self.commands

        async def take() -> int:
            # On the lookups' connection it is queued behind the lookup the caller asked
            # for in this same turn: one write, the lookup's reply first, so a hit does not
            # wait for this. Through redis-py, the lookup is let go first.
            if commands is None and ahead:
                await asyncio.sleep(0)
            return int(await self._script(self._take, names, args))

        return lock, asyncio.ensure_future(take())

    def claim(self, key: CacheKey) -> Claim | None:
        """Start taking the lead of ``key``'s flight while its lookup is still in flight
        (a request this replica has not seen before is most likely a miss), so that a miss
        does not wait for a second round trip before the upstream call. The fill that runs
        for ``key`` next adopts it; :meth:`let_go` it when there is none (a hit, a refusal,
        a request that joined a fill already running here)."""
        if self.breaker is not None and self.breaker.is_open:
            return None
        if key.hex in self._claims or key.hex in self._leading:
            return None
        lock, taking = self._take_lead(key, self.keys(key), entry_checked=True, ahead=True)
        claim = self._claims[key.hex] = Claim(key, lock, taking)
        return claim

    def let_go(self, claim: Claim) -> None:
        """Give up ``claim`` unless a fill adopts it first: fills started before now take
        their first step, and the one after it, before this looks. Callbacks, not a task:
        every miss lets its claim go, and a task's start is a cost its first byte paid."""
        loop = asyncio.get_running_loop()
        loop.call_soon(loop.call_soon, self._let_go_unless_adopted, claim)

    def _let_go_unless_adopted(self, claim: Claim) -> None:
        if self._claims.get(claim.key.hex) is claim:
            del self._claims[claim.key.hex]
            self._let_go(claim)

    def _let_go(self, claim: Claim) -> None:
        task = asyncio.ensure_future(self._release_claim(claim))
        self._letting_go.add(task)
        task.add_done_callback(self._letting_go.discard)

    async def _release_claim(self, claim: Claim) -> None:
        try:
            won = await claim.taken
        except (RedisError, OSError):
            return  # nothing taken, or it expires on its own
        if won in (1, 2):
            await self._release_quietly(claim.lock)

    # -- the leader -------------------------------------------------------------------

    async def _lead(
        self,
        fill: Fill,
        key: CacheKey,
        keys: FlightKeys,
        lock: TokenLock,
        lead: Runner,
        recheck: Recheck | None,
        entry: CacheKey | None,
        *,
        cleared: bool,
    ) -> None:
        try:
            if recheck is not None and await self._replay_stored(fill, key, recheck):
                await self._release_quietly(lock)
                return
            if not cleared:  # the entry was there when the lock was taken
                await self.redis.delete(keys.stream, keys.followers)  # an earlier leader's
        except (RedisError, OSError) as exc:
            _redis_failed("lock", exc)
            await self._release_quietly(lock)
            await lead(fill)
            return
        fill.still_needed = lambda: self._has_followers(keys)
        publisher = asyncio.create_task(self._publish_fill(fill, keys, lock.token, entry))
        renewer = asyncio.create_task(self._keep_lock(fill, keys, lock.token))
        try:
            await lead(fill)
        except asyncio.CancelledError:
            await fill.abort("abandoned")
            raise
        except Exception:
            await fill.abort("error")
            raise
        finally:
            renewer.cancel()
            # The publisher ends with the done record; bounded so a hung Redis cannot hold us.
            await asyncio.wait([publisher], timeout=self.settings.lock_seconds)
            if not publisher.done():
                publisher.cancel()
            await self._release_quietly(lock)

    async def _replay_stored(self, fill: Fill, key: CacheKey, recheck: Recheck) -> bool:
        cached = await recheck(key)
        if cached is None:
            return False
        fill.origin = "cache"
        METRICS.coalesced.labels("cluster").inc()
        headers = [("Content-Type", cached.media_type), *cached.headers]
        await fill.set_head(200, headers)
        await fill.add(cached.audio)
        await fill.finish(complete=True)
        fill.settle(stored=True, refusal=None)
        return True

    async def _publish_fill(
        self, fill: Fill, keys: FlightKeys, token: str, entry: CacheKey | None
    ) -> None:
        """Mirror the local fill into the stream, record by record, as it progresses. The
        audio goes in only while some replica follows: with ``entry`` (where the answer is
        stored) followers that come later read what they missed from the stored entry, so
        a miss nobody follows writes its audio to Redis once. An answer that is not stored
        is put in the stream whole before its done record, for followers that came late."""
        live_ms = _ms(self.settings.stream_seconds)
        skippable = entry is not None and self.fetch is not None

        async def publish(ttl_ms: int, *, unless_alone: bool = False, **fields: Any) -> int:
            data = fields.get("d")
            args: list[Any] = [token, ttl_ms, len(data) if isinstance(data, bytes) else 0]
            args += [int(unless_alone), "t", token]
            for name, value in fields.items():
                args += [name, value]
            names = [keys.lock, keys.stream, keys.stats, keys.followers, keys.held]
            if isinstance(data, bytes):  # audio stays off the lookups' connection
                return int(await self._publish(keys=names, args=args))
            return int(await self._script(self._publish, names, args))

        unsent: list[bytes] = []  # audio not in the stream yet: no one followed

        async def share(*, always: bool = False) -> bool:
            """Put the unsent audio in the stream if someone follows; False: lock lost."""
            nonlocal unsent
            if not unsent:
                return True
            # Ask first: audio sent to a script that skips it is still written to Redis.
            if skippable and not always and not await self._exists(keys.followers):
                return True
            data = b"".join(unsent)
            for i in range(0, len(data), _MAX_RECORD_BYTES):
                written = await publish(
                    live_ms,
                    unless_alone=skippable and not always,
                    k="c",
                    d=data[i : i + _MAX_RECORD_BYTES],
                )
                if written == 0:
                    return False
                if written == 2:
                    unsent = [data[i:]]
                    return True
            unsent = []
            return True

        bound = self.settings.max_stream_bytes
        total = 0
        try:
            await fill.wait_head()
            await fill.past_first_bytes()  # this replica's clients have theirs first
            if fill.status is not None and bound is not None and _declared_size(fill) > bound:
                # Too large to store: sharing it would copy it into Redis for nothing.
                await publish(live_ms, k="x")
                return
            if fill.status is None:
                error = fill.error or UpstreamError(502, "protocol", "the upstream gave no answer")
                ok = (
                    await publish(
                        live_ms, k="e", ok=0, es=error.status, ek=error.kind, em=error.message
                    )
                    == 1
                )
            else:
                ok = await publish(live_ms, k="h", s=fill.status, h=json.dumps(fill.headers)) == 1
                async for batch in self._batches_or_followers(fill, keys, lambda: bool(unsent)):
                    if not batch:  # a follower came: hand it what it missed
                        ok = ok and await share()
                        if not ok:
                            break
                        continue
                    data = b"".join(batch)
                    total += len(data)
                    if bound is not None and total > bound:
                        # Followers that already passed bytes on end cut short, as when a
                        # leader dies; the rest call the upstream themselves.
                        await publish(live_ms, k="x")
                        return
                    unsent.append(data)
                    ok = ok and await share()
                    if not ok:
                        break
                ok = ok and await share()
                end: dict[str, Any] = {"ok": int(fill.complete)}
                if unsent and entry is not None:
                    end |= {"sk": 1, "ek": entry.hex}
                ok = ok and await publish(live_ms, k="e", **end) == 1
            await fill.wait_done()
            if ok and unsent and not fill.stored:
                ok = await share(always=True)  # followers cannot read it from an entry
            linger = _ms(self.settings.linger_seconds)
            ok = (
                ok
                and await publish(
                    linger, k="d", st=int(bool(fill.stored)), r=fill.refusal or "", n=total
                )
                == 1
            )
            if not ok:
                log.warning("lost the coalescing lock of %s while publishing", fill.key[:12])
        except (RedisError, OSError) as exc:
            _redis_failed("publish", exc)

    async def _batches_or_followers(
        self, fill: Fill, keys: FlightKeys, holding: Callable[[], bool]
    ) -> AsyncIterator[list[bytes]]:
        """``fill.batches()``; while ``holding()`` (audio kept out of the stream), an empty
        batch as soon as a replica follows, not only when the next batch arrives."""
        batches = fill.batches().__aiter__()
        while True:
            following = False
            upcoming = asyncio.ensure_future(batches.__anext__())
            try:
                while True:
                    wait = self.settings.follower_check_seconds if holding() else None
                    done, _ = await asyncio.wait([upcoming], timeout=wait)
                    if done:
                        break
                    if not following and await self._exists(keys.followers):
                        following = True
                        yield []
            except BaseException:
                upcoming.cancel()
                raise
            try:
                yield upcoming.result()
            except StopAsyncIteration:
                return

    async def _keep_lock(self, fill: Fill, keys: FlightKeys, token: str) -> None:
        lock_ms, stream_ms = _ms(self.settings.lock_seconds), _ms(self.settings.stream_seconds)
        while True:
            await asyncio.sleep(self.settings.lock_seconds / 3)
            try:
                followers = await self._renew(
                    keys=[keys.lock, keys.stream, keys.followers], args=[token, lock_ms, stream_ms]
                )
            except (RedisError, OSError) as exc:
                _redis_failed("lock", exc)
                continue
            if followers == -1:
                log.warning("the coalescing lock of %s expired under its leader", fill.key[:12])
                return
            if followers > 0:
                fill.continue_when_abandoned = True

    async def _has_followers(self, keys: FlightKeys) -> bool:
        try:
            return int(await self.redis.get(keys.followers) or 0) > 0
        except (RedisError, OSError):
            return True  # when in doubt, finish the synthesis

    async def _release_quietly(self, lock: TokenLock) -> None:
        try:
            await self._script(self._release, [lock.name], [lock.token])
        except (RedisError, OSError) as exc:
            _redis_failed("lock", exc)  # the lock expires on its own

    # -- a follower -------------------------------------------------------------------

    async def _follow(self, fill: Fill, keys: FlightKeys) -> _Outcome:
        loop = asyncio.get_running_loop()
        poll_ms = _ms(self.settings.poll_seconds)
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.incr(keys.followers)
            pipe.pexpire(keys.followers, _ms(self.settings.stream_seconds))
            await pipe.execute()
        except (RedisError, OSError) as exc:
            _redis_failed("follow", exc)
            return _Outcome.FAIL_OPEN
        reader = _StreamReader(fill, self.fetch)
        quiet_since = loop.time()
        while True:
            try:
                reply = await self.redis.xread({keys.stream: reader.last}, count=256, block=poll_ms)
                if not reply:
                    if loop.time() - quiet_since >= self.settings.wait_seconds:
                        await _give_up(
                            fill,
                            "coalescing_timeout",
                            "timed out waiting for another replica's synthesis of this audio",
                        )
                        return _Outcome.DONE
                    if await self.redis.exists(keys.lock):
                        continue
                    # No leader: it finished just now (read once more) or it died.
                    reply = await self.redis.xread({keys.stream: reader.last}, count=256)
                    if not reply:
                        if fill.status is None and not fill.finished:
                            return _Outcome.TAKE_OVER
                        await _give_up(fill, "leader_lost", "the leading replica went away")
                        return _Outcome.DONE
            except (RedisError, OSError) as exc:
                _redis_failed("follow", exc)
                if fill.status is None and not fill.finished:
                    return _Outcome.FAIL_OPEN
                await _give_up(fill, "leader_lost", "lost the connection to the cache store")
                return _Outcome.DONE
            quiet_since = loop.time()
            settled = await reader.apply(_records(reply))
            if reader.unshared:
                if fill.status is None and not fill.finished:
                    return _Outcome.FAIL_OPEN
                await _give_up(fill, "too_large", "the answer is too large to share")
                return _Outcome.DONE
            if fill.origin != "cluster":  # counted once a leader's record arrives
                fill.origin = "cluster"
                METRICS.coalesced.labels("cluster").inc()
            if settled:
                return _Outcome.DONE


class _StreamReader:
    """Applies a leader's stream records to a local fill.

    A leader keeps the audio out of the stream while no one follows; its end record then
    says so (``sk``) and the done record gives the answer's size (``n``): a follower reads
    what it missed from the stored entry. A follower that finds the head and such an end
    in its first read came late: it holds the head back until the done record, so that
    when the rest cannot be read it has passed nothing on and can call the upstream."""

    def __init__(self, fill: Fill, fetch: Recheck | None = None) -> None:
        self.fill = fill
        self.fetch = fetch
        self.last: bytes | str = "0-0"
        self.token: bytes | None = None
        self.unshared = False  # the leader will not share this answer: call the upstream
        # The end record of an answer partly kept out of the stream: (whole?, entry key).
        self.pending_end: tuple[bool, bytes] | None = None
        self.held: tuple[int, list[tuple[str, str]]] | None = None  # a late follower's head
        self.held_chunks: list[bytes] = []
        self.late = False

    async def apply(self, records: list[tuple[bytes, dict[bytes, bytes]]]) -> bool:
        """True once the fill is settled (or ``unshared``)."""
        fill = self.fill
        if fill.status is None and not self.late:
            self.late = any(f.get(b"k") == b"e" and f.get(b"sk") == b"1" for _, f in records)
        for record_id, fields in records:
            self.last = record_id
            token = fields.get(b"t")
            if self.token is not None and token != self.token and fill.status is not None:
                # A new leader restarted the answer after this one passed bytes on.
                await _give_up(fill, "leader_lost", "the leading replica went away")
                return True
            self.token = token
            kind = fields.get(b"k")
            if kind == b"x":
                self.unshared = True
                return True
            if kind == b"h":
                headers = [(str(k), str(v)) for k, v in json.loads(fields[b"h"])]
                if self.late:
                    self.held = (int(fields[b"s"]), headers)
                else:
                    await fill.set_head(int(fields[b"s"]), headers)
            elif kind == b"c":
                if self.held is not None:
                    self.held_chunks.append(fields[b"d"])
                else:
                    await fill.add(fields[b"d"])
            elif kind == b"e" and fields.get(b"sk") == b"1" and (fill.status or self.held):
                self.pending_end = (fields.get(b"ok") == b"1", fields.get(b"ek", b""))
            elif kind == b"e":
                error = None
                if fields.get(b"ok") != b"1" and fill.status is None:
                    error = UpstreamError(
                        int(fields.get(b"es", b"502")),
                        fields.get(b"ek", b"protocol").decode(),
                        fields.get(b"em", b"the upstream failed").decode(),
                    )
                await fill.finish(complete=fields.get(b"ok") == b"1", error=error)
            elif kind == b"d":
                ended = self.pending_end is None or fill.finished
                if not ended and not await self._finish_from_entry(fields):
                    self.unshared = True
                    return True
                if not fill.finished:
                    await fill.finish(complete=False)
                refusal = fields.get(b"r", b"").decode() or None
                fill.settle(stored=fields.get(b"st") == b"1", refusal=refusal)
                return True
        return False

    async def _finish_from_entry(self, fields: dict[bytes, bytes]) -> bool:
        """End an answer the leader did not stream whole, the rest from the stored entry;
        False (nothing passed on) when a late follower cannot have it all."""
        fill = self.fill
        assert self.pending_end is not None
        whole, entry_hex = self.pending_end
        total = int(fields.get(b"n", b"0"))
        have = b"".join(self.held_chunks)
        size = fill.size + len(have)
        rest = b""
        if size < total and fields.get(b"st") == b"1" and self.fetch is not None:
            try:
                cached = await self.fetch(CacheKey(entry_hex.decode()))
            except (RedisError, OSError, ValueError) as exc:
                _redis_failed("follow", exc)
                cached = None
            if cached is not None and len(cached.audio) == total:
                rest = cached.audio[size:]
        if self.held is not None:
            if size + len(rest) != total:
                return False
            await fill.set_head(*self.held)
            self.held = None
            if have:
                await fill.add(have)
        if rest:
            await fill.add(rest)
        await fill.finish(complete=whole and fill.size == total)
        return True


def _declared_size(fill: Fill) -> int:
    """The answer's Content-Length, or -1 when it has none (or an unreadable one)."""
    for name, value in fill.headers or ():
        if name.lower() == "content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return -1


def _evalsha(sha: str, keys: list[str], args: list[Any]) -> list[bytes]:
    """The words of ``EVALSHA sha len(keys) *keys *args``."""
    words = [b"EVALSHA", sha.encode(), b"%d" % len(keys)]
    words += [k.encode() for k in keys]
    words += [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return words


def _records(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """XREAD's answer for one stream, in either protocol's shape."""
    entries = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
    return [(record_id, fields) for record_id, fields in entries]


async def _give_up(fill: Fill, refusal: str, message: str) -> None:
    if not fill.finished:
        error = UpstreamError(504, refusal, message) if fill.status is None else None
        await fill.finish(complete=False, error=error)
    if not fill.settled:
        fill.settle(stored=False, refusal=refusal)


def _redis_failed(op: str, exc: BaseException) -> None:
    log.warning("coalescing %s failed, going on alone: %s", op, exc)
    METRICS.redis_errors.labels(f"coalesce_{op}").inc()
