"""Snapshot: Serf's line format, replay rules, corruption tolerance, writer and compaction."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serfd.agent.snapshot import (
    SnapshotState,
    Snapshotter,
    format_addr,
    parse_snapshot,
    read_snapshot,
)
from tests.support import wait_until

# The snapshot of node0 in RPC-TRACES.md (real serf 0.9.4), before and after its leave.
TRACE = """alive: node0 127.78.1.1:7946
alive: node1 127.78.1.2:7946
alive: node2 127.78.1.3:7946
alive: node3 127.78.1.4:7946
clock: 1
event-clock: 1
event-clock: 2
query-clock: 2
query-clock: 3
query-clock: 4
query-clock: 5
query-clock: 6
query-clock: 7
event-clock: 3
query-clock: 8
event-clock: 5
query-clock: 9
query-clock: 10
query-clock: 13
not-alive: node2
clock: 2
clock: 3
not-alive: node3
not-alive: node3
clock: 4
clock: 5
"""
TRACE_LEFT = TRACE + "leave\nclock: 6\n"


def test_reads_a_real_serf_snapshot() -> None:
    st_, warnings = parse_snapshot(TRACE.encode())
    assert warnings == []
    assert st_.alive == {"node0": "127.78.1.1:7946", "node1": "127.78.1.2:7946"}
    assert (st_.last_clock, st_.last_event_clock, st_.last_query_clock) == (5, 5, 13)
    assert st_.previous_nodes("node0") == [("node1", "127.78.1.2:7946")]
    assert not st_.left


def test_leave_forgets_members_and_clocks_unless_rejoin_after_leave() -> None:
    st_, _ = parse_snapshot(TRACE_LEFT.encode())
    assert st_.alive == {} and st_.left
    assert (st_.last_clock, st_.last_event_clock, st_.last_query_clock) == (6, 0, 0)
    st2, _ = parse_snapshot(TRACE_LEFT.encode(), rejoin_after_leave=True)
    assert set(st2.alive) == {"node0", "node1"} and st2.left
    assert (st2.last_clock, st2.last_event_clock, st2.last_query_clock) == (6, 5, 13)


def test_names_with_spaces_ipv6_comments_and_legacy_lines() -> None:
    text = ("# written by hand\nalive: my node 10.0.0.1:7946\nalive: v6 [::1]:7946\n"
            "coordinate: {}\nalive: my node 10.0.0.2:7946\n")
    st_, warnings = parse_snapshot(text.encode())
    assert warnings == []
    assert st_.alive == {"my node": "10.0.0.2:7946", "v6": "[::1]:7946"}
    assert format_addr("::1", 7946) == "[::1]:7946"
    assert format_addr("10.0.0.1", 1) == "10.0.0.1:1"


@pytest.mark.parametrize(
    ("tail", "line", "reason"),
    [
        ("clock: 9", 27, "incomplete last line"),  # torn append: no newline
        ("clock: x\n", 27, "bad clock value"),
        ("event-clock: -1\n", 27, "bad event-clock value"),
        ("query-clock: 99999999999999999999999\n", 27, "bad query-clock value"),
        ("alive: nobody\n", 27, "failed to parse address"),
        ("alive: n1 not-an-ip:7946\n", 27, "bad address"),
        ("alive: n1 1.2.3.4:99999\n", 27, "bad address"),
        ("bogus record\n", 27, "unrecognized line"),
        ("\0\0\0\0\0\0\n", 27, "NUL bytes"),
        ("\n", 27, "empty line"),
    ],
)
def test_bad_lines_are_skipped_with_line_numbers(tail: str, line: int, reason: str) -> None:
    st_, warnings = parse_snapshot((TRACE + tail).encode())
    assert [(w.line, reason in w.reason) for w in warnings] == [(line, True)]
    assert set(st_.alive) == {"node0", "node1"} and st_.last_clock == 5


def test_truncated_mid_line_random_appended_and_zeroed_files() -> None:
    data = TRACE.encode()
    # Truncated in the middle of "not-alive: node3": the line before it still counts.
    cut = data[: data.index(b"not-alive: node3") + 7]
    st_, w = parse_snapshot(cut)
    assert set(st_.alive) == {"node0", "node1", "node3"} and len(w) == 1
    # Random bytes appended (a torn write of garbage): the good prefix survives.
    rnd = random.Random(5).randbytes(3000)
    st_, w = parse_snapshot(data + rnd)
    assert set(st_.alive) >= {"node0", "node1"} and w
    # A zeroed block in the middle (a crash after the size grew but before the data).
    z = data[:100] + bytes(4096) + data[100:]
    st_, w = parse_snapshot(z)
    assert w and all(x.line >= 1 for x in w)
    # All zero, or non-UTF-8.
    assert parse_snapshot(bytes(8192))[0] == SnapshotState()
    assert parse_snapshot(b"alive: \xff\xfe 1.2.3.4:1\n")[1][0].reason.startswith("not valid")


def test_read_snapshot_logs_file_and_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "snapshot"
    path.write_bytes(b"alive: a 127.0.0.1:1\nwhat\nclock: 3")
    st_, warnings = read_snapshot(path)
    assert st_.alive == {"a": "127.0.0.1:1"} and len(warnings) == 2
    assert f"{path}:2: unrecognized line" in caplog.text
    assert f"{path}:3: incomplete last line" in caplog.text
    assert read_snapshot(tmp_path / "absent") == (SnapshotState(), [])


# --- writing


def test_writer_appends_serf_lines(tmp_path: Path) -> None:
    path = tmp_path / "snap"
    s = Snapshotter(path, SnapshotState())
    s.start()
    s.member_alive("a", "127.0.0.1:7946")
    s.member_alive("b", "[::1]:7946")
    s.clock(2)  # recorded as 1
    s.clock(2)  # no growth: nothing
    s.user_event(4)
    s.user_event(3)  # older: nothing
    s.query(7)
    s.member_gone("b")
    s.close()
    assert path.read_text() == ("alive: a 127.0.0.1:7946\nalive: b [::1]:7946\nclock: 1\n"
                                "event-clock: 4\nquery-clock: 7\nnot-alive: b\n")


def test_appends_reach_the_file_without_close(tmp_path: Path) -> None:
    # What a SIGKILL leaves: records are written as they come, not at shutdown.
    path = tmp_path / "snap"
    s = Snapshotter(path, SnapshotState())
    s.start()
    s.user_event(9)
    wait_until(lambda: path.exists() and path.read_text() == "event-clock: 9\n")
    s.close()


def test_after_leave_only_clocks_are_recorded(tmp_path: Path) -> None:
    path = tmp_path / "snap"
    s = Snapshotter(path, SnapshotState())
    s.start()
    s.member_alive("a", "127.0.0.1:1")
    s.leave()
    s.member_alive("b", "127.0.0.1:2")
    s.user_event(5)
    s.clock(10)
    s.close()
    assert path.read_text() == "alive: a 127.0.0.1:1\nleave\nclock: 9\n"
    st_, _ = read_snapshot(path)
    assert st_.alive == {} and st_.left and st_.last_clock == 9


def test_compaction_keeps_state_and_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "snap"
    s = Snapshotter(path, SnapshotState(), min_compact_size=2000)
    s.start()
    for i in range(200):
        s.member_alive(f"n{i % 5}", f"127.0.0.{i % 5 + 1}:7946")
        s.user_event(i + 1)
    s.close()
    assert s.compactions >= 1
    assert path.stat().st_size < 2000
    assert not (tmp_path / "snap.compact").exists()
    st_, w = read_snapshot(path)
    assert w == []
    assert st_.alive == {f"n{i}": f"127.0.0.{i + 1}:7946" for i in range(5)}
    assert st_.last_event_clock == 200


def test_leftover_compact_file_does_not_matter(tmp_path: Path) -> None:
    # A crash during compaction leaves <path>.compact behind; the snapshot itself is whole.
    path = tmp_path / "snap"
    path.write_text(TRACE)
    (tmp_path / "snap.compact").write_text("alive: half")
    st_, w = read_snapshot(path)
    assert w == [] and st_.last_query_clock == 13
    s = Snapshotter(path, SnapshotState(last_query_clock=13), min_compact_size=10)
    s.start()
    s.clock(100)
    s.close()
    assert (tmp_path / "snap.compact").exists() is False
    assert read_snapshot(path)[0].last_clock == 99
    assert read_snapshot(path)[0].last_query_clock == 13


def test_rewrite_on_start_cleans_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "snap"
    path.write_bytes(TRACE.encode() + b"\x00\x00garbage\xff" + b"clock: 1")
    st_, w = read_snapshot(path)
    assert w
    s = Snapshotter(path, st_)
    s.start(rewrite=True)
    s.user_event(6)
    s.close()
    st2, w2 = read_snapshot(path)
    assert w2 == []
    assert (st2.alive, st2.last_clock, st2.last_event_clock, st2.last_query_clock) == (
        st_.alive, 5, 6, 13)
    assert oct(path.stat().st_mode & 0o777) == "0o640"


# --- properties


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000))
def test_fuzz_parser_never_raises(data: bytes) -> None:
    st_, warnings = parse_snapshot(data)
    n_lines = data.count(b"\n") + 1
    assert all(1 <= w.line <= n_lines for w in warnings)
    assert all(isinstance(n, str) and isinstance(a, str) for n, a in st_.alive.items())


_line = st.one_of(
    st.builds(lambda n, i, p: f"alive: {n} 10.0.{i}.1:{p}\n",
              st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=8),
              st.integers(0, 255), st.integers(0, 65535)),
    st.builds(lambda n: f"not-alive: {n}\n", st.text(min_size=1, max_size=8).filter(
        lambda s: "\n" not in s and "\0" not in s)),
    st.builds(lambda k, v: f"{k}: {v}\n", st.sampled_from(["clock", "event-clock", "query-clock"]),
              st.integers(0, 2**64 - 1)),
    st.just("leave\n"),
    st.just("# comment\n"),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_line, max_size=40), st.binary(max_size=40), st.booleans())
def test_garbage_suffix_never_loses_the_good_prefix(lines: list[str], junk: bytes,
                                                    rejoin: bool) -> None:
    good = "".join(lines).encode()
    want, w0 = parse_snapshot(good, rejoin_after_leave=rejoin)
    assert w0 == []
    # Garbage after a newline can add records, but anything it cannot parse is a warning
    # and the good prefix is read exactly as before when the junk has no newline.
    got, _ = parse_snapshot(good + junk.replace(b"\n", b""), rejoin_after_leave=rejoin)
    assert got == want


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["alive", "gone", "event", "query", "clock"]),
                          st.integers(0, 6), st.integers(1, 10**6)), max_size=60))
def test_writer_and_reader_agree(tmp_path_factory: pytest.TempPathFactory,
                                 ops: list[tuple[str, int, int]]) -> None:
    path = tmp_path_factory.mktemp("w") / "snap"
    s = Snapshotter(path, SnapshotState(), min_compact_size=300)
    s.start()
    alive: dict[str, str] = {}
    clocks = [0, 0, 0]
    for kind, node, v in ops:
        name = f"n {node}"
        if kind == "alive":
            alive[name] = f"127.0.0.{node + 1}:{v % 65536}"
            s.member_alive(name, alive[name])
        elif kind == "gone":
            alive.pop(name, None)
            s.member_gone(name)
        elif kind == "clock":
            clocks[0] = max(clocks[0], v - 1)
            s.clock(v)
        elif kind == "event":
            clocks[1] = max(clocks[1], v)
            s.user_event(v)
        else:
            clocks[2] = max(clocks[2], v)
            s.query(v)
    s.close()
    got, w = read_snapshot(path)
    assert w == []
    assert got.alive == alive
    assert [got.last_clock, got.last_event_clock, got.last_query_clock] == clocks
    assert not any(p.name.endswith(".compact") for p in path.parent.iterdir())
    os.unlink(path)
