"""A core that is slow to process its inputs: a stalled process or a CPU-starved one.

:class:`SlowCore` wraps any core of the driver contract (``serfd.testing.sim.Core``) and
holds back what reaches it, so a simulator drives it unchanged (``node.core =
SlowCore(node.core)``):

* a **stall** ``(start, end)``: nothing is processed in between, as with a process that
  is stopped (SIGSTOP, a VM pause, a long GC); at ``end`` every datagram that arrived
  meanwhile and every timer that fell due is processed, in order, as the kernel would
  hand them over;
* a **lag** (CPU starvation): every datagram and timer is processed ``lag`` seconds after
  it arrived or fell due, in order.

What it sends goes out when it is produced (after the delay). A TCP stream reaching it
while stalled, or while its lag is longer than ``stream_patience``, gets no answer (a
real process would answer after the dialer gave up: a TCP ping's deadline is at most
one ProbeTimeout after it is opened); otherwise it is answered at once.
"""

from __future__ import annotations

from collections import deque

from serfd.memberlist.swim import Addr, StreamRequest
from serfd.testing.sim import Core

__all__ = ["SlowCore"]

INF = float("inf")


class SlowCore:
    """``inner`` with its inputs held back by stalls and a constant lag."""

    def __init__(self, inner: Core, *, lag: float = 0.0,
                 stalls: list[tuple[float, float]] | None = None,
                 stream_patience: float = 0.5) -> None:
        self.inner = inner
        self.lag = lag
        self.stalls = sorted(stalls or [])
        self.stream_patience = stream_patience
        self.streams_unanswered = 0
        # (due, datagram or None, addr, stream outcome args or None), in arrival order.
        self._inbox: deque[tuple[float, bytes | None, Addr,
                                 tuple[int, bytes | None, str] | None]] = deque()
        self._clock = 0.0

    def ready(self, t: float) -> float:
        """When an input that arrives (or a timer that falls due) at ``t`` is processed."""
        t += self.lag
        for start, end in self.stalls:
            if start <= t < end:
                return end
        return t

    def stalled(self, t: float) -> bool:
        return any(start <= t < end for start, end in self.stalls)

    # -------------------------------------------------------------- the driver contract

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        return self.inner.datagrams_to_send()

    def streams_to_open(self) -> list[StreamRequest]:
        return self.inner.streams_to_open()

    def get_timer(self) -> float | None:
        due = self._inbox[0][0] if self._inbox else INF
        t = self.inner.get_timer()
        if t is not None:
            due = min(due, self.ready(t))
        return None if due == INF else max(due, self._clock)

    def handle_timer(self, now: float) -> None:
        self._clock = max(self._clock, now)
        inbox = self._inbox
        while inbox and inbox[0][0] <= now:
            due, data, addr, outcome = inbox.popleft()
            if data is not None:
                self.inner.receive_datagram(data, addr, due)
            elif outcome is not None:
                self.inner.stream_outcome(outcome[0], outcome[1], due, outcome[2])
        t = self.inner.get_timer()
        if t is not None and self.ready(t) <= now:
            self.inner.handle_timer(now)

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        self._clock = max(self._clock, now)
        if not self._inbox and self.ready(now) == now:
            self.inner.receive_datagram(data, addr, now)
            return
        self._inbox.append((self.ready(now), data, addr, None))

    def receive_stream(self, plain: bytes, addr: Addr, now: float) -> bytes | None:
        self._clock = max(self._clock, now)
        if self.stalled(now) or self.lag > self.stream_patience:
            self.streams_unanswered += 1
            return None
        return self.inner.receive_stream(plain, addr, now)

    def stream_outcome(self, token: int, reply: bytes | None, now: float,
                       error: str = "") -> None:
        self._clock = max(self._clock, now)
        if not self._inbox and self.ready(now) == now:
            self.inner.stream_outcome(token, reply, now, error)
            return
        self._inbox.append((self.ready(now), None, ("", 0), (token, reply, error)))
