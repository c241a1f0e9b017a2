"""Verified suspicions (MemberlistConfig.verified_suspicions), one rule at a time.

A suspicion whose k confirmations are in and that our own probe or confirmation check
verified (it failed too, and our awareness score was 0 when it started) ends after a
shorter floor than memberlist's minimum; after a refused TCP ping, shorter still. The
cluster-wide effect (detection time, false deaths) is in tests/test_verified_sim.py.
"""

from __future__ import annotations

import pytest

from serfd.memberlist.broadcast import retransmit_limit
from serfd.memberlist.suspicion import Suspicion, verified_suspicion_timeouts
from serfd.memberlist.swim import Memberlist, StreamKind
from serfd.testing.sim import Sim
from serfd.wire.messages import Ack, IndirectPing, Nack, NodeStateType, Ping, Suspect
from tests.test_swim import alive, core, feed, quiet, sent

ALIVE = NodeStateType.ALIVE
SUSPECT = NodeStateType.SUSPECT
DEAD = NodeStateType.DEAD
N = 50  # me and 49 peers: k = 2, memberlist's floor 6.792 s (4 x 1.698), max 6 x that
MIN = 6.792
VERIFIED = 5.6  # 4 x ProbeInterval + 8 retransmits x GossipInterval
REFUSED = 1.6  # the retransmit horizon alone
TIMEOUT = "dial tcp 10.0.1.0:7946: i/o timeout"
REFUSAL = "dial tcp 10.0.1.0:7946: connect: connection refused"


@pytest.mark.parametrize(("n", "verified", "refused", "memberlist"), [
    (7, 4.0, 0.8, 4.0),  # at most 10: memberlist's floor is 4 s already
    (20, 5.204, 1.6, 5.204),  # 4 s + 1.6 s is over memberlist's 5.204 s: no change
    (50, 5.6, 1.6, 6.792),
    (100, 6.4, 2.4, 8.0),
    (1000, 7.2, 3.2, 12.0),
])
def test_floors_on_lan(n: int, verified: float, refused: float, memberlist: float) -> None:
    v, r = verified_suspicion_timeouts(4, n, 1.0, retransmit_limit(4, n), 0.2)
    assert (v, r) == pytest.approx((verified, refused))
    assert v <= memberlist and r <= v


def test_suspicion_needs_both_our_failure_and_the_k_confirmations() -> None:
    s = Suspicion("b", 2, MIN, 6 * MIN, 10.0, VERIFIED, REFUSED)
    assert s.deadline == pytest.approx(10.0 + 6 * MIN)
    assert not s.verify(10.5)  # ours alone: memberlist's timeout still runs
    assert s.deadline == pytest.approx(10.0 + 6 * MIN)
    s.confirm("c", 11.0)
    assert s.deadline > 10.0 + MIN
    s.confirm("d", 11.2)  # the k-th: the verified floor instead of memberlist's
    assert s.deadline == pytest.approx(10.0 + VERIFIED)
    # The other way round: confirmations first, then our failure, refused this time.
    s = Suspicion("b", 2, MIN, 6 * MIN, 10.0, VERIFIED, REFUSED)
    s.confirm("c", 10.4)
    s.confirm("d", 10.5)
    assert s.deadline == pytest.approx(10.0 + MIN)
    assert s.verify(11.0, refused=True)
    assert s.deadline == pytest.approx(10.0 + REFUSED)
    assert not s.verify(11.1)  # a later unrefused failure does not undo it


def test_suspicion_deadline_never_moves_out_and_a_past_floor_fires_at_once() -> None:
    s = Suspicion("b", 2, MIN, 6 * MIN, 10.0, VERIFIED, REFUSED)
    s.confirm("c", 10.1)
    s.confirm("d", 10.2)
    assert s.verify(12.5, refused=True)
    assert s.deadline == 12.5  # 10 + 1.6 is past: now
    # Floors above memberlist's (they never are from verified_suspicion_timeouts) do
    # not push the deadline out.
    s = Suspicion("b", 2, 4.0, 24.0, 10.0, 5.0, 4.5)
    s.confirm("c", 10.1)
    s.confirm("d", 10.2)
    assert not s.verify(11.0, refused=True)
    assert s.deadline == pytest.approx(14.0)


def test_suspicion_without_confirmations_wanted_or_without_floors_is_memberlists() -> None:
    tiny = Suspicion("b", 0, 4.0, 24.0, 10.0, 0.8, 0.8)  # k = 0: nobody can confirm
    assert not tiny.verify(11.0, refused=True)
    assert tiny.deadline == 14.0
    off = Suspicion("b", 2, MIN, 6 * MIN, 10.0)  # the switch is off
    off.confirm("c", 10.1)
    off.confirm("d", 10.2)
    assert not off.verify(11.0, refused=True)
    assert off.deadline == pytest.approx(10.0 + MIN)


# ------------------------------------------------------------------ in a Memberlist


def _cluster(**overrides: object) -> Memberlist:
    """``me`` knowing 49 live peers p0..p48 with its periodic ticks cancelled, so only
    the checks run; confirmation checks and verified suspicions on."""
    overrides.setdefault("confirm_suspicions", True)
    overrides.setdefault("verified_suspicions", True)
    m, _, _ = core(**overrides)  # type: ignore[arg-type]
    quiet(m)
    for i in range(N - 1):
        feed(m, alive(f"p{i}", 1, ip=f"10.0.1.{i}"), now=0.0)
    m.datagrams_to_send()
    return m


def _run(m: Memberlist, until: float) -> None:
    while (t := m.get_timer()) is not None and t <= until:
        m.handle_timer(t)
        m.datagrams_to_send()


def _state(m: Memberlist, name: str) -> NodeStateType:
    node = m.get_node(name)
    assert node is not None
    return node.state


def _check_fails(m: Memberlist, tcp_error: str, nacks: bool = True) -> None:
    """p0 is suspected by p1 at 10.0; our check of it gets no ack from anyone, the
    relays nack (or not) and the TCP ping fails with ``tcp_error``; at 11.0 the check
    fails, a confirmation of ours."""
    feed(m, Suspect(1, "p0", "p1").encode(), now=10.0)
    ((msgs, _),) = sent(m)
    assert isinstance(msgs[0], Ping) and msgs[0].node == "p0"
    seq = msgs[0].seq_no
    m.handle_timer(10.5)
    relays = [a for msgs, a in sent(m) if isinstance(msgs[0], IndirectPing)]
    assert len(relays) == 3
    if nacks:
        for via in relays:
            m.receive_datagram(Nack(seq).encode(), via, 10.9)
    (tcp,) = m.streams_to_open()
    assert tcp.kind is StreamKind.PING
    m.stream_outcome(tcp.token, None, 10.9, tcp_error)
    _run(m, 11.0)
    assert m.activity["confirm_check_failed"] == 1
    assert m.suspicion("p0") == (1, 2)


def _dies_at(m: Memberlist, when: float) -> None:
    _run(m, when - 0.002)
    assert _state(m, "p0") == SUSPECT
    _run(m, when)
    assert _state(m, "p0") == DEAD


def test_failed_check_and_k_confirmations_end_the_suspicion_at_the_verified_floor() -> None:
    m = _cluster()
    _check_fails(m, TIMEOUT)
    feed(m, Suspect(1, "p0", "p2").encode(), now=11.2)  # the second confirmation
    _dies_at(m, 10.0 + VERIFIED)
    assert m.activity["suspect_timeout_verified"] == 1


def test_refused_tcp_ping_ends_it_after_the_retransmit_horizon() -> None:
    m = _cluster()
    _check_fails(m, REFUSAL)
    feed(m, Suspect(1, "p0", "p2").encode(), now=11.2)
    _dies_at(m, 10.0 + REFUSED)
    assert m.activity["suspect_timeout_refused"] == 1


def test_without_the_switch_memberlists_floor_holds() -> None:
    m = _cluster(verified_suspicions=False)
    _check_fails(m, REFUSAL)
    feed(m, Suspect(1, "p0", "p2").encode(), now=11.2)
    _dies_at(m, 10.0 + MIN)
    assert m.counters["suspect_timeout"] == 1 and "suspect_timeout_refused" not in m.activity


def test_confirmations_alone_or_an_answered_check_keep_memberlists_floor() -> None:
    # Our check is answered: the k confirmations of others give memberlist's floor.
    m = _cluster()
    feed(m, Suspect(1, "p0", "p1").encode(), now=10.0)
    ((msgs, to),) = sent(m)
    assert isinstance(msgs[0], Ping)
    m.receive_datagram(Ack(msgs[0].seq_no).encode(), to, 10.01)
    feed(m, Suspect(1, "p0", "p2").encode(), Suspect(1, "p0", "p3").encode(), now=11.0)
    assert m.suspicion("p0") == (2, 2)
    _dies_at(m, 10.0 + MIN)
    # Without checks nothing of ours verifies it either.
    m = _cluster(confirm_suspicions=False)
    feed(m, Suspect(1, "p0", "p1").encode(), now=10.0)
    feed(m, Suspect(1, "p0", "p2").encode(), Suspect(1, "p0", "p3").encode(), now=11.0)
    _dies_at(m, 10.0 + MIN)


def test_a_check_started_by_an_unhealthy_node_does_not_verify() -> None:
    m = _cluster()
    m._apply_awareness(1)  # test-only: missed nacks earlier (probes last 2 s)
    feed(m, Suspect(1, "p0", "p1").encode(), now=10.0)
    m.datagrams_to_send()
    _run(m, 10.5)
    (tcp,) = m.streams_to_open()
    m.stream_outcome(tcp.token, None, 11.0, REFUSAL)
    _run(m, 12.0)
    assert m.activity["confirm_check_failed"] == 1
    feed(m, Suspect(1, "p0", "p2").encode(), now=12.0)
    _dies_at(m, 10.0 + MIN)
    assert "suspect_timeout_refused" not in m.activity


def test_a_refutation_cancels_a_verified_suspicion() -> None:
    m = _cluster()
    _check_fails(m, TIMEOUT)
    feed(m, Suspect(1, "p0", "p2").encode(), now=11.2)
    feed(m, alive("p0", 2, ip="10.0.1.0"), now=14.0)
    _run(m, 30.0)
    assert _state(m, "p0") == ALIVE


def test_a_check_of_an_incarnation_since_refuted_does_not_verify_the_next_suspicion() -> None:
    m = _cluster()
    feed(m, Suspect(1, "p0", "p1").encode(), now=10.0)
    m.datagrams_to_send()
    feed(m, alive("p0", 2, ip="10.0.1.0"), now=10.3)  # p0 refutes: it was alive
    feed(m, Suspect(2, "p0", "p1").encode(), now=10.4)  # suspected again
    _run(m, 10.5)
    (tcp,) = m.streams_to_open()
    m.stream_outcome(tcp.token, None, 10.9, REFUSAL)
    _run(m, 11.0)
    assert m.activity["confirm_check_failed"] == 1  # the check of incarnation 1
    feed(m, Suspect(2, "p0", "p2").encode(), Suspect(2, "p0", "p3").encode(), now=11.0)
    assert m.suspicion("p0") == (2, 2)
    _dies_at(m, 10.4 + MIN)


def test_our_failed_round_robin_probe_verifies_the_suspicion_it_starts() -> None:
    """The accuser: its own failed probe makes the suspicion, verified from the start;
    the two confirmations that follow (checks elsewhere) bring the floor."""
    m = _cluster()
    rec = m._map["p0"]  # test-only: probe p0 now, as the round-robin would
    m._probe_node(rec, 10.0)
    m.datagrams_to_send()
    m.handle_timer(10.5)
    m.datagrams_to_send()
    (tcp,) = m.streams_to_open()
    m.stream_outcome(tcp.token, None, 10.9, REFUSAL)
    _run(m, 11.0)
    assert _state(m, "p0") == SUSPECT and m.counters["probe_failed"] == 1
    assert m.suspicion("p0") == (0, 2)
    feed(m, Suspect(1, "p0", "p2").encode(), Suspect(1, "p0", "p3").encode(), now=12.0)
    _dies_at(m, 11.0 + REFUSED)  # from our suspicion's start, the end of our probe


def test_sim_crash_refuses_streams_and_a_host_crash_times_them_out() -> None:
    sim = Sim(seed=1)
    sim.add_converged(["a", "b", "c"])
    a = sim.ml("a")
    errors: dict[int, str] = {}
    original = a.stream_outcome

    def outcome(token: int, reply: bytes | None, now: float, error: str = "") -> None:
        errors[token] = error
        original(token, reply, now, error)

    a.stream_outcome = outcome  # type: ignore[method-assign]
    sim.crash("b")
    sim.crash("c", host=True)
    to_b = a.send_user_msg_stream(sim.nodes["b"].addr, b"x", sim.now)
    to_c = a.send_user_msg_stream(sim.nodes["c"].addr, b"x", sim.now)
    sim.service("a")
    sim.run_for(11.0)
    assert errors[to_b].endswith("connect: connection refused")
    assert errors[to_c].endswith("i/o timeout")
