"""Confirmation checks (MemberlistConfig.confirm_suspicions), one rule at a time.

A serfd node that hears a member is suspected probes it at once, like a regular probe,
and adds its own suspicion only if that probe fails. The cluster-wide effect (detection
time, false deaths) is in tests/test_confirm_sim.py.
"""

from __future__ import annotations

from serfd.memberlist.swim import Memberlist, StreamKind
from serfd.wire.messages import Ack, IndirectPing, Nack, NodeStateType, Ping, Suspect
from tests.test_swim import alive, core, feed, quiet, sent

ALIVE = NodeStateType.ALIVE
SUSPECT = NodeStateType.SUSPECT
DEAD = NodeStateType.DEAD
PEERS = "abcdef"


def _cluster(**overrides: object) -> Memberlist:
    """``me`` knowing six live peers a..f (n = 7: k = 2, suspicion 4 s .. 24 s), with its
    periodic ticks cancelled so only the check runs."""
    overrides.setdefault("confirm_suspicions", True)
    m, _, _ = core(**overrides)  # type: ignore[arg-type]
    quiet(m)
    for i, name in enumerate(PEERS):
        feed(m, alive(name, 1, ip=f"10.0.0.{i + 2}"), now=0.0)
    m.datagrams_to_send()
    return m


def _addr(m: Memberlist, name: str) -> tuple[str, int]:
    node = m.get_node(name)
    assert node is not None
    return node.address


def _run(m: Memberlist, until: float) -> list[tuple[list[object], tuple[str, int]]]:
    """Run the timers due up to ``until``; return what was sent meanwhile."""
    out = sent(m)
    while (t := m.get_timer()) is not None and t <= until:
        m.handle_timer(t)
        out += sent(m)
    return out


def _suspects_from_me(out: list[tuple[list[object], tuple[str, int]]]) -> list[Suspect]:
    return [x for msgs, _ in out for x in msgs if isinstance(x, Suspect) and x.from_ == "me"]


def test_heard_suspicion_is_checked_at_once_like_a_probe_and_confirmed_when_it_fails() -> None:
    m = _cluster()
    feed(m, Suspect(1, "a", "b").encode(), now=10.0)
    out = sent(m)
    # At once: a ping to the suspect with the suspicion attached (as memberlist's probe of
    # a suspect node sends it), so it can refute.
    ((msgs, to),) = out
    assert to == _addr(m, "a")
    assert isinstance(msgs[0], Ping) and msgs[0].node == "a"
    assert msgs[1] == Suspect(1, "a", "me")
    seq = msgs[0].seq_no
    # After ProbeTimeout: IndirectChecks (3) indirect pings through live others, and the
    # TCP fallback ping.
    out = _run(m, 10.5)
    indirect = [(x, a) for msgs, a in out for x in msgs if isinstance(x, IndirectPing)]
    assert len(indirect) == 3
    assert all(x.node == "a" and x.seq_no == seq and x.nack for x, _ in indirect)
    assert _addr(m, "a") not in {a for _, a in indirect}
    (tcp,) = m.streams_to_open()
    assert tcp.kind is StreamKind.PING and tcp.addr == _addr(m, "a")
    # Nothing else went out (each packet is an indirect ping, with queued broadcasts
    # piggybacked as on any memberlist packet).
    assert len(out) == 3 and all(isinstance(msgs[0], IndirectPing) for msgs, _ in out)
    for _, via in indirect:
        m.receive_datagram(Nack(seq).encode(), via, 10.6)
    m.stream_outcome(tcp.token, None, 11.0, "i/o timeout")
    # At the deadline (ProbeInterval): our own suspicion goes out, a confirmation: with
    # one of k = 2 the timeout is 24 - ln2/ln3 x 20 = 11.381 s from 10.0.
    out = _run(m, 11.0)
    assert _suspects_from_me(out) == [] and m.num_queued() >= 1
    assert m.activity["confirm_check_failed"] == 1
    assert m.counters.get("probe_failed", 0) == 0  # not counted as a round-robin probe
    assert m.health_score() == 0  # every expected nack came
    _run(m, 21.38)
    assert m.get_node("a").state == SUSPECT  # type: ignore[union-attr]
    _run(m, 21.382)
    assert m.get_node("a").state == DEAD  # type: ignore[union-attr]


def test_answered_check_adds_nothing_and_the_suspicion_keeps_its_length() -> None:
    m = _cluster()
    feed(m, Suspect(1, "a", "b").encode(), now=10.0)
    ((msgs, to),) = sent(m)
    ping = msgs[0]
    assert isinstance(ping, Ping)
    queued = m.num_queued()
    m.receive_datagram(Ack(ping.seq_no).encode(), to, 10.01)
    out = _run(m, 12.0)
    assert out == [] and m.streams_to_open() == []  # no indirect pings, no TCP ping
    assert m.num_queued() == queued  # no suspicion of ours was queued
    assert m.activity["confirm_check_acked"] == 1
    # Without a confirmation the suspicion runs its full 24 s.
    _run(m, 33.99)
    assert m.get_node("a").state == SUSPECT  # type: ignore[union-attr]
    _run(m, 34.0)
    assert m.get_node("a").state == DEAD  # type: ignore[union-attr]


def test_failed_check_sends_our_suspect_in_gossip() -> None:
    m = _cluster(disable_tcp_pings=True)
    feed(m, Suspect(1, "a", "b").encode(), now=10.0)
    _run(m, 11.0)
    # The next outgoing packet to anyone carries the suspicion from us.
    feed(m, Ping(99, "me", b"", 0, "c").encode(), now=11.0)
    assert Suspect(1, "a", "me") in _suspects_from_me(sent(m))


def test_one_check_per_suspect_and_a_cap_on_concurrent_checks() -> None:
    m = _cluster(max_confirm_checks=2)
    feed(m, Suspect(1, "a", "b").encode(), now=10.0)
    feed(m, Suspect(1, "a", "c").encode(), now=10.1)  # a confirmation, not a new check
    feed(m, Suspect(1, "d", "b").encode(), now=10.2)
    feed(m, Suspect(1, "e", "b").encode(), now=10.3)  # third at once: refused
    pings = [(x, a) for msgs, a in sent(m) for x in msgs if isinstance(x, Ping)]
    assert [p.node for p, _ in pings] == ["a", "d"]
    assert m.activity["confirm_check"] == 2
    assert m.counters["confirm_check_refused"] == 1
    # Once they are over (answered), a new suspicion is checked again.
    for p, to in pings:
        m.receive_datagram(Ack(p.seq_no).encode(), to, 10.5)
    m.streams_to_open()
    feed(m, Suspect(1, "f", "b").encode(), now=12.5)
    assert [x.node for msgs, _ in sent(m) for x in msgs if isinstance(x, Ping)] == ["f"]


def test_no_check_when_off_or_when_it_could_not_count() -> None:
    # Off: memberlist's behaviour, nothing is sent on hearing a suspicion.
    m = _cluster(confirm_suspicions=False)
    feed(m, Suspect(1, "a", "b").encode(), now=10.0)
    assert sent(m) == [] and "confirm_check" not in m.activity
    # A suspicion already fully confirmed before we held the member alive cannot be
    # shortened by us; neither can a tiny cluster's (k = 0: n = 3, SuspicionMult 4).
    tiny, _, _ = core(confirm_suspicions=True)
    quiet(tiny)
    feed(tiny, alive("a", 1), alive("b", 1, ip="10.0.0.3"), now=0.0)
    tiny.datagrams_to_send()
    feed(tiny, Suspect(1, "a", "b").encode(), now=10.0)
    assert sent(tiny) == []
    # Our own suspicion echoed back, and suspicions of nodes not alive here: no check.
    m = _cluster()
    feed(m, Suspect(1, "a", "me").encode(), now=10.0)
    feed(m, Suspect(0, "b", "c").encode(), now=10.0)  # older incarnation: ignored
    assert sent(m) == []
    # About ourselves: refuted, never checked.
    feed(m, Suspect(1, "me", "c").encode(), now=10.0)
    assert [x for msgs, _ in sent(m) for x in msgs if isinstance(x, Ping)] == []


def test_no_check_when_our_awareness_makes_it_outlast_the_shortest_timeout() -> None:
    m = _cluster()
    for _ in range(4):
        m._apply_awareness(1)  # test-only: a degraded node (probes last 5 s, min is 4 s)
    feed(m, Suspect(1, "a", "b").encode(), now=10.0)
    assert sent(m) == []
    assert m.activity["confirm_check_skipped_late"] == 1


def _round_robin(confirm: bool) -> list[tuple[float, str]]:
    """(time, member) of the round-robin pings of ``me`` over 5 s after it heard that one
    member is suspected; every ping but the suspect's is answered, every indirect ping
    nacked (so the awareness score stays 0)."""
    m, _, _ = core(confirm_suspicions=confirm)
    for i, name in enumerate(PEERS):
        feed(m, alive(name, 1, ip=f"10.0.0.{i + 2}"), now=0.0)
    m.datagrams_to_send()
    feed(m, Suspect(1, "c", "zz").encode(), now=0.3)
    pings: list[tuple[float, str]] = []
    t = 0.3
    while t < 5.3:
        for msgs, to in sent(m):
            head = msgs[0]
            if isinstance(head, Ping):
                pings.append((t, head.node))
                if head.node != "c":
                    m.receive_datagram(Ack(head.seq_no).encode(), to, t)
            elif isinstance(head, IndirectPing):
                m.receive_datagram(Nack(head.seq_no).encode(), to, t)
        m.streams_to_open()
        next_t = m.get_timer()
        assert next_t is not None
        t = next_t
        m.handle_timer(t)
    return pings


def test_the_round_robin_probe_goes_on_beside_a_check() -> None:
    """The check runs beside the round-robin: the same members are pinged at the same
    instants as without checks, plus the one check ping to the suspect."""
    off = _round_robin(confirm=False)
    on = _round_robin(confirm=True)
    assert on[0] == (0.3, "c")  # the check, at once
    assert on[1:] == off
    assert len(off) >= 5


def test_a_check_leaves_the_awareness_score_to_the_round_robin() -> None:
    """A failed check whose expected nacks never come does not raise the score (a
    round-robin probe would, test_swim's awareness tests): when several members fail at
    once, checks through members not yet known dead would slow every later probe."""
    m = _cluster()
    feed(m, Suspect(1, "a", "b").encode(), now=10.0)
    _run(m, 10.5)
    (tcp,) = m.streams_to_open()
    m.stream_outcome(tcp.token, None, 11.0, "connection refused")
    _run(m, 12.0)
    assert m.activity["confirm_check_failed"] == 1
    assert m.health_score() == 0
