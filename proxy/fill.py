"""A fill: one upstream call for one cache key, streamed to any number of readers.

The fill runs as its own task, so a reader that disconnects does not abort a synthesis
that others wait for (or that is about to be stored). Readers see bytes as they arrive.
Identical concurrent misses in this process join the same fill (single flight).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from .upstream import UpstreamError

log = logging.getLogger(__name__)


class Fill:
    """The shared state of one in-flight upstream answer."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.chunks: list[bytes] = []
        self.size = 0
        self.finished = False
        self.complete = False  # the upstream sent the whole body
        self.error: UpstreamError | None = None  # failed before any header arrived
        self.stored: bool | None = None  # None until the store decision is made
        self.refusal: str | None = None
        self._changed = asyncio.Condition()
        self._done = asyncio.Event()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def set_head(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.status, self.headers = status, headers
        await self._notify()

    async def add(self, chunk: bytes) -> None:
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

    async def wait_head(self) -> None:
        """Until the status and headers are known, or the fill failed."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.status is not None or self.finished)

    async def wait_done(self) -> None:
        await self._done.wait()

    def body(self) -> bytes:
        return b"".join(self.chunks)

    async def stream(self) -> AsyncIterator[bytes]:
        """Every chunk from the first, as it arrives; stops at the end of the fill."""
        sent = 0
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda n=sent: len(self.chunks) > n or self.finished)  # type: ignore[misc]
                ready = self.chunks[sent:]
                finished = self.finished and len(self.chunks) == sent + len(ready)
            for chunk in ready:
                yield chunk
            sent += len(ready)
            if finished:
                return


Runner = Callable[[Fill], Awaitable[None]]


class FillRegistry:
    """In-process single flight: at most one running fill per key."""

    def __init__(self) -> None:
        self._fills: dict[str, Fill] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def join_or_start(self, key: str, runner: Runner) -> tuple[Fill, bool]:
        """The running fill for ``key`` (False) or a new one started with ``runner`` (True)."""
        fill = self._fills.get(key)
        if fill is not None:
            return fill, False
        fill = Fill(key)
        self._fills[key] = fill
        task = asyncio.create_task(self._run(fill, runner), name=f"fill:{key[:12]}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fill, True

    async def _run(self, fill: Fill, runner: Runner) -> None:
        try:
            await runner(fill)
        except Exception:  # a bug must not leave readers waiting forever
            log.exception("fill %s failed", fill.key)
            if not fill.finished:
                await fill.finish(complete=False)
            if not fill._done.is_set():
                fill.settle(stored=False, refusal="error")
        finally:
            self._fills.pop(fill.key, None)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def drain(self, seconds: float) -> None:
        """Let running fills finish (graceful shutdown), at most ``timeout`` seconds."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=seconds)
