"""Whole Serf instances (not just memberlist cores) on serfd.testing.sim's fake network.

``SerfSim`` drives each ``Serf`` through exactly its driver contract, as the agent's
``GossipDriver`` does on real sockets: datagrams, inbound streams, stream outcomes and
the one timer go in; datagrams, stream requests (joins and reconnects included) and
events come out. There is no adapter between the two: a join here is ``serf.join``,
its push/pulls are stream requests the network carries, and its end is the
``JoinDone`` event, so the join path the agent runs is the one these tests run.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from serfd.core.serf import (
    EventType,
    JoinDone,
    MemberEvent,
    Serf,
    SerfConfig,
    SerfEvent,
    UserEvent,
)
from serfd.memberlist.swim import MemberlistConfig, StreamKind, StreamRequest
from serfd.testing.cpu import CostTable, Machine, RpcPoller, agent_ticks
from serfd.testing.sim import Sim, SimNode
from serfd.wire.framing import decode_push_pull

IP_UDP_HEADER = 28  # IPv4 + UDP headers: what nftables counts on top of each datagram


class SerfSim(Sim):
    """A Sim whose nodes are Serf instances; their events are collected per node.

    With a shared machine (``cpu``), every job drains its node's events, as the agent
    does after each input (their members are part of the job's cost); read them with
    :meth:`events_of`, not from the Serf."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._held: dict[str, list[SerfEvent]] = {}

    def add_serf(self, name: str, tags: dict[str, str] | None = None,
                 addr: tuple[str, int] | None = None, **serf_overrides: Any) -> Serf:
        """Start a Serf called ``name``; with ``addr``, (re)start it there, with no state."""
        if addr is None:
            i = len(self.by_addr) + 1
            addr = (f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}", 7946)
        values = {"enable_compression": False, **self.config}
        if "metrics" in serf_overrides:  # one front for both layers, as the agent has
            values["metrics"] = serf_overrides["metrics"]
        mlc = MemberlistConfig(name=name, advertise_addr=addr[0], advertise_port=addr[1],
                               **values)
        cfg = SerfConfig(node_name=name, memberlist=mlc, tags=dict(tags or {}), **serf_overrides)
        serf = Serf(cfg, random.Random(self.rng.getrandbits(64)), self.now)
        self._held.pop(name, None)
        node = SimNode(name, addr, serf)
        self.nodes[name] = node
        self.by_addr[addr] = node
        self._service(node)
        return serf

    def serf(self, name: str) -> Serf:
        core = self.nodes[name].core
        assert isinstance(core, Serf), f"{name} is not a Serf node"
        return core

    def start_join(self, name: str, others: list[str], ignore_old: bool = False) -> int:
        """``serf.join`` from ``name`` to the addresses of ``others``; the join's id."""
        addrs = [self.nodes[o].addr for o in others]
        join_id = self.serf(name).join(addrs, ignore_old, self.now)
        self.service(name)
        return join_id

    def join_serf(self, name: str, other: str) -> None:
        """An explicit join, as the agent runs it, given time to complete (50 ms)."""
        self.start_join(name, [other])
        self.run_for(0.05)

    def events_of(self, name: str) -> list[SerfEvent]:
        return self._held.pop(name, []) + list(self.serf(name).drain_events())

    def _delivered(self, node: SimNode) -> int:
        core = node.core
        if not isinstance(core, Serf):
            return 0
        members = 0
        held = None
        while (ev := core.next_event()) is not None:
            if held is None:
                held = self._held.setdefault(node.name, [])
            held.append(ev)
            members += len(ev.members) if isinstance(ev, MemberEvent) else 1
        return members

    def wait_join(self, name: str, join_id: int, limit: float = 30.0) -> JoinDone:
        """Run until ``name``'s join ``join_id`` is done; the other events it drains are
        dropped."""
        done: list[JoinDone] = []

        def finished() -> bool:
            done.extend(e for e in self.events_of(name)
                        if isinstance(e, JoinDone) and e.join_id == join_id)
            return bool(done)

        assert finished() or self.run_until(self.now + limit, finished, every=0.001), \
            f"join {join_id} of {name} did not finish"
        return done[0]


def build_cluster(n: int, seed: int = 1, loss: float = 0.0, settle: float = 5.0,
                  config: dict[str, Any] | None = None, **serf_overrides: Any) -> SerfSim:
    """n Serf nodes, each joined to node0, run until they all see each other alive;
    ``config`` overrides MemberlistConfig fields (the Sim's ``config``)."""
    sim = SerfSim(seed=seed, loss=loss, config=dict(config or {}))
    names = [f"n{i}" for i in range(n)]
    for i, name in enumerate(names):
        sim.add_serf(name, tags={"role": "web" if i % 2 == 0 else "db", "idx": str(i)},
                     **serf_overrides)
    for name in names[1:]:
        sim.join_serf(name, names[0])
    ok = sim.run_until(sim.now + 60.0, check=lambda: all(
        sum(1 for m in sim.serf(x).members() if m.status.label == "alive") == n for x in names))
    assert ok, "cluster did not converge"
    sim.run_for(settle)
    for name in names:
        list(sim.serf(name).drain_events())
    return sim


@dataclass(frozen=True, slots=True)
class Burst:
    """What a burst of user events cost the cluster and how fast it spread."""

    n: int  # nodes
    window: float  # seconds measured, from the first event on
    datagrams: int  # sent by all nodes in the window
    bytes: int  # their bytes, with IP_UDP_HEADER each (as counted on the wire)
    # per (other node, event): seconds to delivery, inf if not in the window
    delays: list[float] = field(repr=False)

    def bytes_per_node_s(self) -> float:
        return self.bytes / self.n / self.window

    def datagrams_per_node_s(self) -> float:
        return self.datagrams / self.n / self.window

    def delay(self, p: float) -> float:
        """Nearest-rank percentile of the delivery delays (inf: some not delivered)."""
        ordered = sorted(self.delays)
        return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def event_burst(sim: SerfSim, origin: str, events: int = 20, payload: int = 32,
                window: float = 5.0, spacing: float = 0.0005) -> Burst:
    """``events`` user events (coalesce=false, ``payload`` bytes each) from ``origin``,
    ``spacing`` apart (the cluster bench sends 20 at once over RPC), then the traffic of
    the whole cluster over ``window`` seconds from the first and each event's delivery
    delay at every other node. Drains (and drops) every node's pending events first."""
    names = list(sim.nodes)
    for name in names:
        sim.events_of(name)
    start = sim.now
    d0, b0 = sim.stats.datagrams, sim.stats.bytes
    origin_serf = sim.serf(origin)
    for i in range(events):
        sim.run_until(start + i * spacing)
        origin_serf.user_event(f"burst{i}", b"x" * payload, False, sim.now)
        sim.service(origin)
    others = [x for x in names if x != origin]
    seen: dict[tuple[str, str], float] = {}

    def all_seen() -> bool:
        for x in others:
            for ev in sim.serf(x).drain_events():
                if isinstance(ev, UserEvent):
                    seen.setdefault((x, ev.name), sim.now - start)
        return len(seen) >= len(others) * events

    if not all_seen():
        sim.run_until(start + window, all_seen, every=0.001)
    sim.run_until(start + window)
    datagrams = sim.stats.datagrams - d0
    return Burst(len(names), window, datagrams,
                 sim.stats.bytes - b0 + IP_UDP_HEADER * datagrams,
                 [seen.get((x, f"burst{i}"), math.inf) for x in others for i in range(events)])


# The agent's gossip settings (serfd/agent/agent.py) that change what goes on the wire.
AGENT_GOSSIP: dict[str, Any] = {"enable_compression": True, "eager_gossip": True,
                                "confirm_suspicions": True}


@dataclass
class StarJoin:
    """What :func:`cpu_star_join` saw; times in virtual seconds from the release."""

    converged: float | None  # every node knew every other alive
    polled: float | None  # the poller had seen every node converged (the bench's figure)
    cpu: float  # CPU seconds the machine spent from the release until both
    max_wait: float  # the longest a job waited for its node and a core
    push_pulls: int  # push/pulls with Join=false opened until then
    follow_ups: int  # of which join follow-ups (the rest: periodic ones)
    failed: int  # member-failed events (a live node declared dead), over all nodes
    counters: dict[str, int]  # the cores' drops and activity, summed over the nodes


def cpu_star_join(n: int, seed: int, costs: CostTable, cores: int = 2, *,
                  ticks: bool = True, poller: bool = True, limit: float = 30.0) -> StarJoin:
    """n Serfs with the agent's gossip settings on a shared machine of ``cores`` with
    ``costs``, idle for 2 s; then n1..n(n-1) join n0 at once, as bench.cluster_bench
    does with real agents: with the agents' own tickers, and its RPC poller measuring
    convergence. Runs until both the cluster converged and the poller saw it, or
    ``limit`` virtual seconds."""
    machine = Machine(cores=cores, costs=costs)
    sim = SerfSim(seed=seed, config=dict(AGENT_GOSSIP), cpu=machine)
    names = [f"n{i}" for i in range(n)]
    for name in names:
        # The cost table was calibrated on agents whose acks carried no coordinate.
        sim.add_serf(name, disable_coordinates=True)
    push_pulls = 0

    def on_stream(name: str, req: StreamRequest) -> None:
        nonlocal push_pulls
        if req.kind is StreamKind.PUSH_PULL and not decode_push_pull(req.plain)[0].join:
            push_pulls += 1

    sim.on_stream = on_stream
    if ticks:
        agent_ticks(sim, names)
    sim.run_until(2.0)
    cpu0 = machine.cpu_seconds
    for name in names[1:]:
        sim.start_join(name, ["n0"])
    start = sim.now

    def done(name: str) -> bool:
        return sim.serf(name).num_alive() == n

    poll = RpcPoller(sim, names, done) if poller else None
    converged: float | None = None

    def finished() -> bool:
        nonlocal converged
        if converged is None and all(done(x) for x in names):
            converged = sim.now - start
        return converged is not None and (poll is None or poll.done_at is not None)

    sim.run_until(start + limit, finished, every=0.01)
    counters: dict[str, int] = {}
    failed = 0
    for x in names:
        view = sim.serf(x).counters_view()
        for k, v in (*view.dropped.items(), *view.activity.items()):
            counters[k] = counters.get(k, 0) + v
        failed += sum(len(ev.members) for ev in sim.events_of(x)
                      if isinstance(ev, MemberEvent) and ev.type is EventType.MEMBER_FAILED)
    polled = None if poll is None or poll.done_at is None else poll.done_at - start
    return StarJoin(converged, polled, machine.cpu_seconds - cpu0, machine.max_wait,
                    push_pulls, counters.get("join_follow_up_push_pull", 0), failed, counters)
