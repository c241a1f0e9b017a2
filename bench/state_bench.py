#!/usr/bin/env python3
"""Durable-state benchmark: restart-to-rejoined (serfd vs serf) and snapshot cost (serfd).

    .venv/bin/python -m bench.state_bench [--reps 3] [--appends 100000] [--members 1000]

* restart-to-rejoined: a 3-node cluster of one implementation (serf agents with
  ``-snapshot``, or serfd with its default snapshot); SIGKILL one node, wait until the
  others list it ``failed``, start it again with no join address; time from the spawn
  until every agent (itself included) lists all three ``alive``.
* snapshot appends/s: records queued to ``serfd.agent.snapshot.Snapshotter`` until the writer
  thread has written them all (one record = one line; compactions included).
* compaction at N members: ``Snapshotter.compact()`` (temp file, fsync, rename, dir fsync)
  and ``read_snapshot`` of the result. Serf has the same operations but no way to time
  them from outside the Go process, so these two are serfd-only.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from serfd.agent.snapshot import SnapshotState, Snapshotter, read_snapshot
from tests.integration.harness import (
    PROBE_INTERVAL_LAN,
    SUSPICION_TIMEOUT_LAN,
    AddressAllocator,
    Cluster,
    SerfAgent,
    SerfdAgent,
)

FAIL_TIMEOUT = SUSPICION_TIMEOUT_LAN + PROBE_INTERVAL_LAN + 15.0


def restart_to_rejoined(impl: str, alloc: AddressAllocator, tmp: Path) -> float:
    c = Cluster(alloc, tmp)
    try:
        agents: list[SerfAgent | SerfdAgent] = []
        for i in range(3):
            if impl == "serf":
                snap = tmp / f"n{i}.snapshot"
                agents.append(c.serf(f"n{i}", extra_args=[f"-snapshot={snap}"]))
            else:
                agents.append(c.serfd(f"n{i}", log_level="info"))
        c.wait_ready(15)
        for a in agents[1:]:
            a.join([agents[0].bind_addr])
        c.wait_all_alive(timeout=15)
        victim = agents[2]
        if impl == "serf":
            # serf buffers its snapshot and flushes only on a later append >= 500 ms on;
            # nudge it with events until the peers are on disk (else it cannot rejoin).
            snap = tmp / "n2.snapshot"
            deadline = time.monotonic() + 15
            while not all(f"alive: {a.name} ".encode() in snap.read_bytes()
                          for a in agents[:2]):
                assert time.monotonic() < deadline, "serf never flushed its snapshot"
                victim.client().event("nudge", b"", False)
                time.sleep(0.6)
        victim.kill()
        c.wait_statuses(agents[:2], {victim.name: "failed"}, FAIL_TIMEOUT)
        victim.proc = None
        t0 = time.monotonic()
        victim.start()
        victim.wait_ready(15)
        c.wait_statuses(agents, {a.name: "alive" for a in agents}, 30, interval=0.01)
        return time.monotonic() - t0
    finally:
        c.close()


def appends_per_second(n: int, tmp: Path) -> float:
    s = Snapshotter(tmp / "appends.snapshot", SnapshotState())
    s.start()
    t0 = time.perf_counter()
    for i in range(n):
        if i % 4 == 0:
            s.member_alive(f"node-{i % 1000}", f"10.0.{i % 250}.1:7946")
        elif i % 4 == 1:
            s.member_gone(f"node-{(i * 7) % 1000}")
        elif i % 4 == 2:
            s.user_event(i)
        else:
            s.clock(i + 2)
    s.close(timeout=120)
    return n / (time.perf_counter() - t0)


def compaction(members: int, tmp: Path, reps: int) -> tuple[float, float, int]:
    path = tmp / "compact.snapshot"
    state = SnapshotState(alive={f"node-{i}": f"10.{i // 250}.{i % 250}.1:7946"
                                 for i in range(members)},
                          last_clock=members, last_event_clock=77, last_query_clock=5)
    s = Snapshotter(path, state)
    s.start()
    s.close()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        s.compact()
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    got, warnings = read_snapshot(path)
    read_t = time.perf_counter() - t0
    assert not warnings and len(got.alive) == members
    return statistics.median(times), read_t, path.stat().st_size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--appends", type=int, default=100_000)
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--impl", nargs="+", default=["serf", "serfd"])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="state-bench-"))
    alloc = AddressAllocator(range(200, 240))
    try:
        print("restart-to-rejoined (3 nodes, SIGKILL, restart without join), seconds")
        med: dict[str, float] = {}
        for impl in args.impl:
            if impl == "serf" and shutil.which("serf") is None:
                print("  serf : not installed")
                continue
            samples = [restart_to_rejoined(impl, alloc, tmp / f"{impl}{r}")
                       for r in range(args.reps)]
            med[impl] = statistics.median(samples)
            print(f"  {impl:5s}: median {med[impl]:.2f}  [{min(samples):.2f}-{max(samples):.2f}]"
                  f"  ({len(samples)} reps)")
        if len(med) == 2:
            print(f"  serfd/serf: {med['serfd'] / med['serf']:.2f}x")
        rate = appends_per_second(args.appends, tmp)
        print(f"snapshot appends (serfd, writer thread, {args.appends} records): "
              f"{rate:,.0f} /s")
        ct, rt, size = compaction(args.members, tmp, max(3, args.reps))
        print(f"compaction at {args.members} members (serfd, incl. fsync+rename): "
              f"{ct * 1000:.1f} ms; file {size} bytes; read back {rt * 1000:.1f} ms")
    finally:
        alloc.release_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
