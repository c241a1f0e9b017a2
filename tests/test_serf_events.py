"""User events and queries across whole Serf instances on the deterministic fake network."""

from __future__ import annotations

import pytest

from serfd.core.query import (
    IncomingQuery,
    QueryParam,
    default_query_timeout,
    encode_filters,
    filters_match,
)
from serfd.core.serf import ConflictLost, QueryRecordEvent, SerfError, SerfState, UserEvent
from serfd.testing.serf_sim import SerfSim, build_cluster
from serfd.wire.serf_messages import MessageQuery


def user_events(sim: SerfSim, name: str) -> list[UserEvent]:
    return [e for e in sim.events_of(name) if isinstance(e, UserEvent)]


# ---------------------------------------------------------------------------- user events


def test_event_reaches_all_100_nodes_at_10_percent_loss() -> None:
    sim = build_cluster(100, seed=7, settle=2.0)
    sim.loss = 0.10
    names = list(sim.nodes)
    seen: dict[str, int] = {}

    sim.serf("n0").user_event("deploy", b"v1", False, sim.now)
    sim.service("n0")
    start = sim.now

    def check() -> bool:
        for n in names:
            for e in sim.events_of(n):
                if isinstance(e, UserEvent) and e.name == "deploy":
                    seen[n] = seen.get(n, 0) + 1
        return len(seen) == len(names)

    assert sim.run_until(start + 10.0, check), f"missing: {set(names) - set(seen)}"
    sim.run_for(40.0)  # gossip retransmits and push/pull run their course
    check()
    assert all(c == 1 for c in seen.values()), {n: c for n, c in seen.items() if c != 1}


def test_event_once_per_node_through_gossip_and_push_pull() -> None:
    sim = build_cluster(5, seed=3)
    sim.serf("n2").user_event("deploy", b"v2", True, sim.now)
    sim.service("n2")
    counts = dict.fromkeys(sim.nodes, 0)
    # Long enough for several anti-entropy push/pulls (30 s each), which carry the event again.
    for _ in range(90):
        sim.run_for(1.0)
        for n in sim.nodes:
            for e in user_events(sim, n):
                assert (e.name, e.payload) == ("deploy", b"v2")
                counts[n] += 1
    assert counts == dict.fromkeys(sim.nodes, 1)
    assert sum(sim.serf(n).counters.get("query_response_unexpected", 0) for n in sim.nodes) == 0


def _first_hop_delay(seed: int, eager: bool) -> float:
    """How long a new event of n0 takes to reach both other members of three."""
    sim = build_cluster(3, seed=seed, config={"eager_gossip": eager})
    sim.serf("n0").user_event("fast", b"", False, sim.now)
    sim.service("n0")
    start = sim.now
    got: set[str] = set()

    def check() -> bool:
        got.update(n for n in ("n1", "n2") if any(e.name == "fast" for e in user_events(sim, n)))
        return len(got) == 2

    assert sim.run_until(start + 1.0, check, every=0.001)
    return sim.now - start


def test_new_event_is_sent_at_once_not_at_the_next_gossip_tick() -> None:
    # Eager gossip: a round at once, whatever the phase of the 200 ms gossip tick (the
    # network delays 0.5-2 ms). Without it, the event waits for n0's next tick.
    eager = [_first_hop_delay(seed, True) for seed in range(5)]
    plain = [_first_hop_delay(seed, False) for seed in range(5)]
    assert max(eager) <= 0.005, eager
    assert all(d <= 0.205 for d in plain), plain  # one gossip tick at the most
    assert sorted(plain)[2] > 0.02, plain  # the median waits for a tick


def test_user_event_size_limits() -> None:
    sim = build_cluster(2, seed=1)
    s = sim.serf("n0")
    before = s.event_clock.time()
    with pytest.raises(SerfError,
                       match=r"^user event exceeds configured limit of 512 bytes before encoding$"):
        s.user_event("big", b"x" * 510, False, sim.now)
    with pytest.raises(SerfError, match=r"^encoded user event exceeds configured limit "
                                        r"of 512 bytes after encoding$"):
        s.user_event("big", b"x" * 500, False, sim.now)
    assert s.event_clock.time() == before
    assert s.stats()["event_queue"] == "0"
    assert sim.nodes["n0"].core.datagrams_to_send() == []
    s.user_event("ok", b"x" * 400, False, sim.now)
    assert s.event_clock.time() == before + 1


def test_user_event_wire_format() -> None:
    sim = build_cluster(2, seed=1)
    s = sim.serf("n0")
    s.user_event("deploy", b"hello-payload", True, sim.now)
    raw = s._event_q.get_broadcasts(2, 1400)[0]
    assert raw[0] == 3
    assert b"\xa2CC\xc3" in raw and b"\xa4Name\xa6deploy" in raw


# ---------------------------------------------------------------------------- queries


def run_query(sim: SerfSim, asker: str, name: str, payload: bytes, param: QueryParam,
              answer: bool = True, limit: float = 30.0) -> tuple[list, float]:
    query_id = sim.serf(asker).query(name, payload, param, sim.now)
    sim.service(asker)
    start = sim.now
    records = []

    def step() -> bool:
        for n in sim.nodes:
            for e in sim.events_of(n):
                if isinstance(e, IncomingQuery) and answer:
                    sim.serf(n).respond(e, f"{n}:".encode() + e.payload, sim.now)
                    sim.service(n)
                elif isinstance(e, QueryRecordEvent) and n == asker:
                    assert e.query_id == query_id
                    records.append(e.record)
        return any(r.type == "done" for r in records)

    assert sim.run_until(start + limit, step, every=0.005)
    return records, sim.now - start


def test_query_collects_every_response_and_ends_early() -> None:
    sim = build_cluster(4, seed=5)
    records, took = run_query(sim, "n1", "uptime", b"ping", QueryParam(request_ack=True))
    acks = sorted(r.from_ for r in records if r.type == "ack")
    resps = {r.from_: r.payload for r in records if r.type == "response"}
    assert acks == ["n0", "n1", "n2", "n3"]
    assert resps == {n: f"{n}:ping".encode() for n in ("n0", "n1", "n2", "n3")}
    assert records[-1].type == "done" and [r.type for r in records].count("done") == 1
    assert took < 0.5, took  # default timeout is 3.2 s


def test_query_without_answers_ends_at_the_default_deadline() -> None:
    sim = build_cluster(4, seed=5)
    records, took = run_query(sim, "n0", "nobody", b"", QueryParam(), answer=False)
    assert [r.type for r in records] == ["done"]
    assert took == pytest.approx(default_query_timeout(0.2, 4), abs=0.01)
    assert default_query_timeout(0.2, 4) == pytest.approx(3.2)
    assert default_query_timeout(0.2, 10) == pytest.approx(6.4)


def test_query_node_and_tag_filters() -> None:
    sim = build_cluster(6, seed=9)
    records, took = run_query(sim, "n0", "q", b"", QueryParam(filter_tags={"role": "^db$"}))
    assert sorted(r.from_ for r in records if r.type == "response") == ["n1", "n3", "n5"]
    assert took < 1.0
    records, _ = run_query(sim, "n0", "q", b"", QueryParam(filter_nodes=("n2", "n4")))
    assert sorted(r.from_ for r in records if r.type == "response") == ["n2", "n4"]


def test_filters_match_as_serf() -> None:
    f = encode_filters(QueryParam(filter_nodes=("a", "b"), filter_tags={"role": "we"}))
    assert f is not None and f[0][0] == 0 and f[1][0] == 1
    assert filters_match(f, "a", {"role": "web"})  # unanchored, like Go's MatchString
    assert not filters_match(f, "c", {"role": "web"})
    assert not filters_match(f, "a", {})
    assert not filters_match([b"\x07garbage"], "a", {})
    assert not filters_match(encode_filters(QueryParam(filter_tags={"r": "("})), "a", {"r": ""})
    assert filters_match(None, "x", {})


def test_query_relay_factor_dedups_responses() -> None:
    sim = build_cluster(5, seed=2)
    records, _ = run_query(sim, "n0", "q", b"", QueryParam(request_ack=True, relay_factor=2))
    froms = [r.from_ for r in records if r.type == "response"]
    assert sorted(froms) == ["n0", "n1", "n2", "n3", "n4"]
    assert len([r for r in records if r.type == "ack"]) == 5


def test_respond_once_and_before_deadline() -> None:
    sim = build_cluster(2, seed=4)
    s0, s1 = sim.serf("n0"), sim.serf("n1")
    query_id = s0.query("q", b"", QueryParam(timeout=1.0), sim.now)
    sim.service("n0")
    sim.run_for(0.3)  # one gossip tick (200 ms) and the network
    q = next(e for e in sim.events_of("n1") if isinstance(e, IncomingQuery))
    with pytest.raises(SerfError, match=r"^response exceeds limit of 1024 bytes$"):
        s1.respond(q, b"x" * 1024, sim.now)
    s1.respond(q, b"hi", sim.now)
    with pytest.raises(SerfError, match=r"^response already sent$"):
        s1.respond(q, b"again", sim.now)
    evs = sim.events_of("n0")
    q2 = next(e for e in evs if isinstance(e, IncomingQuery))
    sim.run_for(2.0)
    with pytest.raises(SerfError, match=r"^response is past the deadline$"):
        s0.respond(q2, b"late", sim.now)
    evs += sim.events_of("n0")
    recs = [e.record for e in evs if isinstance(e, QueryRecordEvent) and e.query_id == query_id]
    assert [(r.type, r.from_, r.payload) for r in recs] == [("response", "n1", b"hi"),
                                                            ("done", "", b"")]


def test_query_size_limit_nothing_sent() -> None:
    sim = build_cluster(2, seed=4)
    s = sim.serf("n0")
    before = s.query_clock.time()
    with pytest.raises(SerfError, match=r"^query exceeds limit of 1024 bytes$"):
        s.query("q", b"x" * 1000, QueryParam(), sim.now)
    assert s.query_clock.time() == before and s.pending_query_count() == 0
    assert sim.nodes["n0"].core.datagrams_to_send() == []


def test_query_wire_format_timeout_in_nanoseconds() -> None:
    sim = build_cluster(2, seed=4)
    s = sim.serf("n0")
    s.query("uptime", b"p", QueryParam(timeout=2.0, request_ack=True), sim.now)
    raw = s._query_q.get_broadcasts(2, 1400)[0]
    from serfd.wire.serf_messages import decode_serf_message

    msg = decode_serf_message(raw)
    assert isinstance(msg, MessageQuery)
    assert msg.timeout == 2_000_000_000 and msg.flags == 1 and msg.source_node == "n0"
    assert msg.port == 7946 and msg.filters is None


def test_serf_ping_ends_on_acks_and_is_not_delivered() -> None:
    sim = build_cluster(4, seed=6)
    records, took = run_query(sim, "n0", "_serf_ping", b"", QueryParam(request_ack=True),
                              answer=False)
    assert sorted(r.from_ for r in records if r.type == "ack") == ["n0", "n1", "n2", "n3"]
    assert took < 0.5


def test_conflict_query_answers_with_the_member() -> None:
    sim = build_cluster(4, seed=8)
    records, _ = run_query(sim, "n0", "_serf_conflict", b"n2", QueryParam(), answer=False,
                           limit=5.0)
    resps = [r for r in records if r.type == "response"]
    assert sorted(r.from_ for r in resps) == ["n0", "n1", "n3"]  # never n2 itself
    assert all(r.payload[0] == 6 and b"n2" in r.payload for r in resps)


def test_name_conflict_resolution_majority_stays() -> None:
    sim = build_cluster(4, seed=8)
    s = sim.serf("n1")
    s._start_conflict_resolution()
    sim.run_for(5.0)
    assert not s.conflict_lost
    assert s.state.value == "alive"


def test_name_conflict_resolution_minority_ends_the_core_with_an_event() -> None:
    """A second node claiming n1's name from another address loses the vote: its core
    shuts down and says so with a ConflictLost event (the agent stops on it)."""
    sim = build_cluster(4, seed=8)
    original = sim.serf("n1")
    impostor = sim.add_serf("n1", addr=("10.9.9.9", 7946))
    join_id = sim.start_join("n1", ["n0"])
    lost: list[ConflictLost] = []

    def over() -> bool:
        lost.extend(e for e in impostor.drain_events() if isinstance(e, ConflictLost))
        return bool(lost)

    assert sim.run_until(sim.now + 30.0, over, every=0.01), "the impostor never lost"
    assert join_id >= 0
    assert impostor.state is SerfState.SHUTDOWN and impostor.conflict_lost
    assert lost[0].responses >= 2 and lost[0].matching < lost[0].responses // 2 + 1
    assert original.state is SerfState.ALIVE and not original.conflict_lost
