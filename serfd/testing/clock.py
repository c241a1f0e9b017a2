"""A clock for unit tests of the agent services: time moves only when the test says so.

``FakeClock`` satisfies :class:`serfd.agent.clock.Clock`. Callbacks armed with
``call_at`` and coroutines in ``await clock.sleep(d)`` run when :meth:`FakeClock.advance`
(from inside the test's event loop) moves time past their deadline, in deadline order
(ties in arming order). ``advance`` then lets the loop run what became ready, so a test
reads like a timeline::

    clock = FakeClock()
    task = asyncio.create_task(service.retry())
    await clock.advance(1.0)    # the first retry is due and ran
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

__all__ = ["FakeClock"]


class _Handle:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._heap: list[tuple[float, int, _Handle]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> _Handle:
        handle = _Handle(when, callback)
        heapq.heappush(self._heap, (when, next(self._seq), handle))
        return handle

    async def sleep(self, delay: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        handle = self.call_at(self._now + max(0.0, delay), wake)
        try:
            await fut
        finally:
            handle.cancel()

    def pending(self) -> int:
        """How many armed callbacks (including sleepers) are still waiting."""
        return sum(1 for _, _, h in self._heap if not h.cancelled)

    def next_deadline(self) -> float | None:
        for when, _, h in sorted(self._heap):
            if not h.cancelled:
                return when
        return None

    async def settle(self) -> None:
        """Let the loop run everything that is ready now (no time passes)."""
        for _ in range(20):
            await asyncio.sleep(0)

    def stall(self, delay: float) -> None:
        """Time passes while the loop is blocked: nothing fires now; the next
        :meth:`advance` runs what fell due meanwhile, late (``now()`` past its deadline)."""
        self._now += delay

    async def advance(self, delay: float) -> None:
        """Move time forward by ``delay``, firing what falls due on the way, in order."""
        end = self._now + delay
        await self.settle()
        while self._heap and self._heap[0][0] <= end:
            when, _, handle = heapq.heappop(self._heap)
            if handle.cancelled:
                continue
            self._now = max(self._now, when)
            handle.callback()
            await self.settle()
        self._now = end
        await self.settle()
