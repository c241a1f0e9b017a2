"""Metrics under Serf's and memberlist's names, reported where Serf reports them.

Each test makes the event happen (in a simulation, a lone core, or an agent service on
a FakeClock) and reads a recording sink: the name, its kind (go-metrics' counter, gauge
or sample; a timer is a sample in milliseconds) and a value that fits the event. The
names are checked against serfd.base.metric_names, the one list the docs are made from.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from serfd.agent.agent import Agent
from serfd.agent.config import Config
from serfd.agent.handlers import HandlerRunner, parse_handlers
from serfd.agent.snapshot import SnapshotState, Snapshotter
from serfd.agent.systemd import Notifier
from serfd.base.metric_names import CATALOGUE, kind_of
from serfd.base.metrics import Metrics
from serfd.base.ratelog import DropCounters, DropLog
from serfd.core.member import Member, MemberStatus
from serfd.core.query import QueryParam
from serfd.core.serf import Serf, SerfConfig, UserEvent
from serfd.memberlist.swim import Memberlist, MemberlistConfig
from serfd.testing.clock import FakeClock
from serfd.testing.fake_agent import ServerThread
from serfd.testing.serf_sim import SerfSim
from serfd.testing.sim import Event, FakeDelegate, Sim
from serfd.wire.messages import Suspect
from serfd.wire.packet import encode_packet
from serfd.wire.serf_messages import (
    QUERY_FLAG_ACK,
    MessageQuery,
    MessageQueryResponse,
    MessageUserEvent,
    decode_serf_message,
)
from tests.support import Raw, until, wait_until
from tests.test_gossip_driver import nodes, run_until_done
from tests.test_serf import FakeMemberlist
from tests.test_swim import alive, feed

Key = tuple[str, ...]
SINK_KIND = {"counter": "counter", "gauge": "gauge", "sample": "sample", "timer": "sample"}


class Recorder:
    """A sink that keeps every call: (kind, key, value)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Key, float]] = []

    def set_gauge(self, key: Key, value: float) -> None:
        self.calls.append(("gauge", key, value))

    def incr_counter(self, key: Key, value: float) -> None:
        self.calls.append(("counter", key, value))

    def add_sample(self, key: Key, value: float) -> None:
        self.calls.append(("sample", key, value))

    def values(self, *key: str) -> list[float]:
        """Every value reported under ``key``, checking the kind against the catalogue."""
        out = []
        for kind, k, v in self.calls:
            if k == key:
                want = kind_of(k)
                assert want is not None, f"{'.'.join(k)} is not in the catalogue"
                assert kind == SINK_KIND[want], f"{'.'.join(k)}: {kind}, not {want}"
                out.append(v)
        return out

    def total(self, *key: str) -> float:
        return sum(self.values(*key))

    def last(self, *key: str) -> float:
        vals = self.values(*key)
        assert vals, f"nothing reported as {'.'.join(key)}"
        return vals[-1]


def recording(perf: Callable[[], float] | None = None) -> tuple[Recorder, Metrics]:
    """A front without prefixes (keys as the cores give them) and its recorder."""
    rec = Recorder()
    return rec, Metrics(service="", hostname="", sinks=[rec], perf=perf)


def test_every_name_in_the_catalogue_has_a_kind_and_a_place() -> None:
    names = [m.name for m in CATALOGUE]
    assert len(names) == len(set(names))
    assert all(m.kind in SINK_KIND and m.where and m.meaning for m in CATALOGUE)
    assert kind_of(("serf", "events", "deploy")) == "counter"
    assert kind_of(("agent", "invoke", "handler.sh --all")) == "timer"
    assert kind_of(("serf", "nonsense")) is None


# ------------------------------------------------------------------ memberlist


def test_alive_messages_and_udp_bytes_are_counted() -> None:
    rec, metrics = recording()
    sim = Sim(seed=2)
    sent: list[int] = []
    sim.on_datagram = lambda name, data, to: sent.append(len(data)) if name == "a" else None
    sim.add_node("a", metrics=metrics)
    sim.add_node("b")
    sim.join("b", "a")
    sim.run_for(3.0)
    assert rec.total("memberlist", "msg", "alive") >= 2  # itself, then b
    assert sent and rec.total("memberlist", "udp", "sent") == sum(sent)
    a = sim.ml("a")
    before = rec.total("memberlist", "udp", "received")
    data = encode_packet([alive("c", 1, ip="10.9.9.9")], compress=False, crc=False)
    a.receive_datagram(data, ("10.9.9.9", 7946), sim.now)
    assert rec.total("memberlist", "udp", "received") - before == len(data)


def _lone(metrics: Metrics, peers: str, events: list[Event] | None = None,
          **overrides: object) -> Memberlist:
    """A core ``me`` that heard ``peers`` are alive (nobody answers it)."""
    cfg = MemberlistConfig(name="me", advertise_addr="10.0.0.1", enable_compression=False,
                           metrics=metrics, **overrides)  # type: ignore[arg-type]
    sink = events.append if events is not None else (lambda e: None)
    m = Memberlist(cfg, FakeDelegate("me", sink), random.Random(1), 0.0)
    for i, name in enumerate(peers):
        feed(m, alive(name, 1, ip=f"10.0.0.{i + 2}"), now=0.0)
    return m


def _run(m: Memberlist, until: Callable[[], bool], limit: float = 120.0) -> None:
    while not until():
        t = m.get_timer()
        assert t is not None and t < limit, "nothing more to run"
        m.handle_timer(t)
        m.datagrams_to_send()
        m.streams_to_open()


def test_suspect_dead_and_degraded_timeout_are_counted() -> None:
    rec, metrics = recording()
    events: list[Event] = []
    m = _lone(metrics, "abcde", events, disable_tcp_pings=True)
    feed(m, Suspect(1, "c", "a").encode(), now=0.5)
    assert rec.values("memberlist", "msg", "suspect") == [1.0]
    # Nobody answers: every peer ends suspected by our probes and dead. Each suspicion
    # wanted k = SuspicionMult - 2 = 2 confirmations and got none: degraded timeouts.
    _run(m, lambda: len([e for e in events if e.kind == "leave"]) == 5)
    assert rec.total("memberlist", "msg", "suspect") == 5
    assert rec.total("memberlist", "msg", "dead") == 5
    assert rec.total("memberlist", "degraded", "timeout") == 5


def test_probe_timer_health_score_and_degraded_probe() -> None:
    rec, metrics = recording()
    m = _lone(metrics, "ab", disable_tcp_pings=True)
    # No acks, no nacks: each probe ends at its deadline, ProbeInterval x (score + 1),
    # and the missing nack raises the score.
    _run(m, lambda: len(rec.values("memberlist", "probeNode")) >= 2)
    first, second = rec.values("memberlist", "probeNode")[:2]
    assert first == pytest.approx(1000.0)  # ms: the LAN ProbeInterval
    assert second == pytest.approx(2000.0)  # scaled by a score of 1
    assert rec.values("memberlist", "health", "score")[:2] == [1.0, 2.0]
    assert rec.total("memberlist", "degraded", "probe") >= 1
    assert m.health_score() == rec.last("memberlist", "health", "score")


def test_push_pull_timer_for_memberlists_own_and_serfs_join() -> None:
    rec, metrics = recording()
    sim = Sim(seed=4)
    sim.add_node("a", metrics=metrics)
    sim.add_node("b")
    sim.join("a", "b")  # memberlist's own push/pull (start_push_pull)
    sim.run_for(0.5)
    (ms,) = rec.values("memberlist", "pushPullNode")
    assert 0.0 < ms < 50.0  # two legs of the sim's 0.5..2 ms delay
    srec, smetrics = recording()
    ssim = SerfSim(seed=4)
    ssim.add_serf("a", metrics=smetrics)
    ssim.add_serf("b")
    ssim.join_serf("a", "b")  # Serf's join: the stream outcome goes through Serf
    (ms,) = srec.values("memberlist", "pushPullNode")
    assert 0.0 < ms < 50.0


def test_gossip_rounds_are_timed_with_the_perf_clock_only() -> None:
    ticks = itertools.count()
    rec, metrics = recording(perf=lambda: next(ticks) * 0.002)  # each call: 2 ms later
    sim = Sim(seed=5)
    sim.add_node("a", metrics=metrics)
    sim.add_node("b")
    sim.join("b", "a")
    sim.run_for(2.0)
    rounds = rec.values("memberlist", "gossip")
    assert rounds and all(v == pytest.approx(2.0) for v in rounds)
    rec2, no_perf = recording()  # a simulation's front: no CPU clock, no gossip timer
    sim2 = Sim(seed=5)
    sim2.add_node("a", metrics=no_perf)
    sim2.add_node("b")
    sim2.join("b", "a")
    sim2.run_for(2.0)
    assert rec2.values("memberlist", "gossip") == []
    assert rec2.values("memberlist", "msg", "alive")


# ------------------------------------------------------------------ serf


def _cluster(*names: str, seed: int = 7) -> tuple[SerfSim, Recorder]:
    """A SerfSim of ``names``, all joined to the first, with a recorder on the first."""
    rec, metrics = recording()
    sim = SerfSim(seed=seed)
    sim.add_serf(names[0], metrics=metrics)
    for n in names[1:]:
        sim.add_serf(n)
    for n in names[1:]:
        sim.join_serf(n, names[0])
    sim.run_for(2.0)
    return sim, rec


def _status(sim: SerfSim, observer: str, name: str) -> MemberStatus | None:
    for m in sim.serf(observer).members():
        if m.name == name:
            return m.status
    return None


def test_member_update_left_failed_and_the_status_gauges() -> None:
    sim, rec = _cluster("a", "b", "c", "d")
    assert rec.total("serf", "member", "join") == 4
    assert rec.last("serfd", "members", "alive") == 4
    sim.serf("b").set_tags({"role": "new"}, sim.now)
    sim.service("b")
    sim.run_for(2.0)
    assert rec.total("serf", "member", "update") == 1
    sim.crash("c")
    assert sim.run_until(sim.now + 60.0, lambda: _status(sim, "a", "c") is MemberStatus.FAILED)
    assert rec.total("serf", "member", "failed") == 1
    assert rec.last("serfd", "members", "failed") == 1
    assert rec.last("serfd", "members", "alive") == 3
    sim.serf("d").leave(sim.now)
    sim.service("d")
    assert sim.run_until(sim.now + 30.0, lambda: _status(sim, "a", "d") is MemberStatus.LEFT)
    assert rec.total("serf", "member", "left") == 1
    assert rec.last("serfd", "members", "left") == 1
    assert rec.last("serfd", "members", "alive") == 2
    assert rec.last("serfd", "members", "leaving") == 0


def test_a_failed_member_back_within_flap_timeout_is_a_flap() -> None:
    sim, rec = _cluster("a", "b", "c")
    addr = sim.nodes["c"].addr
    sim.crash("c")
    assert sim.run_until(sim.now + 60.0, lambda: _status(sim, "a", "c") is MemberStatus.FAILED)
    assert rec.values("serf", "member", "flap") == []
    sim.add_serf("c", addr=addr)  # back at once, with a new incarnation
    sim.join_serf("c", "a")
    assert sim.run_until(sim.now + 10.0, lambda: _status(sim, "a", "c") is MemberStatus.ALIVE)
    assert rec.values("serf", "member", "flap") == [1.0]
    assert rec.last("serfd", "members", "failed") == 0


def test_user_events_by_name_and_message_sizes_sent_and_received() -> None:
    sim, rec = _cluster("a", "b")
    a = sim.serf("a")
    raw = MessageUserEvent(ltime=a.event_clock.time(), name="deploy", payload=b"v1",
                           cc=False).encode()
    a.user_event("deploy", b"v1", False, sim.now)
    sim.service("a")
    sim.run_for(1.0)
    assert rec.values("serf", "events") == [1.0]
    assert rec.values("serf", "events", "deploy") == [1.0]
    assert float(len(raw)) in rec.values("serf", "msgs", "sent")
    # b sends one back: a receives a message of that length.
    b = sim.serf("b")
    raw_b = MessageUserEvent(ltime=b.event_clock.time(), name="ack", payload=b"",
                             cc=False).encode()
    b.user_event("ack", b"", False, sim.now)
    sim.service("b")
    sim.run_for(1.0)
    assert float(len(raw_b)) in rec.values("serf", "msgs", "received")
    assert rec.values("serf", "events", "ack") == [1.0]
    assert rec.total("serf", "events") == 2


def _fake_serf(metrics: Metrics, **overrides: object) -> Serf:
    mlc = MemberlistConfig.from_profile("lan", name="me")
    cfg = SerfConfig(node_name="me", memberlist=mlc, metrics=metrics,
                     **overrides)  # type: ignore[arg-type]
    return Serf(cfg, random.Random(1), 0.0, memberlist_factory=FakeMemberlist)


def test_queries_acks_responses_and_duplicates() -> None:
    rec, metrics = recording()
    serf = _fake_serf(metrics)
    serf.query("load", b"", QueryParam(request_ack=True, timeout=5.0), 0.0)
    # Our own query is handled here too (Serf's handleQuery), with our own ack.
    assert rec.values("serf", "queries") == [1.0]
    assert rec.values("serf", "queries", "load") == [1.0]
    (raw,) = serf.get_broadcasts(2, 1400)
    q = decode_serf_message(raw)
    assert isinstance(q, MessageQuery)

    def answer(frm: str, ack: bool) -> None:
        resp = MessageQueryResponse(ltime=q.ltime, id=q.id, from_=frm,
                                    flags=QUERY_FLAG_ACK if ack else 0,
                                    payload=None if ack else b"1.0")
        serf.notify_msg(resp.encode(), 0.1)

    answer("b", ack=True)
    answer("b", ack=True)
    answer("b", ack=False)
    answer("b", ack=False)
    answer("c", ack=False)
    assert rec.total("serf", "query_acks") == 2  # ours and b's
    assert rec.total("serf", "query_duplicate_acks") == 1
    assert rec.total("serf", "query_responses") == 2
    assert rec.total("serf", "query_duplicate_responses") == 1


def test_queue_depths_are_sampled_every_queue_check_interval() -> None:
    rec, metrics = recording()
    serf = _fake_serf(metrics, queue_check_interval=30.0, reap_interval=15.0)
    serf.user_event("deploy", b"", False, 0.0)
    assert serf.get_timer() == 15.0  # the reap: the check has no wake-up of its own
    serf.handle_timer(15.0)
    assert rec.values("serf", "queue", "Event") == []
    assert serf.get_timer() == 30.0
    serf.handle_timer(30.0)  # the second reap takes the samples
    assert rec.values("serf", "queue", "Intent") == [0.0]
    assert rec.values("serf", "queue", "Event") == [1.0]
    assert rec.values("serf", "queue", "Query") == [0.0]
    serf.handle_timer(45.0)
    assert len(rec.values("serf", "queue", "Event")) == 1
    serf.handle_timer(60.0)
    assert len(rec.values("serf", "queue", "Event")) == 2


# ------------------------------------------------------------------ drops


def test_every_counted_drop_is_a_serfd_dropped_counter() -> None:
    rec, metrics = recording()
    counters = DropCounters(metrics)
    drops = DropLog(logging.getLogger("test.metrics"), counters)
    drops.drop("too_many", 0.0, "dropped %d", 3, n=3)
    counters["plain"] = counters.get("plain", 0) + 1
    counters["plain"] = 0  # a reset is not a drop
    counters.update({"loaded": 5})  # nor is a bulk load
    assert rec.calls == [("counter", ("serfd", "dropped", "too_many"), 3),
                         ("counter", ("serfd", "dropped", "plain"), 1)]
    # The cores' own counters are such dicts: a drop by DropLog and one by _count.
    serf = _fake_serf(metrics, max_message_size=100)
    serf.notify_msg(bytes([1]) + b"x" * 200, 0.0)
    serf.notify_msg(bytes([250]), 0.0)
    m = _lone(metrics, "")
    m.receive_datagram(b"\xff garbage", ("10.0.0.9", 7946), 0.0)
    assert rec.values("serfd", "dropped", "serf_message_too_large") == [1.0]
    assert rec.values("serfd", "dropped", "unknown_serf_message") == [1.0]
    assert rec.total("serfd", "dropped", "bad_packet") + rec.total(
        "serfd", "dropped", "bad_message_255") == 1


# ------------------------------------------------------------------ agent services


def test_snapshot_appends_and_compactions_are_timed(tmp_path: Path) -> None:
    rec, metrics = recording()
    ticks = itertools.count()
    s = Snapshotter(tmp_path / "snap", SnapshotState(), min_compact_size=300,
                    clock=lambda: next(ticks) * 0.001, metrics=metrics)
    s.member_alive("a", "10.0.0.1:7946")
    s.run_once()
    (append,) = rec.values("serf", "snapshot", "appendLine")
    assert append > 0.0
    assert rec.values("serf", "snapshot", "compact") == []
    for i in range(20):  # past 300 bytes: an append compacts
        s.member_alive("a", f"10.0.1.{i}:7946")
        s.run_once()
    assert s.compactions >= 1
    assert len(rec.values("serf", "snapshot", "compact")) == s.compactions
    assert len(rec.values("serf", "snapshot", "appendLine")) == 21
    s.request_stop()
    s.run_once()


def test_rpc_accepts_and_commands_are_counted(sockdir: str) -> None:
    rec, metrics = recording()
    srv = ServerThread(f"{sockdir}/m.sock", metrics=metrics)
    try:
        c = Raw(srv.socket_path)
        c.handshake()
        c.request("members")
        c.read()
        c.read()
        c.close()
        wait_until(lambda: rec.total("agent", "ipc", "command") == 2)  # handshake, members
        assert rec.values("agent", "ipc", "accept") == [1.0]
    finally:
        srv.close()


SELF = Member("web-1", "10.0.0.5", 7946, {"role": "web"})


def test_handler_runs_are_timed_by_command_and_timeouts_counted(tmp_path: Path) -> None:
    rec, metrics = recording()

    async def main() -> HandlerRunner:
        clock = FakeClock()
        tasks: set[asyncio.Task[None]] = set()
        started = asyncio.Event()

        class Watch(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if "stdout: started" in record.getMessage():
                    started.set()

        def spawn(coro: Awaitable[None]) -> None:
            task = asyncio.ensure_future(coro)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        runner = HandlerRunner(
            parse_handlers({"user:quick": "true", "user:slow": "echo started; exec sleep 1000"}),
            tmp_path, max_concurrent=4, timeout=30.0, self_member=lambda: SELF,
            respond=lambda q, out, label: None, spawn=spawn, clock=clock, metrics=metrics)
        watch = Watch()
        logging.getLogger("serfd.handlers").addHandler(watch)
        try:
            runner.dispatch(UserEvent(1, "quick", b"", False))
            await asyncio.wait_for(asyncio.gather(*list(tasks)), 10.0)  # a hang guard
            runner.dispatch(UserEvent(2, "slow", b"", False))
            await asyncio.wait_for(started.wait(), 10.0)
            await clock.advance(30.0)  # the handler timeout
            await asyncio.wait_for(asyncio.gather(*list(tasks)), 10.0)
        finally:
            logging.getLogger("serfd.handlers").removeHandler(watch)
        return runner

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(logging.getLogger("serfd.handlers"), "level", logging.INFO)
        runner = asyncio.run(main())
    assert runner.counters["timed_out"] == 1
    assert rec.values("agent", "invoke", "true") == [0.0]  # no fake time passed
    assert rec.values("agent", "invoke", "echo started; exec sleep 1000") == [30000.0]
    assert rec.values("serfd", "handlers", "timeout") == [1.0]


def test_gossip_streams_count_accepts_connects_and_bytes_sent() -> None:
    recs = {n: recording() for n in ("a", "b")}

    async def main() -> None:
        async with nodes("a", "b") as (clock, (a, b)):
            for n in (a, b):
                n.driver.metrics = recs[n.name][1]
            n_joined, errors = await run_until_done(
                clock, a.driver.join_addrs([b.addr], ignore_old=False))
            assert (n_joined, errors) == (1, [])

    asyncio.run(main())
    rec_a, rec_b = recs["a"][0], recs["b"][0]
    assert rec_a.values("memberlist", "tcp", "connect") == [1.0]  # the join's push/pull
    assert rec_b.values("memberlist", "tcp", "accept") == [1.0]
    sent_a, sent_b = rec_a.values("memberlist", "tcp", "sent"), rec_b.values(
        "memberlist", "tcp", "sent")
    assert len(sent_a) == 1 and len(sent_b) == 1  # our state, and its reply
    assert sent_a[0] > 0 and sent_b[0] > 0


def test_the_agent_hands_its_front_to_the_cores_and_every_service(tmp_path: Path) -> None:
    rec = Recorder()

    async def main() -> Agent:
        cfg = Config(node_name="a", bind=("127.0.0.1", 0), state_dir=tmp_path,
                     rpc_socket=tmp_path / "s.sock", log_level="warn")
        agent = Agent(cfg, notifier=Notifier())
        agent.metrics.add_sink(rec)
        run = asyncio.ensure_future(agent.run())
        await until(lambda: agent._started, "the agent started")
        try:
            front = agent.metrics
            assert agent.gossip is not None and agent.gossip.metrics is front
            assert agent.events.handler_runner.metrics is front
            assert agent.rpc.metrics is front and agent.recorder.metrics is front
            for counters in (agent.counters, agent.events.counters, agent.recorder.counters,
                             agent.rpc.counters):
                assert isinstance(counters, DropCounters) and counters.metrics is front
            agent._count("test_reason")
        finally:
            agent._stop.set()
            await asyncio.wait_for(run, 30)
        return agent

    agent = asyncio.run(main())
    # No statsd or statsite: as Serf's agent, the gauges carry no host name.
    assert not agent.metrics.enable_hostname
    assert ("counter", ("serf-agent", "serf", "member", "join"), 1.0) in rec.calls
    assert ("gauge", ("serf-agent", "serfd", "members", "alive"), 1) in rec.calls
    assert ("counter", ("serf-agent", "serfd", "dropped", "test_reason"), 1) in rec.calls
    assert ("counter", ("serf-agent", "memberlist", "msg", "alive"), 1.0) in rec.calls


def test_a_handler_backlog_drop_is_a_serfd_dropped_counter(tmp_path: Path) -> None:
    rec, metrics = recording()

    async def main() -> None:
        runner = HandlerRunner(
            parse_handlers({"user": "true"}), tmp_path, max_concurrent=1, timeout=30.0,
            self_member=lambda: SELF, respond=lambda q, out, label: None,
            spawn=lambda coro: None, clock=FakeClock(), backlog=0, metrics=metrics,
            drops=DropLog(logging.getLogger("test.metrics"), DropCounters(metrics)))
        runner.dispatch(UserEvent(1, "deploy", b"", False))  # no room: dropped

    asyncio.run(main())
    assert rec.values("serfd", "dropped", "handler_backlog_user") == [1.0]
