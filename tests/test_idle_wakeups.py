"""What an idle node wakes for. Gossip ticks: not while nothing is queued; a broadcast
queued later still goes out on the ticker's next tick, then every interval. A probe acked
in time: not for its ProbeTimeout."""

from __future__ import annotations

from itertools import pairwise

import pytest

from serfd.core.serf import UserEvent
from serfd.memberlist.swim import Memberlist
from serfd.testing.serf_sim import build_cluster
from serfd.wire.messages import Ack, Alive, NodeStateType, Ping
from serfd.wire.packet import encode_packet
from tests.test_swim import alive, core, feed, sent

GOSSIP = 0.2  # MemberlistConfig.gossip_interval (LAN)


def _gossip_only() -> Memberlist:
    """``me`` knowing live peers a..c, with no probe or push/pull ticker: the only
    periodic work is the gossip ticker."""
    m, _, _ = core(probe_interval=0.0, push_pull_interval=0.0)
    for i, name in enumerate("abc"):
        feed(m, alive(name, 1, ip=f"10.0.0.{i + 2}"), now=0.0)
    return m


def _run(m: Memberlist, until: float) -> list[tuple[float, list[object], tuple[str, int]]]:
    """Drive the core as the agent does (handle_timer at get_timer, up to ``until``);
    (when, messages, to) of every packet sent."""
    out = []
    while (t := m.get_timer()) is not None and t <= until:
        m.handle_timer(t)
        out += [(t, msgs, to) for msgs, to in sent(m)]
    return out


def test_no_wakeup_for_gossip_ticks_while_nothing_is_queued() -> None:
    m = _gossip_only()
    assert m.num_queued() > 0  # the alives heard, for retransmission
    first = m.get_timer()
    assert first is not None and first < GOSSIP  # the ticker's random stagger
    out = _run(m, 10.0)
    ticks = sorted({t for t, _, _ in out})
    assert ticks and ticks[0] == first
    # Rounds go out every GossipInterval while there is something to send ...
    assert all(b - a == pytest.approx(GOSSIP) for a, b in pairwise(ticks))
    # ... until every broadcast used up its retransmits: then nothing is due at all.
    assert m.num_queued() == 0
    assert m.get_timer() is None


def test_a_broadcast_queued_while_idle_goes_out_on_the_next_tick_of_the_phase() -> None:
    m = _gossip_only()
    first = m.get_timer()
    assert first is not None
    _run(m, 10.0)
    assert m.get_timer() is None
    # News at an arbitrary instant: the next tick is the ticker's own (first + k x 0.2),
    # never sooner than now and less than one interval away.
    feed(m, alive("d", 1, ip="10.0.0.9"), now=7.33)
    assert sent(m) == []  # nothing went out with the input itself
    due = m.get_timer()
    assert due is not None and 7.33 <= due < 7.33 + GOSSIP
    k = (due - first) / GOSSIP
    assert k == pytest.approx(round(k), abs=1e-6)
    out = _run(m, 9.0)
    assert out[0][0] == due
    # GossipNodes (3) random live nodes get it at that tick, then again each interval
    # until its retransmits are used up; then the node is idle again.
    first_round = [(msgs, to) for t, msgs, to in out if t == due]
    assert len(first_round) == 3
    assert all(any(isinstance(x, Alive) and x.node == "d" for x in msgs)
               for msgs, _ in first_round)
    ticks = sorted({t for t, _, _ in out})
    assert all(b - a == pytest.approx(GOSSIP) for a, b in pairwise(ticks))
    assert m.get_timer() is None


def test_an_idle_serf_cluster_wakes_only_to_probe_and_a_user_event_still_spreads() -> None:
    sim = build_cluster(4, settle=30.0)  # the join's broadcasts are all retransmitted
    calls = sim.stats.timer_calls
    sim.run_for(10.0)
    idle_calls = sim.stats.timer_calls - calls
    # Per node and second: the probe tick (the probe's deadline falls on the next tick,
    # its ProbeTimeout is dropped once the ack is in), no 5 gossip ticks; a little slack
    # for Serf's own timers.
    assert idle_calls <= 4 * 10 * 1.25, idle_calls
    sim.serf("n0").user_event("deploy", b"v1", False, sim.now)
    sim.service("n0")

    def everyone_has_it() -> bool:
        return all(any(isinstance(e, UserEvent) and e.name == "deploy" for e in got[x])
                   for x in names)

    names = [f"n{i}" for i in range(1, 4)]
    got: dict[str, list[object]] = {x: [] for x in names}

    def collect() -> bool:
        for x in names:
            got[x].extend(sim.serf(x).drain_events())
        return everyone_has_it()

    # One gossip tick (0.2 s) at most to go out, a second round for any it missed.
    assert sim.run_until(sim.now + 0.5, collect, every=0.01)


def test_no_wakeup_for_the_probe_timeout_of_a_probe_acked_in_time() -> None:
    m, _, _ = core(push_pull_interval=0.0)
    feed(m, alive("a", 1), now=0.0)
    wakeups: list[float] = []
    pings: list[float] = []
    # ``a`` acks every ping at once; the alives' retransmits are over well before 10 s.
    while (t := m.get_timer()) is not None and t <= 20.0:
        if t >= 10.0:
            wakeups.append(t)
        m.handle_timer(t)
        for msgs, to in sent(m):
            if isinstance(msgs[0], Ping):
                pings.append(t)
                m.receive_datagram(_packet(Ack(msgs[0].seq_no).encode()), to, t + 0.001)
                sent(m)
    assert m.num_queued() == 0
    assert m.get_node("a").state == NodeStateType.ALIVE  # type: ignore[union-attr]
    # One wake-up per ProbeInterval, the tick (the probe's deadline falls on the next
    # one): the ProbeTimeout, 0.5 s after each ping, is dropped once the ack is in.
    assert len([p for p in pings if p >= 10.0]) >= 5  # (a tick may pass over ourselves)
    assert len(wakeups) == 10
    assert all(b - a == pytest.approx(1.0) for a, b in pairwise(wakeups))
    # Unanswered, the ProbeTimeout still fires (0.5 s after the ping).
    t = m.get_timer()
    assert t is not None
    m.handle_timer(t)
    assert any(isinstance(msgs[0], Ping) for msgs, _ in sent(m))
    assert m.get_timer() == pytest.approx(t + 0.5)


def _packet(msg: bytes) -> bytes:
    return encode_packet([msg], compress=False, crc=False)
