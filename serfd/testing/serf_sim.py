"""Whole Serf instances (not just memberlist cores) on serfd.testing.sim's fake network.

``SerfSim`` drives each ``Serf`` through exactly its driver contract, as the agent's
``GossipDriver`` does on real sockets: datagrams, inbound streams, stream outcomes and
the one timer go in; datagrams, stream requests (joins and reconnects included) and
events come out. There is no adapter between the two: a join here is ``serf.join``,
its push/pulls are stream requests the network carries, and its end is the
``JoinDone`` event, so the join path the agent runs is the one these tests run.
"""

from __future__ import annotations

import random
from typing import Any

from serfd.core.serf import JoinDone, Serf, SerfConfig, SerfEvent
from serfd.memberlist.swim import MemberlistConfig
from serfd.testing.sim import Sim, SimNode


class SerfSim(Sim):
    """A Sim whose nodes are Serf instances; their events are collected per node."""

    def add_serf(self, name: str, tags: dict[str, str] | None = None,
                 addr: tuple[str, int] | None = None, **serf_overrides: Any) -> Serf:
        """Start a Serf called ``name``; with ``addr``, (re)start it there, with no state."""
        if addr is None:
            i = len(self.by_addr) + 1
            addr = (f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}", 7946)
        mlc = MemberlistConfig(name=name, advertise_addr=addr[0], advertise_port=addr[1],
                               enable_compression=False, **self.config)
        cfg = SerfConfig(node_name=name, memberlist=mlc, tags=dict(tags or {}), **serf_overrides)
        serf = Serf(cfg, random.Random(self.rng.getrandbits(64)), self.now)
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
        return list(self.serf(name).drain_events())

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
                  **serf_overrides: Any) -> SerfSim:
    """n Serf nodes, each joined to node0, run until they all see each other alive."""
    sim = SerfSim(seed=seed, loss=loss)
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
