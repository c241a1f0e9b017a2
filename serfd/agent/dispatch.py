"""Where the agent's events go: coalescing first, then handlers and RPC stream listeners.

As in Serf's agent, the coalescers (serfd.core.coalesce) sit in front of every consumer:
member events and ``coalesce=true`` user events are batched (3 s period, 1 s
quiescence); queries and other user events go straight through. Delivery never
waits: handlers are started as tasks (serfd.agent.handlers), listeners are plain calls.
A batch that reaches its coalescer's bound (``coalesce.MAX_PENDING``) is delivered
at once, so a peer cannot grow it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from serfd.agent.clock import Clock, Timer
from serfd.agent.handlers import HandlerRunner
from serfd.core.coalesce import MemberCoalescer, UserCoalescer
from serfd.core.filters import AnyEvent
from serfd.core.query import IncomingQuery
from serfd.core.serf import MemberEvent, UserEvent

__all__ = ["Dispatcher"]

log = logging.getLogger("serfd.agent")


class Dispatcher:
    """Coalesces, then hands each event to the handler runner and every listener."""

    def __init__(
        self,
        clock: Clock,
        runner: HandlerRunner,
        listeners: list[Callable[[AnyEvent], None]],
        *,
        coalesce: bool = True,
        counters: dict[str, int] | None = None,
        member_coalescer: MemberCoalescer | None = None,
        user_coalescer: UserCoalescer | None = None,
    ) -> None:
        self._clock = clock
        self.runner = runner
        self.listeners = listeners
        self.coalesce = coalesce
        # "event_delivery_errors": a handler runner or listener raised (our bug, logged too).
        self.counters = counters if counters is not None else {}
        self._member = member_coalescer if member_coalescer is not None else MemberCoalescer()
        self._user = user_coalescer if user_coalescer is not None else UserCoalescer()
        self._timer: Timer | None = None
        self._timer_at: float | None = None

    def event(self, ev: AnyEvent) -> None:
        """One event from the Serf layer."""
        _log_event(ev)
        now = self._clock.now()
        if self.coalesce and isinstance(ev, MemberEvent) and self._member.handles(ev):
            self._member.add(ev, now)
            if self._member.full():
                for out in self._member.flush(now, force=True):
                    self._deliver(out)
        elif self.coalesce and isinstance(ev, UserEvent) and self._user.handles(ev):
            self._user.add(ev, now)
            if self._user.full():
                for uev in self._user.flush(now, force=True):
                    self._deliver(uev)
        else:
            self._deliver(ev)
            return
        self._arm()

    def _arm(self) -> None:
        dues = [d for d in (self._member.deadline(), self._user.deadline()) if d is not None]
        due = min(dues) if dues else None
        if due == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = due
        self._timer = None if due is None else self._clock.call_at(due, self._flush)

    def _flush(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self._clock.now()
        batch: list[AnyEvent] = [*self._member.flush(now), *self._user.flush(now)]
        for ev in batch:
            self._deliver(ev)
        self._arm()

    def _deliver(self, ev: AnyEvent) -> None:
        try:
            self.runner.dispatch(ev)
        except Exception:  # our bug: the other consumers still get the event
            self._count_error()
            log.exception("handler dispatch failed")
        for cb in list(self.listeners):
            try:
                cb(ev)
            except Exception:  # our bug: the other consumers still get the event
                self._count_error()
                log.exception("event listener failed")

    def _count_error(self) -> None:
        self.counters["event_delivery_errors"] = self.counters.get("event_delivery_errors", 0) + 1

    def close(self) -> None:
        """Disarm the flush timer (events still held are not delivered)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = None


def _log_event(ev: AnyEvent) -> None:
    # Serf's agent logs each event it receives ("Received event: user-event: deploy").
    if isinstance(ev, UserEvent):
        log.info("received event: user-event: %s", ev.name)
    elif isinstance(ev, IncomingQuery):
        log.info("received event: query: %s", ev.name)
    else:
        log.info("received event: %s", ev.type)
