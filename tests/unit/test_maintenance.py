"""Stopping background loops: ``cancel_and_wait`` ends even a loop that swallowed one
cancellation."""

from __future__ import annotations

import asyncio

from proxy.background.maintenance import cancel_and_wait


async def test_cancel_and_wait_stops_a_loop_that_swallowed_a_cancellation() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(0.01)  # a loop's tick
            except asyncio.CancelledError:
                if swallowed < 1:  # as Python 3.11's wait_for does when its future just ended
                    swallowed += 1
                    continue
                raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0.02)  # into its loop: cancelled before it starts, it swallows nothing
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=0.2)
    assert not done, "one cancel() is not enough for this loop"
    await asyncio.wait_for(cancel_and_wait(task), 2)
    assert task.cancelled() and swallowed == 1
