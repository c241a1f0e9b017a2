"""The Serf core's driver contract, run on the fake network: joins, leave, force-leave,
reconnects and key operations each end in an event or a stream request, the way the
agent's GossipDriver sees them."""

from __future__ import annotations

from serfd.core.keymanager import (
    KEY_QUERIES,
    KeyResponder,
    KeyResult,
    final_error,
    request_payload,
    tally,
)
from serfd.core.member import MemberStatus
from serfd.core.query import QueryParam, QueryRecordType
from serfd.core.serf import (
    ForceLeaveDone,
    JoinDone,
    JoinError,
    LeaveDone,
    QueryRecordEvent,
    SerfState,
)
from serfd.memberlist.swim import StreamKind, StreamRequest
from serfd.testing.serf_sim import SerfSim, build_cluster
from serfd.wire.keyring import Keyring


def _status(sim: SerfSim, observer: str, name: str) -> str | None:
    m = {m.name: m for m in sim.serf(observer).members()}.get(name)
    return None if m is None else m.status.label


def test_join_ends_in_join_done_with_each_failed_address_and_its_reason() -> None:
    sim = SerfSim(seed=3)
    for name in ("a", "b", "c", "d"):
        sim.add_serf(name)
    sim.crash("c")
    sim.partition(["a", "b", "c"], ["d"])
    streams: list[tuple[str, StreamRequest]] = []
    sim.on_stream = lambda who, req: streams.append((who, req))
    nowhere = ("10.99.0.1", 7946)
    addrs = [sim.nodes["b"].addr, sim.nodes["c"].addr, nowhere, sim.nodes["d"].addr]
    join_id = sim.serf("a").join(addrs, False, sim.now)
    sim.service("a")
    # The core asked for the four push/pulls itself, as JOIN stream requests.
    assert [(w, r.addr, r.kind) for w, r in streams] == [("a", x, StreamKind.JOIN)
                                                         for x in addrs]
    done = sim.wait_join("a", join_id)
    c, d = sim.nodes["c"].addr, sim.nodes["d"].addr
    assert done == JoinDone(join_id, 1, (
        JoinError(c, f"dial tcp {c[0]}:7946: connect: connection refused"),
        JoinError(nowhere, "dial tcp 10.99.0.1:7946: connect: connection refused"),
        JoinError(d, f"dial tcp {d[0]}:7946: i/o timeout")))
    assert str(done.errors[0]) == (
        f"Failed to join {c[0]}: dial tcp {c[0]}:7946: connect: connection refused")
    # The join that reached b made both members of one cluster.
    assert sim.run_until(sim.now + 5.0, lambda: _status(sim, "b", "a") == "alive")
    assert _status(sim, "a", "b") == "alive"


def test_a_join_that_reaches_nobody_is_done_with_zero() -> None:
    sim = SerfSim(seed=4)
    sim.add_serf("a")
    sim.add_serf("b")
    sim.crash("b")
    done = sim.wait_join("a", sim.start_join("a", ["b"]))
    assert done.num_joined == 0 and len(done.errors) == 1
    assert [m.name for m in sim.serf("a").members()] == ["a"]


def test_leave_ends_in_leave_done_once_everybody_was_told() -> None:
    sim = build_cluster(4, seed=2)
    s = sim.serf("n1")
    s.leave(sim.now)
    sim.service("n1")
    got: list[LeaveDone] = []

    def done() -> bool:
        got.extend(e for e in sim.events_of("n1") if isinstance(e, LeaveDone))
        return bool(got)

    start = sim.now
    assert sim.run_until(start + 30.0, done, every=0.01)
    assert got == [LeaveDone("")] and s.state is SerfState.LEFT
    # Not before the propagation delay, not after the broadcast timeout plus it.
    cfg = s.config
    assert cfg.leave_propagate_delay <= sim.now - start
    assert sim.now - start <= 2 * cfg.broadcast_timeout + cfg.leave_propagate_delay
    assert all(_status(sim, o, "n1") == "left" for o in ("n0", "n2", "n3"))


def test_force_leave_ends_in_force_leave_done_when_its_broadcast_went_out() -> None:
    sim = build_cluster(4, seed=6)
    sim.crash("n3")
    assert sim.run_until(sim.now + 60.0, lambda: all(
        _status(sim, o, "n3") == "failed" for o in ("n0", "n1", "n2")), every=0.1)
    op_id = sim.serf("n0").force_leave("n3", False, sim.now)
    sim.service("n0")
    assert op_id is not None
    got: list[ForceLeaveDone] = []

    def done() -> bool:
        got.extend(e for e in sim.events_of("n0") if isinstance(e, ForceLeaveDone))
        return bool(got)

    assert sim.run_until(sim.now + 10.0, done, every=0.01)
    assert got == [ForceLeaveDone(op_id)]
    assert all(_status(sim, o, "n3") == "left" for o in ("n0", "n1", "n2"))


def test_reconnect_to_a_failed_member_is_a_stream_request_and_brings_it_back() -> None:
    sim = build_cluster(3, seed=5, reconnect_interval=1.0)
    b = sim.nodes["n2"].addr
    sim.partition(["n0", "n1"], ["n2"])
    assert sim.run_until(sim.now + 60.0, lambda: all(
        _status(sim, o, "n2") == "failed" for o in ("n0", "n1")), every=0.1)
    reconnects: list[tuple[str, StreamRequest]] = []
    sim.on_stream = lambda who, req: reconnects.extend(
        [(who, req)] if req.kind is StreamKind.RECONNECT else [])
    sim.run_for(5.0)  # still partitioned: the reconnects fail, and are tried again
    # Each side takes the other for failed: n0 and n1 reconnect to n2 (n2 to them).
    to_b = [who for who, r in reconnects if r.addr == b]
    assert to_b and set(to_b) <= {"n0", "n1"}
    assert all(r.addr != b for who, r in reconnects if who == "n2")
    tried = len(reconnects)
    assert all(_status(sim, o, "n2") == "failed" for o in ("n0", "n1"))
    sim.heal()
    assert sim.run_until(sim.now + 30.0, lambda: all(
        _status(sim, o, "n2") == "alive" for o in ("n0", "n1")), every=0.05)
    assert len(reconnects) > tried  # reconnects went on until n2 was back


def test_a_key_operation_ends_on_its_done_record() -> None:
    sim = build_cluster(3, seed=8)
    key = bytes(range(16))
    rings = {n: Keyring([key]) for n in sim.nodes}
    for n, ring in rings.items():
        responder = KeyResponder(ring)
        for op in KEY_QUERIES:
            sim.serf(n).set_internal_query_hook(
                op, lambda q, now, op=op, r=responder: r.answer(op, q.payload))
    new = bytes(range(1, 17))
    s = sim.serf("n1")
    qid = s.query("_serf_install-key", request_payload(new), QueryParam(), sim.now)
    sim.service("n1")
    result = KeyResult(num_nodes=s.num_alive())
    seen: list[QueryRecordType] = []

    def done() -> bool:
        for e in sim.events_of("n1"):
            if isinstance(e, QueryRecordEvent) and e.query_id == qid:
                seen.append(e.record.type)
                if e.record.type is QueryRecordType.RESPONSE:
                    tally(result, e.record.from_, e.record.payload)
        return QueryRecordType.DONE in seen

    assert sim.run_until(sim.now + 10.0, done, every=0.005)
    assert seen.count(QueryRecordType.RESPONSE) == 3 and seen[-1] is QueryRecordType.DONE
    assert result.num_resp == 3 and final_error(result) == ""
    assert all(new in ring.keys for ring in rings.values())
    assert all(m.status is MemberStatus.ALIVE for m in s.members())
