"""The agent's snapshot recorder: what the Serf core did, kept on disk across restarts.

Theory of operation
-------------------
:class:`SnapshotRecorder` connects the Serf core to the snapshot writer
(:class:`serfd.agent.snapshot.Snapshotter`, Serf's file format on its own thread).

* :meth:`~SnapshotRecorder.open` (at start, before any gossip) reads the file off the
  loop, restores the core's three Lamport clocks from it (``restore_clocks``), keeps
  the members to rejoin for whoever rejoins (:meth:`~SnapshotRecorder.previous_members`),
  starts the writer, and arms a ticker on the :class:`~serfd.agent.clock.Clock`.
* :meth:`~SnapshotRecorder.record` sees every core event *before* coalescing, as
  Serf's snapshotter does: joins and departures of members, the member clock after
  each, user-event and query LTimes.
* The ticker records the member clock and the query clock (internal queries, key
  rotation for one, never become events) at most :data:`CLOCK_INTERVAL` after they
  changed, and lets the writer recover from a cut queue or a thread that ended
  (``Snapshotter.check``). Serf polls every 500 ms; here the gossip driver calls
  :meth:`~SnapshotRecorder.poke` after each input the core handled (only inputs move
  the clocks), and the ticker is armed only when a clock moved, a record was queued or
  the writer is unsettled (:attr:`Snapshotter.unsettled`): an idle agent never wakes
  for it.
* :meth:`~SnapshotRecorder.leave` writes the leave marker (a restart then does not
  rejoin unless ``rejoin_after_leave``); :meth:`~SnapshotRecorder.close` records the
  final clock and flushes the file off the loop.

Disk faults never stop the agent: the writer reports them; :meth:`~SnapshotRecorder.stats`
(``serfctl info``) and :meth:`~SnapshotRecorder.status` (systemd ``STATUS=``) show them
until the writer has caught up by itself. What the writer cut is counted in
:attr:`SnapshotRecorder.counters`.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Protocol

from serfd.agent.clock import Clock, Timer
from serfd.agent.config import Config, snapshot_file
from serfd.agent.snapshot import (
    SnapshotFault,
    SnapshotState,
    Snapshotter,
    format_addr,
    read_snapshot,
)
from serfd.base.metrics import NULL_METRICS, Metrics
from serfd.base.ratelog import DropCounters
from serfd.core.filters import AnyEvent
from serfd.core.lamport import LamportClock
from serfd.core.member import Member, MemberStatus
from serfd.core.query import IncomingQuery
from serfd.core.serf import EventType, MemberEvent, SerfState, UserEvent

__all__ = ["CLOCK_INTERVAL", "SnapshotRecorder", "SnapshotSource"]

log = logging.getLogger("serfd.agent")

CLOCK_INTERVAL = 0.5  # serf/snapshot.go clockUpdateInterval


class SnapshotSource(Protocol):
    """What the recorder reads from the Serf core (serfd.core.serf.Serf satisfies it)."""

    @property
    def clock(self) -> LamportClock: ...

    @property
    def event_clock(self) -> LamportClock: ...

    @property
    def query_clock(self) -> LamportClock: ...

    @property
    def state(self) -> SerfState: ...

    def members(self) -> list[Member]: ...

    def restore_clocks(self, clock: int, event_clock: int, query_clock: int) -> None: ...


class SnapshotRecorder:
    """Records the core's members and clocks in the snapshot (see the module docstring)."""

    def __init__(self, config: Config, core: SnapshotSource, *, clock: Clock,
                 metrics: Metrics = NULL_METRICS) -> None:
        """Uses ``snapshot_path`` (default ``<state_dir>/snapshot``), ``node_name`` and
        ``rejoin_after_leave`` from ``config`` (all restart-only); ``metrics`` gets the
        writer's timers (serf.snapshot.*) and drops (serfd.dropped.*)."""
        self.path: Path = snapshot_file(config)
        self.node_name = config.node_name
        self.rejoin_after_leave = config.rejoin_after_leave
        self._core = core
        self._clock = clock
        self.metrics = metrics
        # The writer's drops (serfctl info: dropped_<key>; metrics serfd.dropped.<key>).
        self.counters: dict[str, int] = DropCounters(metrics)
        self.writer: Snapshotter | None = None  # from open() on (after close(): its last word)
        self._closed = False
        self._previous: list[tuple[str, str]] = []
        self._ticker: Timer | None = None
        # The clocks last handed to the writer: the ticker wakes its thread only for news.
        self._told_clock = -1
        self._told_query = -1

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Read the snapshot (off the loop), restore the clocks, start recording."""
        path = self.path
        rejoin = self.rejoin_after_leave
        loop = asyncio.get_running_loop()
        state, warnings = await loop.run_in_executor(
            None, lambda: read_snapshot(path, rejoin_after_leave=rejoin, logger=log))
        self._core.restore_clocks(state.last_clock, state.last_event_clock,
                                  state.last_query_clock)
        self._previous = state.previous_nodes(self.node_name)
        if state.left and not rejoin:
            log.info("snapshot %s: we left gracefully last time: not rejoining "
                     "(rejoin_after_leave = false)", path)
        # Disk faults never stop the agent: the writer reports them (writer.fault, shown
        # in STATUS= and stats) and catches up by itself once the disk takes writes again.
        writer = Snapshotter(path, state, rejoin_after_leave=rejoin, logger=log,
                             counters=self.counters, state_fn=self.state,
                             post=loop.call_soon_threadsafe, metrics=self.metrics)
        writer.start(rewrite=bool(warnings))
        self.writer = writer
        self._arm_ticker()  # the first tick records the clocks as restored
        log.info("snapshot %s: clocks %d/%d/%d, %d previous nodes", path, state.last_clock,
                 state.last_event_clock, state.last_query_clock, len(self._previous))

    async def close(self) -> None:
        """Record the final clock, then flush and stop the writer (off the loop)."""
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        writer = self.writer
        if writer is None or self._closed:
            return
        self._closed = True
        writer.clock(self._core.clock.time())
        try:
            await asyncio.get_running_loop().run_in_executor(None, writer.close)
        except Exception:  # shutting down anyway: say why the last records may be missing
            log.exception("closing the snapshot failed")

    def previous_members(self) -> list[tuple[str, str]]:
        """(name, "ip:port") of the members the snapshot knew, ourselves excluded: whom to
        rejoin at start (empty after a graceful leave unless ``rejoin_after_leave``)."""
        return list(self._previous)

    # ------------------------------------------------------------------ recording

    def record(self, ev: AnyEvent) -> None:
        """One core event, before coalescing."""
        writer = self.writer
        if writer is None or self._closed:
            return
        if isinstance(ev, MemberEvent):
            for m in ev.members:
                if ev.type is EventType.MEMBER_JOIN:
                    writer.member_alive(m.name, format_addr(m.addr, m.port))
                elif ev.type in (EventType.MEMBER_LEAVE, EventType.MEMBER_FAILED):
                    writer.member_gone(m.name)
            self._tell_clock(writer)
        elif isinstance(ev, UserEvent):
            log.debug("delivered user event %s (ltime %d)", ev.name, ev.ltime)
            writer.user_event(ev.ltime)
        elif isinstance(ev, IncomingQuery):
            writer.query(ev.ltime)
        if self._ticker is None:
            self._arm_ticker()  # check on the writer once it has had them

    def leave(self) -> None:
        """We are leaving gracefully: the leave marker (a restart will not rejoin unless
        ``rejoin_after_leave``)."""
        if self.writer is not None and not self._closed:
            self.writer.leave()

    def state(self) -> SnapshotState:
        """What the snapshot should say now (members and clocks), from memory: the writer
        rewrites the file from it after it had to cut records."""
        core = self._core
        alive = {m.name: format_addr(m.addr, m.port) for m in core.members()
                 if m.status in (MemberStatus.ALIVE, MemberStatus.LEAVING)}
        return SnapshotState(alive=alive, last_clock=max(0, core.clock.time() - 1),
                             last_event_clock=max(0, core.event_clock.time() - 1),
                             last_query_clock=max(0, core.query_clock.time() - 1),
                             left=core.state in (SerfState.LEAVING, SerfState.LEFT))

    @property
    def ticking(self) -> bool:
        """Whether the ticker is armed."""
        return self._ticker is not None

    def poke(self) -> None:
        """The core handled an input: arm the ticker if a clock moved since it last ran."""
        if self._ticker is None and self.writer is not None and not self._closed and (
                self._core.clock.time() != self._told_clock
                or self._core.query_clock.time() - 1 != self._told_query):
            self._arm_ticker()

    def _arm_ticker(self) -> None:
        self._ticker = self._clock.call_at(self._clock.now() + CLOCK_INTERVAL, self._tick)

    def _tick(self) -> None:
        self._ticker = None
        writer = self.writer
        if writer is None or self._closed:
            return
        try:
            writer.check()  # a writer that fell behind or ended
            self._tell_clock(writer)
            # Internal queries (key rotation, ...) are handled inside Serf; keep their clock.
            query = self._core.query_clock.time() - 1
            if query != self._told_query:
                writer.query(query)
                self._told_query = query
        finally:
            if writer.unsettled:  # records waiting, cut, or a fault: keep watching
                self._arm_ticker()

    def _tell_clock(self, writer: Snapshotter) -> None:
        """The member clock to the writer, unless it already has this value (an idle
        agent's ticks then cost the writer thread no wake-up)."""
        clock = self._core.clock.time()
        if clock != self._told_clock:
            writer.clock(clock)
            self._told_clock = clock

    # ------------------------------------------------------------------ reporting

    @property
    def fault(self) -> SnapshotFault | None:
        """The writer's fault (None: the file is up to date, or not open yet)."""
        return self.writer.fault if self.writer is not None else None

    def stats(self) -> dict[str, str]:
        """``snapshot_error`` and ``snapshot_write_errors`` for ``serfctl info``."""
        writer = self.writer
        if writer is None:
            return {}
        fault = writer.fault
        return {"snapshot_error": "" if fault is None else str(fault),
                "snapshot_write_errors": str(writer.errors)}

    def status(self) -> str:
        """A part for the STATUS= line while the file is stale ("" when all is well)."""
        fault = self.fault
        return "" if fault is None else f"snapshot: error: {fault}"
