"""Event-loop lag: how late the agent's loop runs the timers it armed, over the last minute.

serfd does everything on one asyncio loop, so a stall anywhere (a costly peer message, a
slow callback) delays every ack, RPC answer and timer. The gossip driver's one timer
(the core's next deadline: gossip ticks while anything is queued, the probe every
second, its timeouts) is armed for an instant and fires some time after it; each firing
is a sample of how much later than asked the loop ran it (:meth:`LoopLag.observe`).
The timer never waits more than a probe interval, so a stall of the loop always shows,
and sampling it costs no wake-up of its own (a sleeper of its own, ten times a second,
was most of an idle agent's wake-ups). The samples of the last :data:`WINDOW` seconds
(at most :data:`MAX_SAMPLES`, the latest) give the p50/p99/max that ``serfctl info``
shows as ``loop_lag_*_ms``: the figure the hostile-peer flood benchmark reports.
"""

from __future__ import annotations

from collections import deque

__all__ = ["LoopLag"]

WINDOW = 60.0  # s of samples kept
MAX_SAMPLES = 600  # at most this many (the latest), however busy the timer is


class LoopLag:
    """Lateness samples of the last ``window`` seconds; ``stats()`` summarises them in ms."""

    def __init__(self, window: float = WINDOW, max_samples: int = MAX_SAMPLES) -> None:
        self.window = window
        self.samples: deque[tuple[float, float]] = deque(maxlen=max_samples)  # (when, lag)

    def observe(self, due: float, now: float) -> None:
        """A timer armed for ``due`` ran at ``now`` (seconds of the loop's clock)."""
        self.record(now - due, now)

    def record(self, lag: float, now: float) -> None:
        """Keep one lateness sample (seconds; never negative) taken at ``now``."""
        self.samples.append((now, max(0.0, lag)))
        self._expire(now)

    def _expire(self, now: float) -> None:
        samples = self.samples
        horizon = now - self.window
        while samples and samples[0][0] < horizon:
            samples.popleft()

    def stats(self, now: float) -> dict[str, str]:
        """``loop_lag_p50_ms``, ``loop_lag_p99_ms`` and ``loop_lag_max_ms`` (nearest rank)
        of the samples taken in the ``window`` before ``now``."""
        self._expire(now)
        if not self.samples:
            return {}
        xs = sorted(lag for _, lag in self.samples)

        def rank(percent: int) -> float:
            return xs[min(len(xs) - 1, max(0, -(-len(xs) * percent // 100) - 1))]

        return {
            "loop_lag_p50_ms": f"{rank(50) * 1e3:.1f}",
            "loop_lag_p99_ms": f"{rank(99) * 1e3:.1f}",
            "loop_lag_max_ms": f"{xs[-1] * 1e3:.1f}",
        }
