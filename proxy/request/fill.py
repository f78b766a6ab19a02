"""A fill: one upstream answer for one cache key, streamed to any number of readers.

The fill runs as its own task, so a reader that disconnects does not abort a synthesis
that others wait for (or that is about to be stored). Readers see bytes as they arrive.
Identical concurrent misses in this process join the same fill (single flight); where the
bytes come from (this process's upstream call, another replica's, or the store) is the
runner's business, recorded in ``origin``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager

from .upstream import UpstreamError

log = logging.getLogger(__name__)

# What only followers and the store need (Redis writes, packing, compression) starts this
# long after a fill's first bytes reach its readers. Started at once, it took the CPU the
# client needed to read them when the two share cores: ~0.5 ms later first bytes (see
# docs/performance.md, misses).
AFTER_FIRST_BYTES_SECONDS = 0.001


class Fill:
    """The shared state of one in-flight answer."""

    def __init__(self, key: str, *, continue_when_abandoned: bool = True) -> None:
        self.key = key
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.finished = False
        self.complete = False  # the whole body arrived
        self.error: UpstreamError | None = None  # failed before any header arrived
        self.stored: bool | None = None  # None until the store decision is made
        self.refusal: str | None = None
        # "upstream" (this process called it), "cluster" (another replica did), "cache".
        self.origin = "upstream"
        # False: when the last reader leaves before the end, the fill is cancelled.
        self.continue_when_abandoned = continue_when_abandoned
        # Asked before cancelling an abandoned fill: do others (elsewhere) still want it?
        self.still_needed: Callable[[], Awaitable[bool]] | None = None
        self.readers = 0
        self._first_bytes_at: float | None = None  # the loop's clock when the first chunk came
        self.task: asyncio.Task[None] | None = None
        self._abandoning: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        self._done = asyncio.Event()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def set_head(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.status, self.headers = status, headers
        await self._notify()

    async def add(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self._first_bytes_at is None:
            self._first_bytes_at = asyncio.get_running_loop().time()
        self.chunks.append(chunk)
        self.size += len(chunk)
        await self._notify()

    async def finish(self, *, complete: bool, error: UpstreamError | None = None) -> None:
        self.finished, self.complete, self.error = True, complete, error
        await self._notify()

    def settle(self, *, stored: bool, refusal: str | None) -> None:
        """Record the store decision; ends the fill."""
        self.stored, self.refusal = stored, refusal
        self._done.set()

    async def abort(self, refusal: str) -> None:
        """End a fill that will not complete: readers see it cut short, nothing is stored."""
        if not self.finished:
            error = None
            if self.status is None:
                error = UpstreamError(502, refusal, f"the synthesis ended early ({refusal})")
            await self.finish(complete=False, error=error)
        if not self.settled:
            self.settle(stored=False, refusal=refusal)

    @property
    def settled(self) -> bool:
        return self._done.is_set()

    async def wait_head(self) -> None:
        """Until the status and headers are known, or the fill failed."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.status is not None or self.finished)

    async def wait_done(self) -> None:
        await self._done.wait()

    async def past_first_bytes(self) -> None:
        """Until the first chunk came ``AFTER_FIRST_BYTES_SECONDS`` ago (its readers have
        written it and their clients had the moment to read it), or the fill finished
        without one."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._first_bytes_at is not None or self.finished)
        if self._first_bytes_at is not None:
            left = self._first_bytes_at + AFTER_FIRST_BYTES_SECONDS
            left -= asyncio.get_running_loop().time()
            if left > 0:
                await asyncio.sleep(left)

    def body(self) -> bytes:
        return b"".join(self.chunks)

    @contextmanager
    def reader(self) -> Iterator[Fill]:
        """Count a client of this fill; the last one leaving early may cancel it."""
        self.readers += 1
        try:
            yield self
        finally:
            self.readers -= 1
            if self._abandoned() and self._abandoning is None:
                self._abandoning = asyncio.create_task(self._cancel_unless_needed())

    def _abandoned(self) -> bool:
        return (
            self.readers == 0
            and not self.finished
            and not self.continue_when_abandoned
            and self.task is not None
        )

    async def _cancel_unless_needed(self) -> None:
        try:
            if self.still_needed is not None and await self.still_needed():
                self.continue_when_abandoned = True
            elif self._abandoned() and self.task is not None:
                log.info("fill %s abandoned by every client: cancelled", self.key[:12])
                self.task.cancel()
        finally:
            self._abandoning = None

    async def batches(self) -> AsyncIterator[list[bytes]]:
        """Every chunk from the first, in lists of what arrived since the last one."""
        sent = 0
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda n=sent: len(self.chunks) > n or self.finished)  # type: ignore[misc]
                ready = self.chunks[sent:]
                finished = self.finished and len(self.chunks) == sent + len(ready)
            if ready:
                yield ready
            sent += len(ready)
            if finished:
                return

    async def stream(self) -> AsyncIterator[bytes]:
        """Every chunk from the first, as it arrives; stops at the end of the fill."""
        async for batch in self.batches():
            for chunk in batch:
                yield chunk


Runner = Callable[[Fill], Awaitable[None]]


class FillRegistry:
    """In-process single flight: at most one running fill per key."""

    def __init__(self, *, continue_when_abandoned: bool = True) -> None:
        self._fills: dict[str, Fill] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.continue_when_abandoned = continue_when_abandoned

    def join_or_start(self, key: str, runner: Runner) -> tuple[Fill, bool]:
        """The running fill for ``key`` (False) or a new one started with ``runner`` (True)."""
        fill = self._fills.get(key)
        if fill is not None and _joinable(fill):
            return fill, False
        fill = Fill(key, continue_when_abandoned=self.continue_when_abandoned)
        self._fills[key] = fill
        task = asyncio.create_task(self._run(fill, runner), name=f"fill:{key[:12]}")
        fill.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fill, True

    async def _run(self, fill: Fill, runner: Runner) -> None:
        try:
            await runner(fill)
        except asyncio.CancelledError:
            await fill.abort("abandoned")
            raise
        except Exception:  # a bug must not leave readers waiting forever
            log.exception("fill %s failed", fill.key)
            await fill.abort("error")
        finally:
            if self._fills.get(fill.key) is fill:
                del self._fills[fill.key]

    def running(self, key: str) -> Fill | None:
        """The fill in flight for ``key`` in this process, if any."""
        return self._fills.get(key)

    def active(self) -> list[Fill]:
        """Every fill in flight in this process."""
        return list(self._fills.values())

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def drain(self, seconds: float) -> None:
        """Let running fills finish (graceful shutdown), at most ``seconds``."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=seconds)


def _joinable(fill: Fill) -> bool:
    """A fill still in flight, or one that ended with the whole of a successful answer. One
    that failed, or ended with an error answer, is not joined even while its leader is
    still tidying up (releasing its lock): a new request tries the upstream again."""
    if not fill.finished:
        return True
    return fill.complete and fill.status is not None and fill.status < 300
