"""A 1,000-node cluster in the deterministic simulation against Serf's convergence model.

Serf's "Convergence Simulator" page (hashicorp/serf, website/source/docs/internals/
simulator.html.markdown, computed by website/source/assets/javascripts/_simulator.js)
models the share of nodes a broadcast has reached after x gossip rounds as
``1 / (1 + (N+1) e^(-fanout/2 x))`` (contact rate fanout/N x (1 - loss) x 0.5) and
draws rounds of GossipInterval until 99.99 % (``maxConverge: 0.9999``). With Serf's
defaults (0.2 s, fanout 3, no loss) and N = 1,000 it reaches 99.99 % in round 11:
**2.2 s**. Issue 13's target is 99.99 % within 2.75 s of virtual time.

The nodes are bare memberlist cores (``Sim``), not whole Serfs: a converged cluster is
built by loading every core with the full membership (``Sim.add_converged``; gossiping
it would take N^2 x 16 messages, minutes of wall time), and Serf's cores have no such
door. What is measured is the gossip itself, which is the same for both layers: a
Serf user event rides the same ``TransmitLimitedQueue`` with the same retransmit limit
and the same packets, behind memberlist's own broadcasts. Here the broadcast is a
node's alive: a new node's (join convergence) and a meta update's (a user event's
stand-in, seen as NotifyUpdate).

COST: one test (marked ``costly``), about 10-15 s of wall time, 8 s of it building the
cluster, and about 300 MiB of memory.
"""

from __future__ import annotations

import math
import time

import pytest

from serfd.testing.sim import Event, Sim

N = 1000
TARGET = 2.75  # issue 13: 99.99 % of nodes within 2.75 s of virtual time
SERF_MODEL = 2.2  # Serf's convergence simulator: 99.99 % of 1,000 nodes, no loss


def serf_model_rounds(n: int, fanout: int = 3, loss: float = 0.0,
                      converge: float = 0.9999) -> int:
    """The round at which Serf's convergence simulator reaches ``converge``."""
    contact = fanout / n * (1 - loss) * 0.5
    x = 0
    while 1 / (1 + (n + 1) * math.exp(-contact * n * x)) < converge:
        x += 1
    return x


def _percentile(values: list[float], p: float) -> float:
    """Nearest rank: at N = 1,000, p99.99 is the slowest node."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def _spread(sim: Sim, kind: str, about: str, start: float,
            expected: int) -> dict[str, float]:
    """Run until ``expected`` nodes reported ``kind`` about ``about``; when each did."""
    seen: dict[str, float] = {}

    def on_event(ev: Event) -> None:
        if ev.kind == kind and ev.node == about and ev.observer not in seen:
            seen[ev.observer] = ev.at - start

    sim.on_event = on_event
    sim.run_until(start + 10.0, lambda: len(seen) >= expected, every=0.05)
    sim.on_event = None
    return seen


def test_serf_model_says_2_2_s_at_1000_nodes() -> None:
    assert serf_model_rounds(N) * 0.2 == SERF_MODEL


@pytest.mark.costly
def test_thousand_nodes_join_and_event_reach_99_99_percent_within_target() -> None:
    """A node joins a converged 1,000-node cluster, then a member's broadcast goes out,
    each without and with 5 % loss: every time 99.99 % of the nodes (at N = 1,000, all
    of them) have it within 2.75 s of virtual time, under memberlist's own gossip rules
    (no eager push)."""
    wall = time.monotonic()
    sim = Sim(seed=13, record_events=False)
    sim.add_converged([f"n{i}" for i in range(N)])
    sim.run_until(sim.now + 2.0)
    built = time.monotonic() - wall
    lines = []
    for case, loss in (("a", 0.0), ("b", 0.05)):
        sim.loss = loss
        joiner = f"join-{case}"
        sim.add_node(joiner)
        sim.join(joiner, "n0")
        others = len(sim.nodes) - 1
        heard = _spread(sim, "join", joiner, sim.now, others + 1)
        late = [t for who, t in heard.items() if who != joiner]
        assert len(late) == others, f"{others - len(late)} nodes never heard of {joiner}"
        p = _percentile(late, 0.9999)
        lines.append(f"join at {loss:.0%} loss: p50 {_percentile(late, 0.5):.2f} s, "
                     f"p99 {_percentile(late, 0.99):.2f} s, p99.99 {p:.2f} s")
        assert p <= TARGET, lines[-1]

        sim.run_until(sim.now + 1.0)
        sender = f"n{7 + len(lines)}"
        node = sim.nodes[sender]
        assert node.delegate is not None
        node.delegate.meta = f"v-{case}".encode()
        sim.ml(sender).update_meta(sim.now)
        sim.service(sender)
        members = len(sim.nodes) - 1
        heard = _spread(sim, "update", sender, sim.now, members)
        assert len(heard) == members, f"{members - len(heard)} nodes missed the update"
        p = _percentile(list(heard.values()), 0.9999)
        lines.append(f"event at {loss:.0%} loss: p50 "
                     f"{_percentile(list(heard.values()), 0.5):.2f} s, p99 "
                     f"{_percentile(list(heard.values()), 0.99):.2f} s, p99.99 {p:.2f} s")
        assert p <= TARGET, lines[-1]
        sim.run_until(sim.now + 1.0)
    print(f"\n{N} nodes (Serf's model: 99.99 % in {SERF_MODEL} s; target {TARGET} s); "
          f"built in {built:.1f} s, all in {time.monotonic() - wall:.1f} s of wall time")
    for line in lines:
        print("  " + line)
