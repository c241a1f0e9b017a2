"""Serf's event filter vocabulary, shared by handler routing and the RPC ``stream`` command.

A filter string is a comma list of ``member-join``, ``member-leave``, ``member-failed``,
``member-update``, ``member-reap``, ``user``, ``user:NAME``, ``query``, ``query:NAME`` or
``*``; the empty string means ``*`` (Serf's ParseEventFilter / EventFilter.Valid).
"""

from __future__ import annotations

from dataclasses import dataclass

from serfd.core.query import IncomingQuery
from serfd.core.serf import EventType, MemberEvent, UserEvent

__all__ = ["EVENT_TYPES", "EventFilter", "event_type", "matches_any", "parse_filters"]

EVENT_TYPES = tuple(t.value for t in EventType)  # Serf's order: member-join ... query

AnyEvent = MemberEvent | UserEvent | IncomingQuery


def event_type(ev: AnyEvent) -> EventType:
    """Serf's EventType(): member-*, ``user`` or ``query`` (the value is its String())."""
    if isinstance(ev, MemberEvent):
        return ev.type
    return EventType.USER if isinstance(ev, UserEvent) else EventType.QUERY


@dataclass(frozen=True, slots=True)
class EventFilter:
    """One entry of a filter list: an event type (or ``*``) and, for user/query, a name."""

    event: str
    name: str = ""

    def matches(self, ev: AnyEvent) -> bool:
        """Serf's EventFilter.Invoke."""
        if self.event == "*":
            return True
        if event_type(ev) != self.event:
            return False
        if self.name and isinstance(ev, UserEvent | IncomingQuery):
            return ev.name == self.name
        return True

    def __str__(self) -> str:
        return f"{self.event}:{self.name}" if self.name else self.event


def parse_filters(text: str) -> tuple[EventFilter, ...]:
    """Parse a filter list; ValueError naming the first entry that is not valid."""
    out = []
    for part in (text or "*").split(","):
        name = ""
        event = part
        for prefix in ("user:", "query:"):
            if part.startswith(prefix):
                event, name = prefix[:-1], part[len(prefix):]
        if event != "*" and event not in EVENT_TYPES:
            raise ValueError(f"invalid event filter {part!r} (expected one of "
                             f"{', '.join(EVENT_TYPES)}, user:NAME, query:NAME or *)")
        out.append(EventFilter(event, name))
    return tuple(out)


def matches_any(filters: tuple[EventFilter, ...], ev: AnyEvent) -> bool:
    return any(f.matches(ev) for f in filters)
