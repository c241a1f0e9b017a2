"""Lamport clocks as Serf keeps them (lamport.go): one each for members, events, queries."""

from __future__ import annotations


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
        self._counter += 1
        return self._counter

    def witness(self, ltime: int) -> None:
        """Record a time seen elsewhere: our clock ends up strictly greater than it."""
        if ltime >= self._counter:
            self._counter = ltime + 1
