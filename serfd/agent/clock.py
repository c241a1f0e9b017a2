"""The agent services' one view of time: read the clock, arm a callback, sleep.

Every agent service takes a :class:`Clock` instead of calling ``time`` or the event loop's
timers directly, so a unit test can hand it :class:`serfd.testing.clock.FakeClock` and step
time by hand: no sleeps, no races. :class:`LoopClock` is the real one, the asyncio loop's
monotonic clock (the same ``now`` the Serf core is fed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "LoopClock", "Timer"]


class Timer(Protocol):
    """A callback armed with :meth:`Clock.call_at`; ``cancel()`` disarms it (idempotent)."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` once :meth:`now` reaches ``when`` (at once if it already has)."""
        ...

    async def sleep(self, delay: float) -> None:
        """Return after ``delay`` seconds of this clock."""
        ...


class LoopClock:
    """The running asyncio loop's clock (``loop.time()``, ``loop.call_at``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        return self.loop.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        return self.loop.call_at(when, callback)

    async def sleep(self, delay: float) -> None:
        await asyncio.sleep(delay)
