"""Durable state: a crashed serfd comes back by itself, without replaying old events.

Each test kills or stops a serfd it started (by PID, through the harness) and starts it
again from the same state directory with a config that has no ``join``. Events are
observed in serfd's debug log, where the agent notes every user event delivered to it
("delivered user event NAME (ltime N)").
"""

from __future__ import annotations

import random
import re
import time

import pytest

from tests.integration.dropins import restart, write_dropin
from tests.integration.harness import PROBE_INTERVAL_LAN, SUSPICION_TIMEOUT_LAN, RPCClient
from tests.support import wait_until

FAIL_TIMEOUT = SUSPICION_TIMEOUT_LAN + PROBE_INTERVAL_LAN + 8.0
REJOIN_TIMEOUT = 5.0  # the acceptance bound


def deliveries(agent, name: str) -> int:  # type: ignore[no-untyped-def]
    text = agent.log_path.read_text(errors="replace")
    return len(re.findall(rf"delivered user event {re.escape(name)} \(ltime", text))


def send_event(agent, name: str) -> None:  # type: ignore[no-untyped-def]
    with RPCClient(agent.rpc_target) as c:
        c.event(name, b"payload", coalesce=False)


def three_nodes(make_cluster):  # type: ignore[no-untyped-def]
    c = make_cluster()
    s = c.serf("gosrf")
    d0 = c.serfd("pyd0")
    d1 = c.serfd("pyd1")
    c.wait_ready()
    assert d0.join([s.bind_addr]) == 1
    assert d1.join([d0.bind_addr]) == 1
    c.wait_all_alive(timeout=8)
    return c, s, d0, d1


def test_sigkill_then_restart_without_join_rejoins_and_does_not_replay(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c, s, d0, d1 = three_nodes(make_cluster)
    names = [f"deploy-{i}" for i in range(3)]
    for n in names:
        send_event(s, n)
    wait_until(lambda: all(deliveries(d1, n) == 1 for n in names), 8, desc="events at pyd1")
    time.sleep(0.3)  # past nothing in particular: the record is written as it happens

    d1.kill()
    c.wait_statuses([s, d0], {"pyd1": "failed"}, FAIL_TIMEOUT)
    assert d1.join_addrs == []
    t0 = time.monotonic()  # the 5 s include the process start
    restart(d1)
    d1.wait_ready()
    c.wait_statuses([s, d0, d1], {"pyd1": "alive", "pyd0": "alive", "gosrf": "alive"},
                    max(0.1, REJOIN_TIMEOUT - (time.monotonic() - t0)))
    print(f"restart-to-rejoined: {time.monotonic() - t0:.2f} s")
    # The push/pull of the rejoin carries the recent events again; none may run twice.
    time.sleep(1.5)
    assert [deliveries(d1, n) for n in names] == [1, 1, 1]
    # And new events still get through.
    send_event(s, "after-restart")
    wait_until(lambda: deliveries(d1, "after-restart") == 1, 8, desc="new event")


def test_graceful_leave_is_not_undone_by_a_restart(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c, s, d0, d1 = three_nodes(make_cluster)
    assert d1.stop_graceful() == 0
    c.wait_statuses([s, d0], {"pyd1": "left"}, 8)
    restart(d1)
    d1.wait_ready()
    time.sleep(3)
    assert d1.statuses() == {"pyd1": "alive"}  # alone: no rejoin after a leave
    assert s.statuses()["pyd1"] == "left"
    assert "not rejoining" in d1.log_path.read_text()

    # With rejoin_after_leave, the same restart rejoins.
    assert d1.stop_graceful() == 0
    write_dropin(d1, "rejoin_after_leave = true")
    d1.proc = None  # exited; start() rewrites the harness file and keeps our drop-in
    d1.start()
    d1.wait_ready()
    c.wait_statuses([s, d0, d1], {"pyd1": "alive"}, REJOIN_TIMEOUT + 3)


def _corrupt_truncate(data: bytes) -> bytes:
    # Cut in the middle of the last "alive:" line of a peer: the lines before it survive.
    i = data.rindex(b"alive: ")
    return data[: i + 9]


def _corrupt_append(data: bytes) -> bytes:
    return data + random.Random(7).randbytes(2000)


def _corrupt_zero(data: bytes) -> bytes:
    return bytes(len(data))


@pytest.mark.parametrize("corrupt", [_corrupt_truncate, _corrupt_append, _corrupt_zero],
                         ids=["truncated-mid-line", "random-appended", "zeroed"])
def test_corrupt_snapshot_warns_and_starts(make_cluster, corrupt) -> None:  # type: ignore[no-untyped-def]
    c, _s, _d0, d1 = three_nodes(make_cluster)
    d1.kill()
    path = d1.state_dir / "snapshot"
    original = path.read_bytes()
    assert b"alive: gosrf" in original and b"alive: pyd0" in original
    path.write_bytes(corrupt(original))
    restart(d1)
    d1.wait_ready()
    log = d1.log_path.read_text(errors="replace")
    assert re.search(rf"{re.escape(str(path))}:\d+: ", log), log[-2000:]
    if corrupt is _corrupt_zero:
        # Nothing left to rejoin from; it runs (peers that still knew it may reach it).
        assert "0 previous nodes" in log
        assert d1.running() and "pyd1" in d1.statuses()
        return
    # What survived names at least one peer: it rejoins the cluster.
    c.wait_statuses([d1], {"pyd0": "alive", "gosrf": "alive", "pyd1": "alive"}, FAIL_TIMEOUT)


def test_serf_snapshot_is_read_by_serfd(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """A node moves from `serf agent -snapshot` to serfd keeping its state."""
    c = make_cluster()
    d0 = c.serfd("pyd0")
    d0.wait_ready()
    snap_dir = c.tmpdir / "gostate"
    snap_dir.mkdir(parents=True)
    snap = snap_dir / "snapshot"
    s = c.serf("mover", extra_args=[f"-snapshot={snap}"])
    s.wait_ready()
    assert s.join([d0.bind_addr]) == 1
    for n in ("e1", "e2"):
        send_event(s, n)
    # serf buffers its snapshot and flushes on a later append at least 500 ms on.
    flushes = iter(range(100))

    def flushed() -> bool:
        data = snap.read_bytes()
        if b"event-clock: 2" in data and b"alive: pyd0" in data:
            return True
        send_event(s, f"flush{next(flushes)}")
        return False

    wait_until(flushed, 10, interval=0.6, desc="serf wrote its snapshot")
    s.kill()
    c.wait_statuses([d0], {"mover": "failed"}, FAIL_TIMEOUT)
    # The same name and address, now serfd, pointed at serf's snapshot; no join.
    from tests.integration.harness import SerfdAgent

    d = SerfdAgent("mover", s.ip, tmpdir=c.tmpdir)
    c.agents.append(d)
    write_dropin(d, f'snapshot_path = "{snap}"')
    d.start()
    d.wait_ready()
    c.wait_statuses([d0, d], {"mover": "alive", "pyd0": "alive"}, REJOIN_TIMEOUT)
    time.sleep(1.5)
    assert deliveries(d, "e1") == 0 and deliveries(d, "e2") == 0  # serf handled those
    assert int(d.stats()["serf"]["event_time"]) >= 3


def test_join_replay_replays_old_events_default_does_not(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c = make_cluster()
    s = c.serf("gosrf")
    s.wait_ready()
    send_event(s, "old-news")
    fresh = c.serfd("fresh")
    replayer = c.serfd("replayer")
    c.wait_ready()
    out = fresh.serfctl("join", s.bind_addr)
    assert out.returncode == 0, out.stderr
    out = replayer.serfctl("join", "--replay", s.bind_addr)
    assert out.returncode == 0, out.stderr
    wait_until(lambda: deliveries(replayer, "old-news") == 1, 8, desc="replayed event")
    time.sleep(1)
    assert deliveries(fresh, "old-news") == 0


def test_serfd_snapshot_is_read_by_serf(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """And back: serf started on serfd's snapshot rejoins and skips the handled events."""
    c = make_cluster()
    s0 = c.serf("gosrf")
    mover = c.serfd("mover")
    c.wait_ready()
    assert mover.join([s0.bind_addr]) == 1
    send_event(s0, "handled-by-serfd")
    wait_until(lambda: deliveries(mover, "handled-by-serfd") == 1, 8, desc="event at mover")
    snap = mover.state_dir / "snapshot"
    wait_until(lambda: b"event-clock: 1" in snap.read_bytes(), 5, desc="event-clock on disk")
    mover.kill()
    c.wait_statuses([s0], {"mover": "failed"}, FAIL_TIMEOUT)
    from tests.integration.harness import SerfAgent

    handler = c.tmpdir / "seen.sh"
    seen = c.tmpdir / "seen.txt"
    handler.write_text(f"#!/bin/sh\necho \"$SERF_USER_EVENT\" >> {seen}\n")
    handler.chmod(0o755)
    g = SerfAgent("mover", mover.ip, tmpdir=c.tmpdir,
                  extra_args=[f"-snapshot={snap}", f"-event-handler=user={handler}"])
    c.agents.append(g)
    g.start()
    g.wait_ready()
    c.wait_statuses([s0, g], {"mover": "alive", "gosrf": "alive"}, REJOIN_TIMEOUT)
    send_event(s0, "new-one")
    wait_until(lambda: seen.exists() and "new-one" in seen.read_text(), 10, desc="new event")
    assert "handled-by-serfd" not in seen.read_text()
