"""Event coalescing as the Serf agent does it (serf/coalesce*.go), with time passed in.

Theory of operation
-------------------
The agent puts two coalescers in front of every consumer of events (handlers and
RPC streams alike): one for member events, one for user events sent with
``coalesce=true``. Everything else (queries, non-coalescible user events) passes
straight through.

A coalescer holds what it was given until a flush: ``period`` (3 s) after the first
event of a batch, or ``quiescent`` (1 s) after the latest one, whichever comes first.

* Member events: per member only the latest event type is kept; at the flush, a
  member whose type equals the last one delivered for it is skipped (except
  ``member-update``); the rest are grouped into one event per type.
* User events: per event name only the events at the highest LTime are kept.

The agent asks :meth:`Coalescer.deadline` for its timer and calls
:meth:`Coalescer.flush` at or after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from serfd.member import Member
from serfd.serf import MemberEvent, UserEvent

__all__ = ["COALESCE_PERIOD", "QUIESCENT_PERIOD", "MemberCoalescer", "UserCoalescer"]

COALESCE_PERIOD = 3.0  # agent: CoalescePeriod for member and user events
QUIESCENT_PERIOD = 1.0  # agent: QuiescentPeriod

_MEMBER_TYPES = ("member-join", "member-leave", "member-failed", "member-update", "member-reap")


@dataclass(slots=True)
class _Window:
    period: float
    quiescent: float
    first: float | None = None
    last: float | None = None

    def touch(self, now: float) -> None:
        if self.first is None:
            self.first = now
        self.last = now

    def deadline(self) -> float | None:
        if self.first is None or self.last is None:
            return None
        return min(self.first + self.period, self.last + self.quiescent)

    def reset(self) -> None:
        self.first = self.last = None


@dataclass(slots=True)
class MemberCoalescer:
    """Serf's memberEventCoalescer."""

    period: float = COALESCE_PERIOD
    quiescent: float = QUIESCENT_PERIOD
    _window: _Window = field(init=False)
    _latest: dict[str, tuple[str, Member]] = field(default_factory=dict)
    _delivered: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._window = _Window(self.period, self.quiescent)

    @staticmethod
    def handles(ev: object) -> bool:
        return isinstance(ev, MemberEvent) and ev.type in _MEMBER_TYPES

    def add(self, ev: MemberEvent, now: float) -> None:
        for m in ev.members:
            self._latest[m.name] = (ev.type, m)
        self._window.touch(now)

    def deadline(self) -> float | None:
        return self._window.deadline()

    def flush(self, now: float) -> list[MemberEvent]:
        """The coalesced events if the deadline has come (else nothing)."""
        due = self._window.deadline()
        if due is None or now < due:
            return []
        self._window.reset()
        grouped: dict[str, list[Member]] = {}
        for name, (etype, member) in self._latest.items():
            if self._delivered.get(name) == etype and etype != "member-update":
                continue
            self._delivered[name] = etype
            grouped.setdefault(etype, []).append(member)
        self._latest.clear()
        return [MemberEvent(t, tuple(ms)) for t, ms in grouped.items()]


@dataclass(slots=True)
class UserCoalescer:
    """Serf's userEventCoalescer: only events sent with coalesce=true."""

    period: float = COALESCE_PERIOD
    quiescent: float = QUIESCENT_PERIOD
    _window: _Window = field(init=False)
    _latest: dict[str, tuple[int, list[UserEvent]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._window = _Window(self.period, self.quiescent)

    @staticmethod
    def handles(ev: object) -> bool:
        return isinstance(ev, UserEvent) and ev.coalesce

    def add(self, ev: UserEvent, now: float) -> None:
        cur = self._latest.get(ev.name)
        if cur is None or ev.ltime > cur[0]:
            self._latest[ev.name] = (ev.ltime, [ev])
        elif ev.ltime == cur[0]:
            cur[1].append(ev)
        self._window.touch(now)

    def deadline(self) -> float | None:
        return self._window.deadline()

    def flush(self, now: float) -> list[UserEvent]:
        due = self._window.deadline()
        if due is None or now < due:
            return []
        self._window.reset()
        out = [ev for _, evs in self._latest.values() for ev in evs]
        self._latest.clear()
        return out
