"""The timing handlers the event benches give every agent, run as the agents run them.

``bench.events_bench.Handlers`` writes two shell scripts; both agents start a handler as
``/bin/sh -c SCRIPT`` with the event's payload on stdin (and a newline added, which the
scripts do not need). ``EventLog`` reads back what the event handler appended.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bench.events_bench import EventLog, Handlers, nearest_rank


def run_handler(script: str, node: str, stdin: bytes) -> str:
    env = {**os.environ, "SERF_SELF_NAME": node}
    out = subprocess.run(["/bin/sh", "-c", script], input=stdin, env=env,
                         capture_output=True, check=True, timeout=10)
    return out.stdout.decode()


def test_event_handler_lines_read_back_once(tmp_path: Path) -> None:
    h = Handlers.write(tmp_path)
    log = EventLog(h.log)
    assert log.new_lines() == []  # no handler has run: no file yet
    run_handler(h.event_sh, "node0", b"e0\n")
    run_handler(h.event_sh, "node7", b"e0")  # as a payload without a newline
    got = log.new_lines()
    assert [(node, key) for node, key, _ in got] == [("node0", "e0"), ("node7", "e0")]
    assert all(ts > 1e9 for _, _, ts in got)  # wall-clock seconds since the epoch
    assert log.new_lines() == []
    run_handler(h.event_sh, "node1", b"e1\n")
    assert [(node, key) for node, key, _ in log.new_lines()] == [("node1", "e1")]


def test_event_log_keeps_a_partial_line_until_it_ends(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    log = EventLog(path)
    path.write_bytes(b"node0 e0 100.5\nnode1 e0 10")
    assert log.new_lines() == [("node0", "e0", 100.5)]
    with path.open("ab") as f:
        f.write(b"1.25\n")
    assert log.new_lines() == [("node1", "e0", 101.25)]


def test_query_handler_answers_node_and_payload(tmp_path: Path) -> None:
    h = Handlers.write(tmp_path)
    assert run_handler(h.query_sh, "node3", b"ping\n") == "node3:ping"


def test_nearest_rank() -> None:
    xs = [float(x) for x in range(100, 0, -1)]
    assert nearest_rank(xs, 0.5) == 50.0
    assert nearest_rank(xs, 0.99) == 99.0
    assert nearest_rank([3.0], 0.99) == 3.0
