"""Event-loop lag: how late the agent's loop runs a callback it scheduled, over the last minute.

serfd does everything on one asyncio loop, so a stall anywhere (a costly peer message, a
slow callback) delays every ack, RPC answer and timer. A probe sleeps ``interval`` seconds
on the loop, again and again, and records how much later than asked it woke up. The
latest ``window`` samples (a bounded ring) give the p50/p99/max that ``serfctl info``
shows as ``loop_lag_*_ms``: the figure the hostile-peer flood benchmark reports.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

__all__ = ["LoopLag"]

INTERVAL = 0.1  # s between two samples
WINDOW = 600  # samples kept: the last minute


class LoopLag:
    """Samples the loop's lateness; ``stats()`` summarises the kept samples in ms."""

    def __init__(self, interval: float = INTERVAL, window: int = WINDOW) -> None:
        self.interval = interval
        self.samples: deque[float] = deque(maxlen=window)

    def record(self, lag: float) -> None:
        """Keep one lateness sample (seconds; never negative)."""
        self.samples.append(max(0.0, lag))

    def stats(self) -> dict[str, str]:
        """``loop_lag_p50_ms``, ``loop_lag_p99_ms`` and ``loop_lag_max_ms`` (nearest rank)."""
        if not self.samples:
            return {}
        xs = sorted(self.samples)

        def rank(percent: int) -> float:
            return xs[min(len(xs) - 1, max(0, -(-len(xs) * percent // 100) - 1))]

        return {
            "loop_lag_p50_ms": f"{rank(50) * 1e3:.1f}",
            "loop_lag_p99_ms": f"{rank(99) * 1e3:.1f}",
            "loop_lag_max_ms": f"{xs[-1] * 1e3:.1f}",
        }

    async def run(self, clock: Callable[[], float],
                  sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        """Forever: sleep one interval, record how much longer it took."""
        while True:
            start = clock()
            await sleep(self.interval)
            self.record(clock() - start - self.interval)
