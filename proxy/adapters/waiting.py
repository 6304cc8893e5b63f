"""Awaiting a future the protocol resolves, with a deadline: one timer handle, no more.

``asyncio.timeout`` costs ~4 µs more per wait (a context manager, a cancellation of the
task, its undoing) and the upstream client waits once or twice per request. Here the
timer just fails the future: same ``TimeoutError`` to the caller, and a cancelled task
still cancels the wait.
"""

from __future__ import annotations

import asyncio


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


async def wait_resolved(waiter: asyncio.Future[None], within: float) -> None:
    """Await ``waiter``; ``TimeoutError`` if nothing resolves it ``within`` seconds.

    Whoever resolves ``waiter`` must check ``done()`` first: the timer may have won.
    """
    timer = waiter.get_loop().call_later(within, _expire, waiter)
    try:
        await waiter
    finally:
        timer.cancel()
