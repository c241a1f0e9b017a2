"""Whole Serf instances (not just memberlist cores) on tests/sim.py's fake network.

``SerfSim`` reuses :class:`sim.Sim` unchanged: each node's "core" is a thin adapter
that forwards to the Serf's memberlist but lets Serf own the timer, so Serf's own
deadlines (queries, reaping, leave phases) run on the fake clock too.
"""

from __future__ import annotations

import random
from typing import Any

from serfd.core.query import IncomingQuery
from serfd.core.serf import MemberEvent, Serf, SerfConfig, UserEvent
from serfd.memberlist.swim import Memberlist, MemberlistConfig
from serfd.testing.sim import Sim, SimNode


class SerfCore:
    """What Sim drives: the memberlist API, with Serf's timer in front of it."""

    def __init__(self, serf: Serf) -> None:
        self.serf = serf
        self.ml: Memberlist = serf.memberlist

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ml, name)

    def get_timer(self) -> float | None:
        return self.serf.get_timer()

    def handle_timer(self, now: float) -> None:
        self.serf.handle_timer(now)


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
        node = SimNode(name, addr, SerfCore(serf), serf)  # type: ignore[arg-type]
        self.nodes[name] = node
        self.by_addr[addr] = node
        self._service(node)
        return serf

    def _service(self, node: SimNode) -> None:
        core = node.core
        if isinstance(core, SerfCore):
            # Serf's reconnects, as the agent runs them: a push/pull with Join=true.
            for _name, ip, port in core.serf.joins_to_attempt():
                core.ml.start_push_pull((ip, port), True, self.now)
        super()._service(node)

    def serf(self, name: str) -> Serf:
        return self.nodes[name].core.serf  # type: ignore[attr-defined, no-any-return]

    def service(self, name: str) -> None:
        """Flush what a Serf produced outside a timer or datagram (a local call)."""
        self._service(self.nodes[name])

    def join_serf(self, name: str, other: str) -> None:
        """An explicit join followed by the join intent, as the agent does it."""
        self.join(name, other)
        self.run_for(0.05)
        self.serf(name).end_join(1, self.now)
        self.service(name)

    def events_of(self, name: str) -> list[MemberEvent | UserEvent | IncomingQuery]:
        return list(self.serf(name).drain_events())


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
