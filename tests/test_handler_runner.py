"""serfd.agent.handlers.HandlerRunner with real /bin/sh handlers: what a Serf handler sees
(environment, stdin), query answers from stdout, the timeout that kills the whole process
group, and the backlog cap.

Handlers are short real subprocesses from a temporary directory; no serf binary, no root.
Time is a FakeClock: the handler timeout fires when the test advances it, and the test
waits on process completion, never on a sleep.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from pathlib import Path

import pytest

from serfd.agent.handlers import HandlerRunner, parse_handlers
from serfd.base.ratelog import DropLog
from serfd.core.filters import AnyEvent
from serfd.core.member import Member
from serfd.core.query import IncomingQuery
from serfd.core.serf import EventType, MemberEvent, UserEvent
from serfd.testing.clock import FakeClock

SELF = Member("web-1", "10.0.0.5", 7946, {"role": "web", "dc-name": "east 1"})

# Writes the SERF_* environment (sorted) and stdin to files named by the test.
DUMP = 'env | grep "^SERF_\\|^NOTIFY_SOCKET" | sort > "$OUT.env"; cat > "$OUT.in"'


class Rig:
    def __init__(self, tmp: Path, table: dict[str, str], *, max_concurrent: int = 4,
                 timeout: float = 60.0, backlog: int = 256) -> None:
        self.clock = FakeClock()
        self.tasks: set[asyncio.Task[None]] = set()
        self.counters: dict[str, int] = {}
        self.responses: list[tuple[IncomingQuery, bytes, str]] = []
        self.runner = HandlerRunner(
            parse_handlers(table), tmp, max_concurrent=max_concurrent, timeout=timeout,
            self_member=lambda: SELF,
            respond=lambda q, out, label: self.responses.append((q, out, label)),
            spawn=self.spawn, drops=DropLog(logging.getLogger("test.handlers"), self.counters),
            clock=self.clock, backlog=backlog)

    def spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def done(self) -> None:
        """Wait for every run (and the runs they started) to finish."""
        while self.tasks:
            await asyncio.wait_for(asyncio.gather(*list(self.tasks)), 10.0)  # a hang guard


def run_events(tmp: Path, table: dict[str, str], *events: AnyEvent) -> Rig:
    async def main() -> Rig:
        r = Rig(tmp, table)
        for ev in events:
            r.runner.dispatch(ev)
        await r.done()
        return r

    return asyncio.run(main())


def env_lines(out: Path) -> list[str]:
    return Path(f"{out}.env").read_text().splitlines()


def test_a_user_event_handler_sees_serfs_environment_and_the_payload(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "user"
    monkeypatch.setenv("OUT", str(out))
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")  # never passed on
    r = run_events(tmp_path, {"user:deploy": DUMP}, UserEvent(7, "deploy", b"v2", False))
    assert env_lines(out) == [
        "SERF_EVENT=user",
        "SERF_SELF_NAME=web-1",
        "SERF_SELF_ROLE=web",
        "SERF_TAG_DC_NAME=east 1",
        "SERF_TAG_ROLE=web",
        "SERF_USER_EVENT=deploy",
        "SERF_USER_LTIME=7",
    ]
    assert Path(f"{out}.in").read_bytes() == b"v2\n"  # a newline appended, as Serf does
    assert r.runner.counters == {"runs": 1, "failed": 0, "timed_out": 0}


def test_a_member_event_handler_reads_serfs_member_lines(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "member"
    monkeypatch.setenv("OUT", str(out))
    members = (Member("db-1", "10.0.0.7", 7946, {"role": "db", "dc": "east"}),
               Member("cache\t1", "10.0.0.8", 7946, {}))
    run_events(tmp_path, {"member-join": DUMP},
               MemberEvent(EventType.MEMBER_JOIN, members),
               MemberEvent(EventType.MEMBER_LEAVE, members))  # no handler for it
    assert env_lines(out)[0] == "SERF_EVENT=member-join"
    assert not any(line.startswith(("SERF_USER", "SERF_QUERY")) for line in env_lines(out))
    assert Path(f"{out}.in").read_text() == (
        "db-1\t10.0.0.7\tdb\trole=db,dc=east\n"
        "cache\\t1\t10.0.0.8\t\t\n")


def test_a_query_handler_answers_with_its_stdout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "query"
    monkeypatch.setenv("OUT", str(out))
    q = IncomingQuery(ltime=12, id=3, name="uptime", payload=b"how long?", source_node="n1",
                      deadline=1e9)
    r = run_events(tmp_path, {"query:uptime": f'{DUMP}; echo "up $SERF_QUERY_NAME"',
                              "query": "echo refused; exit 1"}, q)
    assert "SERF_EVENT=query" in env_lines(out)
    assert "SERF_QUERY_NAME=uptime" in env_lines(out)
    assert "SERF_QUERY_LTIME=12" in env_lines(out)
    assert Path(f"{out}.in").read_bytes() == b"how long?\n"
    # Only the run that exited 0 answers; the failed one is counted.
    assert [(got, body) for got, body, _ in r.responses] == [(q, b"up uptime\n")]
    assert r.runner.counters == {"runs": 2, "failed": 1, "timed_out": 0}


def test_a_handler_named_by_a_file_in_the_handlers_directory_runs_there(tmp_path: Path) -> None:
    script = tmp_path / "notify"
    script.write_text('#!/bin/sh\necho "$1 $(pwd)" > result\n')
    script.chmod(0o755)
    run_events(tmp_path, {"user": "notify first"}, UserEvent(1, "x", b"", False))
    assert (tmp_path / "result").read_text() == f"first {tmp_path}\n"


def test_a_handler_past_its_timeout_is_killed_with_its_whole_process_group(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The handler starts a child that holds its stdout; only a group kill ends both, and
    # the run cannot end while the child holds the pipe.
    async def main() -> Rig:
        seen_start = asyncio.Event()

        class Watch(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if "stdout: started" in record.getMessage():
                    seen_start.set()

        watch = Watch()
        logging.getLogger("serfd.handlers").addHandler(watch)
        try:
            r = Rig(tmp_path, {"user": "sleep 1000 & echo started; wait"}, timeout=30.0)
            r.runner.dispatch(UserEvent(1, "slow", b"", False))
            await asyncio.wait_for(seen_start.wait(), 10.0)  # a hang guard
            await r.clock.advance(29.0)
            assert r.tasks and r.runner.counters["timed_out"] == 0
            await r.clock.advance(1.0)  # the timeout
            await r.done()
            return r
        finally:
            logging.getLogger("serfd.handlers").removeHandler(watch)

    with caplog.at_level(logging.INFO, "serfd.handlers"):
        r = asyncio.run(main())
    assert r.runner.counters == {"runs": 1, "failed": 0, "timed_out": 1}
    assert r.runner.running == 0
    assert "timed out after 30s for user slow; killing its process group" in caplog.text


def test_runs_beyond_the_backlog_are_dropped_and_counted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ran"
    monkeypatch.setenv("OUT", str(out))

    async def main() -> tuple[Rig, int, int]:
        r = Rig(tmp_path, {"user": 'echo "$SERF_USER_EVENT" >> "$OUT"'}, max_concurrent=1,
                backlog=3)
        for i in range(10):  # one takes the slot, three wait, six are dropped
            r.runner.dispatch(UserEvent(i, f"ev{i}", b"", False))
        running, queued = r.runner.running, r.runner.queued
        await r.done()  # (asserting first could leave a process being created)
        return r, running, queued

    r, running, queued = asyncio.run(main())
    assert (running, queued) == (1, 3)
    assert out.read_text().splitlines() == ["ev0", "ev1", "ev2", "ev3"]
    assert r.counters == {"handler_backlog_user": 6}
    assert r.runner.running == 0 and r.runner.queued == 0
