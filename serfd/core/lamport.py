"""Lamport clocks as Serf keeps them (lamport.go): one each for members, events, queries.

LTimes are uint64 on the wire. A peer may send any value, including 2^64-1; Go's clock
then wraps to 0 on the next step. Ours saturates at :data:`MAX_LTIME` instead, so
every time we stamp can still be encoded (a clock past it made every later push/pull
and user event fail to encode). Serf has no rule on how far a witnessed time may move
a clock, and neither do we: a cluster that merges with an older one legitimately
jumps by the other's whole history.
"""

from __future__ import annotations

MAX_LTIME = 2**64 - 1  # LamportTime is a uint64


class LamportClock:
    """A monotonic logical clock. ``witness`` moves it past any time seen from a peer."""

    __slots__ = ("_counter",)

    def __init__(self, start: int = 0) -> None:
        self._counter = start

    def time(self) -> int:
        """The current value (the next message is stamped with it)."""
        return self._counter

    def increment(self) -> int:
        """Advance by one and return the new value."""
        self._counter = min(self._counter + 1, MAX_LTIME)
        return self._counter

    def witness(self, ltime: int) -> None:
        """Record a time seen elsewhere: our clock ends up strictly greater than it."""
        if ltime >= self._counter:
            self._counter = min(ltime + 1, MAX_LTIME)
