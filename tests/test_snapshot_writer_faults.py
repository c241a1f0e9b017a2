"""The snapshot writer under faults: a full disk, failing fdatasync, a stuck or dying
writer thread, a full queue. No root needed: the disk errors come from a FileOps seam.

Most tests drive the writer by hand (``run_once``) with a fake clock, so nothing waits
on real time; the thread tests wait for a condition with a bounded deadline.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from serfd.agent.snapshot import (
    COMPACT_EXT,
    FAULT_LOG_INTERVAL,
    RETRY_MAX,
    RETRY_MIN,
    FileOps,
    SnapshotState,
    Snapshotter,
    read_snapshot,
)
from tests.support import wait_until


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Disk(FileOps):
    """The real file system, except that it can be full, or fail fdatasync, on demand."""

    def __init__(self) -> None:
        self.full = False  # write() raises write_errno (a full disk by default)
        self.write_errno = errno.ENOSPC
        self.sync_error: int | None = None  # fdatasync()/fsync() raise this errno
        self.raise_on_write: BaseException | None = None  # raised once by write()
        self.compaction_opens = 0

    def open(self, path: Path, flags: int, mode: int) -> int:
        if str(path).endswith(COMPACT_EXT):
            self.compaction_opens += 1
        return super().open(path, flags, mode)

    def write(self, fd: int, data: memoryview) -> int:
        if self.raise_on_write is not None:
            exc, self.raise_on_write = self.raise_on_write, None
            raise exc
        if self.full:
            raise OSError(self.write_errno, os.strerror(self.write_errno))
        return super().write(fd, data)

    def fdatasync(self, fd: int) -> None:
        if self.sync_error is not None:
            raise OSError(self.sync_error, os.strerror(self.sync_error))
        super().fdatasync(fd)

    def fsync(self, fd: int) -> None:
        if self.sync_error is not None:
            raise OSError(self.sync_error, os.strerror(self.sync_error))
        super().fsync(fd)


class Truth:
    """What the agent knows (members and clocks), as its state_fn would report it."""

    def __init__(self) -> None:
        self.alive: dict[str, str] = {}
        self.event = 0

    def state(self) -> SnapshotState:
        return SnapshotState(alive=dict(self.alive), last_event_clock=self.event)


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO, errno.EROFS])
def test_full_disk_is_reported_retried_and_recovered_by_compaction(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, err: int) -> None:
    path = tmp_path / "snap"
    disk, clock = Disk(), Clock()
    disk.write_errno = err
    reason = os.strerror(err)
    s = Snapshotter(path, SnapshotState(), clock=clock, ops=disk, wall=lambda: 0.0)
    s.member_alive("a", "127.0.0.1:1")
    s.run_once()
    assert path.read_text() == "alive: a 127.0.0.1:1\n" and s.fault is None

    disk.full = True
    s.member_alive("b", "127.0.0.2:1")
    s.user_event(5)
    s.run_once()
    assert s.fault is not None and s.fault.reason == reason
    assert str(s.fault) == f"{reason} since {time.strftime('%H:%M:%S', time.localtime(0))}"
    assert s.errors == 1
    errs = _errors(caplog)
    assert len(errs) == 1 and f"appending failed: {reason}" in errs[0]
    assert "keeps running" in errs[0]

    # While full, records still reach the writer's model; retries back off and stay
    # bounded; a half-written compaction file never stays behind to keep the disk full.
    s.member_alive("c", "127.0.0.3:1")
    s.member_gone("a")
    s.run_once()
    assert disk.compaction_opens == 0  # not yet time to retry
    for attempts in range(1, 13):
        clock.t += RETRY_MAX
        s.run_once()
        assert disk.compaction_opens == attempts  # every RETRY_MAX at least, never slower
        assert not (tmp_path / ("snap" + COMPACT_EXT)).exists()
    assert s.fault is not None
    # One error line, then one repeat per FAULT_LOG_INTERVAL at most.
    repeats = [e for e in _errors(caplog) if "still failing" in e]
    assert 1 <= len(repeats) <= 12 * RETRY_MAX / FAULT_LOG_INTERVAL + 1
    assert len(_errors(caplog)) == 1 + len(repeats)

    disk.full = False
    clock.t += RETRY_MAX
    s.run_once()
    assert s.fault is None
    assert "writable again" in caplog.text
    st, w = read_snapshot(path)
    assert w == []
    assert st.alive == {"b": "127.0.0.2:1", "c": "127.0.0.3:1"} and st.last_event_clock == 5

    # Appends resume, and retries start from the short backoff again.
    s.member_alive("d", "127.0.0.4:1")
    s.run_once()
    assert path.read_text().endswith("alive: d 127.0.0.4:1\n")
    disk.full = True
    s.member_alive("e", "127.0.0.5:1")
    s.run_once()
    disk.full = False
    clock.t += RETRY_MIN
    s.run_once()
    assert s.fault is None and "e" in read_snapshot(path)[0].alive
    s.request_stop()
    assert s.run_once()


def test_fdatasync_error_is_a_fault_and_the_file_is_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "snap"
    disk, clock = Disk(), Clock()
    s = Snapshotter(path, SnapshotState(), clock=clock, ops=disk)
    s.run_once()
    disk.sync_error = errno.EIO
    s.member_alive("a", "127.0.0.1:1")
    clock.t += 1.0  # a sync is due
    s.run_once()
    assert s.fault is not None and s.fault.reason == "Input/output error"
    disk.sync_error = None
    clock.t += RETRY_MIN
    s.run_once()
    assert s.fault is None and s.compactions == 1
    assert read_snapshot(path)[0].alive == {"a": "127.0.0.1:1"}


def test_writer_logs_through_the_loop_when_asked(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The agent passes loop.call_soon_threadsafe: log handlers (RPC monitor clients)
    # then run on the loop's thread, never on the writer's.
    posted: list[Callable[[], object]] = []
    disk = Disk()
    s = Snapshotter(tmp_path / "snap", SnapshotState(), clock=Clock(), ops=disk,
                    post=posted.append)
    s.run_once()
    disk.full = True
    s.member_alive("a", "127.0.0.1:1")
    s.run_once()
    assert s.fault is not None and len(posted) == 1 and _errors(caplog) == []
    posted[0]()
    assert len(_errors(caplog)) == 1 and "No space left on device" in _errors(caplog)[0]


def test_unwritable_directory_at_start_is_a_fault_not_a_crash(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    s = Snapshotter(blocker / "snap", SnapshotState(), clock=Clock())
    s.member_alive("a", "127.0.0.1:1")
    s.run_once()  # the snapshot's directory is a regular file
    assert s.fault is not None and s.errors == 1
    s.request_stop()
    assert s.run_once()


def test_full_queue_counts_drops_and_resync_loses_no_member(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "snap"
    truth = Truth()
    counters: dict[str, int] = {}
    s = Snapshotter(path, SnapshotState(), clock=Clock(), max_queue=8, counters=counters,
                    state_fn=truth.state)
    s.run_once()
    # The writer is stuck (nobody runs it): the agent goes on recording.
    for i in range(20):
        truth.alive[f"n{i}"] = f"127.0.1.{i}:7946"
        s.member_alive(f"n{i}", truth.alive[f"n{i}"])
        assert s.queued <= 8
    truth.event = 42
    s.user_event(42)
    assert counters == {"snapshot_queue_full": 13}
    drop_lines = [r for r in caplog.records if "dropping records" in r.getMessage()]
    assert len(drop_lines) == 1  # rate-limited
    # The writer catches up with what it had; then the next record brings the whole state.
    s.run_once()
    assert s.queued == 0
    truth.alive["late"] = "127.0.2.1:7946"
    s.member_alive("late", truth.alive["late"])
    s.run_once()
    st, w = read_snapshot(path)
    assert w == []
    assert st.alive == truth.alive and st.last_event_clock == 42
    assert counters == {"snapshot_queue_full": 13}
    # The ticker's check() also resyncs when no record comes.
    for i in range(12):
        truth.alive[f"m{i}"] = "127.0.3.1:7946"
        s.member_alive(f"m{i}", "127.0.3.1:7946")
    s.run_once()
    s.check()
    s.run_once()
    assert read_snapshot(path)[0].alive == truth.alive


def test_resync_keeps_a_leave(tmp_path: Path) -> None:
    path = tmp_path / "snap"
    truth = Truth()
    truth.alive["a"] = "127.0.0.1:1"
    s = Snapshotter(path, SnapshotState(), clock=Clock(), max_queue=2, state_fn=truth.state)
    s.leave()
    for _ in range(3):
        s.clock(9)
    s.run_once()
    s.check()
    s.run_once()
    st, _ = read_snapshot(path)
    assert st.left and st.alive == {}


def test_writer_thread_survives_an_unexpected_exception(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "snap"
    disk, truth = Disk(), Truth()
    s = Snapshotter(path, SnapshotState(), ops=disk, state_fn=truth.state)
    s.start()
    disk.raise_on_write = RuntimeError("boom")
    truth.alive["a"] = "127.0.0.1:1"
    s.member_alive("a", "127.0.0.1:1")
    wait_until(lambda: s.errors >= 1)
    assert "RuntimeError('boom')" in caplog.text
    s.check()  # what the agent's ticker does: hands the thread the whole state
    truth.alive["b"] = "127.0.0.2:1"
    s.member_alive("b", "127.0.0.2:1")
    wait_until(lambda: s.fault is None and read_snapshot(path)[0].alive == truth.alive)
    s.close()
    assert read_snapshot(path)[0].alive == truth.alive


class _Die(BaseException):
    pass


def test_a_writer_thread_that_ends_is_reported_and_restarted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "snap"
    disk, truth = Disk(), Truth()
    s = Snapshotter(path, SnapshotState(), ops=disk, state_fn=truth.state)
    s.start()
    disk.raise_on_write = _Die()
    truth.alive["a"] = "127.0.0.1:1"
    s.member_alive("a", "127.0.0.1:1")
    wait_until(lambda: s.fault is not None and "thread ended" in s.fault.reason)
    assert s._thread is not None
    s._thread.join(10)
    s.check()
    assert "restarting it" in caplog.text
    wait_until(lambda: s.fault is None and read_snapshot(path)[0].alive == truth.alive)
    truth.alive["b"] = "127.0.0.2:1"
    s.member_alive("b", "127.0.0.2:1")
    s.close()
    assert read_snapshot(path)[0].alive == truth.alive


def test_agent_shows_a_snapshot_fault_in_status_and_stats(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real agent in-process: the disk fills (every write fails ENOSPC), it keeps
    serving, STATUS and stats say so, then it recovers and clears both."""
    from serfd.agent.agent import Agent
    from serfd.agent.config import load_config
    from tests.support import free_port, until, write_base

    d = tmp_path / "serfd.d"
    write_base(d, tmp_path, free_port())
    real_write = FileOps.write
    full = {"on": False}

    def write(self: FileOps, fd: int, data: memoryview) -> int:
        if full["on"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, fd, data)

    monkeypatch.setattr(FileOps, "write", write)

    async def main() -> None:
        agent = Agent(load_config(d), config_dir=d)
        run = asyncio.ensure_future(agent.run())
        await until(lambda: hasattr(agent, "rpc"), "the agent to start")
        assert "snapshot" not in agent.status_line()
        assert agent.stats()["serfd"]["snapshot_error"] == ""
        full["on"] = True
        for i in range(1, 4):
            await agent.api.user_event(f"ev{i}", b"", False)
        for _ in range(500):
            if agent.recorder.fault is not None:
                break
            await asyncio.sleep(0.02)
        line = agent.status_line()
        assert "; snapshot: error: No space left on device since " in line
        assert agent.stats()["serfd"]["snapshot_error"].startswith("No space left on device")
        assert int(agent.stats()["serfd"]["snapshot_write_errors"]) >= 1
        assert agent.api.members()  # still serving
        full["on"] = False
        for _ in range(1000):
            if agent.recorder.fault is None:
                break
            await asyncio.sleep(0.02)
        assert "snapshot" not in agent.status_line()
        assert agent.stats()["serfd"]["snapshot_error"] == ""
        assert read_snapshot(tmp_path / "state" / "snapshot")[0].last_event_clock >= 3
        agent._on_signal(15)
        assert await asyncio.wait_for(run, 15) == 0

    asyncio.run(main())
