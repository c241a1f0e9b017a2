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

Bounds (beyond Serf, whose maps grow with whatever peers send): a batch holds at
most ``max_pending`` members or user events; when it is :meth:`full`, the agent
flushes it at once (``flush(now, force=True)``), so nothing is lost, only batched
earlier. The member coalescer's memory of what it last delivered per member
forgets a member once its ``member-reap`` is delivered, and keeps at most
``MAX_DELIVERED`` names (the least recently updated go first; forgetting one can
only let a repeated event of the same type through).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from serfd.core.member import Member
from serfd.core.serf import MEMBER_EVENT_TYPES, EventType, MemberEvent, UserEvent

__all__ = ["COALESCE_PERIOD", "QUIESCENT_PERIOD", "MemberCoalescer", "UserCoalescer"]

COALESCE_PERIOD = 3.0  # agent: CoalescePeriod for member and user events
QUIESCENT_PERIOD = 1.0  # agent: QuiescentPeriod

MAX_PENDING = 4096  # members (or user events) in one batch before it is flushed early
MAX_DELIVERED = 65536  # members whose last delivered event type is remembered



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
    max_pending: int = MAX_PENDING
    max_delivered: int = MAX_DELIVERED
    _window: _Window = field(init=False)
    _latest: dict[str, tuple[EventType, Member]] = field(default_factory=dict)
    _delivered: dict[str, EventType] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._window = _Window(self.period, self.quiescent)

    @staticmethod
    def handles(ev: object) -> bool:
        return isinstance(ev, MemberEvent) and ev.type in MEMBER_EVENT_TYPES

    def add(self, ev: MemberEvent, now: float) -> None:
        for m in ev.members:
            self._latest[m.name] = (ev.type, m)
        self._window.touch(now)

    def deadline(self) -> float | None:
        return self._window.deadline()

    def full(self) -> bool:
        """The batch reached max_pending members: flush it now."""
        return len(self._latest) >= self.max_pending

    def flush(self, now: float, force: bool = False) -> list[MemberEvent]:
        """The coalesced events if the deadline has come or ``force`` (else nothing)."""
        due = self._window.deadline()
        if due is None or (now < due and not force):
            return []
        self._window.reset()
        grouped: dict[EventType, list[Member]] = {}
        delivered = self._delivered
        for name, (etype, member) in self._latest.items():
            if delivered.get(name) is etype and etype is not EventType.MEMBER_UPDATE:
                continue
            delivered.pop(name, None)  # re-inserted last: the oldest are forgotten first
            # A reaped member is gone: nothing to compare with.
            if etype is not EventType.MEMBER_REAP:
                delivered[name] = etype
            grouped.setdefault(etype, []).append(member)
        self._latest.clear()
        while len(delivered) > self.max_delivered:
            del delivered[next(iter(delivered))]
        return [MemberEvent(t, tuple(ms)) for t, ms in grouped.items()]


@dataclass(slots=True)
class UserCoalescer:
    """Serf's userEventCoalescer: only events sent with coalesce=true."""

    period: float = COALESCE_PERIOD
    quiescent: float = QUIESCENT_PERIOD
    max_pending: int = MAX_PENDING
    _window: _Window = field(init=False)
    _latest: dict[str, tuple[int, list[UserEvent]]] = field(default_factory=dict)
    _count: int = 0  # events held in _latest

    def __post_init__(self) -> None:
        self._window = _Window(self.period, self.quiescent)

    @staticmethod
    def handles(ev: object) -> bool:
        return isinstance(ev, UserEvent) and ev.coalesce

    def add(self, ev: UserEvent, now: float) -> None:
        cur = self._latest.get(ev.name)
        if cur is None or ev.ltime > cur[0]:
            self._count += 1 - (len(cur[1]) if cur is not None else 0)
            self._latest[ev.name] = (ev.ltime, [ev])
        elif ev.ltime == cur[0]:
            cur[1].append(ev)
            self._count += 1
        self._window.touch(now)

    def deadline(self) -> float | None:
        return self._window.deadline()

    def full(self) -> bool:
        """The batch reached max_pending events: flush it now."""
        return self._count >= self.max_pending

    def flush(self, now: float, force: bool = False) -> list[UserEvent]:
        """The coalesced events if the deadline has come or ``force`` (else nothing)."""
        due = self._window.deadline()
        if due is None or (now < due and not force):
            return []
        self._window.reset()
        out = [ev for _, evs in self._latest.values() for ev in evs]
        self._latest.clear()
        self._count = 0
        return out
