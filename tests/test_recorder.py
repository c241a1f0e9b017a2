"""serfd.agent.recorder.SnapshotRecorder on a FakeClock and a temporary snapshot: what the
core's events put in the file, the clock ticker, the leave marker, clocks and members
restored on reopen, and a disk fault shown in stats and STATUS=.

The writer thread is real (serfd.agent.snapshot); ``close()`` joins it, so the test reads
the file after it, never waits on time.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from pathlib import Path

import pytest

from serfd.agent.config import Config
from serfd.agent.recorder import CLOCK_INTERVAL, SnapshotRecorder
from serfd.agent.snapshot import FileOps, read_snapshot
from serfd.core.lamport import LamportClock
from serfd.core.member import Member, MemberStatus
from serfd.core.query import IncomingQuery
from serfd.core.serf import EventType, MemberEvent, SerfState, UserEvent
from serfd.testing.clock import FakeClock


class Core:
    """The recorder's view of the Serf core (SnapshotSource), settable by the test."""

    def __init__(self) -> None:
        self.clock = LamportClock(1)
        self.event_clock = LamportClock(1)
        self.query_clock = LamportClock(1)
        self.state = SerfState.ALIVE
        self.member_list: list[Member] = []
        self.restored: list[tuple[int, int, int]] = []

    def members(self) -> list[Member]:
        return list(self.member_list)

    def restore_clocks(self, clock: int, event_clock: int, query_clock: int) -> None:
        self.restored.append((clock, event_clock, query_clock))
        self.clock.witness(clock)
        self.event_clock.witness(event_clock)
        self.query_clock.witness(query_clock)


def member(name: str, ip: str = "10.0.0.1", status: MemberStatus = MemberStatus.ALIVE) -> Member:
    return Member(name, ip, 7946, {}, status)


def recorder(tmp: Path, core: Core, clock: FakeClock | None = None,
             rejoin_after_leave: bool = False) -> SnapshotRecorder:
    cfg = Config(node_name="me", state_dir=tmp, rejoin_after_leave=rejoin_after_leave)
    return SnapshotRecorder(cfg, core, clock=clock or FakeClock())


def test_events_are_recorded_and_restored_when_the_snapshot_is_reopened(tmp_path: Path) -> None:
    async def main() -> tuple[Core, SnapshotRecorder]:
        core = Core()
        rec = recorder(tmp_path, core)
        rec.record(UserEvent(99, "before-open", b"", False))  # nothing to record into yet
        await rec.open()
        assert core.restored == [(0, 0, 0)]  # no file yet
        core.clock.witness(20)  # the member clock is 21 when the joins are delivered
        rec.record(MemberEvent(EventType.MEMBER_JOIN, (member("a"), member("me", "10.0.0.9"))))
        rec.record(MemberEvent(EventType.MEMBER_JOIN, (member("b", "fd00::2"),)))
        rec.record(MemberEvent(EventType.MEMBER_JOIN, (member("c", "10.0.0.3"),)))
        rec.record(MemberEvent(EventType.MEMBER_FAILED, (member("b", "fd00::2"),)))
        rec.record(MemberEvent(EventType.MEMBER_LEAVE, (member("c", "10.0.0.3"),)))
        rec.record(MemberEvent(EventType.MEMBER_UPDATE, (member("a"),)))
        rec.record(UserEvent(5, "deploy", b"", False))
        rec.record(IncomingQuery(ltime=3, id=1, name="q", payload=b"", source_node="a",
                                 deadline=0.0))
        await rec.close()
        rec.record(UserEvent(50, "after-close", b"", False))  # ignored
        # A restart: a new core, a new recorder on the same file.
        core2 = Core()
        rec2 = recorder(tmp_path, core2)
        await rec2.open()
        await rec2.close()
        return core2, rec2

    core2, rec2 = asyncio.run(main())
    state, warnings = read_snapshot(tmp_path / "snapshot")
    assert warnings == []
    assert state.alive == {"a": "10.0.0.1:7946", "me": "10.0.0.9:7946"}
    assert (state.last_clock, state.last_event_clock, state.last_query_clock) == (20, 5, 3)
    assert core2.restored == [(20, 5, 3)]
    assert (core2.clock.time(), core2.event_clock.time(), core2.query_clock.time()) == (21, 6, 4)
    assert rec2.previous_members() == [("a", "10.0.0.1:7946")]  # never ourselves


def test_the_ticker_records_member_and_query_clocks_after_they_moved(tmp_path: Path) -> None:
    async def main() -> None:
        clock = FakeClock()
        core = Core()
        rec = recorder(tmp_path, core, clock)
        await rec.open()
        assert clock.pending() == 1  # the first tick: the clocks as restored
        core.clock.witness(40)  # 41
        core.query_clock.witness(9)  # 10: internal queries never become events
        await clock.advance(CLOCK_INTERVAL)
        core.query_clock.witness(19)  # 20
        rec.poke()  # what the gossip driver calls after each input the core handled
        assert clock.pending() == 1
        await clock.advance(CLOCK_INTERVAL)
        # What close() records is only the member clock; make it older than the ticks so
        # only the ticker can have put 40 in the file.
        core.clock = LamportClock(1)
        await rec.close()
        assert clock.pending() == 0

    asyncio.run(main())
    state, _ = read_snapshot(tmp_path / "snapshot")
    assert (state.last_clock, state.last_query_clock) == (40, 19)


def test_an_idle_recorder_arms_no_ticker(tmp_path: Path) -> None:
    """Once the writer has what the ticks gave it, the ticker stops; a poke re-arms it
    only when a clock moved, a record re-arms it to check on the writer."""
    from tests.support import until

    async def main() -> None:
        clock = FakeClock()
        core = Core()
        rec = recorder(tmp_path, core, clock)
        await rec.open()
        writer = rec.writer
        assert writer is not None
        await clock.advance(CLOCK_INTERVAL)  # the first tick
        await until(lambda: not writer.unsettled, "the writer took the clocks")
        await clock.advance(CLOCK_INTERVAL)  # a tick armed while it was busy, if any
        assert clock.pending() == 0
        rec.poke()  # an input that moved no clock
        assert clock.pending() == 0
        core.clock.witness(7)
        rec.poke()
        assert clock.pending() == 1
        await clock.advance(CLOCK_INTERVAL)
        await until(lambda: not writer.unsettled, "the writer took the clock")
        await clock.advance(CLOCK_INTERVAL)
        assert clock.pending() == 0
        rec.record(UserEvent(3, "deploy", b"", False))
        assert clock.pending() == 1
        await rec.close()

    asyncio.run(main())
    state, _ = read_snapshot(tmp_path / "snapshot")
    assert (state.last_clock, state.last_event_clock) == (7, 3)


def test_the_ticker_hands_the_writer_only_clocks_that_changed(tmp_path: Path) -> None:
    """An idle agent's ticks queue nothing, so the writer thread is not woken for them."""
    async def main() -> list[tuple[str, int]]:
        clock = FakeClock()
        core = Core()
        rec = recorder(tmp_path, core, clock)
        await rec.open()
        assert rec.writer is not None
        told: list[tuple[str, int]] = []
        writer_clock, writer_query = rec.writer.clock, rec.writer.query

        def tell_clock(t: int) -> None:
            told.append(("clock", t))
            writer_clock(t)

        def tell_query(t: int) -> None:
            told.append(("query", t))
            writer_query(t)

        rec.writer.clock = tell_clock  # type: ignore[method-assign]
        rec.writer.query = tell_query  # type: ignore[method-assign]
        await clock.advance(CLOCK_INTERVAL)  # the first tick tells both
        await clock.advance(3 * CLOCK_INTERVAL)  # nothing changed: nothing told
        core.clock.witness(40)
        rec.poke()  # as the gossip driver does after each input
        await clock.advance(CLOCK_INTERVAL)
        rec.record(MemberEvent(EventType.MEMBER_JOIN, (member("a"),)))  # clock unchanged
        core.query_clock.witness(9)
        rec.poke()
        await clock.advance(2 * CLOCK_INTERVAL)
        await rec.close()
        return told

    told = asyncio.run(main())
    # (close() always records the final member clock)
    assert told == [("clock", 1), ("query", 0), ("clock", 41), ("query", 9), ("clock", 41)]
    state, _ = read_snapshot(tmp_path / "snapshot")
    assert (state.last_clock, state.last_query_clock) == (40, 9)


@pytest.mark.parametrize("rejoin", [False, True])
def test_the_leave_marker_decides_whether_a_restart_rejoins(
        tmp_path: Path, rejoin: bool, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> list[tuple[str, str]]:
        rec = recorder(tmp_path, Core(), rejoin_after_leave=rejoin)
        await rec.open()
        rec.record(MemberEvent(EventType.MEMBER_JOIN, (member("a"),)))
        rec.leave()
        rec.record(MemberEvent(EventType.MEMBER_JOIN, (member("b"),)))  # after a leave: no
        await rec.close()
        rec2 = recorder(tmp_path, Core(), rejoin_after_leave=rejoin)
        await rec2.open()
        await rec2.close()
        return rec2.previous_members()

    with caplog.at_level(logging.INFO, "serfd.agent"):
        previous = asyncio.run(main())
    assert "leave\n" in (tmp_path / "snapshot").read_text()
    assert read_snapshot(tmp_path / "snapshot", rejoin_after_leave=rejoin)[0].left
    if rejoin:
        assert previous == [("a", "10.0.0.1:7946")]
    else:
        assert previous == []
        assert "we left gracefully last time: not rejoining" in caplog.text


def test_the_state_for_a_rewrite_comes_from_the_core(tmp_path: Path) -> None:
    core = Core()
    core.member_list = [member("a"), member("b", status=MemberStatus.LEAVING),
                        member("c", status=MemberStatus.FAILED),
                        member("d", status=MemberStatus.LEFT)]
    core.clock.witness(10)
    core.event_clock.witness(4)
    rec = recorder(tmp_path, core)
    st = rec.state()
    assert st.alive == {"a": "10.0.0.1:7946", "b": "10.0.0.1:7946"}
    assert (st.last_clock, st.last_event_clock, st.last_query_clock) == (10, 4, 0)
    assert not st.left
    core.state = SerfState.LEAVING
    assert rec.state().left


def test_a_disk_fault_shows_in_stats_and_status(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self: FileOps, fd: int, data: memoryview) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    async def main() -> tuple[dict[str, str], str, dict[str, str], str]:
        good = recorder(tmp_path / "good", Core())
        assert (good.stats(), good.status(), good.fault) == ({}, "", None)  # not open yet
        await good.open()
        good.record(UserEvent(1, "x", b"", False))
        await good.close()
        monkeypatch.setattr(FileOps, "write", full)
        bad = recorder(tmp_path / "bad", Core())
        await bad.open()
        bad.record(UserEvent(1, "x", b"", False))
        await bad.close()  # the writer gave up on the last records: the fault stays
        return good.stats(), good.status(), bad.stats(), bad.status()

    good_stats, good_status, bad_stats, bad_status = asyncio.run(main())
    assert good_stats == {"snapshot_error": "", "snapshot_write_errors": "0"}
    assert good_status == ""
    assert bad_stats["snapshot_error"].startswith("No space left on device since ")
    assert int(bad_stats["snapshot_write_errors"]) >= 1
    assert bad_status.startswith("snapshot: error: No space left on device since ")


def test_the_agent_records_a_clock_an_input_moved() -> None:
    """The wiring: the gossip driver pokes the recorder after each input it pumped."""
    from tests.support import running_agent, until

    async def main() -> None:
        async with running_agent() as agent:
            path = agent.recorder.path
            # Idle: the first tick recorded the clocks as restored, the writer has them.
            await until(lambda: not agent.recorder.ticking, "an idle recorder")
            agent.serf.clock.witness(99)  # as a message from a peer would: clock 100
            assert agent.gossip is not None
            agent.gossip.pump()  # after that input
            await until(lambda: read_snapshot(path)[0].last_clock == 99, "clock on disk")

    asyncio.run(main())
